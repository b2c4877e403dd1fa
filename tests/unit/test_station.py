"""The station controller without a network: its tap buffer keeps every tap across a crash,
in order, until transit acknowledges it; scanned lines (codes, images, directions) are read as
a gate's reader hands them over; every opened gate leaves a tap transit's upload takes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.transit import ridecode
from services.transit.denylist import DenyList
from services.transit.gate import GateVerifier
from services.transit.handlers import TapsBody
from services.transit.station import Bank, LineError, Scan, StationSettings, parse_line
from services.transit.uplink import (
    BACKOFF_MAX_S,
    TapBuffer,
    UplinkError,
    issuer_keys,
    retry_after,
)
from shared.config import ConfigError
from tests.support import REPO

NOW = datetime(2026, 9, 1, 8, 30, tzinfo=UTC)
ISSUER = Ed25519PrivateKey.generate()
KID = "transit-1"


class FixedClock:
    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


class Phone:
    """A rider's phone with its credential: a fresh code, a new counter, each time."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        at = int(NOW.timestamp())
        self.rider, self.credential_id = bytes(range(16)), bytes(range(16, 32))
        self.credential = ridecode.issue_credential(
            issuer_key=ISSUER, kid=KID, rider=self.rider, category="adult",
            not_before=at - 60, not_after=at + 3600, device_key=self.key.public_key(),
            credential_id=self.credential_id,
        )  # fmt: skip
        self.counter = 0

    def code(self) -> bytes:
        self.counter += 1
        return ridecode.make_code(
            self.credential, device_key=self.key, timestamp=int(NOW.timestamp()),
            counter=self.counter,
        )  # fmt: skip

    def line(self, direction: str = "") -> str:
        shown = base64.urlsafe_b64encode(self.code()).rstrip(b"=").decode()
        return f"{direction} {shown}\n" if direction else f"{shown}\n"


def bank(tmp_path: Path, gates: int = 4) -> Bank:
    settings = StationSettings(station="WG", gateway_url="http://gateway.invalid",
                               data_dir=tmp_path, gates=gates)  # fmt: skip
    settings.folder.mkdir(parents=True)
    verifier = GateVerifier(station="WG", issuer_keys={KID: ISSUER.public_key()}, deny=DenyList())
    return Bank(settings, verifier, TapBuffer(settings.folder / "taps.sqlite3"), FixedClock())


# -- the tap buffer -------------------------------------------------------------------------


def test_the_buffer_keeps_its_taps_in_order_when_the_process_dies_without_closing_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "taps.sqlite3"
    buffer = TapBuffer(path)
    for n in range(5):
        buffer.add(f"tap-{n}", f'{{"n": {n}}}'.encode())
    with warnings.catch_warnings():  # Python 3.13 warns of a connection never closed
        warnings.simplefilter("ignore", ResourceWarning)
        del buffer  # the process "crashes": no close, no checkpoint
    again = TapBuffer(path)
    assert [(t.tap_id, t.body) for t in again.oldest(10)] == [
        (f"tap-{n}", f'{{"n": {n}}}'.encode()) for n in range(5)
    ]


def test_a_tap_is_on_disk_when_add_returns_even_if_the_process_is_killed_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "taps.sqlite3"
    script = (
        "import os, sys; from pathlib import Path; from services.transit.uplink import TapBuffer;"
        "b = TapBuffer(Path(sys.argv[1])); [b.add(f'tap-{n}', b'{}') for n in range(3)];"
        "os._exit(9)"  # no close, no interpreter shutdown, no flush of anything
    )
    died = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, check=False)
    assert died.returncode == 9
    assert [t.tap_id for t in TapBuffer(path).oldest(10)] == ["tap-0", "tap-1", "tap-2"]


def test_a_batch_leaves_the_buffer_only_when_removed_and_taps_made_meanwhile_stay(
    tmp_path: Path,
) -> None:
    buffer = TapBuffer(tmp_path / "taps.sqlite3")
    for n in range(5):
        buffer.add(f"tap-{n}", b"{}")
    batch = buffer.oldest(3)
    assert [t.tap_id for t in buffer.oldest(3)] == [t.tap_id for t in batch], "read, not taken"
    buffer.add("tap-5", b"{}")  # a gate opened while the batch was in flight
    buffer.remove(batch)  # transit acknowledged it
    assert [t.tap_id for t in buffer.oldest(10)] == ["tap-3", "tap-4", "tap-5"]
    assert len(buffer) == 3


def test_a_tap_set_aside_leaves_the_line_but_is_kept(tmp_path: Path) -> None:
    buffer = TapBuffer(tmp_path / "taps.sqlite3")
    buffer.add("bad", b"{}")
    buffer.add("good", b"{}")
    buffer.set_aside(buffer.oldest(1)[0], 422, "https://cardless.dev/problems/transit/taps")
    assert [t.tap_id for t in buffer.oldest(10)] == ["good"]
    assert buffer.set_aside_count() == 1


# -- lines from the reader ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "scan"),
    [
        ("Q1IB\n", Scan("entry", code=b"CR\x01")),
        ("Q1IB==", Scan("entry", code=b"CR\x01")),
        ("exit Q1IB\n", Scan("exit", code=b"CR\x01")),
        ("  entry   Q1IB  ", Scan("entry", code=b"CR\x01")),
        ("@frames/1.png", Scan("entry", image=Path("frames/1.png"))),
        ("exit @a frame.png", Scan("exit", image=Path("a frame.png"))),
    ],
)
def test_a_line_is_a_code_or_an_image_with_an_optional_direction(line: str, scan: Scan) -> None:
    assert parse_line(line) == scan


