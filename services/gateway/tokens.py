"""The token endpoint (``POST /oauth/token``) and the DPoP proofs rider tokens need.

Clients get tokens with the client-credentials grant and ``private_key_jwt`` (RFC 6749 §4.4,
RFC 7523 §2.2); riders sign in with a JWT-bearer grant signed by the phone's own key, which
carries its public key in the header (RFC 7523 §2.1). The rider's token is bound to that key
(``cnf.jkt``) and every request with it needs a DPoP proof by the same key (RFC 9449).
Refusals are RFC 6749 §5.2 JSON with fixed short descriptions: an assertion is never echoed.
The checks that need no I/O are in ``assertions``; here are the endpoint, its settings, and
the Redis and database it uses.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from services.gateway.assertions import (
    INVALID_CLIENT,
    INVALID_GRANT,
    INVALID_REQUEST,
    INVALID_SCOPE,
    NO_STORE,
    UNSUPPORTED_GRANT_TYPE,
    OAuthError,
    authenticate_client,
    authenticate_phone,
    numeric_date,
    parse_form,
    verify_dpop_proof,
)
from services.gateway.clients import RIDER_APP, Client
from shared.auth import Unauthenticated
from shared.clock import Clock
from shared.ids import new_id
from shared.keyring import Keyring

log = logging.getLogger(__name__)

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
RIDER_SCOPES = frozenset(
    {"wallet:read", "wallet:topup", "wallet:refund", "transit:ride", "identity:holder"}
)


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """The token endpoint's Redis keys: one per used ``jti``, expiring with its JWT's window.

    A ``jti`` is unique per issuer (RFC 7519 §4.1.7), so each key is scoped to the client or the
    phone key; both are hashed, bounding the key's length whatever a caller sends.
    """

    namespace: str

    def client_assertion(self, client_id: str, jti: str) -> str:
        return f"{self.namespace}:gateway:jti:client:{_digest(client_id, jti)}"

    def phone_assertion(self, jkt: str, jti: str) -> str:
        return f"{self.namespace}:gateway:jti:phone:{_digest(jkt, jti)}"

    def dpop_proof(self, jkt: str, jti: str) -> str:
        return f"{self.namespace}:gateway:jti:dpop:{_digest(jkt, jti)}"


def _digest(issuer: str, jti: str) -> str:
    return hashlib.sha256(f"{issuer}\x00{jti}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class TokenSettings:
    """What the endpoint issues and what it accepts from clients and phones."""

    token_url: str
    issuer: str = "cardless-gateway"
    audience: str = "cardless"
    ttl_s: int = 600
    rider_scopes: frozenset[str] = RIDER_SCOPES
    max_assertion_lifetime_s: int = 300
    leeway_s: int = 30
    dpop_max_age_s: int = 300

    @property
    def assertion_audiences(self) -> tuple[str, str]:
        """An assertion is for us if its ``aud`` names the token URL or our issuer."""
        return (self.token_url, self.issuer)


class TokenEndpoint:
    """``POST /oauth/token`` for clients and riders, and the DPoP check for rider tokens."""

    def __init__(
        self,
        keyring: Keyring,
        clients: Mapping[str, Client],
        redis: aioredis.Redis,
        keys: TokenKeys | str,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: TokenSettings,
    ) -> None:
        if settings.ttl_s > keyring.policy.token_ttl_s:
            raise ValueError("ttl_s: tokens may not outlive their key's publication")
        self._keyring, self._clients, self._redis = keyring, clients, redis
        self._keys = keys if isinstance(keys, TokenKeys) else TokenKeys(keys)
        self._pool, self._clock, self._settings = pool, clock, settings

    async def handle(self, request: web.Request) -> web.Response:
        """Answer a token request: the token (200), or an RFC 6749 §5.2 error."""
        try:
            if request.content_type != FORM:
                raise OAuthError(INVALID_REQUEST, f"expected an {FORM} body")
            form = parse_form(await request.read())
            grant = form.get("grant_type")
            if grant == CLIENT_CREDENTIALS:
                body = await self._client_credentials(form)
            elif grant == JWT_BEARER:
                body = await self._rider_sign_in(form)
            elif grant is None:
                raise OAuthError(INVALID_REQUEST, "grant_type is required")
            else:
                raise OAuthError(UNSUPPORTED_GRANT_TYPE, "grant_type not supported")
        except OAuthError as refused:
            log.info("token refused", extra={"error": refused.error, "reason": refused.description})
            return refused.response()
        return web.json_response(body, headers=NO_STORE)

    async def check_dpop(
        self, *, method: str, url: str, proof: str | None, access_token: str, jkt: str
    ) -> None:
        """Return if ``proof`` is a fresh DPoP proof for this request by the token's key;
        ``Unauthenticated`` with a fixed reason otherwise."""
        now, settings = self._clock.now().timestamp(), self._settings
        try:
            claims = verify_dpop_proof(
                proof,
                method=method,
                url=url,
                access_token=access_token,
                jkt=jkt,
                now=now,
                settings=settings,
            )
            until = numeric_date(claims, "iat") + settings.dpop_max_age_s + settings.leeway_s
            if not await self._first_use(self._keys.dpop_proof(jkt, claims["jti"]), until, now):
                raise Unauthenticated("DPoP proof replayed")
        except Unauthenticated as refused:
            log.info("DPoP proof refused", extra={"reason": refused.reason})
            raise

    async def _client_credentials(self, form: Mapping[str, str]) -> dict[str, Any]:
        # RFC 6749 §5.2: no (or an unsupported) client authentication is invalid_client.
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or assertion is None:
            raise OAuthError(INVALID_CLIENT, "client_assertion (private_key_jwt) required")
        now = self._clock.now().timestamp()
        try:
            client, claims = authenticate_client(
                assertion, self._clients, now=now, settings=self._settings
            )
        except Unauthenticated as refused:
            raise OAuthError(INVALID_CLIENT, refused.reason) from None
        if form.get("client_id", client.client_id) != client.client_id:
            raise OAuthError(INVALID_CLIENT, "client_id does not match the assertion")
        key = self._keys.client_assertion(client.client_id, claims["jti"])
        if not await self._first_use(
            key, numeric_date(claims, "exp") + self._settings.leeway_s, now
        ):
            raise OAuthError(INVALID_CLIENT, "assertion already used")
        scopes = _granted(form.get("scope"), client.scopes)
        log.info("token issued", extra={"client_id": client.client_id})
        return self._issue(client.client_id, client.client_id, scopes, now, "Bearer")

    async def _rider_sign_in(self, form: Mapping[str, str]) -> dict[str, Any]:
        assertion = form.get("assertion")
        if assertion is None:
            raise OAuthError(INVALID_REQUEST, "assertion is required")
        now = self._clock.now().timestamp()
        try:
            jkt, claims = authenticate_phone(assertion, now=now, settings=self._settings)
        except Unauthenticated as refused:
            raise OAuthError(INVALID_GRANT, refused.reason) from None
        key = self._keys.phone_assertion(jkt, claims["jti"])
        if not await self._first_use(
            key, numeric_date(claims, "exp") + self._settings.leeway_s, now
        ):
            raise OAuthError(INVALID_GRANT, "assertion already used")
        scopes = _granted(form.get("scope"), self._settings.rider_scopes)
        rider = await self._rider(jkt)
        return self._issue(rider, RIDER_APP, scopes, now, "DPoP", cnf={"jkt": jkt})

    def _issue(
        self,
        subject: str,
        client_id: str,
        scopes: frozenset[str],
        now: float,
        token_type: str,
        **extra: Any,
    ) -> dict[str, Any]:
        settings, iat = self._settings, int(now)
        scope = " ".join(sorted(scopes))
        claims = {
            "iss": settings.issuer,
            "aud": settings.audience,
            "sub": subject,
            "scope": scope,
            "client_id": client_id,
            "iat": iat,
            "exp": iat + settings.ttl_s,
            "jti": str(new_id()),
            **extra,
        }
        token = self._keyring.sign(claims, typ="at+jwt")
        return {
            "access_token": token,
            "token_type": token_type,
            "expires_in": settings.ttl_s,
            "scope": scope,
        }

    async def _first_use(self, key: str, until: float, now: float) -> bool:
        """Mark a ``jti`` used until its JWT could no longer pass; False if it already was."""
        ttl_ms = max(1000, math.ceil((until - now) * 1000))
        return bool(await self._redis.set(key, 1, nx=True, px=ttl_ms))

    async def _rider(self, jkt: str) -> str:
        """The rider of a phone key, created on its first sign-in."""
        # Two statements, not one: the SELECT needs a snapshot taken after the INSERT, so it
        # sees the row a concurrent first sign-in with the same key committed.
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO riders (rider_id, jkt, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (jkt) DO NOTHING",
                f"rider_{new_id()}",
                jkt,
                self._clock.now(),
            )
            rider: str = await conn.fetchval("SELECT rider_id FROM riders WHERE jkt = $1", jkt)
        return rider


def _granted(requested: str | None, allowed: frozenset[str]) -> frozenset[str]:
    if requested is None:
        return allowed
    asked = frozenset(requested.split(" "))
    if "" in asked or not asked <= allowed:
        raise OAuthError(INVALID_SCOPE, "scope not allowed for this client")
    return asked
