"""Exactly-once under crashes, with real processes killed by SIGKILL at named points.

The test process writes events to the notes service's outbox, as a service would; the service
runs as a `cardless serve` subprocess (relay and consumer) that a failpoint kills where we ask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.clock import SystemClock
from shared.config import PlatformConfig
from shared.embedded import EmbeddedValkey
from shared.keys import Keys
from shared.outbox import Outbox
from tests.conftest import service_env
from tests.platform_app import NoteWritten
from tests.support import ServiceProcess, eventually

TARGET = "tests.platform_app:SERVICE"


async def produce(
    pool: asyncpg.Pool,
    config: PlatformConfig,
    count: int,
    *,
    keys: int = 10,
    per_transaction: int = 50,
    start: int = 0,
) -> None:
    """Write ``count`` events over ``keys`` keys; event n of a key carries n, in order."""
    outbox = Outbox(config.service, config.bus.partitions, SystemClock())
    for first in range(start, start + count, per_transaction):
        async with pool.acquire() as conn, conn.transaction():
            for i in range(first, min(first + per_transaction, start + count)):
                await outbox.add(conn, f"rider-{i % keys}", NoteWritten(note_id=i, n=i))


async def applied_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM applied"))


async def assert_applied_exactly_once_in_order(pool: asyncpg.Pool, expected: int) -> None:
    rows = await pool.fetch("SELECT event_id, key, n FROM applied ORDER BY applied_order")
    assert len(rows) == expected
    assert len({r["event_id"] for r in rows}) == expected
    produced = await pool.fetchval("SELECT count(DISTINCT event_id) FROM outbox")
    assert produced == expected
    by_key: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_key[row["key"]].append(row["n"])
    for key, ns in by_key.items():
        assert ns == sorted(ns), f"{key} applied out of order"


async def dead_letters(redis: aioredis.Redis, config: PlatformConfig) -> int:
    keys = Keys(config.bus.namespace)
    return sum(
        [
            await redis.xlen(keys.dead_letters("notes", p, config.service))
            for p in range(config.bus.partitions)
        ]
    )


async def stream_entries(redis: aioredis.Redis, config: PlatformConfig) -> int:
    keys = Keys(config.bus.namespace)
    return sum([await redis.xlen(keys.stream("notes", p)) for p in range(config.bus.partitions)])


async def pending_entries(redis: aioredis.Redis, config: PlatformConfig) -> int:
    keys = Keys(config.bus.namespace)
    total = 0
    for p in range(config.bus.partitions):
        total += int((await redis.xpending(keys.stream("notes", p), config.service))["pending"])
    return total


@pytest.fixture
def service(config: PlatformConfig) -> ServiceProcess:
    return ServiceProcess(TARGET, service_env(config))


async def relay_crashed_after_xadd(
    pool: asyncpg.Pool, redis: aioredis.Redis, config: PlatformConfig
) -> None:
    assert await stream_entries(redis, config) > 0, "the batch reached Redis"
    unpublished = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    assert unpublished == 100, "and was never marked published"


async def consumer_crashed_after_commit(
    pool: asyncpg.Pool, redis: aioredis.Redis, config: PlatformConfig
) -> None:
    assert await applied_count(pool) > 0, "a batch was committed"
    assert await pending_entries(redis, config) > 0, "and never acknowledged"


async def consumer_crashed_before_commit(
    pool: asyncpg.Pool, redis: aioredis.Redis, config: PlatformConfig
) -> None:
    assert await applied_count(pool) == 0, "the batch was rolled back"


@pytest.mark.parametrize(
    ("failpoint", "state_at_crash"),
    [
        ("relay.after_xadd", relay_crashed_after_xadd),
        ("consumer.after_commit", consumer_crashed_after_commit),
        ("consumer.before_commit", consumer_crashed_before_commit),
    ],
)
async def test_a_process_killed_at_a_failpoint_loses_and_repeats_nothing(
    failpoint: str,
    state_at_crash: Callable[..., Awaitable[None]],
    service: ServiceProcess,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    config: PlatformConfig,
) -> None:
    await produce(pool, config, 100)
    service.start(CARDLESS_FAILPOINTS=f"{failpoint}=1")
    assert await service.exited() == -9
    await state_at_crash(pool, redis, config)

    service.start()
    await eventually(lambda: applied_count(pool), lambda n: n >= 100)
    await eventually(lambda: pending_entries(redis, config), lambda n: n == 0)
    await assert_applied_exactly_once_in_order(pool, 100)
    assert await dead_letters(redis, config) == 0
    assert service.stop() == 0


async def test_two_consumers_share_the_group(
    config: PlatformConfig, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    first = ServiceProcess(TARGET, service_env(config)).start()
    second = ServiceProcess(TARGET, service_env(config)).start()
    keys = Keys(config.bus.namespace)

    async def lease_owners() -> set[bytes]:
        owners = [
            await redis.get(keys.lease("notes", p, config.service))
            for p in range(config.bus.partitions)
        ]
        return {o for o in owners if o}

    await eventually(lease_owners, lambda owners: len(owners) == 2, what="leases shared by two")
    await produce(pool, config, 1000, keys=20)
    await eventually(lambda: applied_count(pool), lambda n: n >= 1000)
    await assert_applied_exactly_once_in_order(pool, 1000)
    assert first.stop() == 0
    assert second.stop() == 0


async def test_redis_restarted_mid_stream(
    config: PlatformConfig, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    env = service_env(config, REDIS_URL=valkey.url)
    service = ServiceProcess(TARGET, env).start()
    try:
        await produce(pool, config, 200)
        await eventually(lambda: applied_count(pool), lambda n: n > 0)
        valkey.stop()
        await produce(pool, config, 200, start=200)
        valkey = EmbeddedValkey(tmp_path / "valkey", port=valkey.port)
        valkey.start()
        await eventually(lambda: applied_count(pool), lambda n: n >= 400, within=60)
        await assert_applied_exactly_once_in_order(pool, 400)
        assert service.stop() == 0
    finally:
        service.kill()
        valkey.stop()


async def bus_state(pool: asyncpg.Pool, redis: aioredis.Redis, config: PlatformConfig) -> str:
    """Where events are, for a failure message: unpublished, and per partition the stream
    length, what is pending and who holds the lease."""
    keys = Keys(config.bus.namespace)
    parts = [f"unpublished={await pool.fetchval(_UNPUBLISHED)}"]
    for p in range(config.bus.partitions):
        stream = keys.stream("notes", p)
        pending = (await redis.xpending(stream, config.service))["pending"]
        lease = await redis.get(keys.lease("notes", p, config.service))
        parts.append(f"p{p}: entries={await redis.xlen(stream)} pending={pending} lease={lease!r}")
    return "; ".join(parts)


_UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL"

# Random crashes, then a run without: the test's cost is bounded by the crashes it injects,
# whatever the batch sizes (and so the number of failpoints hit) on a busy machine.
CRASHES = 30


@pytest.mark.timeout(300)
async def test_ten_thousand_events_with_crashes_injected_at_random(
    config: PlatformConfig, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    total = 10_000
    env = service_env(config, BUS_MAX_DELIVERIES="1000")
    failpoints = "relay.after_xadd=0.05,consumer.before_commit=0.03,consumer.after_commit=0.03"
    service = ServiceProcess(TARGET, env).start(CARDLESS_FAILPOINTS=failpoints)
    crashes = 0

    async def progress() -> int:
        nonlocal crashes
        if not service.alive:
            crashes += 1
            service.start(CARDLESS_FAILPOINTS=failpoints if crashes < CRASHES else "")
        return await applied_count(pool)

    try:
        await produce(pool, config, total, keys=50, per_transaction=100)
        try:
            await eventually(progress, lambda n: n >= total, within=200, what="all applied")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {await bus_state(pool, redis, config)}") from None
    finally:
        service.kill()
    assert crashes > 0, "crashes were injected"
    await assert_applied_exactly_once_in_order(pool, total)
    assert await dead_letters(redis, config) == 0
