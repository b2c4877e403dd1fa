"""Provider signature schemes: Standard Webhooks (v1 HMAC, v1a Ed25519) and Alipay RSA2.

Pure: keys and the clock (`now`) arrive as arguments; nothing is read or kept.
"""

from __future__ import annotations

import base64
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
DEFAULT_TOLERANCE = timedelta(minutes=5)
ALIPAY_SIGN_TYPE = "RSA2"

_HMAC_PREFIX = "whsec_"
_SIGNING_KEY_PREFIX = "whsk_"  # Ed25519, libsodium layout: 32-byte seed then 32-byte public key
_PUBLIC_KEY_PREFIX = "whpk_"
# ASCII digits only, and few enough that int() stays cheap and far from its digit limit.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")


class SignatureError(Exception):
    """A message failed verification; `reason` is a fixed phrase, never key or body data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StandardWebhooksKeys:
    """Active keys, oldest first: `whsec_` (or bare base64) secrets, or `whsk_`/`whpk_` keys."""

    # repr=False: dataclass reprs end up in logs, and these are secrets.
    secrets: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        _verification_keys(self.secrets)  # a bad key fails at startup, not on the first webhook


@dataclass(frozen=True, slots=True)
class AlipayKeys:
    """Alipay's public keys (PEM or bare base64) and, for the sandbox, the key that signs."""

    public_keys: tuple[str, ...]
    private_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _rsa_public_keys(self.public_keys)  # bad keys fail at startup
        if self.private_key is not None:
            _rsa_private_key(self.private_key)


# Standard Webhooks


def sign_standard_webhook(
    secrets: str | Sequence[str], msg_id: str, timestamp: datetime | int, body: bytes
) -> str:
    """The `webhook-signature` value: one space-separated entry per key, so rotation overlaps."""
    keys = _as_tuple(secrets)
    if not keys:
        raise ValueError("at least one webhook secret is required")
    signed = _signed_input(msg_id, str(_unix_seconds(timestamp)), body)
    return " ".join(_signature_entry(key, signed) for key in keys)


def standard_webhook_headers(
    secrets: str | Sequence[str], msg_id: str, timestamp: datetime | int, body: bytes
) -> dict[str, str]:
    """The three headers of an outgoing webhook."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(_unix_seconds(timestamp)),
        SIGNATURE_HEADER: sign_standard_webhook(secrets, msg_id, timestamp, body),
    }


def verify_standard_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: str | Sequence[str],
    *,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Return if a trusted entry matches and the timestamp is within `tolerance` of `now`.

    Any malformed input raises SignatureError; a bad configured key raises ValueError.
    """
    hmac_keys, public_keys = _verification_keys(_as_tuple(secrets))
    now_seconds = _unix_seconds(now)
    received = {name.lower(): value for name, value in headers.items()}
    msg_id, timestamp, signatures = (
        _header(received, name) for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    )
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise SignatureError(f"malformed header {TIMESTAMP_HEADER}")
    # Two-sided: a far-future timestamp would otherwise let a captured message replay later.
    if abs(now_seconds - int(timestamp)) > tolerance.total_seconds():
        raise SignatureError("timestamp outside tolerance")
    try:
        signed = _signed_input(msg_id, timestamp, body)
    except UnicodeEncodeError:
        raise SignatureError(f"malformed header {ID_HEADER}") from None
    expected = [hmac.digest(key, signed, "sha256") for key in hmac_keys]
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        signature = _b64decode_or_empty(encoded)
        if not signature:
            continue  # a malformed entry is skipped like an unknown version, not fatal
        if version == "v1" and any(hmac.compare_digest(signature, e) for e in expected):
            return
        if version == "v1a" and any(_valid(k, signature, signed) for k in public_keys):
            return
    raise SignatureError("no matching signature")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing header {name}")
    return value


def _signed_input(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def _signature_entry(key: str, signed: bytes) -> str:
    if key.startswith(_PUBLIC_KEY_PREFIX):
        raise ValueError("a whpk_ public key cannot sign")
    if key.startswith(_SIGNING_KEY_PREFIX):
        version, raw = "v1a", _ed25519_signing_key(key).sign(signed)
    else:
        version, raw = "v1", hmac.digest(_key_bytes(key, _HMAC_PREFIX), signed, "sha256")
    return f"{version},{base64.b64encode(raw).decode()}"


def _verification_keys(secrets: tuple[str, ...]) -> tuple[list[bytes], list[Ed25519PublicKey]]:
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    hmac_keys: list[bytes] = []
    public_keys: list[Ed25519PublicKey] = []
    for key in secrets:
        if key.startswith(_PUBLIC_KEY_PREFIX):
            raw = _key_bytes(key, _PUBLIC_KEY_PREFIX)
            public_keys.append(Ed25519PublicKey.from_public_bytes(raw))
        elif key.startswith(_SIGNING_KEY_PREFIX):
            public_keys.append(_ed25519_signing_key(key).public_key())
        else:
            hmac_keys.append(_key_bytes(key, _HMAC_PREFIX))
    return hmac_keys, public_keys


def _ed25519_signing_key(key: str) -> Ed25519PrivateKey:
    raw = _key_bytes(key, _SIGNING_KEY_PREFIX)
    if len(raw) != 64:
        raise ValueError("a whsk_ key must be 64 bytes")
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


def _unix_seconds(moment: datetime | int) -> int:
    if not isinstance(moment, datetime):
        return moment
    # A naive datetime's timestamp() silently assumes the host's time zone.
    if moment.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return math.floor(moment.timestamp())


# Alipay RSA2


def alipay_signed_content(params: Mapping[str, str], *, keep_sign_type: bool) -> str:
    """What Alipay signs: all parameters but `sign` (and `sign_type` unless kept), sorted, raw."""
    dropped = ("sign",) if keep_sign_type else ("sign", "sign_type")
    # Empty values stay in: Alipay's verification helpers (Java V1/V2, Node) keep them.
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in dropped)


