"""Ride credentials and ride codes: the byte format (docs/ride-code.md), issuing, parsing, QR.

Two levels, as in UIC DOSIPAS and the Chinese ride codes: transit signs a short-lived
credential binding the phone's public key to a pseudonymous rider; the phone signs each code
it shows (credential, timestamp, counter). Parsing is pure and strict (a fixed layout, one
exception type, no crypto) because a gate runs it on every camera frame and on any bytes a
stranger holds up to it; the gate (``gate.py``) checks the signatures.
"""

from __future__ import annotations

import io
import re
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import segno
import zxingcpp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from PIL import Image

VERSION = 1
MAGIC = b"CR"  # "Cardless Ride": tells a ride code from any other QR code held to the gate
CATEGORIES = {"adult": 0, "senior": 1, "student": 2, "child": 3, "disabled": 4, "staff": 5}
_CATEGORY_NAMES = {code: name for name, code in CATEGORIES.items()}
ED25519, P256 = 1, 2
# Raw Ed25519 keys; P-256 as uncompressed SEC1 points: 32 more bytes than compressed, but a
# gate loads one in 7 µs instead of 35 µs (decompression is a square root), a sixth of a scan.
KEY_LENGTHS = {ED25519: 32, P256: 65}
ID_BYTES = 16
SIGNATURE_BYTES = 64  # Ed25519, or P-256 as r || s: one length, so the layout stays fixed
MAX_KID_BYTES = 16
MAX_VALIDITY_S = 24 * 3600
MAX_CODE_BYTES = 300
MAX_QR_VERSION = 13  # 331 bytes at error correction M: any code fits, and scans fast
MAX_IMAGE_PIXELS = 4096 * 4096  # a camera frame; anything larger is not one
# Signed messages start with a context, so neither level's signature fits the other's layout.
CREDENTIAL_CONTEXT = b"cardless ride credential v1\x00"
CODE_CONTEXT = b"cardless ride code v1\x00"
REASONS = frozenset({"truncated", "format", "version", "image", "no_code"})

_U32 = 1 << 32
_KID = re.compile(rb"[!-~]{1,16}")  # printable ASCII, no spaces
_CREDENTIAL_HEAD = struct.Struct(">BBB")  # version, device key type, kid length
_CREDENTIAL_FIXED = struct.Struct(f">{ID_BYTES}s{ID_BYTES}sBII")  # id, rider, cat, nbf, naf
_CODE_TAIL = struct.Struct(">II")  # timestamp, counter
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
# The DER SubjectPublicKeyInfo of a P-256 key up to its point: loading the point inside one
# costs a gate 7 µs, from_encoded_point 11 µs (both check that the point is on the curve).
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_QR = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
# (signature, message) -> whether it verifies, for one key
Verify = Callable[[bytes, bytes], bool]


