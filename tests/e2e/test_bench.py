"""`cardless bench` stopped by SIGTERM (a CI job cancelled) leaves no server behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import psutil

from tests.support import REPO, eventually


async def test_a_benchmark_stopped_by_sigterm_stops_the_servers_it_started() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    bench = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", "bench", "bus", "--events", "100000"),
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert bench.stderr is not None
    # Its first progress line comes once both servers run and the raw loop has been measured.
    line = await asyncio.wait_for(bench.stderr.readline(), 60)
    assert line.startswith(b"bench:"), line
    servers = psutil.Process(bench.pid).children(recursive=True)
    assert {"postgres", "valkey-server"} <= {p.name() for p in servers}

    bench.send_signal(signal.SIGTERM)
    await asyncio.wait_for(bench.wait(), 60)

    async def running() -> list[psutil.Process]:
        return [p for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    await eventually(running, lambda left: not left, within=30, what="servers stopped")


async def test_the_taps_benchmark_charges_every_journey_it_uploads_exactly_once() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    options = ("--riders", "30", "--journeys", "120", "--batch", "20", "--uploaders", "3")
    bench = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", "bench", "taps", *options),
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(bench.communicate(), 100)
    assert bench.returncode == 0, out.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["bench"] == "taps"
    # The bench itself fails unless each journey has exactly one fare transfer; its line says so.
    assert (result["taps"], result["journeys"], result["posted"]) == (240, 120, 120)
    assert result["riders"] == 30
    for number in ("taps_per_s", "p99_ms", "raw_insert_taps_per_s", "ratio"):
        assert result[number] > 0, number
