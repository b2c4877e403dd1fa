"""The decoder and the gate under fuzzing: any bytes at all, bytes shaped like a ride code,
and valid codes tampered with end in a denial with a listed reason, never an exception and
never an open gate; valid codes with any fields read back exactly and meet the time rules.
The boundary cases every run starts from are kept below as explicit examples."""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.transit import ridecode
from services.transit.denylist import DenyList
from services.transit.gate import REASONS, Decision, GateVerifier
from services.transit.ridecode import CodeError, PrivateKey

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_790_000_000
WINDOW, SKEW = 30, 5
KID = "transit-1"
MAKERS: dict[str, Callable[[], PrivateKey]] = {
    "ed25519": Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}
ISSUERS = {alg: make() for alg, make in MAKERS.items()}
PHONES = {alg: make() for alg, make in MAKERS.items()}
RIDER, CID = bytes(range(16)), bytes(range(16, 32))


def issue(issuer: str, phone: str, **fields: int) -> bytes:
    return ridecode.issue_credential(
        issuer_key=ISSUERS[issuer], kid=KID, rider=RIDER, category="child",
        not_before=fields.get("not_before", NOW - 600),
        not_after=fields.get("not_after", NOW + 3600),
        device_key=PHONES[phone].public_key(), credential_id=CID,
    )  # fmt: skip


def code(issuer: str, phone: str, timestamp: int = NOW, counter: int = 1, **fields: int) -> bytes:
    credential = issue(issuer, phone, **fields)
    return ridecode.make_code(
        credential, device_key=PHONES[phone], timestamp=timestamp, counter=counter
    )


VALID = {(i, p): code(i, p) for i in MAKERS for p in MAKERS}
ED = VALID["ed25519", "ed25519"]


def gate() -> GateVerifier:
    keys = {KID: ISSUERS["ed25519"].public_key(), "transit-2": ISSUERS["p256"].public_key()}
    return GateVerifier(
        station="fuzz", issuer_keys=keys, deny=DenyList(), window_s=WINDOW, skew_s=SKEW
    )


def gates_for(issuer: str) -> GateVerifier:
    return GateVerifier(
        station="fuzz", issuer_keys={KID: ISSUERS[issuer].public_key()}, deny=DenyList(),
        window_s=WINDOW, skew_s=SKEW,
    )  # fmt: skip


def denied(data: bytes, verifier: GateVerifier | None = None) -> Decision:
    """The gate's answer to ``data``, which must be a denial with a listed reason; and the
    parser, on its own, raises nothing but CodeError."""
    reason = None
    try:
        ridecode.parse_code(data)
    except CodeError as error:
        reason = error.reason
    assert reason is None or reason in ridecode.REASONS
    decision = (verifier or gate()).scan(data, now=NOW)
    assert not decision.open
    assert decision.reason in REASONS
    assert decision.reason != "ok"
    return decision


# -- regression cases -----------------------------------------------------------------------
# Run at 20,000 examples a property (and the deny list's and the gate state's decoders), the
# fuzzer has found no failure in this implementation: no exception, no unlisted reason, no
# tampered code let through. These are the inputs it is told to try first on every run: each
# sits on a boundary the parser decides (magic and truncation, the 300-byte limit, a P-256
# key of zeros, a signature's last bit), so a regression there fails on the first example.
BOUNDARIES = [
    b"C",  # a prefix of the magic: truncated, not format
    b"CR",
    b"CR\x01",
    b"CR\x01\x01\x01\x10" + b"k" * 16,  # a kid of the maximum length, then nothing
    b"CR\x01" + bytes(297),  # 300 bytes: parsed, refused for its credential's version 0
    ED + bytes(301 - len(ED)),  # 301 bytes: refused before parsing
    b"CR\x01\x01\x02\x01!" + bytes(40) + b"\x01" + bytes(65 + 64 + 72),  # P-256 point 0
    ED[:-1] + bytes([ED[-1] ^ 0x80]),  # the phone's signature, last bit
    ED[:150] + bytes([ED[150] ^ 0x01]) + ED[151:],  # transit's signature, one bit
]


# -- anything at all ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
@example(b"")
@example(b"\x00" * 300)
@example(b"\xff" * 301)
def test_arbitrary_bytes_are_denied_and_nothing_else(data: bytes) -> None:
    denied(data)


def test_the_boundary_cases_are_denied() -> None:
    reasons = [denied(data).reason for data in BOUNDARIES]
    assert reasons == [
        "truncated", "truncated", "truncated", "truncated", "version", "format",
        "unknown_issuer", "device_signature", "issuer_signature",
    ]  # fmt: skip


