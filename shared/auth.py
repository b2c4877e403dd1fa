"""Access tokens: the gateway signs them, and every service verifies them against its JWKS.

RFC 8725 throughout: each key is pinned to one algorithm (Ed25519 -> EdDSA, P-256 -> ES256,
nothing else), keys come only from our JWKS by ``kid``, and every time claim is checked.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

MAX_TOKEN_CHARS = 8 * 1024
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
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('expected a JWKS, JSON like {"keys": [...]}')
    keys = tuple(_verification_key(f"keys[{i}]", jwk) for i, jwk in enumerate(entries))
    if len({key.kid for key in keys}) != len(keys):
        raise JwksError("two keys share a kid")
    return keys


def _verification_key(where: str, jwk: object) -> VerificationKey:
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
    if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        raise JwksError(f"{where}: needs a kid")
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except jwt.PyJWTError:
        raise JwksError(f"{where}: not a valid {jwk['crv']} public key") from None
    if not isinstance(key, Ed25519PublicKey | EllipticCurvePublicKey):
        raise JwksError(f"{where}: not a public key")
    return VerificationKey(jwk["kid"], algorithm, key)


class TokenVerifier:
    """Checks the gateway's access tokens against its keys, at the time its clock says."""

    def __init__(self, config: AuthConfig, clock: Clock) -> None:
        self._config, self._clock = config, clock
        self._keys = {key.kid: key for key in config.jwks}

    @property
    def configured(self) -> bool:
        """Whether there is any key to verify with; without one, every token is refused."""
        return bool(self._keys)

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; ``Unauthenticated`` for anything else."""
        header: dict[str, Any] = {}
        try:
            header = self._header(token)
            return self._principal(self._claims(token, header))
        except Unauthenticated as refused:
            kid = header.get("kid")
            kid = kid[:64] if isinstance(kid, str) else None
            log.info("access token refused", extra={"reason": refused.reason, "kid": kid})
            raise

    def _header(self, token: str) -> dict[str, Any]:
        if not self._keys:
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

    def _claims(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        # Only our JWKS names keys: jku, jwk, x5u and x5c in the header are never looked at.
        if "kid" not in header:
            raise Unauthenticated("missing kid")
        key = self._keys.get(header["kid"])
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

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
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


def authenticate(request: web.Request, *scopes: str) -> Principal:
    """The caller the gateway vouched for, holding every one of ``scopes``; else 401 or 403."""
    verifier = request.app[VERIFIER]
    if not verifier.configured:
        raise _refusal(401, NOT_CONFIGURED, CHALLENGE_INVALID)
    try:
        principal = verifier.verify(_bearer_token(request))
    except Unauthenticated as refused:
        raise _refusal(401, refused.reason, CHALLENGE_INVALID) from None
    if not principal.scopes.issuperset(scopes):
        needed = " ".join(scopes)
        challenge = f'Bearer error="insufficient_scope", scope="{needed}"'
        raise _refusal(403, f"requires scope: {needed}", challenge)
    return principal


def _bearer_token(request: web.Request) -> str:
    given = request.headers.getall("Authorization", [])
    scheme, _, token = given[0].partition(" ") if given else ("", "", "")
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: a request without credentials gets the challenge, but no error code.
        raise _refusal(401, "bearer token required", "Bearer")
    if len(given) > 1 or not token.strip():
        raise _refusal(401, "malformed Authorization header", CHALLENGE_INVALID)
    return token.strip()


def _refusal(status: int, detail: str, challenge: str) -> Problem:
    type_, title = (FORBIDDEN, "Forbidden") if status == 403 else (UNAUTHENTICATED, "Unauthorized")
    return Problem(status, title, detail, type_=type_, headers={"WWW-Authenticate": challenge})
