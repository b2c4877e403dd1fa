"""Ride credentials and codes: what transit issues and the phone shows reads back field for
field, every malformed layout is refused with its reason, the QR round-trips through a camera
image, and the published test vector is what the code makes."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from services.transit import ridecode
from services.transit.ridecode import CodeError, PrivateKey

DOC = Path(__file__).resolve().parents[2] / "docs" / "ride-code.md"
NOW = 1_790_000_000
RIDER = bytes(range(16))
CID = bytes(range(16, 32))
KEYS: dict[str, Callable[[], PrivateKey]] = {
    "ed25519": Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def credential(
    issuer: PrivateKey, phone: PrivateKey, *, kid: str = "transit-1", **fields: Any
) -> bytes:
    values: dict[str, Any] = {
        "rider": RIDER, "category": "adult", "not_before": NOW - 60, "not_after": NOW + 3600,
        "credential_id": CID,
    } | fields  # fmt: skip
    return ridecode.issue_credential(
        issuer_key=issuer, kid=kid, device_key=phone.public_key(), **values
    )


def code(issuer: PrivateKey, phone: PrivateKey, *, timestamp: int = NOW, counter: int = 1) -> bytes:
    return ridecode.make_code(
        credential(issuer, phone), device_key=phone, timestamp=timestamp, counter=counter
    )


@pytest.fixture(params=sorted(KEYS))
def keys(request: pytest.FixtureRequest) -> tuple[PrivateKey, PrivateKey]:
    make = KEYS[request.param]
    return make(), make()


def reason(data: bytes) -> str:
    with pytest.raises(CodeError) as refused:
        ridecode.parse_code(data)
    return refused.value.reason


# -- round trips ----------------------------------------------------------------------------


def test_a_code_reads_back_as_issued_and_shown(keys: tuple[PrivateKey, PrivateKey]) -> None:
    issuer, phone = keys
    parsed = ridecode.parse_code(code(issuer, phone, timestamp=NOW + 7, counter=42))
    c = parsed.credential
    assert (c.kid, c.credential_id, c.rider, c.category) == ("transit-1", CID, RIDER, "adult")
    assert (c.not_before, c.not_after) == (NOW - 60, NOW + 3600)
    assert ridecode.raw_public_key(phone.public_key()) == (c.key_type, c.device_key)
    assert (parsed.timestamp, parsed.counter) == (NOW + 7, 42)


def test_both_signatures_verify_over_their_context_and_bytes(
    keys: tuple[PrivateKey, PrivateKey],
) -> None:
    issuer, phone = keys
    parsed = ridecode.parse_code(code(issuer, phone))
    c = parsed.credential
    message = ridecode.CREDENTIAL_CONTEXT + c.signed
    assert ridecode.verify(issuer.public_key(), c.signature, message)
    device = ridecode.load_public_key(c.key_type, c.device_key)
    assert ridecode.verify(device, parsed.signature, ridecode.CODE_CONTEXT + parsed.signed)
    # The same bytes under the other level's context: not a signature of it.
    assert not ridecode.verify(issuer.public_key(), c.signature, ridecode.CODE_CONTEXT + c.signed)


@pytest.mark.parametrize("category", sorted(ridecode.CATEGORIES))
def test_every_fare_category_round_trips(category: str) -> None:
    issuer, phone = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    issued = credential(issuer, phone, category=category)
    assert ridecode.parse_credential(issued).category == category


def test_a_credential_without_an_id_gets_a_random_one() -> None:
    issuer, phone = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first, second = (
        ridecode.issue_credential(
            issuer_key=issuer, kid="k", rider=RIDER, category="adult", not_before=NOW,
            not_after=NOW + 60, device_key=phone.public_key(),
        )
        for _ in range(2)
    )  # fmt: skip
    ids = {ridecode.parse_credential(c).credential_id for c in (first, second)}
    assert len(ids) == 2
    assert all(len(i) == ridecode.ID_BYTES for i in ids)


def test_the_largest_code_fits_300_bytes_and_a_version_13_qr() -> None:
    issuer = ec.generate_private_key(ec.SECP256R1())
    phone = ec.generate_private_key(ec.SECP256R1())
    issued = credential(issuer, phone, kid="k" * ridecode.MAX_KID_BYTES)
    largest = ridecode.make_code(issued, device_key=phone, timestamp=NOW, counter=2**32 - 1)
    assert len(largest) == 264 <= ridecode.MAX_CODE_BYTES
    png = ridecode.render_png(largest)
    assert qr_version(png) <= ridecode.MAX_QR_VERSION


def qr_version(png: bytes) -> int:
    """The QR version from the symbol's size: 17 + 4 * version modules, a 4-module border."""
    with Image.open(io.BytesIO(png)) as image:
        modules = image.size[0] // 4 - 8
    return (modules - 17) // 4