@st.composite
def code_shaped(draw: st.DrawFn) -> bytes:
    """The magic and version, then a credential header with fields near their limits and a
    tail of any length: the parser's every branch, and the gate's checks past it."""
    head = struct.pack(
        ">BBB",
        draw(st.sampled_from([1, 1, 1, 0, 2, 255])),
        draw(st.sampled_from([1, 2, 0, 3])),
        draw(st.sampled_from([1, 9, 16, 0, 17, 255])),
    )
    kid = draw(st.sampled_from([KID.encode(), b"transit-2", b"", b" x", b"\x00"]))
    category = draw(st.sampled_from([0, 3, 5, 6, 255]))
    nbf = draw(st.integers(0, 2**32 - 1))
    naf = draw(st.one_of(st.just(nbf + 1), st.integers(0, 2**32 - 1)))
    fixed = bytes(32) + struct.pack(">BII", category, nbf, min(naf, 2**32 - 1))
    tail = draw(st.binary(max_size=260))
    return b"CR" + bytes([draw(st.sampled_from([1, 1, 2]))]) + head + kid + fixed + tail


@FUZZ
@given(code_shaped())
def test_bytes_shaped_like_a_code_are_denied_and_nothing_else(data: bytes) -> None:
    denied(data)


# -- tampering with valid codes -------------------------------------------------------------


@st.composite
def tampered(draw: st.DrawFn) -> tuple[tuple[str, str], bytes]:
    """A valid code of any algorithm pair with bits flipped, bytes inserted, deleted or
    overwritten, cut short, or spliced with another valid code."""
    pair = draw(st.sampled_from(sorted(VALID)))
    original = VALID[pair]
    kind = draw(st.sampled_from(["flip", "insert", "delete", "overwrite", "cut", "splice"]))
    at = draw(st.integers(0, len(original) - 1))
    if kind == "flip":
        mask = draw(st.integers(1, 255))
        return pair, original[:at] + bytes([original[at] ^ mask]) + original[at + 1 :]
    if kind == "insert":
        return pair, original[:at] + draw(st.binary(min_size=1, max_size=8)) + original[at:]
    if kind == "delete":
        return pair, original[:at] + original[at + draw(st.integers(1, 8)) :]
    if kind == "overwrite":
        patch = draw(st.binary(min_size=1, max_size=16))
        return pair, original[:at] + patch + original[at + len(patch) :]
    if kind == "cut":
        return pair, original[:at]
    other = VALID[draw(st.sampled_from(sorted(VALID)))]
    return pair, original[:at] + other[at:]


@FUZZ
@given(tampered())
def test_a_tampered_code_never_opens_the_gate(case: tuple[tuple[str, str], bytes]) -> None:
    (issuer, _), data = case
    verifier = gates_for(issuer)
    if data == VALID[case[0]]:
        return  # a splice at a point where both codes agree, or a no-op overwrite
    if data in VALID.values():
        return  # spliced into another valid code as a whole
    denied(data, verifier)


def test_every_single_bit_flip_of_a_code_is_denied() -> None:
    verifier = gates_for("p256")
    original = VALID["p256", "p256"]
    for at in range(len(original)):
        for bit in range(8):
            flipped = original[:at] + bytes([original[at] ^ (1 << bit)]) + original[at + 1 :]
            denied(flipped, verifier)
    assert verifier.scan(original, now=NOW).open  # and no flip spoilt the real one


# -- valid codes with any fields ------------------------------------------------------------


@FUZZ
@given(
    pair=st.sampled_from(sorted(VALID)),
    not_before=st.integers(NOW - 90_000, NOW + 100),
    validity=st.integers(1, 86_400),
    timestamp=st.integers(NOW - 100, NOW + 100),
    counter=st.integers(0, 2**32 - 1),
)
@example(("ed25519", "ed25519"), NOW - 5, 86_400, NOW + 5, 0)  # every bound at once
@example(("p256", "ed25519"), NOW + 5, 1, NOW - 35, 2**32 - 1)
@example(("ed25519", "p256"), NOW - 86_400 - 5, 86_400, NOW, 7)  # expired at skew's edge
def test_valid_codes_read_back_and_meet_the_time_rules(
    pair: tuple[str, str], not_before: int, validity: int, timestamp: int, counter: int
) -> None:
    issuer, phone = pair
    fields = {"not_before": not_before, "not_after": not_before + validity}
    data = code(issuer, phone, timestamp=timestamp, counter=counter, **fields)
    parsed = ridecode.parse_code(data)
    assert (parsed.timestamp, parsed.counter) == (timestamp, counter)
    assert (parsed.credential.not_before, parsed.credential.not_after) == (
        not_before, not_before + validity,
    )  # fmt: skip
    decision = gates_for(issuer).scan(data, now=NOW)
    assert decision.reason == expected_reason(not_before, not_before + validity, timestamp)
    assert decision.open == (decision.reason == "ok")


def expected_reason(not_before: int, not_after: int, timestamp: int) -> str:
    """The time rules of docs/ride-code.md, in their order."""
    if not_before > NOW + SKEW:
        return "credential_not_yet_valid"
    if not_after <= NOW - SKEW:
        return "credential_expired"
    if timestamp > NOW + SKEW:
        return "future"
    if timestamp < NOW - WINDOW - SKEW:
        return "stale"
    return "ok"
