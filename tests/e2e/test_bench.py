"""`cardless bench` stopped by SIGTERM (a CI job cancelled) leaves no server behind."""

from __future__ import annotations

import asyncio
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
