"""The offline gate: every reason it gives, replay and pass-back, updates when the network
returns (keys, deny-list deltas in and out of order) and its state across a restart."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from services.transit import ridecode
from services.transit.denylist import Delta, DenyList, DenyListError, VersionGap
from services.transit.gate import REASONS, Decision, GateVerifier, StateError
from services.transit.ridecode import PrivateKey

NOW = 1_790_000_000
KID = "transit-1"
WINDOW, SKEW, PASSBACK = 30, 5, 600
MAKERS: dict[str, Callable[[], PrivateKey]] = {
    "ed25519": Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


class Rider:
    """A phone with its credential, making codes as the app does: a new counter each time."""

    def __init__(
        self, issuer: PrivateKey, *, kid: str = KID, phone: PrivateKey | None = None, **fields: int
    ) -> None:
        self.phone = phone or Ed25519PrivateKey.generate()
        self.rider, self.credential_id = os.urandom(16), os.urandom(16)
        self.credential = ridecode.issue_credential(
            issuer_key=issuer, kid=kid, rider=self.rider, category="student",
            not_before=fields.get("not_before", NOW - 3600),
            not_after=fields.get("not_after", NOW + 3600),
            device_key=self.phone.public_key(), credential_id=self.credential_id,
        )  # fmt: skip
        self.counter = 0

    def code(self, timestamp: int = NOW, counter: int | None = None) -> bytes:
        self.counter = self.counter + 1 if counter is None else counter
        return ridecode.make_code(
            self.credential, device_key=self.phone, timestamp=timestamp, counter=self.counter
        )


ISSUER = Ed25519PrivateKey.generate()


def gate(deny: DenyList | None = None, issuer: PrivateKey = ISSUER) -> GateVerifier:
    return GateVerifier(
        station="Huacheng Ave", issuer_keys={KID: issuer.public_key()},
        deny=deny if deny is not None else DenyList(), window_s=WINDOW, skew_s=SKEW,
        passback_s=PASSBACK,
    )  # fmt: skip


def refused(decision: Decision, reason: str) -> None:
    assert (decision.open, decision.reason) == (False, reason)


# -- open -----------------------------------------------------------------------------------


@pytest.mark.parametrize("issuer_alg", sorted(MAKERS))
@pytest.mark.parametrize("phone_alg", sorted(MAKERS))
def test_a_fresh_code_opens_the_gate_and_names_the_rider(issuer_alg: str, phone_alg: str) -> None:
    issuer = MAKERS[issuer_alg]()
    rider = Rider(issuer, phone=MAKERS[phone_alg]())
    decision = gate(issuer=issuer).scan(rider.code(), now=NOW + 3)
    assert decision == Decision(True, "ok", rider.rider, rider.credential_id, "student")


def test_a_code_opens_from_a_camera_image() -> None:
    rider = Rider(ISSUER)
    png = ridecode.render_png(rider.code())
    assert gate().scan_image(png, now=NOW).open


def test_the_window_and_skew_are_inclusive_at_both_ends() -> None:
    rider = Rider(ISSUER)
    assert gate().scan(rider.code(timestamp=NOW + SKEW), now=NOW).open
    assert gate().scan(rider.code(timestamp=NOW - WINDOW - SKEW), now=NOW).open


# -- every reason to deny -------------------------------------------------------------------


def test_bytes_that_are_not_a_code_are_denied_without_a_rider() -> None:
    valid = Rider(ISSUER).code()
    for data, reason in [
        (valid[:100], "truncated"),
        (b"", "truncated"),
        (b"https://example.com", "format"),
        (valid + b"!", "format"),
        (valid[:2] + b"\x07" + valid[3:], "version"),
    ]:
        decision = gate().scan(data, now=NOW)
        refused(decision, reason)
        assert decision.rider is None
        assert decision.credential_id is None


def test_images_without_a_code_are_denied() -> None:
    refused(gate().scan_image(b"not an image", now=NOW), "image")
    blank = ridecode.render_png(b"CR")  # a QR code, but not of a ride code
    refused(gate().scan_image(blank, now=NOW), "truncated")


def test_a_foreign_issuers_credential_is_an_unknown_issuer() -> None:
    stranger = Rider(Ed25519PrivateKey.generate(), kid="elsewhere-1")
    decision = gate().scan(stranger.code(), now=NOW)
    refused(decision, "unknown_issuer")
    assert decision.rider is None


def test_a_credential_under_our_kid_but_another_key_fails_the_issuer_signature() -> None:
    forged = Rider(Ed25519PrivateKey.generate(), kid=KID)
    decision = gate().scan(forged.code(), now=NOW)
    refused(decision, "issuer_signature")
    assert decision.rider is None  # a forger must not put a real rider's id in the tap log


def test_a_flipped_bit_in_the_issuer_signature_fails_it() -> None:
    code = bytearray(Rider(ISSUER).code())
    code[-64 - 8 - 1] ^= 0x01  # the credential's signature ends before timestamp and counter
    refused(gate().scan(bytes(code), now=NOW), "issuer_signature")


def test_a_credential_outside_its_validity_is_refused() -> None:
    early = Rider(ISSUER, not_before=NOW + SKEW + 1, not_after=NOW + 3600)
    refused(gate().scan(early.code(), now=NOW), "credential_not_yet_valid")
    assert gate().scan(early.code(), now=NOW + 1).open  # within the skew
    late = Rider(ISSUER, not_before=NOW - 3600, not_after=NOW - SKEW)
    refused(gate().scan(late.code(), now=NOW), "credential_expired")
    assert gate().scan(late.code(), now=NOW - 1).open


def test_a_code_signed_by_another_phone_fails_the_device_signature() -> None:
    rider = Rider(ISSUER)
    code = rider.code()
    thief = Ed25519PrivateKey.generate()
    forged = code[:-64] + thief.sign(ridecode.CODE_CONTEXT + code[:-64])
    decision = gate().scan(forged, now=NOW)
    refused(decision, "device_signature")
    assert decision.rider == rider.rider  # the credential is genuine: worth an investigation


def test_a_code_whose_time_or_counter_was_edited_fails_the_device_signature() -> None:
    code = Rider(ISSUER).code(timestamp=NOW - 120)
    edited = code[:-72] + (NOW).to_bytes(4) + code[-68:]
    refused(gate().scan(edited, now=NOW), "device_signature")


def test_a_credential_binding_a_point_off_the_curve_fails_the_device_signature() -> None:
    # Transit signs whatever key a phone enrols; a gate must still refuse, not crash.
    issuer = ec.generate_private_key(ec.SECP256R1())
    phone = ec.generate_private_key(ec.SECP256R1())
    code = bytearray(Rider(issuer, phone=phone).code())
    key_at = 3 + 3 + len(KID) + 41
    code[key_at + 64] ^= 0x01  # the point's last byte: no longer on the curve
    body = bytes(code[3 : key_at + 65])
    code[key_at + 65 : key_at + 129] = ridecode.sign(issuer, ridecode.CREDENTIAL_CONTEXT + body)
    refused(gate(issuer=issuer).scan(bytes(code), now=NOW), "device_signature")


def test_a_code_from_the_future_or_the_past_is_refused() -> None:
    rider = Rider(ISSUER)
    refused(gate().scan(rider.code(timestamp=NOW + SKEW + 1), now=NOW), "future")
    refused(gate().scan(rider.code(timestamp=NOW - WINDOW - SKEW - 1), now=NOW), "stale")


def test_the_same_code_twice_is_a_replay() -> None:
    rider, verifier = Rider(ISSUER), gate()
    code = rider.code()
    assert verifier.scan(code, now=NOW).open
    refused(verifier.scan(code, now=NOW + 1), "replay")
    refused(verifier.scan(code, now=NOW + 1, direction="exit"), "replay")


def test_an_older_counter_after_a_newer_one_is_a_replay() -> None:
    rider, verifier = Rider(ISSUER), gate()
    older, newer = rider.code(counter=5), rider.code(counter=6)
    assert verifier.scan(newer, now=NOW).open
    refused(verifier.scan(older, now=NOW + 1), "replay")
    assert verifier.scan(rider.code(counter=7), now=NOW + 2, direction="exit").open


def test_a_gate_forgets_a_credential_once_its_codes_are_stale_anyway() -> None:
    # A phone that lost its counter is let in again once nothing it showed could be fresh.
    rider, verifier = Rider(ISSUER), gate()
    assert verifier.scan(rider.code(counter=9), now=NOW).open
    assert verifier.scan(rider.code(counter=10), now=NOW + 1, direction="exit").open
    later = NOW + 1 + WINDOW + 2 * SKEW + 1
    assert verifier.scan(rider.code(timestamp=later, counter=1), now=later).open


def test_a_credential_or_rider_on_the_deny_list_is_denied() -> None:
    in_debt, revoked, fine = Rider(ISSUER), Rider(ISSUER), Rider(ISSUER)
    deny = DenyList(3, [in_debt.rider, revoked.credential_id])
    verifier = gate(deny)
    for rider in (in_debt, revoked):
        decision = verifier.scan(rider.code(), now=NOW)
        refused(decision, "denied")
        assert decision.rider == rider.rider
    assert verifier.scan(fine.code(), now=NOW).open


def test_a_second_entry_without_an_exit_is_passback() -> None:
    rider, verifier = Rider(ISSUER), gate()
    assert verifier.scan(rider.code(), now=NOW).open
    refused(verifier.scan(rider.code(timestamp=NOW + 60), now=NOW + 60), "passback")
    assert verifier.scan(rider.code(timestamp=NOW + 90), now=NOW + 90, direction="exit").open
    assert verifier.scan(rider.code(timestamp=NOW + 120), now=NOW + 120).open


def test_passback_ends_after_its_time() -> None:
    rider, verifier = Rider(ISSUER), gate()
    assert verifier.scan(rider.code(), now=NOW).open
    refused(verifier.scan(rider.code(NOW + PASSBACK - 1), now=NOW + PASSBACK - 1), "passback")
    assert verifier.scan(rider.code(NOW + PASSBACK), now=NOW + PASSBACK).open


def test_passback_is_per_rider_and_exits_are_not_limited() -> None:
    first, second, verifier = Rider(ISSUER), Rider(ISSUER), gate()
    assert verifier.scan(first.code(), now=NOW).open
    assert verifier.scan(second.code(), now=NOW).open
    assert verifier.scan(first.code(), now=NOW + 1, direction="exit").open
    assert verifier.scan(first.code(), now=NOW + 2, direction="exit").open


def test_a_denied_scan_changes_nothing_the_gate_remembers() -> None:
    rider, verifier = Rider(ISSUER), gate(DenyList(1, []))
    verifier.apply_delta(Delta(1, 2, added=(rider.rider,)))
    code = rider.code()
    refused(verifier.scan(code, now=NOW), "denied")
    verifier.apply_delta(Delta(2, 3, removed=(rider.rider,)))
    assert verifier.scan(code, now=NOW).open  # not a replay: the denial let nobody through


def test_every_reason_is_listed() -> None:
    assert set(REASONS) >= {"ok", *ridecode.REASONS}
    assert len(set(REASONS)) == len(REASONS)


def test_a_direction_other_than_entry_or_exit_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="direction"):
        gate().scan(b"", now=NOW, direction="sideways")


@pytest.mark.parametrize("settings", [{"window_s": 0}, {"skew_s": -1}, {"passback_s": -5}])
def test_nonsense_settings_are_refused(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="window"):
        GateVerifier(station="s", issuer_keys={}, deny=DenyList(), **settings)


# -- updates when the network returns -------------------------------------------------------


def test_issuer_keys_rotate_by_kid() -> None:
    verifier, successor = gate(), ec.generate_private_key(ec.SECP256R1())
    newcomer = Rider(successor, kid="transit-2")
    refused(verifier.scan(newcomer.code(), now=NOW), "unknown_issuer")
    verifier.add_issuer_key("transit-2", successor.public_key())
    assert verifier.issuer_kids == {KID, "transit-2"}
    assert verifier.scan(newcomer.code(), now=NOW).open
    verifier.remove_issuer_key(KID)
    refused(verifier.scan(Rider(ISSUER).code(), now=NOW), "unknown_issuer")


def test_an_issuer_key_of_another_curve_is_refused() -> None:
    with pytest.raises(ValueError, match="Ed25519 or P-256"):
        gate().add_issuer_key("p384", ec.generate_private_key(ec.SECP384R1()).public_key())


def test_deny_list_deltas_in_order_apply_and_out_of_order_ask_for_the_full_list() -> None:
    rider, verifier = Rider(ISSUER), gate(DenyList(10, []))
    assert verifier.apply_delta(Delta(10, 11, added=(rider.rider,)))
    refused(verifier.scan(rider.code(), now=NOW), "denied")
    with pytest.raises(VersionGap) as gap:
        verifier.apply_delta(Delta(12, 13, removed=(rider.rider,)))  # 11 -> 12 went missing
    assert (gap.value.held, gap.value.base) == (11, 12)
    assert not verifier.apply_delta(Delta(10, 11, added=(rider.rider,)))  # a redelivery
    verifier.replace_deny_list(DenyList(13, []))
    assert verifier.deny.version == 13
    assert verifier.scan(rider.code(), now=NOW).open


def test_a_full_list_older_than_the_one_held_is_refused() -> None:
    verifier = gate(DenyList(20, []))
    with pytest.raises(DenyListError) as older:
        verifier.replace_deny_list(DenyList(19, []))
    assert older.value.reason == "older"
    assert verifier.deny.version == 20


# -- offline state --------------------------------------------------------------------------


def busy_gate() -> tuple[GateVerifier, Rider, Rider, bytes]:
    """A gate with two issuers, a deny list, a rider inside and a code just used."""
    successor = ec.generate_private_key(ec.SECP256R1())
    inside, denied = Rider(ISSUER), Rider(successor, kid="transit-2")
    verifier = gate(DenyList(4, [denied.credential_id, os.urandom(16)]))
    verifier.add_issuer_key("transit-2", successor.public_key())
    used = inside.code()
    assert verifier.scan(used, now=NOW).open
    return verifier, inside, denied, used


def assert_remembers(restored: GateVerifier, inside: Rider, denied: Rider, used: bytes) -> None:
    assert restored.station == "Huacheng Ave"
    assert restored.issuer_kids == {KID, "transit-2"}
    assert restored.deny.version == 4
    assert len(restored.deny) == 2
    refused(restored.scan(used, now=NOW + 1), "replay")
    refused(restored.scan(inside.code(timestamp=NOW + 2), now=NOW + 2), "passback")
    refused(restored.scan(denied.code(), now=NOW + 2), "denied")
    assert restored.scan(Rider(ISSUER).code(), now=NOW + 2).open


def test_a_gate_restarted_from_its_state_remembers_keys_deny_list_and_recent_riders() -> None:
    verifier, inside, denied, used = busy_gate()
    restored = GateVerifier.from_bytes(
        verifier.to_bytes(now=NOW), window_s=WINDOW, skew_s=SKEW, passback_s=PASSBACK
    )
    assert_remembers(restored, inside, denied, used)


def test_a_gate_saves_its_state_to_disk_and_loads_it(tmp_path: Path) -> None:
    verifier, inside, denied, used = busy_gate()
    path = tmp_path / "gate.state"
    verifier.save(path, now=NOW)
    verifier.save(path, now=NOW)  # replacing the previous state, never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["gate.state"]
    assert_remembers(GateVerifier.load(path, passback_s=PASSBACK), inside, denied, used)


def test_saved_state_forgets_what_no_longer_matters() -> None:
    verifier, inside, _, _ = busy_gate()
    later = NOW + PASSBACK + 1
    restored = GateVerifier.from_bytes(verifier.to_bytes(now=later))
    assert restored.scan(inside.code(timestamp=later), now=later).open


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign"])
def test_damaged_state_is_refused(damage: str) -> None:
    state = bytearray(busy_gate()[0].to_bytes(now=NOW))
    if damage == "flip":
        state[len(state) // 2] ^= 0x10
    elif damage == "truncate":
        del state[-10:]
    elif damage == "empty":
        state = bytearray()
    else:
        state = bytearray(DenyList().snapshot())
    with pytest.raises(StateError):
        GateVerifier.from_bytes(bytes(state))


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=300), keys=st.integers(0, 3), with_list=st.booleans())
def test_any_state_with_a_good_checksum_loads_or_is_refused_as_state(
    tail: bytes, keys: int, with_list: bool
) -> None:
    # Past the checksum (a bug of ours, not a torn file): still StateError, nothing else.
    body = b"CLGS\x01\x03abc" + struct.pack(">I", keys) + tail
    body += DenyList(1, [bytes(16)]).snapshot() if with_list else b""
    with contextlib.suppress(StateError):
        GateVerifier.from_bytes(body + struct.pack(">I", zlib.crc32(body)))
