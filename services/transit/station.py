"""The station controller `cardless gate --station <id>` runs: a bank of gates that share one
offline verifier (pass-back and replay are the station's), decide on the codes read from
standard input, and keep each opened gate's tap on disk before saying so; the uplink
(``uplink.py``) syncs keys and deny list and uploads the taps behind them.

Scanning is CPU work of well under a millisecond, done inline on the event loop; so is the
tap's write (an fsync), which must finish before the decision is reported anyway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import aiohttp

from services.transit.denylist import DenyList
from services.transit.gate import DIRECTIONS, Decision, GateVerifier, StateError
from services.transit.uplink import GateClient, TapBuffer, Uplink
from shared.clock import Clock, SystemClock, wait_for_stop
from shared.config import ConfigError
from shared.ids import new_id

log = logging.getLogger(__name__)

BATCH, MAX_BATCH = 500, 2000  # MAX_BATCH: what transit takes in one upload
SYNC_S, FLUSH_S, START_SYNC_S = 60.0, 10.0, 5.0
REQUEST_TIMEOUT_S = 10.0
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # a camera frame; anything larger is not one
_STATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True)
class StationSettings:
    """One station's controller: its gates, where the city and its own disk are, its uplink."""

    station: str
    gateway_url: str
    data_dir: Path  # the city's: the client's key in clients/, this station's disk in gates/
    client_id: str = "station-0001"
    gates: int = 4
    batch: int = BATCH
    sync_s: float = SYNC_S
    flush_s: float = FLUSH_S

    def __post_init__(self) -> None:
        if not _STATION.fullmatch(self.station):
            raise ConfigError("--station: 1 to 64 letters, digits, '_', '.' or '-'")
        if not 1 <= self.gates <= 99:
            raise ConfigError("--gates: 1 to 99")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ConfigError(f"--batch: 1 to {MAX_BATCH} taps")
        if self.sync_s <= 0 or self.flush_s < 0:
            raise ConfigError("--sync-s: positive seconds")

    @property
    def client(self) -> GateClient:
        return GateClient(self.gateway_url, self.data_dir, self.client_id)

    @property
    def folder(self) -> Path:
        """The station's own disk: its verifier's state and its tap buffer."""
        return self.data_dir / "gates" / self.station


# ---------------------------------------------------------------------------------------
# What the gate's reader hands over: a line of text


class Scan(NamedTuple):
    """A scanned line: a direction, and a ride code's bytes or the camera image to read."""

    direction: str
    code: bytes | None = None
    image: Path | None = None


class LineError(ValueError):
    """A line that holds no code; ``reason`` is the gate's ("format", "no_code")."""

    def __init__(self, reason: str, direction: str) -> None:
        super().__init__(reason)
        self.reason, self.direction = reason, direction


def parse_line(line: str) -> Scan:
    """``[entry|exit ]<ride code in base64url>`` or ``[entry|exit ]@<image path>``; entry if
    the direction is not given. LineError for anything else."""
    text = line.strip()
    head, _, rest = text.partition(" ")
    direction = "entry"
    if head in DIRECTIONS:
        direction, text = head, rest.strip()
    if not text:
        raise LineError("no_code", direction)
    if text.startswith("@"):
        return Scan(direction, image=Path(text[1:]))
    if not _BASE64URL.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise LineError("format", direction)
    try:
        return Scan(direction, code=base64.urlsafe_b64decode(text.rstrip("=") + "=="))
    except binascii.Error:
        raise LineError("format", direction) from None


# ---------------------------------------------------------------------------------------
# The bank of gates


class Bank:
    """A station's gates: one verifier (pass-back and replay are the station's), one buffer.
    The first half of the gates are entry gates, the rest exit gates (one gate does both)."""

    def __init__(
        self, settings: StationSettings, verifier: GateVerifier, buffer: TapBuffer, clock: Clock
    ) -> None:
        self.settings, self.verifier, self.buffer, self._clock = settings, verifier, buffer, clock
        names = [f"{settings.station}-{n:02d}" for n in range(1, settings.gates + 1)]
        entries = (len(names) + 1) // 2
        exits = names[entries:] or names[:entries]
        self._next = {"entry": itertools.cycle(names[:entries]), "exit": itertools.cycle(exits)}

    @classmethod
    def open(cls, settings: StationSettings, clock: Clock | None = None) -> Bank:
        """The station as its disk left it (or a new one, which knows no keys yet)."""
        folder = settings.folder
        folder.mkdir(parents=True, exist_ok=True)
        verifier = _saved_verifier(folder / "state.bin", settings.station)
        return cls(settings, verifier, TapBuffer(folder / "taps.sqlite3"), clock or SystemClock())

    def decide(self, line: str) -> dict[str, Any]:
        """Decide on one scanned line; an opened gate's tap is on disk before this returns."""
        try:
            scan = parse_line(line)
        except LineError as bad:
            return self._answer(next(self._next[bad.direction]), bad.direction, bad.reason)
        gate, at = next(self._next[scan.direction]), self._clock.now()
        now = int(at.timestamp())
        if scan.image is not None:
            decision = self._scan_image(scan.image, now, scan.direction)
        else:
            assert scan.code is not None
            decision = self.verifier.scan(scan.code, now=now, direction=scan.direction)
        if decision.open:
            self.buffer.add(*tap_body(decision, self.settings.station, gate, scan.direction, at))
        return self._answer(gate, scan.direction, decision.reason, decision.open)

    def _scan_image(self, path: Path, now: int, direction: str) -> Decision:
        try:
            with path.open("rb") as file:
                image = file.read(MAX_IMAGE_BYTES + 1)
        except OSError:
            return Decision(False, "image")
        if len(image) > MAX_IMAGE_BYTES:
            return Decision(False, "image")
        return self.verifier.scan_image(image, now=now, direction=direction)

    @staticmethod
    def _answer(gate: str, direction: str, reason: str, opened: bool = False) -> dict[str, Any]:
        return {"gate": gate, "direction": direction, "open": opened, "reason": reason}

    def save(self) -> None:
        """The verifier's state to disk (atomically), for a restart with the network down."""
        now = int(self._clock.now().timestamp())
        self.verifier.save(self.settings.folder / "state.bin", now=now)

    def close(self) -> None:
        self.save()
        self.buffer.close()