@pytest.mark.parametrize(
    ("line", "reason", "direction"),
    [
        ("Q1I!B", "format", "entry"),
        ("exit Q1IB Q1IB", "format", "exit"),
        ("Q", "format", "entry"),  # one base64 character is no byte
        ("sideways Q1IB", "format", "entry"),
        ("exit", "no_code", "exit"),
        ("entry   ", "no_code", "entry"),
    ],
)
def test_a_line_without_a_code_says_why(line: str, reason: str, direction: str) -> None:
    with pytest.raises(LineError) as bad:
        parse_line(line)
    assert (bad.value.reason, bad.value.direction) == (reason, direction)


# -- the bank of gates ----------------------------------------------------------------------


def test_an_open_gate_leaves_a_tap_transit_takes_and_a_refusal_none(tmp_path: Path) -> None:
    gates, phone = bank(tmp_path), Phone()
    code = phone.line("entry")
    assert gates.decide(code) == {"gate": "WG-01", "direction": "entry", "open": True,
                                  "reason": "ok"}  # fmt: skip
    assert gates.decide(code)["reason"] == "replay"
    assert gates.decide(phone.line())["reason"] == "passback"
    assert gates.decide("exit Q1IB")["reason"] == "truncated"
    [waiting] = gates.buffer.oldest(10)
    [tap] = msgspec.json.decode(b'{"taps": [' + waiting.body + b"]}", type=TapsBody).taps
    assert str(tap.tap_id) == waiting.tap_id
    assert (tap.rider, tap.credential_id) == (phone.rider, phone.credential_id)
    assert (tap.station, tap.gate, tap.direction.value, tap.at) == ("WG", "WG-01", "entry", NOW)


def test_entries_and_exits_take_turns_on_their_own_gates(tmp_path: Path) -> None:
    gates = bank(tmp_path, gates=5)
    seen = [gates.decide(line)["gate"] for line in ("x", "exit x", "x", "exit x", "x", "exit x")]
    assert seen == ["WG-01", "WG-04", "WG-02", "WG-05", "WG-03", "WG-04"]
    one = bank(tmp_path / "one", gates=1)
    assert {one.decide("x")["gate"], one.decide("exit x")["gate"]} == {"WG-01"}


def test_an_image_named_with_at_is_read_from_disk_and_decided(tmp_path: Path) -> None:
    gates, phone = bank(tmp_path), Phone()
    frame = tmp_path / "frame.png"
    frame.write_bytes(ridecode.render_png(phone.code()))
    assert gates.decide(f"exit @{frame}") == {"gate": "WG-03", "direction": "exit",
                                              "open": True, "reason": "ok"}  # fmt: skip
    (tmp_path / "blank.png").write_bytes(ridecode.render_png(b"not a ride"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    assert gates.decide(f"@{tmp_path / 'blank.png'}")["reason"] == "format"
    assert gates.decide(f"@{tmp_path / 'broken.png'}")["reason"] == "image"
    assert gates.decide(f"@{tmp_path / 'missing.png'}")["reason"] == "image"
    assert len(gates.buffer) == 1


def test_the_station_reopens_with_its_keys_memory_and_taps(tmp_path: Path) -> None:
    gates, phone = bank(tmp_path), Phone()
    code = phone.line()
    assert gates.decide(code)["open"]
    gates.close()
    again = Bank.open(gates.settings, FixedClock(NOW + timedelta(seconds=1)))
    assert again.verifier.issuer_kids == {KID}
    assert again.decide(code)["reason"] == "replay"
    assert len(again.buffer) == 1


def test_a_damaged_state_is_put_aside_and_the_station_starts_knowing_nothing(
    tmp_path: Path,
) -> None:
    settings = StationSettings(station="WG", gateway_url="http://g.invalid", data_dir=tmp_path)
    settings.folder.mkdir(parents=True)
    (settings.folder / "state.bin").write_bytes(b"CLGS torn")
    fresh = Bank.open(settings, FixedClock())
    assert fresh.verifier.issuer_kids == frozenset()
    assert fresh.decide(Phone().line())["reason"] == "unknown_issuer"
    assert (settings.folder / "state.bin.damaged").read_bytes() == b"CLGS torn"


@pytest.mark.parametrize(
    "changes",
    [{"station": "../up"}, {"station": ""}, {"gates": 0}, {"batch": 2001}, {"sync_s": 0}],
)
def test_bad_settings_are_refused_in_one_line(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"station": "WG", "gateway_url": "http://g", "data_dir": Path()}
    with pytest.raises(ConfigError):
        StationSettings(**(fields | changes))  # type: ignore[arg-type]


# -- what the gateway answers ---------------------------------------------------------------


def test_issuer_keys_are_read_by_kid_and_anything_else_refused() -> None:
    raw = ridecode.raw_public_key(ISSUER.public_key())[1]
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    keys = issuer_keys(json.dumps({"keys": [{"kid": KID, "alg": "EdDSA", "x": x}]}).encode())
    assert ridecode.raw_public_key(keys[KID])[1] == raw
    for bad in ({}, {"keys": [{"kid": KID, "alg": "RS256", "x": x}]}, {"keys": 3}, []):
        with pytest.raises(UplinkError):
            issuer_keys(json.dumps(bad).encode())
    with pytest.raises(UplinkError):
        issuer_keys(b"<html>a proxy's error page</html>")


def test_retry_after_is_read_as_seconds_or_a_date_and_capped() -> None:
    assert retry_after({"Retry-After": "7"}) == 7
    assert retry_after({"Retry-After": "86400"}) == BACKOFF_MAX_S
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 20 < (retry_after({"Retry-After": soon}) or 0) <= 30
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "soon"}) is None
