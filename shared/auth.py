"""Access tokens: the gateway signs them, and every service verifies them against its JWKS.

RFC 8725 throughout: each key is pinned to one algorithm (Ed25519 -> EdDSA, P-256 -> ES256,
nothing else), keys come only from a configured JWKS by ``kid``, and every time claim is
checked. The JWKS is given inline (``StaticKeys``) or fetched by URL (``RemoteJwks``: the
gateway's, or an identity provider's), cached, and refreshed when a new ``kid`` appears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import jwt
import jwt.types
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.clock import Clock
from shared.http import Problem

if TYPE_CHECKING:
    from shared.config import AuthConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TOKEN_CHARS = 8 * 1024
# A JWKS holds a handful of keys (a few hundred bytes each): anything far larger is not one.
MAX_JWKS_BYTES = 64 * 1024
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
# The only key kinds accepted, each with the one algorithm it may sign with: no RSA, no
# shared secrets, so no key can be read as another algorithm's (algorithm confusion).
PINNED = {("OKP", "Ed25519"): "EdDSA", ("EC", "P-256"): "ES256"}
UNAUTHENTICATED = "https://cardless.dev/problems/unauthenticated"
FORBIDDEN = "https://cardless.dev/problems/forbidden"
CHALLENGE_INVALID = 'Bearer error="invalid_token"'
NOT_CONFIGURED = "authentication is not configured"
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
)
# pyjwt would check the times against the wall clock: the verifier checks them against its own.
_DECODE_OPTIONS: jwt.types.Options = {
    "require": list(REQUIRED_CLAIMS),
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


class JwksError(ValueError):
    """A JWKS we cannot use; the message names the key by position, never its material."""


class Unauthenticated(Exception):
    """A refused token; ``reason`` is a fixed short phrase, safe to log and to answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who the gateway authenticated (a pseudonymous rider or a client) and what it may do."""

    subject: str
    scopes: frozenset[str]
    client_id: str | None = None


@dataclass(frozen=True)
class VerificationKey:
    """A public key from the JWKS, pinned to the one algorithm it verifies."""

    kid: str
    algorithm: str
    key: Ed25519PublicKey | EllipticCurvePublicKey


def parse_jwks(text: str) -> tuple[VerificationKey, ...]:
    """The keys of a JWKS document ``{"keys": [...]}``; ``JwksError`` on any unusable key."""
    entries = _jwks_entries(text)
    keys = tuple(_verification_key(f"keys[{i}]", jwk) for i, jwk in enumerate(entries))
    if len({key.kid for key in keys}) != len(keys):
        raise JwksError("two keys share a kid")
    return keys


def _usable_keys(text: str, source: str) -> tuple[VerificationKey, ...]:
    """The keys of a fetched JWKS we can use; ``JwksError`` if it is not a JWKS or has none.

    An issuer may publish other keys beside ours (RSA, keys for encryption), so an unusable
    key is skipped with a warning rather than losing the set. A kid named twice is dropped:
    a token could mean either key.
    """
    keys = []
    for i, jwk in enumerate(_jwks_entries(text)):
        try:
            keys.append(_verification_key(f"keys[{i}]", jwk))
        except JwksError as error:
            log.warning("JWKS key skipped", extra={"jwks_url": source, "reason": str(error)})
    twice = {kid for kid, count in Counter(key.kid for key in keys).items() if count > 1}
    if twice:
        kids = sorted(kid[:64] for kid in twice)
        log.warning("JWKS keys sharing a kid skipped", extra={"jwks_url": source, "kids": kids})
    usable = tuple(key for key in keys if key.kid not in twice)
    if not usable:
        raise JwksError("no usable key in the JWKS")
    return usable


def _jwks_entries(text: str) -> list[object]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('expected a JWKS, JSON like {"keys": [...]}')
    return entries


def _verification_key(where: str, jwk: object) -> VerificationKey:
    algorithm, key = public_key(jwk, where)
    assert isinstance(jwk, dict)
    if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        raise JwksError(f"{where}: needs a kid")
    return VerificationKey(jwk["kid"], algorithm, key)


def public_key(
    jwk: object, where: str = "jwk"
) -> tuple[str, Ed25519PublicKey | EllipticCurvePublicKey]:
    """A public Ed25519 or P-256 key from its JWK, with the one algorithm it is pinned to (a
    JWKS entry, a phone's key); ``JwksError`` naming ``where`` for anything else."""
    if not isinstance(jwk, dict):
        raise JwksError(f"{where}: expected a JSON object")
    kind = (jwk.get("kty"), jwk.get("crv"))
    algorithm = next((alg for pinned, alg in PINNED.items() if pinned == kind), None)
    if algorithm is None:
        raise JwksError(f"{where}: only OKP Ed25519 and EC P-256 keys are accepted")
    if jwk.get("alg", algorithm) != algorithm or jwk.get("use", "sig") != "sig":
        raise JwksError(f"{where}: this key may only sign with {algorithm}")
    if "d" in jwk:
        raise JwksError(f"{where}: holds private key material; publish only the public key")
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except jwt.PyJWTError:
        raise JwksError(f"{where}: not a valid {jwk['crv']} public key") from None
    if not isinstance(key, Ed25519PublicKey | EllipticCurvePublicKey):
        raise JwksError(f"{where}: not a public key")
    return algorithm, key


class KeySource(Protocol):
    """Where a verifier finds the public key a token's ``kid`` names."""

    async def key(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``, or None if the source has no such key."""
        ...


class StaticKeys:
    """Keys known in advance (``AUTH_JWKS``), or the gateway's own, swapped on rotation."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys: dict[str, VerificationKey] = {}
        self.replace(keys)

    def replace(self, keys: Iterable[VerificationKey]) -> None:
        """Verify with ``keys`` from now on; ``JwksError`` if two share a kid."""
        given = list(keys)
        by_kid = {key.kid: key for key in given}
        if len(by_kid) != len(given):
            raise JwksError("two keys share a kid")
        self._keys = by_kid

    async def key(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)


class RemoteJwks:
    """A JWKS fetched by URL (the gateway's, or an identity provider's), cached by kid.

    A known kid answers from the cache, refreshed in the background once older than its max
    age. An unknown kid (a key rotated in) waits for a refresh, at most one per
    ``min_refresh_interval_s``, so random kids cannot make us hammer the issuer. One fetch at
    a time: whoever needs it awaits the same one. While the issuer is down or answers garbage,
    the keys fetched last stay in service.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession,
        min_refresh_interval_s: float = 30,
        max_age_s: float = 300,
        timeout_s: float = 5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url, self._session, self._monotonic = url, session, monotonic
        self._min_interval, self._max_age = min_refresh_interval_s, max_age_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._where = _loggable(url)
        self._keys: dict[str, VerificationKey] = {}
        self._stale_at = -math.inf  # monotonic time when the cached set wants a refresh
        self._fetched_at = -math.inf  # monotonic time the last fetch began, failed or not
        self._fetch: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``; a kid new to us first waits for a refresh (rate-limited)."""
        key = self._keys.get(kid)
        if key is not None:
            if self._monotonic() >= self._stale_at:
                self._refreshing()  # in the background: the cached key answers meanwhile
            return key
        fetch = self._refreshing()
        if fetch is None:
            return None
        # Shielded: a request that gives up must not cancel the fetch others are waiting for.
        await asyncio.shield(fetch)
        return self._keys.get(kid)

    async def aclose(self) -> None:
        """Stop a fetch in flight; call it before closing the session."""
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.wait({self._fetch})

    def _refreshing(self) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one unless the last one began too recently."""
        if self._fetch is not None and not self._fetch.done():
            return self._fetch
        now = self._monotonic()
        if now - self._fetched_at < self._min_interval:
            return None
        self._fetched_at = now
        self._fetch = asyncio.create_task(self._refresh(), name=f"JWKS {self._where}")
        return self._fetch

    async def _refresh(self) -> None:
        context = {"jwks_url": self._where, "cached_keys": len(self._keys)}
        try:
            keys, fresh_for = await self._download()
        except (aiohttp.ClientError, TimeoutError, JwksError) as error:
            reason = f"{type(error).__name__}: {error}".removesuffix(": ")
            log.warning(
                "JWKS refresh failed; keeping the cached keys", extra={**context, "reason": reason}
            )
            return
        except Exception:
            # A bug here must not take the cached keys down with it, nor the caller's request.
            log.exception(
                "JWKS refresh failed unexpectedly; keeping the cached keys", extra=context
            )
            return
        self._keys = {key.kid: key for key in keys}
        self._stale_at = self._monotonic() + fresh_for

    async def _download(self) -> tuple[tuple[VerificationKey, ...], float]:
        headers = {"Accept": "application/jwk-set+json, application/json"}
        async with self._session.get(self._url, headers=headers, timeout=self._timeout) as answer:
            if answer.status != 200:
                raise JwksError(f"answered HTTP {answer.status}")
            body = await _read_at_most(answer.content, MAX_JWKS_BYTES)
            fresh_for = self._fresh_for(answer.headers)
        # Bytes that are not UTF-8 become U+FFFD, which no JWKS parses: one error path.
        return _usable_keys(body.decode("utf-8", errors="replace"), self._where), fresh_for

    def _fresh_for(self, headers: Mapping[str, str]) -> float:
        """The issuer's ``max-age`` if it gives one, between the refresh interval and max age."""
        max_age = _max_age(headers.get("Cache-Control", ""))
        wanted = self._max_age if max_age is None else max_age
        return min(max(wanted, self._min_interval), self._max_age)


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    body = bytearray()
    async for chunk in stream.iter_any():
        body += chunk
        if len(body) > limit:
            raise JwksError(f"answered more than {limit} bytes")
    return bytes(body)


def _max_age(cache_control: str) -> int | None:
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        value = value.strip().strip('"')
        if name.lower() == "max-age" and value.isascii() and value.isdigit() and len(value) < 10:
            return int(value)
    return None


def _loggable(url: str) -> str:
    """The URL without user, password, query or fragment: fit for a log line."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class TokenVerifier:
    """Checks access tokens against a key source, at the time its clock says."""

    def __init__(self, config: AuthConfig, clock: Clock, keys: KeySource | None = None) -> None:
        if keys is None and config.jwks_url is not None:
            raise ValueError("AUTH_JWKS_URL is set: give the verifier its RemoteJwks as keys")
        self._config, self._clock = config, clock
        self._keys: KeySource = StaticKeys(config.jwks) if keys is None else keys
        self._configured = keys is not None or bool(config.jwks)

    @property
    def configured(self) -> bool:
        """Whether any keys were configured; without them, every token is refused."""
        return self._configured

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names; ``Unauthenticated`` for anything else."""
        return await self._checked(token, principal_from)

    async def claims(self, token: str) -> dict[str, Any]:
        """Every claim of a valid token (the gateway reads ``cnf``); else ``Unauthenticated``."""
        return await self._checked(token, lambda claims: claims)

    async def _checked(self, token: str, read: Callable[[dict[str, Any]], T]) -> T:
        header: dict[str, Any] = {}
        try:
            header = self._header(token)
            return read(await self._claims(token, header))
        except Unauthenticated as refused:
            kid = header.get("kid")
            kid = kid[:64] if isinstance(kid, str) else None
            log.info("access token refused", extra={"reason": refused.reason, "kid": kid})
            raise

    def _header(self, token: str) -> dict[str, Any]:
        if not self._configured:
            raise Unauthenticated(NOT_CONFIGURED)
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("token too large")
        # A header that is not ASCII can only be malformed (and may not even encode as UTF-8).
        if not token.isascii():
            raise Unauthenticated("malformed token")
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None

    async def _claims(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        # Only the configured JWKS names keys: jku, jwk, x5u and x5c are never looked at.
        if "kid" not in header:
            raise Unauthenticated("missing kid")
        # pyjwt has checked that a kid is a string.
        key = await self._keys.key(header["kid"])
        if key is None:
            raise Unauthenticated("unknown kid")
        if header.get("alg") != key.algorithm:
            raise Unauthenticated("algorithm not allowed for this key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=self._config.issuer,
                audience=self._config.audience,
                options=_DECODE_OPTIONS,
            )
        except jwt.MissingRequiredClaimError as missing:
            raise Unauthenticated(f"missing {missing.claim}") from None
        except jwt.PyJWTError as error:
            reason = next((r for kind, r in _REASONS if isinstance(error, kind)), "malformed token")
            raise Unauthenticated(reason) from None
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict[str, Any]) -> None:
        now, leeway = self._clock.now().timestamp(), self._config.leeway_s
        if _numeric_date(claims, "exp") <= now - leeway:
            raise Unauthenticated("token expired")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + leeway:
            raise Unauthenticated("token not yet valid")
        if _numeric_date(claims, "iat") > now + leeway:
            raise Unauthenticated("token issued in the future")


def principal_from(claims: dict[str, Any]) -> Principal:
    """The principal that verified claims name; ``Unauthenticated`` if they are malformed.

    The gateway verifies with ``TokenVerifier.claims`` (it reads ``cnf`` too), then calls this.
    """
    subject, scope, client_id = claims["sub"], claims.get("scope", ""), claims.get("client_id")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("missing sub")
    if not isinstance(scope, str) or not isinstance(client_id, str | None):
        raise Unauthenticated("malformed scope or client_id")
    return Principal(subject, frozenset(scope.split()), client_id)


def _numeric_date(claims: dict[str, Any], name: str) -> float:
    # Python's JSON reads NaN and Infinity, which compare as never expiring: refuse them.
    value: object = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"malformed {name}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Unauthenticated(f"malformed {name}")
    return value


VERIFIER = web.AppKey("verifier", TokenVerifier)


async def authenticate(request: web.Request, *scopes: str) -> Principal:
    """The caller the gateway vouched for, holding every one of ``scopes``; else 401 or 403."""
    verifier = request.app[VERIFIER]
    if not verifier.configured:
        raise refusal(401, NOT_CONFIGURED)
    try:
        principal = await verifier.verify(bearer_token(request))
    except Unauthenticated as refused:
        raise refusal(401, refused.reason) from None
    if not principal.scopes.issuperset(scopes):
        needed = " ".join(scopes)
        raise refusal(403, f"requires scope: {needed}", scope=needed)
    return principal


def bearer_token(request: web.Request, *, schemes: tuple[str, ...] = ("bearer",)) -> str:
    """The token of the one Authorization header, in one of ``schemes`` (lower case); else 401."""
    given = request.headers.getall("Authorization", [])
    scheme, _, token = given[0].partition(" ") if given else ("", "", "")
    if scheme.lower() not in schemes:
        # RFC 6750 §3.1: a request without credentials gets the challenge, but no error code.
        raise _refusal(401, "bearer token required", "Bearer")
    if len(given) > 1 or not token.strip():
        raise refusal(401, "malformed Authorization header")
    return token.strip()


def refusal(status: int, detail: str, *, scope: str | None = None) -> Problem:
    """A 401 ``invalid_token`` problem, or a 403 ``insufficient_scope`` one naming ``scope``."""
    if status == 403:
        return _refusal(403, detail, f'Bearer error="insufficient_scope", scope="{scope or ""}"')
    return _refusal(status, detail, CHALLENGE_INVALID)


def _refusal(status: int, detail: str, challenge: str) -> Problem:
    type_, title = (FORBIDDEN, "Forbidden") if status == 403 else (UNAUTHENTICATED, "Unauthorized")
    return Problem(status, title, detail, type_=type_, headers={"WWW-Authenticate": challenge})