def tap_body(
    decision: Decision, station: str, gate: str, direction: str, at: datetime
) -> tuple[str, bytes]:
    """A new tap's id and the JSON line transit's upload takes for it."""
    if decision.rider is None or decision.credential_id is None:
        raise ValueError("a tap is made by a gate that opened for a credential")
    tap_id = str(new_id())
    tap = {"tap_id": tap_id, "station": station, "gate": gate, "direction": direction,
           "at": at.isoformat(), "rider": base64.b64encode(decision.rider).decode(),
           "credential_id": base64.b64encode(decision.credential_id).decode()}  # fmt: skip
    return tap_id, json.dumps(tap).encode()


def _saved_verifier(path: Path, station: str) -> GateVerifier:
    if path.exists():
        try:
            return GateVerifier.load(path)
        except StateError as damaged:
            path.replace(path.with_name(path.name + ".damaged"))
            log.warning("gate state damaged; starting without it", extra={"why": str(damaged)})
    return GateVerifier(station=station, issuer_keys={}, deny=DenyList())


# ---------------------------------------------------------------------------------------
# Running it


async def run(
    settings: StationSettings,
    lines: asyncio.Queue[str | None],
    out: IO[str],
    stopping: asyncio.Event | None = None,
    clock: Clock | None = None,
) -> int:
    """Decide on every line until None (end of input) or ``stopping``; then upload what can
    be within ``flush_s``, save the state, 0."""
    stopping = stopping or asyncio.Event()
    settings.client.assertion(settings.gateway_url)  # no key: one line for the operator, now
    bank = Bank.open(settings, clock)
    try:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            uplink = Uplink(http, settings.client, bank.verifier, bank.buffer,
                            batch=settings.batch, synced=bank.save)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_SYNC_S):  # start offline rather than wait
                    await uplink.try_sync()
            await _decide_all(bank, uplink, lines, out, stopping)
            left = await uplink.flush(settings.flush_s)
        counts = {"taps_left": left, "set_aside": bank.buffer.set_aside_count()}
        log.info("station stopped", extra=counts)
    finally:
        bank.close()
    return 0


async def _decide_all(
    bank: Bank, uplink: Uplink, lines: asyncio.Queue[str | None], out: IO[str],
    stopping: asyncio.Event,
) -> None:  # fmt: skip
    """A decision per line, printed once its tap is on disk, with sync and uploads behind."""
    wake = asyncio.Event()
    async with _background(uplink, bank, wake, stopping):
        while not stopping.is_set() and (line := await lines.get()) is not None:
            if line.strip() and not stopping.is_set():
                out.write(json.dumps(bank.decide(line)) + "\n")
                out.flush()
                wake.set()


@contextlib.asynccontextmanager
async def _background(
    uplink: Uplink, bank: Bank, wake: asyncio.Event, stopping: asyncio.Event
) -> AsyncIterator[None]:
    """Sync every ``sync_s`` and upload as taps come, while the block runs."""

    async def syncing() -> None:
        while not stopping.is_set():
            await wait_for_stop(stopping, bank.settings.sync_s)
            if not stopping.is_set():
                await uplink.try_sync()

    async def uploading() -> None:
        # Batches form by themselves: the taps made while one upload is in flight go next.
        while not stopping.is_set():
            wake.clear()
            if (wait := await uplink.upload_once()) is not None:
                await wait_for_stop(stopping, wait)
            elif not len(bank.buffer):
                await wake.wait()

    tasks = [asyncio.create_task(syncing()), asyncio.create_task(uploading())]
    try:
        yield
    finally:
        stopping.set()
        for task in tasks:
            task.cancel()  # an upload cut short is sent again: tap ids make that harmless
        for ended in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(ended, Exception):
                log.error("station background work failed", exc_info=ended)


def main(settings: StationSettings) -> int:
    """`cardless gate`: codes from standard input, decisions as JSON lines on standard output."""
    with _station_lock(settings):
        return asyncio.run(_main(settings))


async def _main(settings: StationSettings) -> int:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        with contextlib.suppress(asyncio.QueueFull):
            lines.put_nowait(None)  # wake the reader's wait

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    # A thread, not a pipe transport: standard input may be a file, and a file is no pipe.
    threading.Thread(target=_read, args=(loop, lines), daemon=True, name="stdin").start()
    return await run(settings, lines, sys.stdout, stopping)


def _read(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Standard input's lines into ``lines`` (waiting while it is full), then None. Read from
    the file descriptor, not ``sys.stdin``: a daemon thread blocked inside a buffered reader
    aborts the interpreter's exit."""

    def put(line: str | None) -> None:
        asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()

    pending = b""
    with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):  # loop ended
        try:
            while chunk := os.read(sys.stdin.fileno(), 65536):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    put(raw.decode(errors="replace"))
        except OSError as error:
            log.error("standard input cannot be read", extra={"error": repr(error)})
        put(pending.decode(errors="replace"))
        put(None)


@contextlib.contextmanager
def _station_lock(settings: StationSettings) -> Iterator[None]:
    """One controller per station's disk: a second would share its buffer, not its verifier."""
    settings.folder.mkdir(parents=True, exist_ok=True)
    with (settings.folder / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"station {settings.station} is already running here") from None
        yield
