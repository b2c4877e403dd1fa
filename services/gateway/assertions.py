"""The checks on what reaches the token endpoint, with no I/O: each passes or says why not.

- a form body (RFC 6749 §3.1-3.2), refused as ``OAuthError``: RFC 6749 §5.2 JSON with a fixed
  short description, so an assertion is never echoed;
- a client's ``private_key_jwt`` assertion (RFC 7523 §2.2) by a key it registered, and a
  phone's sign-in assertion (RFC 7523 §2.1) by the key in its own ``jwk`` header (RFC 7515
  §4.1.3), named by its RFC 7638 thumbprint;
- a DPoP proof (RFC 9449 §4.3) for one request and one access token, by the token's key;
- only the key's own algorithm (RFC 8725 §3.1), finite times within the leeway, short-lived
  assertions, and URIs compared as RFC 3986 §6.2 normalizes them.

Whether a ``jti`` was seen before needs Redis, so the endpoint (``tokens``) checks replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import jwt
import jwt.types
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.gateway.clients import Client
from shared.auth import MAX_TOKEN_CHARS, PINNED, Unauthenticated
from shared.keyring import jwk_thumbprint

DPOP_TYP = "dpop+jwt"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1
INVALID_REQUEST, INVALID_CLIENT, INVALID_GRANT = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
)
UNSUPPORTED_GRANT_TYPE, INVALID_SCOPE = "unsupported_grant_type", "invalid_scope"
MAX_JTI_CHARS = 256
_MAX_FORM_FIELDS = 16
_DEFAULT_PORTS = {"http": 80, "https": 443}
PublicKey = Ed25519PublicKey | EllipticCurvePublicKey


class OAuthError(Exception):
    """A refused token request: an RFC 6749 §5.2 error code and a fixed short description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description = error, description

    def response(self) -> web.Response:
        # RFC 6749 §5.2 lets invalid_client be 401; every other error is 400.
        status = 401 if self.error == INVALID_CLIENT else 400
        body = {"error": self.error, "error_description": self.description}
        return web.json_response(body, status=status, headers=NO_STORE)


class Rules(Protocol):
    """What the checks take from the endpoint's settings (``tokens.TokenSettings``)."""

    @property
    def assertion_audiences(self) -> Sequence[str]: ...
    @property
    def max_assertion_lifetime_s(self) -> int: ...
    @property
    def leeway_s(self) -> int: ...
    @property
    def dpop_max_age_s(self) -> int: ...


# Pure checks: the claims of a JWT that passes, or ``Unauthenticated`` with a fixed reason.


