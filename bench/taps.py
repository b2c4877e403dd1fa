"""``cardless bench taps``: taps per second from a gate's upload to the fare posted in the wallet.

The whole pipeline on this machine: throwaway embedded servers (``bench/servers.py``), then
``cardless up`` with transit, the wallet and the gateway as their own processes and the demo
riders seeded by ``up`` itself (``CARDLESS_DEMO_RIDERS``). The demo gate client ``station-0001``
uploads complete journeys (an entry and an exit tap each, between stations of the demo feed)
in batches from several concurrent uploaders through the gateway; a poller watches the wallet's
``transfers`` for each journey's fare (code ``FARE``, reference ``journey/<id>``). A tap's
latency runs from the start of its upload to the poll that saw its fare committed.

Correct first: every journey must be charged exactly once, or the bench fails loudly. Each
rider rides at most three journeys a capping day and twelve in all, so no cap or balance can
change a fare. The anchor, in the same run on the same PostgreSQL: the same taps in the same
batches inserted straight into a copy of transit's ``taps`` table, one commit a batch.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.servers import bench_servers, progress
from services.gateway.demo import access_token
from services.transit import demo as transit_demo
from services.transit import ridecode
from services.transit.feed import DEMO_FEED, load
from services.transit.journeys import Direction, Tap, journey_id
from services.wallet.ledger import TransferCode
from shared import db
from shared.city import Servers, free_port
from shared.riders import DEMO_RIDERS

GATE_CLIENT = "station-0001"
LINE = re.compile(r"^(gateway|transit|wallet): (\S+)$")
MAX_JOURNEYS_PER_RIDER = 12  # 60.00 at the dearest fare: under the weekly cap and the balance
JOURNEYS_A_DAY = 3  # 15.00 at the dearest fare: the daily cap
POLL_S = 0.01


def main(options: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="cardless bench taps")
    parser.add_argument("--riders", type=int, default=2000, help="demo riders seeded by up")
    parser.add_argument("--journeys", type=int, default=10000, help="two taps each")
    parser.add_argument("--batch", type=int, default=250, help="taps per upload (even)")
    parser.add_argument("--uploaders", type=int, default=2, help="concurrent uploads")
    parser.add_argument("--timeout", type=float, default=120.0, help="for the last fare")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--transit-workers", type=int, default=1)
    parser.add_argument("--profile", metavar="FILE", help="cProfile transit's process into FILE")
    args = parser.parse_args(options)
    if args.journeys > args.riders * MAX_JOURNEYS_PER_RIDER or args.batch % 2:
        parser.error(f"at most {MAX_JOURNEYS_PER_RIDER} journeys a rider, and an even batch")
    with (
        bench_servers() as servers,
        tempfile.TemporaryDirectory(prefix="cardless-bench-taps-") as tmp,
        _city(Path(tmp), servers, args) as (gateway, up),
    ):
        riders = _riders(Path(tmp))
        progress(f"city up with {len(riders)} riders; {args.journeys} journeys to upload")
        plan = Plan.of(riders, args.journeys, args.batch // 2)
        token = access_token(Path(tmp), GATE_CLIENT, gateway, None)
        before = _cpu_seconds(up)
        result = asyncio.run(_measure(gateway, token, servers.database_url, plan, args))
        after = _cpu_seconds(up)
        result["cpu_s"] = {name: round(after[name] - before.get(name, 0.0), 1) for name in after}
    return result


def _cpu_seconds(up: int) -> dict[str, float]:
    """CPU seconds used so far by each of the city's processes (and the bench's servers)."""
    used: dict[str, float] = {}
    processes = psutil.Process(up).children(recursive=True) + psutil.Process().children(True)
    for proc in processes:
        try:
            line, times = proc.cmdline(), proc.cpu_times()
        except psutil.Error:
            continue
        if "sandbox" in line or "up" in line:
            continue  # the demo's provider, idle here; the supervisor
        name = line[-1] if "serve" in line else proc.name()
        name = "postgres" if name.startswith("postgres") else name
        used[name] = used.get(name, 0.0) + times.user + times.system
    return used


@contextmanager
def _city(data_dir: Path, servers: Servers, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """``cardless up`` on the bench's servers with the demo riders; the gateway's URL and
    ``up``'s process id."""
    gateway_port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": servers.redis_url,
        "DATABASE_URL": servers.database_url,
        "CARDLESS_SERVICES": "gateway,transit,wallet",
        DEMO_RIDERS: str(args.riders),
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_WORKERS": str(args.gateway_workers),
        "TRANSIT_WORKERS": str(args.transit_workers),
        # The gate's limit is not the subject: let every upload through.
        "GATEWAY_RATE_LIMITS": json.dumps({"taps": {"requests": 1_000_000, "period_s": 1}}),
        "LOG_LEVEL": "warning",
    }
    if args.profile:
        env.update(_profiling(data_dir, Path(args.profile).resolve(), env))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = {}
        for line in proc.stdout:
            if match := LINE.match(line.strip()):
                seen[match.group(1)] = match.group(2)
            if line.startswith("ready:"):
                break
        if "gateway" not in seen:
            raise RuntimeError("cardless up did not start the gateway; its log is above")
        yield seen["gateway"], proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


