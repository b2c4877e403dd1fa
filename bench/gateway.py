"""``cardless bench gateway``: what the gateway adds, against the same upstream reached directly.

Runs ``cardless up`` with the gateway on throwaway servers, as a newcomer would, in front of an
upstream that answers at once (``bench/upstream.py``, standing in for the wallet), so what is
measured is the gateway's own work. Then drives ``GET /v1/wallet/balance`` from one client two
ways in the same run: through the gateway (token check, rate limit in Redis, internal token,
forwarding) and straight to the upstream. First at a fixed rate (open loop, latency from each
request's scheduled start, so a stall is not hidden), then flat out (closed loop) for the
maximum throughput of each. Also reports the gateway's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.servers import progress
from services.gateway import demo
from services.gateway.demo import access_token
from shared.city import free_port

BENCH_CLIENT = "bench-reader"
LINE = re.compile(r"^(gateway|wallet|postgres): (\S+)$")


def main(options: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="cardless bench gateway")
    parser.add_argument("--rate", type=int, default=1000, help="fixed requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=32, help="for the maximum")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes (one a core)")
    args = parser.parse_args(options)
    with (
        tempfile.TemporaryDirectory(prefix="cardless-bench-") as tmp,
        _upstream() as upstream,
        _city(Path(tmp), upstream, args.workers) as city,
    ):
        progress(f"city up: gateway {city['gateway']} in front of {upstream}")
        token = access_token(Path(tmp), BENCH_CLIENT, city["gateway"], "wallet:read")
        pids = [int(pid) for pid in city["gateway_pids"].split(",")]
        return asyncio.run(_measure(city["gateway"], pids, upstream, token, args))


@contextmanager
def _upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answers(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_until_answers(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own upstream
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the bench upstream did not start")


@contextmanager
def _city(data_dir: Path, upstream: str, workers: int) -> Iterator[dict[str, str]]:
    """``cardless up`` in a subprocess, with a bench client registered; its printed URLs."""
    gateway_port = free_port()
    clients = data_dir / "bench-clients.json"
    _register_bench_client(data_dir, clients)
    env = {
        **os.environ,
        "CARDLESS_SERVICES": "gateway",
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_UPSTREAMS": json.dumps({"wallet": upstream}),
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_CLIENTS": f"@{clients}",
        # The limiter still runs its script on every request; the limit itself is not the
        # subject here.
        "GATEWAY_RATE_LIMITS": json.dumps({"read": {"requests": 1_000_000, "period_s": 1}}),
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    urls: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := LINE.match(line.strip()):
                urls[match.group(1)] = match.group(2)
            if line.startswith("ready:"):
                break
        if "gateway" not in urls:
            raise RuntimeError("cardless up did not start the gateway; its log is above")
        urls["gateway_pids"] = ",".join(map(str, _pids_of("serve", "gateway", parent=proc.pid)))
        yield urls
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def _register_bench_client(data_dir: Path, path: Path) -> None:
    registry = json.loads(demo.registry(data_dir).read_text())
    entry = demo.client_entry(data_dir / "clients", BENCH_CLIENT, "operator", ("wallet:read",))
    registry["clients"].append(entry)
    path.write_text(json.dumps(registry))


def _pids_of(*words: str, parent: int) -> list[int]:
    children = psutil.Process(parent).children(recursive=True)
    return [child.pid for child in children if all(w in child.cmdline() for w in words)]


async def _measure(
    gateway_url: str, gateway_pids: list[int], upstream: str, token: str, args: argparse.Namespace
) -> dict[str, Any]:
    path = "/v1/wallet/balance"
    via = (gateway_url + path, {"Authorization": f"Bearer {token}"})
    direct = (upstream + path, {"Authorization": "Bearer not-checked"})
    gateway = [psutil.Process(pid) for pid in gateway_pids]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, headers in (via, direct):  # warm both paths: pools, caches, the token check
            await _closed_loop(session, url, headers, 1.0, 8)
        progress(f"{args.rate}/s for {args.seconds:.0f}s through the gateway")
        via_ms = await _open_loop(session, *via, args.rate, args.seconds)
        rss_mb = sum(worker.memory_info().rss for worker in gateway) / 2**20
        progress(f"{args.rate}/s for {args.seconds:.0f}s directly")
        direct_ms = await _open_loop(session, *direct, args.rate, args.seconds)
        progress("maximum throughput, both ways")
        max_via = await _closed_loop(session, *via, args.seconds, args.connections)
        max_direct = await _closed_loop(session, *direct, args.seconds, args.connections)
    return {
        "bench": "gateway",
        "added_p50_ms": round(_pct(via_ms, 50) - _pct(direct_ms, 50), 3),
        "added_p99_ms": round(_pct(via_ms, 99) - _pct(direct_ms, 99), 3),
        "max_rps_via_gateway": round(max_via),
        "max_rps_direct": round(max_direct),
        "ratio": round(max_via / max_direct, 3),
        "p50_ms_via_gateway": round(_pct(via_ms, 50), 3),
        "p99_ms_via_gateway": round(_pct(via_ms, 99), 3),
        "p50_ms_direct": round(_pct(direct_ms, 50), 3),
        "p99_ms_direct": round(_pct(direct_ms, 99), 3),
        "rate": args.rate,
        "gateway_workers": args.workers,
        "gateway_rss_mb": round(rss_mb, 1),
    }


async def _open_loop(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], rate: int, seconds: float
) -> list[float]:
    """Requests at a fixed rate whatever the answers; each latency from its scheduled start."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def one(scheduled: float) -> None:
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                failures[f"{response.status} {body[:200]!r}"] += 1
        latencies.append((time.perf_counter() - scheduled) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"requests to {url} failed: {dict(failures)}")
    return latencies


async def _closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    seconds: float,
    connections: int,
) -> float:
    """Requests per second with ``connections`` clients each sending as soon as answered."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - started)


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * pct // 100)]