# -- QR and camera --------------------------------------------------------------------------


def test_a_rendered_code_decodes_from_the_image_to_the_same_bytes(
    keys: tuple[PrivateKey, PrivateKey],
) -> None:
    issuer, phone = keys
    shown = code(issuer, phone)
    png = ridecode.render_png(shown, scale=3)
    assert ridecode.decode_image(png) == shown
    assert qr_version(ridecode.render_png(shown)) <= ridecode.MAX_QR_VERSION


def test_a_camera_frame_in_another_format_and_scale_decodes_too() -> None:
    issuer, phone = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    shown = code(issuer, phone)
    with Image.open(io.BytesIO(ridecode.render_png(shown, scale=5))) as qr:
        frame = Image.new("L", (qr.size[0] + 200, qr.size[1] + 120), 255)
        frame.paste(qr.convert("L"), (130, 40))
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=90)
    assert ridecode.decode_image(out.getvalue()) == shown


def test_an_image_without_a_qr_code_is_no_code() -> None:
    out = io.BytesIO()
    Image.new("L", (200, 200), 255).save(out, format="PNG")
    with pytest.raises(CodeError) as refused:
        ridecode.decode_image(out.getvalue())
    assert refused.value.reason == "no_code"


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_bytes_that_are_no_image_are_refused_as_image(data: bytes) -> None:
    with pytest.raises(CodeError) as refused:
        ridecode.decode_image(data)
    assert refused.value.reason == "image"


def test_an_image_larger_than_a_camera_frame_is_refused_before_decoding() -> None:
    out = io.BytesIO()
    Image.new("1", (5000, 4000), 1).save(out, format="PNG")
    with pytest.raises(CodeError) as refused:
        ridecode.decode_image(out.getvalue())
    assert refused.value.reason == "image"


# -- malformed layouts ----------------------------------------------------------------------

ISSUER, PHONE = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
VALID = code(ISSUER, PHONE)
KID_AT = 3 + 3  # the code's header, then the credential's
FIXED_AT = KID_AT + len("transit-1")


def patched(offset: int, raw: bytes, data: bytes = VALID) -> bytes:
    return data[:offset] + raw + data[offset + len(raw) :]


def test_every_prefix_of_a_code_is_truncated() -> None:
    assert {reason(VALID[:end]) for end in range(len(VALID))} == {"truncated"}


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("trailing byte", VALID + b"\x00", "format"),
        ("over 300 bytes", VALID + bytes(100), "format"),
        ("wrong magic", patched(0, b"QR"), "format"),
        ("a URL", b"https://example.com/ride", "format"),
        ("code version 2", patched(2, b"\x02"), "version"),
        ("code version 0", patched(2, b"\x00"), "version"),
        ("credential version 2", patched(3, b"\x02"), "version"),
        ("key type 0", patched(4, b"\x00"), "format"),
        ("key type 3", patched(4, b"\x03"), "format"),
        ("kid length 0", patched(5, b"\x00"), "format"),
        ("kid length 17", patched(5, b"\x11"), "format"),
        ("kid with a space", patched(KID_AT, b" "), "format"),
        ("kid not ASCII", patched(KID_AT, b"\xe9"), "format"),
        ("unknown category", patched(FIXED_AT + 32, b"\xff"), "format"),
        ("not before = not after", patched(FIXED_AT + 33, struct.pack(">II", NOW, NOW)), "format"),
        ("not before > not after", patched(FIXED_AT + 33, struct.pack(">II", NOW, 1)), "format"),
        ("kid longer than the code", patched(5, b"\x10")[:20], "truncated"),
    ],
)
def test_a_malformed_code_is_refused_with_its_reason(name: str, data: bytes, expected: str) -> None:
    assert reason(data) == expected


