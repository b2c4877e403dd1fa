"""Who gets in: the caller's token checked once, the route's scopes, and the internal token.

A client's access token (ours, or an external issuer's) is verified on first sight and the
result kept until the token expires, so a busy client costs one signature check, not one per
request. What the gateway forwards is a short internal token it signs itself (decision 006):
services accept nothing else.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt
from aiohttp import web

from services.gateway.routes import Route
from shared.auth import (
    FORBIDDEN,
    Principal,
    TokenVerifier,
    Unauthenticated,
    bearer_token,
    principal_from,
    refusal,
)
from shared.clock import Clock
from shared.http import Problem
from shared.ids import new_id

log = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000
DPOP_CHALLENGE = 'DPoP error="invalid_dpop_proof", algs="EdDSA ES256"'
# An internal token is re-minted when less than this is left of it.
INTERNAL_MARGIN_S = 30
DpopCheck = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Admitted:
    """A verified client token, as the gateway remembers it until it expires."""

    principal: Principal
    expires_at: float
    jkt: str | None  # the phone key a rider token is bound to (DPoP)
    internal: str
    internal_expires_at: float


class Gatekeeper:
    """Authenticates callers against the issuers we trust and authorizes them per route."""

    def __init__(
        self,
        verifiers: Mapping[str, TokenVerifier],
        sign: Callable[[dict[str, Any]], str],
        check_dpop: DpopCheck,
        *,
        issuer: str,
        internal_audience: str,
        internal_ttl_s: int,
        leeway_s: int,
        public_url: str,
        clock: Clock,
        trusted_scopes: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """``trusted_scopes``: per external issuer, the most its tokens may grant."""
        self._verifiers, self._sign, self._check_dpop = verifiers, sign, check_dpop
        self._trusted_scopes = dict(trusted_scopes or {})
        self._issuer, self._internal_audience = issuer, internal_audience
        self._internal_ttl_s, self._leeway_s = internal_ttl_s, leeway_s
        self._public_url, self._clock = public_url, clock
        self._admitted: OrderedDict[str, Admitted] = OrderedDict()

    async def admit(self, request: web.Request, route: Route) -> Admitted:
        """The caller, authenticated and holding what ``route`` needs; else a 401/403 problem."""
        token = bearer_token(request, schemes=("bearer", "dpop"))
        try:
            admitted = await self._authenticated(token)
        except Unauthenticated as refused:
            raise refusal(401, refused.reason) from None
        if admitted.jkt is not None:
            try:
                await self._check_dpop(
                    method=request.method,
                    url=self._public_url + request.path,
                    proof=request.headers.get("DPoP"),
                    access_token=token,
                    jkt=admitted.jkt,
                )
            except Unauthenticated as refused:
                # RFC 9449 §7.1: the challenge names the DPoP scheme and what proofs may use.
                problem = refusal(401, refused.reason)
                problem.headers["WWW-Authenticate"] = DPOP_CHALLENGE
                raise problem from None
        _authorize(request, route, admitted.principal)
        return admitted

    async def _authenticated(self, token: str) -> Admitted:
        now = self._clock.now().timestamp()
        known = self._admitted.get(token)
        if known is not None and _fresh(known, now):
            return known
        known = await self._verify(token, now)
        self._admitted[token] = known
        self._admitted.move_to_end(token)
        while len(self._admitted) > CACHE_ENTRIES:
            self._admitted.popitem(last=False)
        return known

    async def _verify(self, token: str, now: float) -> Admitted:
        issuer = _issuer_of(token)
        verifier = self._verifiers.get(issuer)
        if verifier is None:
            raise Unauthenticated("unknown issuer")
        claims = await verifier.claims(token)
        principal = principal_from(claims)
        trusted = self._trusted_scopes.get(issuer)
        if trusted is not None:
            # An identity provider vouches for who the caller is; what the caller may do here
            # is the city's to decide: never more than the scopes configured for that issuer.
            principal = replace(principal, scopes=principal.scopes & trusted)
        expires_at = float(claims["exp"])
        internal_expires_at = min(expires_at, now + self._internal_ttl_s)
        internal = self._sign(
            {
                "iss": self._issuer,
                "aud": self._internal_audience,
                "sub": principal.subject,
                "scope": " ".join(sorted(principal.scopes)),
                "client_id": principal.client_id,
                "iat": int(now),
                "exp": int(internal_expires_at),
                "jti": str(new_id()),
            }
        )
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        return Admitted(principal, expires_at, jkt, internal, internal_expires_at)


def _fresh(known: Admitted, now: float) -> bool:
    # The internal token is reused while a margin of it is left, or to its end when it lives
    # exactly as long as the client's token (past that, the client's token is expired too).
    if known.internal_expires_at >= known.expires_at:
        return now < known.expires_at
    return now < known.internal_expires_at - INTERNAL_MARGIN_S


def _issuer_of(token: str) -> str:
    # Only picks which issuer's keys to check with; the chosen verifier checks everything.
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        raise Unauthenticated("malformed token") from None
    if not isinstance(issuer, str):
        raise Unauthenticated("missing iss")
    return issuer


def _authorize(request: web.Request, route: Route, principal: Principal) -> None:
    scopes = route.scopes or ()
    if not principal.scopes.intersection(scopes):
        needed = " ".join(scopes)
        raise refusal(403, f"requires scope: {needed}", scope=needed)
    if route.owner is None or route.owner_exempt in principal.scopes:
        return
    if request.match_info.get(route.owner) != principal.subject:
        raise Problem(403, "Forbidden", f"only its own {route.owner} may", type_=FORBIDDEN)