def verify_alipay_notification(
    params: Mapping[str, str], public_keys: str | Sequence[str]
) -> dict[str, str]:
    """Check a form-decoded notification; returns its parameters without `sign`."""
    keys = _rsa_public_keys(_as_tuple(public_keys))
    if not params.get("sign"):
        raise SignatureError("missing parameter sign")
    signature = _b64decode_or_empty(params["sign"])
    if not signature:
        raise SignatureError("malformed parameter sign")
    if params.get("sign_type", ALIPAY_SIGN_TYPE) != ALIPAY_SIGN_TYPE:
        raise SignatureError("unsupported sign_type")
    # Trade notifications are signed without sign_type (rsaCheckV1), some open-platform ones
    # with it (rsaCheckV2); like Alipay's Node SDK, accept either. dict.fromkeys dedupes.
    try:
        contents = dict.fromkeys(
            alipay_signed_content(params, keep_sign_type=keep).encode() for keep in (False, True)
        )
    except UnicodeEncodeError:
        raise SignatureError("malformed parameters") from None
    if any(_valid(key, signature, content) for content in contents for key in keys):
        return {name: value for name, value in params.items() if name != "sign"}
    raise SignatureError("no matching signature")


def sign_alipay(
    params: Mapping[str, str], private_key: str, *, keep_sign_type: bool = False
) -> dict[str, str]:
    """Sign a form the Alipay way; returns it with `sign_type` and `sign` set: a notification
    as Alipay signs it, or (``keep_sign_type``) an OpenAPI request as its merchants sign them."""
    form = {name: value for name, value in params.items() if name not in ("sign", "sign_type")}
    form["sign_type"] = ALIPAY_SIGN_TYPE
    content = alipay_signed_content(form, keep_sign_type=keep_sign_type).encode()
    signature = _rsa_private_key(private_key).sign(content, padding.PKCS1v15(), hashes.SHA256())
    form["sign"] = base64.b64encode(signature).decode()
    return form


def verify_alipay_response(
    text: str, node: str, public_keys: str | Sequence[str]
) -> dict[str, Any]:
    """The ``node`` of an OpenAPI answer (``{"<node>": {...}, "sign": "..."}``), once its
    signature, over that node's exact text as received, checks with one of Alipay's keys."""
    keys = _rsa_public_keys(_as_tuple(public_keys))
    try:
        answer = json.loads(text)
        start = text.index("{", text.index(f'"{node}"') + len(node) + 2)
        body, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        raise SignatureError(f"not an answer with {node}") from None
    signature = _b64decode_or_empty(answer.get("sign", "")) if isinstance(answer, dict) else b""
    if not signature or not isinstance(body, dict):
        raise SignatureError("unsigned answer")
    content = text[start:end].encode()
    if not any(_valid(key, signature, content) for key in keys):
        raise SignatureError("no matching signature")
    return body


def _rsa_public_keys(texts: tuple[str, ...]) -> list[rsa.RSAPublicKey]:
    keys = [serialization.load_pem_public_key(_pem(text, "PUBLIC KEY")) for text in texts]
    rsa_keys = [key for key in keys if isinstance(key, rsa.RSAPublicKey)]
    if not rsa_keys or len(rsa_keys) != len(keys):
        raise ValueError("Alipay public keys must be one or more RSA keys")
    return rsa_keys


def _rsa_private_key(text: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(_pem(text, "PRIVATE KEY"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("Alipay private key is not an RSA key")
    return key


def _pem(text: str, label: str) -> bytes:
    # Alipay's console shows keys as bare base64; its SDKs add the PEM armour just like this.
    if "-----BEGIN" not in text:
        text = f"-----BEGIN {label}-----\n{text.strip()}\n-----END {label}-----\n"
    return text.encode()


# Shared helpers


def _as_tuple(keys: str | Sequence[str]) -> tuple[str, ...]:
    # A lone str is a Sequence[str] too; iterating it would make one "key" per character.
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _valid(key: Ed25519PublicKey | rsa.RSAPublicKey, signature: bytes, content: bytes) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, content, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, content)
    except InvalidSignature:
        return False
    return True


def _b64decode_or_empty(text: str) -> bytes:
    # Strict alphabet; missing padding tolerated, as the reference libraries do for secrets.
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return b""


def _key_bytes(key: str, prefix: str) -> bytes:
    raw = _b64decode_or_empty(key.removeprefix(prefix))
    if not raw:  # a fixed message: the decoder's own could echo part of the key
        raise ValueError(f"{prefix} key is empty or not valid base64")
    return raw
