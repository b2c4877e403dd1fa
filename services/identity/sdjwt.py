"""SD-JWT (RFC 9901) and SD-JWT VC: the issuer's payload, the holder's presentation, the verifier.

The city's digital ID is an SD-JWT VC; an agency sees only the claims the citizen discloses.
Pure: no I/O, no clock (``now`` is a parameter), no logging, so no claim value can leak into
a log. Compact serialization only. The verifier runs on every agency check, so it parses the
JWS itself (msgspec, cryptography) instead of paying ``jwt.decode``'s per-call overhead.
"""

from __future__ import annotations

import binascii
import copy
import hashlib
import json
import math
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import jwt
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HASH_ALG = "sha-256"
VC_TYP = "dc+sd-jwt"
KB_TYP = "kb+jwt"
# Claims that SD-JWT VC says are never selectively disclosable (draft section 2.2.2.3): they
# say who vouches, until when, for which key, of which type and where its status is.
NEVER_DISCLOSABLE = frozenset(
    {"iss", "nbf", "exp", "cnf", "vct", "status", "vct#integrity", "aka_vcts"}
)
REASONS = frozenset(
    {
        "malformed",
        "unsupported_algorithm",
        "unknown_issuer_key",
        "issuer_signature",
        "not_a_vc",
        "protected_claim_disclosable",
        "disclosure_invalid",
        "disclosure_unreferenced",
        "disclosure_duplicate",
        "digest_duplicate",
        "expired",
        "not_yet_valid",
        "key_binding_missing",
        "holder_key",
        "key_binding_typ",
        "key_binding_signature",
        "key_binding_nonce",
        "key_binding_audience",
        "key_binding_stale",
        "key_binding_sd_hash",
    }
)
# The algorithms an issuer key may be pinned to, as the platform's JWKS accepts them.
ALGORITHMS = frozenset({"ES256", "EdDSA"})
# Real credentials nest a few levels; far deeper is an attack on the recursion, not an ID.
MAX_DEPTH = 32
SD, ELEMENT, SD_ALG = "_sd", "...", "_sd_alg"

# base64url to the standard alphabet; the standard alphabet's own "+", "/" and padding map
# to "!", which strict decoding refuses like any other stranger, and so do the quote and the
# backslash, so that the result reads as itself inside a JSON string (see _b64decode_standard).
# "." is left alone: it separates a JWS's parts.
_URL_TO_STANDARD = bytes.maketrans(b'-_+/="\\', b"+/!!!!!")
_STANDARD_TO_URL = bytes.maketrans(b"+/", b"-_")
_PADDING = (b"", b"", b"==", b"=")
_JSON = msgspec.json.Decoder()
_BASE64 = msgspec.json.Decoder(bytes)
_CONTAINERS = (dict, list)
# An encoding whose length is 2 or 3 mod 4 ends in a character with unused low bits; only a
# canonical encoder's choice (those bits zero) is accepted, so each value has one spelling.
_CANONICAL_LAST = (None, None, frozenset(b"AQgw"), frozenset(b"AEIMQUYcgkosw048"))
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_P256 = ec.SECP256R1()
_BYTE = [bytes((n,)) for n in range(256)]  # a DER length, as the one byte it takes


class Rejected(Exception):
    """A presentation the verifier refuses: a stable machine ``reason`` and a human ``detail``
    that never contains claim values."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class IssuerKey:
    """An issuer's public key, pinned to the one algorithm it signs with (no confusion)."""

    key: EllipticCurvePublicKey | Ed25519PublicKey
    algorithm: str

    def __post_init__(self) -> None:
        if _pinned_algorithm(self.key) != self.algorithm:
            raise ValueError("an issuer key is a P-256 key for ES256 or an Ed25519 key for EdDSA")


# Called with (JOSE header, UNVERIFIED payload): both are attacker-controlled until the
# signature checks, so a resolver answers None for anything it does not know.
IssuerKeys = Callable[[Mapping[str, Any], Mapping[str, Any]], IssuerKey | None]


@dataclass(frozen=True)
class Policy:
    """What a verifier demands beyond RFC 9901 itself."""

    require_key_binding: bool = True
    require_vc: bool = True
    leeway_s: int = 60
    kb_max_age_s: int = 300
    kb_algorithms: frozenset[str] = frozenset({"ES256"})


