"""The bus in one process, against the real servers: outbox -> relay -> stream -> inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from shared.bus import trim_acknowledged
from shared.config import PlatformConfig
from shared.db import in_transaction
from shared.events import partition_of
from shared.keys import Keys
from shared.service import BUS, Service, create_app
from tests.platform_app import NoteWritten, make_service
from tests.support import eventually


@pytest.fixture
async def client(notes: Service, config: PlatformConfig) -> AsyncIterator[TestClient]:
    app = create_app(notes, config)
    async with TestClient(TestServer(app)) as client:
        yield client


async def applied(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT event_id, key, n FROM applied ORDER BY applied_order")


async def write_notes_and_check_each_applied_once_in_order(
    client: TestClient, pool: asyncpg.Pool, count: int
) -> None:
    for n in range(count):
        response = await client.post("/notes", json={"key": f"rider-{n % 3}", "n": n})
        assert response.status == 201
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= count, what="all applied")
    assert len({r["event_id"] for r in rows}) == count
    for key in ("rider-0", "rider-1", "rider-2"):
        ns = [r["n"] for r in rows if r["key"] == key]
        assert ns == sorted(ns), f"events of {key} applied out of order"


async def test_a_note_and_its_event_are_applied_exactly_once(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await write_notes_and_check_each_applied_once_in_order(client, pool, 20)


async def test_a_batch_handler_applies_runs_of_events_once_each_in_order(
    config: PlatformConfig, pool: asyncpg.Pool
) -> None:
    batched = make_service(config.service, batched=True)
    async with TestClient(TestServer(create_app(batched, config))) as client:
        await write_notes_and_check_each_applied_once_in_order(client, pool, 60)


async def test_after_a_lost_connection_a_key_is_still_applied_in_order(
    client: TestClient, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What was read before the failure is pending: it must be applied before anything newer.
    monkeypatch.setenv("NOTES_FLAKY_N", "3")
    for n in range(10):
        response = await client.post("/notes", json={"key": "rider-0", "n": n})
        assert response.status == 201
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= 10, what="all applied")
    assert [r["n"] for r in rows] == list(range(10))


async def test_an_event_of_a_rolled_back_transaction_never_leaves(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    bus = client.app[BUS]

    async def fail_after_publishing(conn: asyncpg.Connection) -> None:
        await bus.publish(conn, "ghost", NoteWritten(note_id=0, n=0))
        raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        await in_transaction(pool, fail_after_publishing)
    await client.post("/notes", json={"key": "real", "n": 1})
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= 1)
    assert [r["key"] for r in rows] == ["real"]


async def test_request_trace_is_carried_into_the_event(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.post("/notes", json={"key": "k"}, headers={"traceparent": trace})
    assert response.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    body = await pool.fetchval("SELECT body FROM outbox")
    assert b"4bf92f3577b34da6a3ce929d0e0e4736" in body


async def test_malformed_entries_are_dead_lettered_and_the_stream_keeps_flowing(
    client: TestClient, pool: asyncpg.Pool, redis: aioredis.Redis, config: PlatformConfig
) -> None:
    keys = Keys(config.bus.namespace)
    stream = keys.stream("notes", 0)
    good = {
        "id": "0192f1a0-0000-7000-8000-000000000001",
        "type": "notes.written",
        "version": 1,
        "occurred_at": "2026-11-25T00:00:00Z",
        "source": "test",
        "key": "k",
        "payload": {"note_id": 1, "n": 1},
    }
    import json

    bad_entries = [
        {"e": b"{not json"},
        {"e": json.dumps({**good, "type": "notes.unheard_of"})},
        {"e": json.dumps({k: v for k, v in good.items() if k != "key"})},
        {"e": json.dumps({**good, "payload": {"note_id": 1}})},
        {"other": b"no envelope"},
    ]
    # Let the consumer create its group and take the partition before injecting.
    await eventually(lambda: redis.exists(keys.lease("notes", 0, config.service)), bool)
    for fields in bad_entries:
        await redis.xadd(stream, fields)
    await redis.xadd(stream, {"e": json.dumps(good)})
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= 1)
    assert [str(r["event_id"]) for r in rows] == [good["id"]]
    dead = await redis.xrange(keys.dead_letters("notes", 0, config.service))
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == len(bad_entries)
    assert "bad envelope" in reasons[0]
    assert "unknown event type 'notes.unheard_of'" in reasons[1]
    assert "key" in reasons[2]
    assert "invalid notes.written payload" in reasons[3]
    assert "no envelope" in reasons[4]


async def test_a_handler_that_always_fails_is_dead_lettered_after_n_deliveries(
    client: TestClient,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    config: PlatformConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTES_POISON_KEY", "poison")
    partitions = config.bus.partitions
    # A later entry in the poisoned entry's own partition: it must flow once the poison is parked.
    behind = next(
        k
        for k in (f"k{i}" for i in range(100))
        if partition_of(k, partitions) == partition_of("poison", partitions)
    )
    await client.post("/notes", json={"key": "poison", "n": 1})
    await client.post("/notes", json={"key": "poison", "n": 2})
    await client.post("/notes", json={"key": behind, "n": 3})
    dead_stream = Keys(config.bus.namespace).dead_letters(
        "notes", partition_of("poison", partitions), config.service
    )
    dead = await eventually(
        lambda: redis.xrange(dead_stream), lambda d: len(d) >= 2, what="two dead letters"
    )
    assert len(dead) == 2
    for _, fields in dead:
        reason = fields[b"reason"].decode()
        assert f"handler failed {config.bus.max_deliveries} deliveries" in reason
        assert "PoisonedNote" in reason
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= 1, what="later entry")
    assert [r["key"] for r in rows] == [behind]


async def test_trimming_keeps_every_entry_a_group_has_not_acknowledged(
    redis: aioredis.Redis, namespace: str
) -> None:
    stream = Keys(namespace).stream("trim", 0)
    ids = [await redis.xadd(stream, {"n": n}) for n in range(10)]
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    await redis.xreadgroup("fast", "c", {stream: ">"})
    await redis.xack(stream, "fast", *ids)
    await redis.xreadgroup("slow", "c", {stream: ">"}, count=6)
    await redis.xack(stream, "slow", *ids[:4])  # slow holds entries 4 and 5 unacknowledged

    await trim_acknowledged(redis, stream)

    remaining = [eid for eid, _ in await redis.xrange(stream)]
    assert remaining == ids[4:]
    await redis.xack(stream, "slow", *ids[4:6])
    await trim_acknowledged(redis, stream)
    remaining = [eid for eid, _ in await redis.xrange(stream)]
    assert remaining == ids[5:]  # slow has read up to 5: nothing it has not read is dropped


async def test_two_writers_racing_on_the_outbox_keep_every_event(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    await asyncio.gather(*(client.post("/notes", json={"key": f"k{i}"}) for i in range(50)))
    rows = await eventually(lambda: applied(pool), lambda r: len(r) >= 50)
    assert len(rows) == 50