# Loaded by every Python process of the city; profiles only `cardless serve transit`, and
# writes the profile when that process exits (SIGTERM: it drains, then returns from main).
_SITECUSTOMIZE = """
import atexit, cProfile, os, sys
if sys.argv[-2:] == ["serve", "transit"]:
    _profile = cProfile.Profile()
    _profile.enable()
    atexit.register(lambda: _profile.dump_stats(os.environ["CARDLESS_BENCH_PROFILE"]))
"""


def _profiling(data_dir: Path, out: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment that runs transit under cProfile, dumping to ``out``."""
    folder = data_dir / "profiling"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "CARDLESS_BENCH_PROFILE": str(out)}


def _riders(data_dir: Path) -> list[ridecode.Credential]:
    """The demo riders as gates know them: their credentials, as ``up`` saved them."""
    return [ridecode.parse_credential(c) for c in transit_demo.load(data_dir)]


@dataclass
class Plan:
    """The journeys to upload, batched, and the tap lines of each batch (encoded once)."""

    batches: list[bytes] = field(default_factory=list)
    journeys: list[list[uuid.UUID]] = field(default_factory=list)
    columns: list[tuple[list[Any], ...]] = field(default_factory=list)  # for the anchor

    @property
    def total(self) -> int:
        return sum(len(j) for j in self.journeys)

    @classmethod
    def of(cls, riders: Sequence[ridecode.Credential], journeys: int, per_batch: int) -> Plan:
        """Rider ``j % R`` rides its ``j // R``-th journey: every rider's journeys in time order,
        three a day (within 100 minutes), each day before the last."""
        stations = sorted({stop.station for stop in load(DEMO_FEED).stops.values()})
        rng = random.Random(7)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
        plan = cls()
        for first in range(0, journeys, per_batch):
            lines, ids, cols = [], [], _columns()
            for j in range(first, min(first + per_batch, journeys)):
                rider, k = riders[j % len(riders)], j // len(riders)
                entered = start + timedelta(days=k // JOURNEYS_A_DAY, minutes=40 * (k % 3))
                origin, destination = rng.sample(stations, 2)
                entry = _tap(rider, origin, Direction.ENTRY, entered, cols)
                exit_ = _tap(rider, destination, Direction.EXIT, entered + timedelta(minutes=20),
                             cols)  # fmt: skip
                lines += [entry[1], exit_[1]]
                ids.append(journey_id(entry[0]))
            plan.batches.append(json.dumps({"taps": lines}).encode())
            plan.journeys.append(ids)
            plan.columns.append(cols)
        return plan


def _columns() -> tuple[list[Any], ...]:
    return tuple([] for _ in range(7))


def _tap(
    rider: ridecode.Credential,
    station: str,
    direction: Direction,
    at: datetime,
    cols: tuple[list[Any], ...],
) -> tuple[Tap, dict[str, str]]:
    tap = Tap(uuid.uuid4(), rider.rider.hex(), station, direction, at)
    for col, value in zip(cols, (tap.tap_id, rider.rider, rider.credential_id, station,
                                 f"{station}-01", direction.value, at), strict=True):  # fmt: skip
        col.append(value)
    line = {"tap_id": str(tap.tap_id), "rider": _b64(rider.rider),
            "credential_id": _b64(rider.credential_id), "station": station,
            "direction": direction.value, "at": at.isoformat(),
            "gate": f"{station}-01"}  # fmt: skip
    return tap, line


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- measuring ---------------------------------------------------------------------------------


async def _measure(
    gateway: str, token: str, database_url: str, plan: Plan, args: argparse.Namespace
) -> dict[str, Any]:
    wallet = await db.create_pool(database_url, "wallet", max_size=2)
    try:
        watcher = Watcher(wallet, {j for batch in plan.journeys for j in batch})
        await watcher.start()
        polling = asyncio.create_task(watcher.run(args.timeout))
        started = time.perf_counter()
        uploaded = await _upload(gateway, token, plan, args.uploaders)
        await polling
        elapsed = max(watcher.posted.values()) - started
        await _check_charged_once(wallet, watcher, plan.total)
    finally:
        await wallet.close()
    raw = await _anchor(database_url, plan, args.uploaders)
    latencies = sorted(watcher.posted[j] - uploaded[j] for j in watcher.posted)
    taps = 2 * plan.total
    taps_per_s = taps / elapsed
    return {
        "bench": "taps",
        "taps_per_s": round(taps_per_s),
        "p99_ms": round(_pct(latencies, 99) * 1000, 1),
        "p50_ms": round(_pct(latencies, 50) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "taps": taps,
        "journeys": plan.total,
        "posted": len(watcher.posted),
        "riders": args.riders,
        "batch_taps": args.batch,
        "uploaders": args.uploaders,
        "gateway_workers": args.gateway_workers,
        "transit_workers": args.transit_workers,
        "raw_insert_taps_per_s": round(raw),
        "ratio": round(taps_per_s / raw, 3),
    }


async def _upload(gateway: str, token: str, plan: Plan, uploaders: int) -> dict[uuid.UUID, float]:
    """Every batch, ``uploaders`` at a time; when each journey's upload started."""
    started: dict[uuid.UUID, float] = {}
    queue = list(range(len(plan.batches)))[::-1]
    url = f"{gateway}/v1/transit/taps"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def uploader(http: aiohttp.ClientSession) -> None:
        while queue:
            n = queue.pop()
            at = time.perf_counter()
            started.update(dict.fromkeys(plan.journeys[n], at))
            async with http.post(url, data=plan.batches[n], headers=headers) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"upload {n} answered {answer.status}: {body[:300]!r}")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(uploader(http) for _ in range(uploaders)))
    progress(f"{len(plan.batches)} uploads done")
    return started