def parse_form(body: bytes) -> dict[str, str]:
    """A form body's parameters: blank ones count as absent (RFC 6749 §3.1), repeated ones are
    refused (§3.2); ``OAuthError(invalid_request)`` for anything that is not a form."""
    try:
        pairs = parse_qsl(
            body.decode(),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError:  # also UnicodeDecodeError
        raise OAuthError(INVALID_REQUEST, "malformed form body") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if value and name in form:
            raise OAuthError(INVALID_REQUEST, "a parameter is repeated")
        if value:
            form[name] = value
    return form


def authenticate_client(
    assertion: str, clients: Mapping[str, Client], *, now: float, settings: Rules
) -> tuple[Client, dict[str, Any]]:
    """The registered client a ``private_key_jwt`` assertion authenticates, and its claims."""
    header = _header(assertion)
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthenticated("malformed assertion") from None
    issuer = unverified.get("iss")
    client = clients.get(issuer) if isinstance(issuer, str) else None
    if client is None:
        raise Unauthenticated("unknown client")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise Unauthenticated("missing kid")
    key = client.key(kid)
    if key is None:
        raise Unauthenticated("unknown key for this client")
    # Only the registered key's own algorithm: never none, never HMAC (RFC 8725 §3.1).
    if header.get("alg") != key.algorithm:
        raise Unauthenticated("algorithm not allowed for this key")
    required = ("iss", "sub", "aud", "exp", "jti")
    claims = _decode(assertion, key.key, key.algorithm, settings.assertion_audiences, required)
    if claims["sub"] != client.client_id:
        raise Unauthenticated("sub must equal iss")
    check_assertion_times(claims, now=now, settings=settings, iat_required=False)
    return client, claims


def authenticate_phone(
    assertion: str, *, now: float, settings: Rules
) -> tuple[str, dict[str, Any]]:
    """The thumbprint (``jkt``) of the phone key that signed a sign-in assertion, and its
    claims; the key travels in the assertion's header."""
    header = _header(assertion)
    key, algorithm, jkt = header_key(header)
    required = ("aud", "iat", "exp", "jti")
    claims = _decode(assertion, key, algorithm, settings.assertion_audiences, required)
    check_assertion_times(claims, now=now, settings=settings, iat_required=True)
    return jkt, claims


def verify_dpop_proof(
    proof: str | None,
    *,
    method: str,
    url: str,
    access_token: str,
    jkt: str,
    now: float,
    settings: Rules,
) -> dict[str, Any]:
    """The claims of a DPoP proof (RFC 9449 §4.3) for this request and token, by the token's
    key; everything but replay is checked here."""
    if not proof:
        raise Unauthenticated("missing DPoP proof")
    header = _header(proof)
    if header.get("typ") != DPOP_TYP:
        raise Unauthenticated("not a DPoP proof")
    key, algorithm, proof_jkt = header_key(header)
    if not hmac.compare_digest(proof_jkt, jkt):
        raise Unauthenticated("DPoP key does not match the token")
    claims = _decode(proof, key, algorithm, None, ("htm", "htu", "iat", "jti", "ath"))
    if claims["htm"] != method:
        raise Unauthenticated("DPoP method does not match")
    if not isinstance(claims["htu"], str) or not same_resource(claims["htu"], url):
        raise Unauthenticated("DPoP URL does not match")
    iat = numeric_date(claims, "iat")
    if iat > now + settings.leeway_s:
        raise Unauthenticated("DPoP proof issued in the future")
    if iat < now - settings.dpop_max_age_s - settings.leeway_s:
        raise Unauthenticated("DPoP proof too old")
    ath = claims["ath"]
    if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
        raise Unauthenticated("DPoP proof is for another token")
    return claims


def header_key(header: Mapping[str, Any]) -> tuple[PublicKey, str, str]:
    """The public key in a JWT header's ``jwk``, its pinned algorithm (which the header's
    ``alg`` must name) and its RFC 7638 thumbprint: Ed25519 or P-256 public keys only."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise Unauthenticated("missing jwk header")
    if "d" in jwk:
        raise Unauthenticated("jwk holds private key material")
    kind = (jwk.get("kty"), jwk.get("crv"))
    algorithm = next((alg for pinned, alg in PINNED.items() if pinned == kind), None)
    if algorithm is None:
        raise Unauthenticated("only Ed25519 and P-256 keys are accepted")
    if header.get("alg") != algorithm or jwk.get("alg", algorithm) != algorithm:
        raise Unauthenticated("algorithm not allowed for this key")
    try:
        jkt, key = jwk_thumbprint(jwk), jwt.PyJWK(jwk, algorithm).key
    except (ValueError, jwt.PyJWTError):
        raise Unauthenticated("malformed jwk") from None
    if not isinstance(key, PublicKey):
        raise Unauthenticated("malformed jwk")
    return key, algorithm, jkt


def check_assertion_times(
    claims: Mapping[str, Any], *, now: float, settings: Rules, iat_required: bool
) -> None:
    """Unexpired, short-lived (so its ``jti`` need be kept only briefly), not from the future."""
    leeway = settings.leeway_s
    exp = numeric_date(claims, "exp")
    if exp <= now - leeway:
        raise Unauthenticated("assertion expired")
    if exp > now + settings.max_assertion_lifetime_s + leeway:
        raise Unauthenticated("assertion expires too far ahead")
    if (iat_required or "iat" in claims) and numeric_date(claims, "iat") > now + leeway:
        raise Unauthenticated("assertion issued in the future")
    if "nbf" in claims and numeric_date(claims, "nbf") > now + leeway:
        raise Unauthenticated("assertion not yet valid")


def same_resource(htu: str, url: str) -> bool:
    """Whether two URIs name the same resource, ignoring query and fragment (RFC 9449 §4.3),
    after case, default-port and empty-path normalization (RFC 3986 §6.2.2-6.2.3)."""
    mine = _resource(htu)
    return mine is not None and mine == _resource(url)


def access_token_hash(access_token: str) -> str:
    """The ``ath`` of a DPoP proof: base64url SHA-256 of the access token (RFC 9449 §4.2)."""
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _resource(uri: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], parts.path or "/"


def _header(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise Unauthenticated("malformed token")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("malformed token") from None


def _decode(
    token: str,
    key: PublicKey,
    algorithm: str,
    audiences: Sequence[str] | None,
    required: Sequence[str],
) -> dict[str, Any]:
    # Times are checked against our clock afterwards, not pyjwt's wall clock.
    options: jwt.types.Options = {
        "require": list(required),
        "verify_aud": audiences is not None,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], audience=audiences, options=options
        )
    except jwt.MissingRequiredClaimError as missing:
        raise Unauthenticated(f"missing {missing.claim}") from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated("bad signature") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated("wrong audience") from None
    except jwt.PyJWTError:
        raise Unauthenticated("malformed token") from None
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise Unauthenticated("malformed jti")
    return claims


def numeric_date(claims: Mapping[str, Any], name: str) -> float:
    """A time claim (an RFC 7519 §2 NumericDate) as a finite number, or ``Unauthenticated``."""
    # Python's JSON reads NaN and Infinity, which compare as never expiring: refuse them.
    value: object = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"malformed {name}")
    return value