def test_parse_refuses_what_is_not_bytes() -> None:
    assert reason(bytearray(VALID)) == "format"  # type: ignore[arg-type]
    with pytest.raises(CodeError):
        ridecode.parse_credential(VALID)  # a code is not a bare credential


# -- what transit and the phone refuse to make ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"not_after": NOW - 60 + 86_401}, "valid for"),  # longer than 24 h
        ({"not_after": NOW - 60}, "valid for"),  # empty
        ({"rider": b"short"}, "16 bytes"),
        ({"credential_id": bytes(17)}, "16 bytes"),
        ({"category": "vip"}, "fare category"),
        ({"not_before": -1, "not_after": 60}, "32 unsigned bits"),
        ({"not_before": 2**32 - 10, "not_after": 2**32 + 10}, "32 unsigned bits"),
    ],
)
def test_transit_refuses_a_credential_the_format_or_policy_cannot_carry(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        credential(ISSUER, PHONE, **fields)


@pytest.mark.parametrize("kid", ["", "k" * 17, "has space", "clé", "tab\t"])
def test_a_kid_is_short_printable_ascii(kid: str) -> None:
    with pytest.raises(ValueError, match="kid"):
        credential(ISSUER, PHONE, kid=kid)


def test_validity_longer_than_24_h_needs_the_issuer_to_say_so() -> None:
    week = 7 * 86_400
    with pytest.raises(ValueError, match="valid for"):
        credential(ISSUER, PHONE, not_after=NOW + week)
    issued = credential(ISSUER, PHONE, not_after=NOW - 60 + week, max_validity_s=week)
    assert ridecode.parse_credential(issued).not_after == NOW - 60 + week


def test_keys_of_other_curves_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="Ed25519 or P-256"):
        credential(ISSUER, p384)
    with pytest.raises(ValueError, match="Ed25519 or P-256"):
        credential(p384, PHONE)


def test_the_phone_signs_only_with_the_key_its_credential_binds() -> None:
    issued = credential(ISSUER, PHONE)
    with pytest.raises(ValueError, match="device key"):
        ridecode.make_code(
            issued, device_key=Ed25519PrivateKey.generate(), timestamp=NOW, counter=1
        )
    with pytest.raises(ValueError, match="not a ride credential"):
        ridecode.make_code(issued[:-1], device_key=PHONE, timestamp=NOW, counter=1)
    with pytest.raises(ValueError, match="32 unsigned bits"):
        ridecode.make_code(issued, device_key=PHONE, timestamp=NOW, counter=2**32)


def test_a_point_off_the_curve_is_not_a_key() -> None:
    _, raw = ridecode.raw_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    for bad in (raw[:-1] + bytes([raw[-1] ^ 1]), b"\x04" + bytes(64), b"\x02" + raw[1:33]):
        with pytest.raises(CodeError):
            ridecode.load_public_key(ridecode.P256, bad)
    with pytest.raises(CodeError):
        ridecode.load_public_key(9, raw)


# -- the published test vector --------------------------------------------------------------


def test_the_documented_vector_is_what_the_code_makes() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"The 224-byte code, in hex:\n\n```\n([0-9a-f\n]+)```", text)
    assert block is not None
    published = bytes.fromhex(block.group(1).replace("\n", ""))
    issuer = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    phone = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    issued = ridecode.issue_credential(
        issuer_key=issuer, kid="transit-1", rider=bytes.fromhex("00112233445566778899aabbccddeeff"),
        category="student", not_before=1_790_000_000, not_after=1_790_086_400,
        device_key=phone.public_key(), credential_id=bytes.fromhex("0f" * 16),
    )  # fmt: skip
    made = ridecode.make_code(issued, device_key=phone, timestamp=1_790_000_100, counter=7)
    assert made == published
    for key in (issuer, phone):
        assert ridecode.raw_public_key(key.public_key())[1].hex() in text