class Watcher:
    """Polls the wallet's transfers for the journeys' fares: when each was first seen."""

    def __init__(self, pool: asyncpg.Pool, journeys: set[uuid.UUID]) -> None:
        self.pool, self.journeys = pool, {f"journey/{j}": j for j in journeys}
        self.posted: dict[uuid.UUID, float] = {}
        self.seq = 0

    async def start(self) -> None:
        self.seq = await self.pool.fetchval("SELECT coalesce(max(seq), 0) FROM transfers")

    async def run(self, timeout_s: float) -> None:
        last_progress = time.perf_counter()
        while len(self.posted) < len(self.journeys):
            rows = await self.pool.fetch(
                "SELECT seq, reference FROM transfers WHERE seq > $1 AND code = $2 ORDER BY seq",
                self.seq,
                TransferCode.FARE,
            )
            now = time.perf_counter()
            for row in rows:
                self.seq = row["seq"]
                journey = self.journeys.get(row["reference"])
                if journey is not None:
                    self.posted.setdefault(journey, now)
            if rows:
                last_progress = now
            elif now - last_progress > timeout_s:
                missing = len(self.journeys) - len(self.posted)
                raise RuntimeError(f"{missing} journeys never charged ({timeout_s:.0f}s idle)")
            await asyncio.sleep(POLL_S)


async def _check_charged_once(pool: asyncpg.Pool, watcher: Watcher, journeys: int) -> None:
    """Every journey charged exactly once: one transfer each, and nothing else for them."""
    rows = await pool.fetch(
        "SELECT reference, count(*) AS n, min(code) AS code, max(code) AS top FROM transfers"
        " WHERE reference = ANY($1::text[]) GROUP BY reference",
        list(watcher.journeys),
    )
    wrong = [r for r in rows if (r["n"], r["code"], r["top"]) != (1, TransferCode.FARE,
                                                                  TransferCode.FARE)]  # fmt: skip
    if len(rows) != journeys or wrong:
        raise RuntimeError(
            f"charged exactly once: {len(rows) - len(wrong)} of {journeys} journeys;"
            f" wrong: {[(r['reference'], r['n'], r['code']) for r in wrong[:5]]}"
        )


async def _anchor(database_url: str, plan: Plan, uploaders: int) -> float:
    """Taps/s inserted straight into a copy of transit's table: same batches, same concurrency,
    one commit each. What storing the taps alone costs this PostgreSQL."""
    schema = f"bench_taps_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.taps"
                       f" (LIKE transit.taps INCLUDING ALL)")  # fmt: skip
    pool = await db.create_pool(database_url, schema, max_size=uploaders)
    queue = list(range(len(plan.columns)))[::-1]

    async def inserter() -> None:
        while queue:
            cols = plan.columns[queue.pop()]
            await pool.execute(
                "INSERT INTO taps (tap_id, pseudonym, credential_id, station, gate, direction,"
                " at, received_at) SELECT t.*, now() FROM unnest($1::uuid[], $2::bytea[],"
                " $3::bytea[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) AS t",
                *cols,
            )

    try:
        started = time.perf_counter()
        await asyncio.gather(*(inserter() for _ in range(uploaders)))
        return 2 * plan.total / (time.perf_counter() - started)
    finally:
        await pool.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def _pct(values: Sequence[float], pct: int) -> float:
    return values[min(len(values) - 1, len(values) * pct // 100)]