class CodeError(Exception):
    """Bytes that are not a ride code (or an image without one); ``reason`` is stable:
    "truncated", "format", "version", "image" (not a readable image), "no_code"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Credential:
    """A ride credential as parsed: what transit vouches for, and the bytes it signed."""

    kid: str
    credential_id: bytes
    rider: bytes
    category: str
    not_before: int
    not_after: int
    key_type: int
    device_key: bytes
    signed: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ParsedCode:
    """A ride code as parsed, nothing verified: the gate checks both signatures."""

    credential: Credential
    timestamp: int
    counter: int
    signed: bytes = field(repr=False)
    signature: bytes = field(repr=False)


# ---------------------------------------------------------------------------------------
# Transit issues, the phone signs


def issue_credential(
    *,
    issuer_key: PrivateKey,
    kid: str,
    rider: bytes,
    category: str,
    not_before: int,
    not_after: int,
    device_key: PublicKey,
    credential_id: bytes | None = None,
    max_validity_s: int = MAX_VALIDITY_S,
) -> bytes:
    """The credential transit hands an enrolled phone, signed by ``issuer_key`` (``kid``).

    ``credential_id`` (random unless given) is what a deny list names; ValueError for
    anything the format cannot carry or a validity longer than ``max_validity_s``.
    """
    credential_id = secrets.token_bytes(ID_BYTES) if credential_id is None else credential_id
    if not 0 < not_after - not_before <= max_validity_s:
        raise ValueError(f"a credential is valid for 1 s to {max_validity_s} s")
    key_type, raw = raw_public_key(device_key)
    kid_bytes = _kid_bytes(kid)
    body = b"".join(
        (
            _CREDENTIAL_HEAD.pack(VERSION, key_type, len(kid_bytes)),
            kid_bytes,
            _fixed_fields(credential_id, rider, category, not_before, not_after),
            raw,
        )
    )
    return body + sign(issuer_key, CREDENTIAL_CONTEXT + body)


def make_code(credential: bytes, *, device_key: PrivateKey, timestamp: int, counter: int) -> bytes:
    """The code the phone shows: its credential, the time and a counter it never repeats."""
    try:
        parsed = parse_credential(credential)
    except CodeError as error:
        raise ValueError(f"not a ride credential ({error.reason})") from None
    if raw_public_key(device_key.public_key()) != (parsed.key_type, parsed.device_key):
        raise ValueError("the device key is not the one the credential binds")
    body = MAGIC + bytes((VERSION,)) + credential + _CODE_TAIL.pack(_u32(timestamp), _u32(counter))
    return body + sign(device_key, CODE_CONTEXT + body)


def _kid_bytes(kid: str) -> bytes:
    raw = kid.encode("ascii") if kid.isascii() else b""
    if not _KID.fullmatch(raw):
        raise ValueError("a kid is 1 to 16 printable ASCII characters, no spaces")
    return raw


def _fixed_fields(
    credential_id: bytes, rider: bytes, category: str, not_before: int, not_after: int
) -> bytes:
    if len(credential_id) != ID_BYTES or len(rider) != ID_BYTES:
        raise ValueError(f"credential ids and riders are {ID_BYTES} bytes")
    if category not in CATEGORIES:
        raise ValueError(f"unknown fare category {category!r}")
    return _CREDENTIAL_FIXED.pack(
        credential_id, rider, CATEGORIES[category], _u32(not_before), _u32(not_after)
    )


def _u32(value: int) -> int:
    if not 0 <= value < _U32:
        raise ValueError(f"{value} does not fit in 32 unsigned bits")
    return value


# ---------------------------------------------------------------------------------------
# Parsing: no crypto, one exception type


def parse_code(data: bytes) -> ParsedCode:
    """The fields of a ride code; CodeError on anything that is not exactly one."""
    if not isinstance(data, bytes) or len(data) > MAX_CODE_BYTES:
        raise CodeError("format")
    if data[:2] != MAGIC[: len(data)]:
        raise CodeError("format")
    if len(data) < 3:
        raise CodeError("truncated")
    if data[2] != VERSION:
        raise CodeError("version")
    credential, end = _credential_at(data, 3)
    signed_end = end + _CODE_TAIL.size
    if len(data) < signed_end + SIGNATURE_BYTES:
        raise CodeError("truncated")
    if len(data) > signed_end + SIGNATURE_BYTES:
        raise CodeError("format")
    timestamp, counter = _CODE_TAIL.unpack_from(data, end)
    return ParsedCode(credential, timestamp, counter, data[:signed_end], data[signed_end:])


def parse_credential(data: bytes) -> Credential:
    """A credential on its own (as transit issued it); CodeError unless exactly one."""
    if not isinstance(data, bytes):
        raise CodeError("format")
    credential, end = _credential_at(data, 0)
    if end != len(data):
        raise CodeError("format")
    return credential


def _credential_at(data: bytes, start: int) -> tuple[Credential, int]:
    """The credential starting at ``start`` and the offset just past its signature."""
    if len(data) < start + _CREDENTIAL_HEAD.size:
        raise CodeError("truncated")
    version, key_type, kid_length = _CREDENTIAL_HEAD.unpack_from(data, start)
    if version != VERSION:
        raise CodeError("version")
    key_length = KEY_LENGTHS.get(key_type)
    if key_length is None or not 0 < kid_length <= MAX_KID_BYTES:
        raise CodeError("format")
    fixed_at = start + _CREDENTIAL_HEAD.size + kid_length
    key_at = fixed_at + _CREDENTIAL_FIXED.size
    signature_at = key_at + key_length
    end = signature_at + SIGNATURE_BYTES
    if len(data) < end:
        raise CodeError("truncated")
    kid = data[start + _CREDENTIAL_HEAD.size : fixed_at]
    cid, rider, category, not_before, not_after = _CREDENTIAL_FIXED.unpack_from(data, fixed_at)
    name = _CATEGORY_NAMES.get(category)
    if name is None or not _KID.fullmatch(kid) or not_before >= not_after:
        raise CodeError("format")
    device_key = data[key_at:signature_at]
    signed, signature = data[start:signature_at], data[signature_at:end]
    credential = Credential(
        kid.decode("ascii"), cid, rider, name, not_before, not_after, key_type, device_key,
        signed, signature,
    )  # fmt: skip
    return credential, end


# ---------------------------------------------------------------------------------------
# Keys and signatures, the two algorithms behind one shape


def raw_public_key(key: PublicKey) -> tuple[int, bytes]:
    """The key's type and raw bytes as the format carries them (P-256: uncompressed SEC1)."""
    if isinstance(key, Ed25519PublicKey):
        return ED25519, key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        point = serialization.PublicFormat.UncompressedPoint
        return P256, key.public_bytes(serialization.Encoding.X962, point)
    raise ValueError("ride codes use Ed25519 or P-256 keys")