@dataclass(frozen=True)
class Verified:
    """A presentation that passed: the issuer's header and the claims the holder disclosed."""

    header: dict[str, Any]
    claims: dict[str, Any]
    holder_jwk: dict[str, Any] | None
    key_bound: bool


@dataclass(frozen=True)
class Disclosure:
    """One selectively disclosable claim (``name``) or array element (``name`` None)."""

    encoded: str
    digest: str
    name: str | None
    value: Any


class _Jws(NamedTuple):
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


# ---------------------------------------------------------------------------------------
# The issuer and the holder


def disclosure(name: str | None, value: Any, salt: str | None = None) -> Disclosure:
    """The Disclosure of ``name: value`` (or of an array element), salted with 128 random bits.

    Compact UTF-8 JSON: the digest is over the encoded string, so any encoding verifies; this
    one is the shortest to carry in a QR code.
    """
    if name in (SD, ELEMENT):
        raise ValueError(f"{name!r} is reserved by SD-JWT and cannot be a claim name")
    salt = _b64encode(secrets.token_bytes(16)) if salt is None else salt
    content = [salt, value] if name is None else [salt, name, value]
    text = json.dumps(content, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encoded = _b64encode(text.encode("utf-8"))
    return Disclosure(encoded, _digest(encoded), name, value)


def conceal(
    claims: Mapping[str, Any], disclosable: Collection[tuple[str, ...]], *, decoys: int = 0
) -> tuple[dict[str, Any], list[Disclosure]]:
    """The issuer's payload with every path in ``disclosable`` hidden behind a digest.

    A nested path conceals inside its parent first, so ("address",) with ("address",
    "locality") gives recursive Disclosures. ``decoys`` random digests join the top-level
    ``_sd`` so that a verifier cannot count the hidden claims.
    """
    if decoys < 0:
        raise ValueError("decoys cannot be negative")
    _refuse_reserved(claims, depth=0)
    disclosures: list[Disclosure] = []
    payload = _conceal_object(claims, _path_tree(disclosable), disclosures, ())
    digests = payload.pop(SD, []) + [_b64encode(secrets.token_bytes(32)) for _ in range(decoys)]
    if digests:
        payload[SD] = sorted(digests)
    payload[SD_ALG] = HASH_ALG
    return payload, disclosures


def issuance(issuer_jwt: str, disclosures: Sequence[Disclosure]) -> str:
    """What the issuer hands the holder: ``<jwt>~<d1>~...~<dn>~``."""
    return "~".join([issuer_jwt, *(d.encoded for d in disclosures), ""])


def present(
    issuance: str,
    disclose: Collection[tuple[str, ...]],
    *,
    holder_key: EllipticCurvePrivateKey | None,
    nonce: str | None,
    audience: str | None,
    iat: int,
) -> str:
    """The holder's presentation: only the Disclosures on the ``disclose`` paths (with the
    parents a nested path needs), then a KB-JWT for this verifier's nonce and audience.

    Disclosing an object does not disclose its own disclosable members: name each one.
    Without ``holder_key`` there is no KB-JWT and the presentation ends with ``~``.
    """
    issuer_jwt, encoded = _split_issuance(issuance)
    try:  # the holder reads its own credential: the verifier, not the holder, checks it
        payload = _parse_jws(issuer_jwt, "issuer-signed JWT").payload
        by_digest = _by_digest(encoded)
    except Rejected as error:
        raise ValueError(f"not an SD-JWT issuance: {error.detail}") from None
    chosen = _chosen_disclosures(payload, by_digest, disclose)
    without_kb = "~".join([issuer_jwt, *(e for e in encoded if e in chosen), ""])
    if holder_key is None:
        return without_kb
    if nonce is None or audience is None:
        raise ValueError("a key-binding JWT needs the verifier's nonce and audience")
    kb_claims = {"nonce": nonce, "aud": audience, "iat": iat, "sd_hash": sd_hash(without_kb)}
    kb_jwt = jwt.encode(kb_claims, holder_key, algorithm="ES256", headers={"typ": KB_TYP})
    return without_kb + kb_jwt


def sd_hash(without_kb: str) -> str:
    """The KB-JWT's ``sd_hash``: base64url SHA-256 over ``<jwt>~<d1>~...~<dn>~`` as sent."""
    return _digest(without_kb)


class _PathNode:
    """One name of the disclosable paths: hidden itself, and/or with hidden members."""

    def __init__(self) -> None:
        self.hidden = False
        self.members: dict[str, _PathNode] = {}


def _path_tree(paths: Collection[tuple[str, ...]]) -> dict[str, _PathNode]:
    root: dict[str, _PathNode] = {}
    for path in paths:
        if not path or not all(isinstance(name, str) for name in path):
            raise ValueError(f"a disclosable path is a non-empty tuple of claim names: {path!r}")
        if path[0] in NEVER_DISCLOSABLE:
            raise ValueError(f"{path[0]} must never be selectively disclosable (SD-JWT VC)")
        level = root
        for name in path[:-1]:
            level = level.setdefault(name, _PathNode()).members
        level.setdefault(path[-1], _PathNode()).hidden = True
    return root


def _conceal_object(
    claims: Mapping[str, Any],
    tree: dict[str, _PathNode],
    disclosures: list[Disclosure],
    where: tuple[str, ...],
) -> dict[str, Any]:
    missing = sorted(tree.keys() - claims.keys())
    if missing:
        raise ValueError(f"no claim {'.'.join((*where, missing[0]))} to make disclosable")
    payload: dict[str, Any] = {}
    digests: list[str] = []
    for name, value in claims.items():
        node = tree.get(name)
        if node is None:
            payload[name] = copy.deepcopy(value)
            continue
        if node.members:
            if not isinstance(value, Mapping):
                raise ValueError(f"{'.'.join((*where, name))} is not an object")
            value = _conceal_object(value, node.members, disclosures, (*where, name))
        if node.hidden:
            disclosures.append(disclosure(name, value))
            digests.append(disclosures[-1].digest)
        else:
            payload[name] = value
    if digests:
        payload[SD] = sorted(digests)
    return payload


def _refuse_reserved(value: Any, depth: int) -> None:
    """Claims that would read as SD-JWT's own structure cannot be issued."""
    if depth > MAX_DEPTH:
        raise ValueError("claims nest too deeply")
    if isinstance(value, Mapping):
        if SD in value or (depth == 0 and SD_ALG in value) or set(value) == {ELEMENT}:
            raise ValueError("claims cannot use the names SD-JWT reserves (_sd, _sd_alg, ...)")
        for member in value.values():
            _refuse_reserved(member, depth + 1)
    elif isinstance(value, list):
        for element in value:
            _refuse_reserved(element, depth + 1)


def _split_issuance(issuance: str) -> tuple[str, list[str]]:
    parts = issuance.split("~")
    if len(parts) < 2 or parts[-1]:
        raise ValueError("an issuance is <issuer-signed JWT>~<disclosure>~...~")
    return parts[0], parts[1:-1]


def _chosen_disclosures(
    payload: dict[str, Any], by_digest: dict[str, str], paths: Collection[tuple[str, ...]]
) -> set[str]:
    chosen: set[str] = set()
    for path in paths:
        if not path or not all(isinstance(name, str) for name in path):
            raise ValueError(f"a path to disclose is a non-empty tuple of claim names: {path!r}")
        node: Any = payload
        for depth, name in enumerate(path):
            where = ".".join(path[: depth + 1])
            if not isinstance(node, dict):
                raise ValueError(f"the credential has no claim {where}: not inside an object")
            if name in node and name not in (SD, SD_ALG):
                node = node[name]
                continue
            found = _member_disclosure(node, name, by_digest)
            if found is None:
                raise ValueError(f"the credential has no claim {where}")
            chosen.add(found[0])
            node = found[1]
    return chosen


def _member_disclosure(
    node: dict[str, Any], name: str, by_digest: dict[str, str]
) -> tuple[str, Any] | None:
    """The Disclosure (and its value) that hides member ``name`` of ``node``, if one does."""
    digests = node.get(SD)
    for digest in digests if isinstance(digests, list) else []:
        text = by_digest.get(digest) if isinstance(digest, str) else None
        content = None if text is None else _disclosure_content(text)
        if text is not None and content is not None and len(content) == 3 and content[1] == name:
            return text, content[2]
    return None


def _disclosure_content(text: str) -> list[Any] | None:
    try:
        content = _json(_b64decode(text, "Disclosure"), "Disclosure")
    except Rejected:
        return None
    return content if isinstance(content, list) else None


# ---------------------------------------------------------------------------------------
# The verifier


def verify(
    presentation: str,
    *,
    issuer_keys: IssuerKeys,
    nonce: str | None,
    audience: str | None,
    now: int,
    policy: Policy = Policy(),
) -> Verified:
    """The claims of a presentation that passes every check of RFC 9901 sections 7.1 and 7.3,
    and of SD-JWT VC when ``policy.require_vc``; ``Rejected`` for anything else.

    A KB-JWT present is always checked; ``policy.require_key_binding`` also demands one (and
    then a call without ``nonce`` and ``audience`` is a bug: ``ValueError``). The ``status``
    claim is returned, not checked: the caller looks the status list up.
    """
    if policy.require_key_binding and (nonce is None or audience is None):
        raise ValueError("key binding is required: give the nonce and audience it must match")
    if not isinstance(presentation, str):
        raise Rejected("malformed", "a presentation is a string")
    parts = presentation.split("~")
    if len(parts) < 2:
        raise Rejected("malformed", "not a compact SD-JWT: <issuer-signed JWT>~...~[KB-JWT]")
    if not parts[-1] and policy.require_key_binding:
        raise Rejected("key_binding_missing", "key binding is required and there is no KB-JWT")
    issuer = _parse_jws(parts[0], "issuer-signed JWT")
    issuer_key = _issuer_key(issuer, issuer_keys, policy)
    kb = _parse_jws(parts[-1], "KB-JWT") if parts[-1] else None
    # The two signature checks are two thirds of the cost; back to back, with no Python work
    # between them to push ECDSA's code and tables out of the CPU cache, they run ~2% faster.
    if not _signature_valid(issuer_key.key, issuer_key.algorithm, issuer):
        raise Rejected("issuer_signature", "the issuer-signed JWT's signature is invalid")
    holder_jwk = _cnf_jwk(issuer.payload) if kb is None else _kb_signed(kb, issuer.payload, policy)
    claims = process(issuer.payload, parts[1:-1])
    if policy.require_vc:
        _check_vc(claims)
    _check_validity(claims, now, policy.leeway_s)
    if kb is not None:
        _check_kb_claims(kb.payload, nonce, audience, now, policy)
        if kb.payload.get("sd_hash") != sd_hash(presentation[: -len(parts[-1])]):
            raise Rejected("key_binding_sd_hash", "sd_hash does not match the presentation")
    return Verified(issuer.header, claims, holder_jwk, key_bound=kb is not None)


def process(payload: Mapping[str, Any], disclosures: Sequence[str]) -> dict[str, Any]:
    """The processed payload (RFC 9901 section 7.1 steps 2.4 to 5): Disclosures applied,
    undisclosed claims and array elements gone, ``_sd`` and ``_sd_alg`` removed.

    ``payload`` must already be the verified issuer-signed payload; ``Rejected`` on any fault.
    """
    if payload.get(SD_ALG, HASH_ALG) != HASH_ALG:
        raise Rejected("unsupported_algorithm", "_sd_alg must be sha-256")
    unpacking = _Unpacking(_by_digest(disclosures))
    claims = unpacking.object(payload, depth=0)
    claims.pop(SD_ALG, None)
    unpacking.check_all_referenced()
    return claims


def _issuer_key(jws: _Jws, issuer_keys: IssuerKeys, policy: Policy) -> IssuerKey:
    """The key to check the issuer-signed JWT with, once its algorithm and type are allowed."""
    algorithm = jws.header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise Rejected("unsupported_algorithm", "the issuer-signed JWT's alg is not allowed")
    if policy.require_vc and jws.header.get("typ") != VC_TYP:
        raise Rejected("not_a_vc", f"the issuer-signed JWT's typ is not {VC_TYP}")
    key = issuer_keys(jws.header, jws.payload)
    if key is None:
        raise Rejected("unknown_issuer_key", "no trusted key for this issuer and kid")
    if key.algorithm != algorithm:
        raise Rejected("unsupported_algorithm", "the alg is not the one this issuer key uses")
    return key


def _check_vc(claims: Mapping[str, Any]) -> None:
    vct = claims.get("vct")
    if not isinstance(vct, str) or not vct:
        raise Rejected("not_a_vc", "an SD-JWT VC names its type in a vct string")


def _check_validity(claims: Mapping[str, Any], now: int, leeway_s: int) -> None:
    exp, nbf, iat = (
        _numeric_date(claims, "exp"),
        _numeric_date(claims, "nbf"),
        _numeric_date(claims, "iat"),
    )
    if exp is not None and exp <= now - leeway_s:
        raise Rejected("expired", "the credential has expired")
    if nbf is not None and nbf > now + leeway_s:
        raise Rejected("not_yet_valid", "the credential is not valid yet (nbf)")
    if iat is not None and iat > now + leeway_s:
        raise Rejected("not_yet_valid", "the credential is issued in the future (iat)")


def _kb_signed(jws: _Jws, payload: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """RFC 9901 section 7.3 steps 5.1 to 5.4: the KB-JWT is signed by the key in ``cnf``.

    ``payload`` is the issuer-signed payload, its signature already checked.
    """
    holder_jwk, holder_key, holder_algorithm = _holder_key(payload)
    algorithm = jws.header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in policy.kb_algorithms:
        raise Rejected("unsupported_algorithm", "the KB-JWT's alg is not allowed")
    if algorithm != holder_algorithm or not _signature_valid(holder_key, algorithm, jws):
        raise Rejected("key_binding_signature", "the KB-JWT is not signed by the cnf key")
    if jws.header.get("typ") != KB_TYP:
        raise Rejected("key_binding_typ", f"the KB-JWT's typ is not {KB_TYP}")
    return holder_jwk


def _check_kb_claims(
    claims: Mapping[str, Any], nonce: str | None, audience: str | None, now: int, policy: Policy
) -> None:
    iat = _numeric_date(claims, "iat")
    if iat is None or now - iat > policy.kb_max_age_s or iat > now + policy.leeway_s:
        raise Rejected("key_binding_stale", "the KB-JWT's iat is outside the accepted window")
    if nonce is None or claims.get("nonce") != nonce:
        raise Rejected("key_binding_nonce", "the KB-JWT is not for the nonce we issued")
    if audience is None or claims.get("aud") != audience:
        raise Rejected("key_binding_audience", "the KB-JWT is for another verifier")


def _cnf_jwk(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    cnf = payload.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    return jwk if isinstance(jwk, dict) else None


def _holder_key(
    payload: Mapping[str, Any],
) -> tuple[dict[str, Any], EllipticCurvePublicKey | Ed25519PublicKey, str]:
    jwk = _cnf_jwk(payload)
    if jwk is None:
        raise Rejected("holder_key", "the credential has no cnf.jwk to check a KB-JWT with")
    kty, crv, x, y = jwk.get("kty"), jwk.get("crv"), jwk.get("x"), jwk.get("y")
    if not (isinstance(kty, str) and isinstance(crv, str) and isinstance(x, str)):
        raise Rejected("holder_key", "cnf.jwk lacks kty, crv or x")
    if y is not None and not isinstance(y, str):
        raise Rejected("holder_key", "cnf.jwk has a y that is not a string")
    key, algorithm = _public_key(kty, crv, x, y)
    return jwk, key, algorithm


# Built anew for every presentation: each citizen's phone has its own key, so a cache of keys
# would rarely hit, and its misses cost more (evicting, freeing cold keys) than its hits save.
def _public_key(
    kty: str, crv: str, x: str, y: str | None
) -> tuple[EllipticCurvePublicKey | Ed25519PublicKey, str]:
    try:
        if kty == "EC" and crv == "P-256" and y is not None:
            point = b"\x04" + _b64decode(x, "cnf.jwk x") + _b64decode(y, "cnf.jwk y")
            return ec.EllipticCurvePublicKey.from_encoded_point(_P256, point), "ES256"
        if kty == "OKP" and crv == "Ed25519" and y is None:
            return Ed25519PublicKey.from_public_bytes(_b64decode(x, "cnf.jwk x")), "EdDSA"
    except (Rejected, ValueError):
        raise Rejected("holder_key", "cnf.jwk is not a valid public key") from None
    raise Rejected("holder_key", "cnf.jwk is neither an EC P-256 nor an OKP Ed25519 key")


def _pinned_algorithm(key: object) -> str | None:
    if isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return "EdDSA" if isinstance(key, Ed25519PublicKey) else None


def _signature_valid(
    key: EllipticCurvePublicKey | Ed25519PublicKey, algorithm: str, jws: _Jws
) -> bool:
    """Whether ``key`` signed ``jws``; ``algorithm`` is the one the key is pinned to (by
    ``IssuerKey`` or ``_public_key``), so it names the key's type."""
    signature = jws.signature
    try:
        if algorithm == "ES256":
            if len(signature) != 64:  # JWS carries raw r || s, never DER
                return False
            der = _der_signature(signature)
            cast(EllipticCurvePublicKey, key).verify(der, jws.signing_input, _ECDSA_SHA256)
            return True
        if algorithm == "EdDSA":
            cast(Ed25519PublicKey, key).verify(signature, jws.signing_input)
            return True
    except InvalidSignature:
        pass
    return False


def _der_signature(raw: bytes) -> bytes:
    """The DER ECDSA-Sig-Value of a JWS's 64-byte r || s, the form OpenSSL verifies: two
    INTEGERs, each minimal and with a zero byte before a high bit (they are not negative)."""
    r, s = raw[:32].lstrip(b"\x00"), raw[32:].lstrip(b"\x00")
    if not r or r[0] & 0x80:
        r = b"\x00" + r
    if not s or s[0] & 0x80:
        s = b"\x00" + s
    return b"".join(
        (b"\x30", _BYTE[len(r) + len(s) + 4], b"\x02", _BYTE[len(r)], r, b"\x02", _BYTE[len(s)], s)
    )


class _Unpacking:
    """One pass over the payload replacing digests by their Disclosures (RFC 9901 7.1 step 3),
    counting every digest (step 4) and every Disclosure used (step 5)."""

    __slots__ = ("_by_digest", "_seen", "_used")

    def __init__(self, by_digest: dict[str, str]) -> None:
        self._by_digest = by_digest
        self._seen: set[str] = set()
        self._used = 0

    def object(self, node: Mapping[str, Any], depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise Rejected("malformed", "the payload nests too deeply")
        claims = dict(node)  # a copy, then only the objects and arrays in it replaced
        for name, v in node.items():
            if isinstance(v, dict) and name != SD:
                claims[name] = self.object(v, depth + 1)
            elif isinstance(v, list) and name != SD:
                claims[name] = self._array(v, depth + 1)
        digests = claims.pop(SD, ())
        if not isinstance(digests, (list, tuple)):
            raise Rejected("malformed", "an _sd is not an array of digests")
        seen, by_digest = self._seen, self._by_digest
        for digest in digests:
            # ``_content``'s accounting, inline: most digests are decoys or claims the holder
            # keeps to itself, and an object can have dozens.
            if not isinstance(digest, str):
                raise Rejected("malformed", "a digest is not a string")
            if digest in seen:
                raise Rejected("digest_duplicate", "a digest appears twice in the payload")
            seen.add(digest)
            if digest in by_digest:
                content = self._decoded(by_digest[digest])
                value = content[2] if len(content) == 3 else None
                name = _member_name(content, claims, depth)
                claims[name] = self.value(value, depth) if isinstance(value, _CONTAINERS) else value
        return claims

    def value(self, node: Any, depth: int) -> Any:
        if isinstance(node, dict):
            return self.object(node, depth + 1)
        if isinstance(node, list):
            return self._array(node, depth + 1)
        return node

    def check_all_referenced(self) -> None:
        if self._used != len(self._by_digest):
            raise Rejected("disclosure_unreferenced", "a Disclosure matches no digest")

    def _array(self, node: list[Any], depth: int) -> list[Any]:
        if depth > MAX_DEPTH:
            raise Rejected("malformed", "the payload nests too deeply")
        elements = []
        for element in node:
            if not isinstance(element, _CONTAINERS):
                elements.append(element)
            elif not (isinstance(element, dict) and len(element) == 1 and ELEMENT in element):
                elements.append(self.value(element, depth))
            elif (content := self._content(element[ELEMENT])) is not None:
                if len(content) != 2:
                    raise Rejected("disclosure_invalid", "an array Disclosure is not [salt, value]")
                elements.append(self.value(content[1], depth))
        return elements

    def _content(self, digest: Any) -> list[Any] | None:
        """The decoded Disclosure of ``digest``; None if the holder sent none."""
        if not isinstance(digest, str):
            raise Rejected("malformed", "a digest is not a string")
        seen = self._seen
        if digest in seen:
            raise Rejected("digest_duplicate", "a digest appears twice in the payload")
        seen.add(digest)
        encoded = self._by_digest.get(digest)
        return None if encoded is None else self._decoded(encoded)

    def _decoded(self, encoded: str) -> list[Any]:
        self._used += 1
        content = _json(_b64decode(encoded, "Disclosure"), "Disclosure")
        if not isinstance(content, list) or not content or not isinstance(content[0], str):
            raise Rejected("disclosure_invalid", "a Disclosure is not [salt, ...]")
        return content


def _member_name(content: list[Any], claims: Mapping[str, Any], depth: int) -> str:
    """The claim name of an object member's Disclosure, once it may join ``claims``."""
    if len(content) != 3 or not isinstance(content[1], str):
        raise Rejected("disclosure_invalid", "an object's Disclosure is not [salt, name, value]")
    name: str = content[1]
    if name in (SD, ELEMENT):
        raise Rejected("disclosure_invalid", "a Disclosure uses a reserved claim name")
    if depth == 0 and name in NEVER_DISCLOSABLE:
        raise Rejected("protected_claim_disclosable", f"{name} came in a Disclosure")
    if name in claims:
        raise Rejected("disclosure_invalid", "a Disclosure repeats a claim of its object")
    return name


def _by_digest(disclosures: Sequence[str]) -> dict[str, str]:
    by_digest: dict[str, str] = {}
    for encoded in disclosures:
        if not encoded:
            raise Rejected("malformed", "an empty Disclosure")
        digest = _digest(encoded)
        if digest in by_digest:
            raise Rejected("disclosure_duplicate", "the same Disclosure is sent twice")
        by_digest[digest] = encoded
    return by_digest


# ---------------------------------------------------------------------------------------
# Encodings


def _parse_jws(token: str, what: str) -> _Jws:
    # One encoding and one translation serve the three parts and the signing input. A
    # non-ASCII character becomes "?", which base64 refuses in the part where it stood.
    raw = token.encode("ascii", "replace")
    parts = raw.translate(_URL_TO_STANDARD).split(b".")
    if len(parts) != 3:
        raise Rejected("malformed", f"the {what} is not three dot-separated parts")
    header, payload = (
        _json(_b64decode_standard(parts[0], what), what),
        _json(_b64decode_standard(parts[1], what), what),
    )
    if type(header) is not dict or type(payload) is not dict:
        raise Rejected("malformed", f"the {what}'s header or payload is not a JSON object")
    if "crit" in header:  # we understand no extension, so none can be critical
        raise Rejected("malformed", f"the {what} names critical extensions")
    signature = _b64decode_standard(parts[2], what)
    return _Jws(header, payload, raw[: raw.rindex(b".")], signature)


def _b64decode(text: str, what: str) -> bytes:
    """Strict base64url: the URL alphabet only, no padding, one spelling per value."""
    return _b64decode_standard(text.encode("ascii", "replace").translate(_URL_TO_STANDARD), what)


def _b64decode_standard(standard: bytes, what: str) -> bytes:
    """``_b64decode`` of a text already translated to the standard alphabet."""
    remainder = len(standard) % 4
    try:
        # msgspec decodes base64 as strictly as binascii, twice as fast, from a JSON string;
        # the translation left no quote or backslash, so the string is the text unchanged.
        decoded = _BASE64.decode(b"".join((b'"', standard, _PADDING[remainder], b'"')))
    except msgspec.MsgspecError:
        raise Rejected("malformed", f"the {what} is not base64url") from None
    last = _CANONICAL_LAST[remainder]
    if last is not None and standard[-1] not in last:
        raise Rejected("malformed", f"the {what} is not canonical base64url")
    return decoded


def _b64encode(data: bytes) -> str:
    encoded = binascii.b2a_base64(data, newline=False).translate(_STANDARD_TO_URL)
    return encoded.rstrip(b"=").decode("ascii")


def _digest(text: str) -> str:
    try:
        return _b64encode(hashlib.sha256(text.encode("ascii")).digest())
    except UnicodeEncodeError:
        raise Rejected("malformed", "an SD-JWT is ASCII only") from None


def _json(data: bytes, what: str) -> Any:
    try:
        return _JSON.decode(data)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        raise Rejected("malformed", f"the {what} is not JSON") from None


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim, None when absent; a non-number (or NaN, infinity) is malformed."""
    value = claims.get(name)
    if type(value) is int:  # the common case, first
        return value
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("malformed", f"{name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("malformed", f"{name} is not a finite number")
    return value