def load_public_key(key_type: int, raw: bytes) -> PublicKey:
    """The key :func:`raw_public_key` gave ``raw`` for; CodeError("format") if not a key."""
    loader = _LOADERS.get(key_type)
    if loader is None:
        raise CodeError("format")
    try:
        return loader(raw)
    except ValueError:  # not a point on the curve, or not an Ed25519 key's length
        raise CodeError("format") from None


def _load_ed25519(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def _load_p256(raw: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(_P256_SPKI_PREFIX + raw)
    if len(raw) != KEY_LENGTHS[P256] or not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an uncompressed P-256 point")
    return key


_LOADERS: dict[int, Callable[[bytes], PublicKey]] = {ED25519: _load_ed25519, P256: _load_p256}


def sign(key: PrivateKey, message: bytes) -> bytes:
    """A 64-byte signature: Ed25519, or P-256 ECDSA with SHA-256 as r || s."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(message)
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ride codes use Ed25519 or P-256 keys")
    r, s = decode_dss_signature(key.sign(message, _ECDSA_SHA256))
    return r.to_bytes(32) + s.to_bytes(32)


def verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` (as :func:`sign` makes them) is ``key``'s over ``message``."""
    return verifier(key)(signature, message)


def verifier(key: PublicKey) -> Verify:
    """:func:`verify` for one key, its algorithm chosen once: a gate keeps one per issuer."""
    if isinstance(key, Ed25519PublicKey):
        return partial(_verify_ed25519, key)
    if isinstance(key.curve, ec.SECP256R1):
        return partial(_verify_p256, key)
    raise ValueError("ride codes use Ed25519 or P-256 keys")


def device_verifier(credential: Credential) -> Verify | None:
    """:func:`verify` for the phone key a credential binds; None if it is not a key."""
    raw = credential.device_key
    try:
        if credential.key_type == ED25519:
            return partial(_verify_ed25519, _load_ed25519(raw))
        return partial(_verify_p256, _load_p256(raw))  # parsing admits no third type
    except ValueError:
        return None


def _verify_ed25519(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _verify_p256(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    # r and s as DER; a zero or out-of-range half fails verification, it raises nothing else
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    try:
        key.verify(der, message, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


# ---------------------------------------------------------------------------------------
# QR on the phone's screen, and back from the gate's camera


def render_png(code: bytes, *, scale: int = 4) -> bytes:
    """The code as a QR PNG (byte mode, error correction M, version at most 13)."""
    qr = segno.make(code, error="m", micro=False)
    if qr.version > MAX_QR_VERSION:  # type: ignore[operator]  # int for a non-micro symbol
        raise ValueError(f"a ride code needs QR version <= {MAX_QR_VERSION}, not {qr.version}")
    out = io.BytesIO()
    qr.save(out, kind="png", scale=scale)
    return out.getvalue()


def decode_image(image: bytes) -> bytes:
    """The bytes of the QR code in a camera image, a ride code's first if there are several.

    CodeError("image") if the image cannot be read, ("no_code") if it holds no QR code.
    """
    try:
        with Image.open(io.BytesIO(image)) as picture:
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS:
                raise CodeError("image")
            found = zxingcpp.read_barcodes(picture, formats=_QR)
    except (OSError, ValueError, Image.DecompressionBombError):
        raise CodeError("image") from None
    payloads = [barcode.bytes for barcode in found if barcode.valid]
    if not payloads:
        raise CodeError("no_code")
    return next((p for p in payloads if p.startswith(MAGIC)), payloads[0])
