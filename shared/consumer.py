"""Consumers: apply a topic's events exactly once, in order per key.

Each partition of a topic has one active consumer per group, chosen by a lease in Redis, so the
events of one key are applied in stream order. What the partitions read is applied in one
database transaction that also records the entries' ids in the ``inbox``; ids already there are
skipped, so a redelivery never applies twice. ``XACK`` follows the commit. An entry that cannot
be decoded is dead-lettered at once; one whose handler keeps failing is retried alone (holding
back the entries behind it, to keep their order) and dead-lettered after ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from shared import context
from shared.clock import wait_for_stop as _wait
from shared.config import BusConfig
from shared.db import Connection
from shared.events import Envelope, Event, EventCatalog, MalformedEvent, decode, encode
from shared.failpoints import Failpoints
from shared.keys import Keys
from shared.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[Connection, Event, Envelope], Awaitable[None]]
BatchHandler = Callable[[Connection, list[tuple[Event, Envelope]]], Awaitable[None]]
Entry = tuple[bytes, dict[bytes, bytes]]

# Failures of the servers, not of the event: retried without counting against the event.
TRANSIENT = (
    OSError,
    TimeoutError,
    RedisError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)
_INBOX = """
INSERT INTO inbox (event_id, topic) SELECT unnest($1::uuid[]), $2
ON CONFLICT DO NOTHING RETURNING event_id"""


@dataclass(frozen=True)
class Subscription:
    """What a service does with a topic's events: a handler per payload type.

    A ``batch_handlers`` entry takes a whole run of consecutive new events of its type in one
    call (in stream order, in the batch's transaction), so it can apply them in one statement.
    """

    catalog: EventCatalog
    handlers: Mapping[type[Event], Handler] = field(default_factory=dict)
    batch_handlers: Mapping[type[Event], BatchHandler] = field(default_factory=dict)

    def handles(self, payload: Event) -> bool:
        return type(payload) in self.handlers or type(payload) in self.batch_handlers


@dataclass(frozen=True)
class _Item:
    entry_id: bytes
    envelope: Envelope
    payload: Event


@dataclass(frozen=True)
class _Read:
    """One partition's read, waiting to be applied with the other partitions' reads."""

    stream: str
    items: list[_Item]
    applied: asyncio.Future[None]


def _runs(items: list[_Item], batched: Mapping[type[Event], BatchHandler]) -> list[list[_Item]]:
    """Consecutive items of one batch-handled type together; every other item alone."""
    runs: list[list[_Item]] = []
    for item in items:
        kind = type(item.payload)
        if kind in batched and runs and type(runs[-1][0].payload) is kind:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


class Consumer:
    """One consumer (this process) of one group on one topic."""

    def __init__(
        self,
        *,
        subscription: Subscription,
        group: str,
        name: str,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        keys: Keys,
        config: BusConfig,
        metrics: Metrics,
        failpoints: Failpoints,
    ) -> None:
        self.sub, self.group, self.name = subscription, group, name
        self.topic = subscription.catalog.topic
        self.pool, self.redis, self.keys, self.config = pool, redis, keys, config
        self.metrics, self.failpoints = metrics, failpoints
        self.held: set[int] = set()
        # Partitions whose pending list we know to be empty, so reading it can be skipped.
        self._settled: set[str] = set()
        # Each partition's stream, mapped to where its dead letters go (same hash slot).
        self._streams = {
            keys.stream(self.topic, p): keys.dead_letters(self.topic, p, group)
            for p in range(config.partitions)
        }
        # Reads waiting for the next transaction, and the task that commits them.
        self._waiting: list[_Read] = []
        self._committer: asyncio.Task[None] | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold a fair share of partitions and work them until ``stopping`` is set."""
        workers: dict[int, asyncio.Task[None]] = {}
        try:
            await self._ensure_groups()
            while not stopping.is_set():
                with contextlib.suppress(*TRANSIENT):
                    await self._rebalance()
                    await self._gauge_pending()
                self._steer(workers, stopping)
                await _wait(stopping, self.config.lease_ms / 3000)
        finally:
            await asyncio.gather(*workers.values(), return_exceptions=True)
            if self._committer is not None:  # a worker whose lease was lost left its read in it
                await asyncio.gather(self._committer, return_exceptions=True)
            await self._release_all()

    def _steer(self, workers: dict[int, asyncio.Task[None]], stopping: asyncio.Event) -> None:
        for p, task in list(workers.items()):
            if p not in self.held:
                task.cancel()  # lease lost: another consumer owns the partition now
            if task.done():
                del workers[p]
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "partition worker crashed; restarting it",
                        exc_info=task.exception(),
                        extra={"topic": self.topic, "partition": p},
                    )
        for p in self.held - workers.keys():
            workers[p] = asyncio.create_task(self._work(p, stopping), name=f"{self.topic}.{p}")

    async def _ensure_groups(self) -> None:
        for p in range(self.config.partitions):
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self.redis.xgroup_create(
                    self.keys.stream(self.topic, p), self.group, id="0", mkstream=True
                )

    # -- leases ----------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        """Renew our leases, then take or give back partitions to hold a fair share."""
        ttl = self.config.lease_ms
        members = self.keys.members(self.topic, self.group)
        seconds, micros = await self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(members, {self.name: now_ms + ttl})
            pipe.zremrangebyscore(members, "-inf", now_ms)
            pipe.zcard(members)
            live = (await pipe.execute())[2]
        share = math.ceil(self.config.partitions / max(1, live))
        for p in sorted(self.held):
            if not await self.redis.eval(_RENEW, 1, self._lease(p), self.name, ttl):
                self.held.discard(p)
        for p in sorted(self.held)[share:]:
            await self._release(p)
        for p in range(self.config.partitions):
            if len(self.held) >= share:
                break
            if p not in self.held and await self.redis.set(
                self._lease(p), self.name, nx=True, px=ttl
            ):
                self.held.add(p)

    def _lease(self, p: int) -> str:
        return self.keys.lease(self.topic, p, self.group)

    async def _release(self, p: int) -> None:
        self.held.discard(p)
        await self.redis.eval(_RELEASE, 1, self._lease(p), self.name)

    async def _release_all(self) -> None:
        try:
            for p in sorted(self.held):
                await self._release(p)
            await self.redis.zrem(self.keys.members(self.topic, self.group), self.name)
        except TRANSIENT as exc:
            log.warning("could not release leases; they expire", extra={"error": repr(exc)})

    async def _gauge_pending(self) -> None:
        total = 0
        for p in self.held:
            summary = await self.redis.xpending(self.keys.stream(self.topic, p), self.group)
            total += int(summary["pending"])
        self.metrics.bus_pending.labels(self.topic, self.group).set(total)

    # -- one partition ---------------------------------------------------------------------

    async def _work(self, p: int, stopping: asyncio.Event) -> None:
        stream = self.keys.stream(self.topic, p)
        retrying, claim_idle_ms, next_sweep = False, 0, 0.0  # first: take over all, at once
        while not stopping.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    await self._claim(stream, claim_idle_ms)
                    claim_idle_ms = self.config.claim_idle_ms
                    next_sweep = time.monotonic() + claim_idle_ms / 1000
                retrying = not await self._step(stream, retrying)
            except TRANSIENT as exc:
                log.warning(
                    "consumer interrupted; retrying",
                    extra={"topic": self.topic, "partition": p, "error": repr(exc)},
                )
                self._settled.discard(stream)  # what was read may be pending: read it first
                retrying = True
            if retrying:
                await _wait(stopping, 0.2)

    async def _claim(self, stream: str, min_idle_ms: int) -> None:
        """Take over entries left pending by consumers that no longer own this partition."""
        self._settled.discard(stream)
        cursor: bytes | str = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                stream,
                self.group,
                self.name,
                min_idle_ms,
                start_id=cursor,
                count=self.config.batch_size,
            )
            cursor = reply[0]
            if cursor in (b"0-0", "0-0"):
                return

    async def _step(self, stream: str, retrying: bool) -> bool:
        """Read our pending entries first (a retry reads only the head), then new ones."""
        count = 1 if retrying else self.config.batch_size
        entries = (
            await self._read(stream, "0", count, block=None) if stream not in self._settled else []
        )
        if not entries:
            self._settled.add(stream)  # nothing of ours is pending until a failure or a claim
            entries = await self._read(stream, ">", count, block=self.config.block_ms)
        ok = await self._process(stream, entries) if entries else True
        if not ok:
            self._settled.discard(stream)
        return ok

    async def _read(self, stream: str, start: str, count: int, block: int | None) -> list[Entry]:
        reply = await self.redis.xreadgroup(
            self.group, self.name, {stream: start}, count=count, block=block
        )
        streams = cast(list[tuple[bytes, list[Entry]]], reply or [])
        return [(eid, fields or {}) for _, entries in streams for eid, fields in entries]

    async def _process(self, stream: str, entries: list[Entry]) -> bool:
        """Apply entries in order; False if one failed and is to be retried."""
        items = []
        for entry_id, fields in entries:
            try:
                envelope = decode(fields.get(b"e"))
                items.append(_Item(entry_id, envelope, self.sub.catalog.decode(envelope)))
            except MalformedEvent as exc:
                await self._dead_letter(stream, entry_id, fields, "malformed", str(exc))
        try:
            await self._apply_with_others(stream, items)
            return True
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler failed: find which, keep order
            if len(items) == 1:
                return await self._failed(stream, items[0], exc)
        for item in items:
            try:
                await self._apply([(stream, [item])])
            except TRANSIENT:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, counted, dead-lettered at N
                return await self._failed(stream, item, exc)
        return True

    async def _apply_with_others(self, stream: str, items: list[_Item]) -> None:
        """Apply one partition's read in the next transaction, with what the other partitions
        read meanwhile: one commit for many reads when busy, and no waiting when not."""
        read = _Read(stream, items, asyncio.get_running_loop().create_future())
        self._waiting.append(read)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(
                self._commit_waiting(), name=f"{self.topic}.apply"
            )
        await read.applied

    async def _commit_waiting(self) -> None:
        """Apply the waiting reads together until none is left."""
        while self._waiting:
            reads, self._waiting = self._waiting, []
            await self._apply_together(reads)

    async def _apply_together(self, reads: list[_Read]) -> None:
        """Apply reads in one transaction and tell each worker how its read went. When a
        handler fails, each read is applied alone, so that no worker is told of another's."""
        try:
            await self._apply([(r.stream, r.items) for r in reads])
        except Exception as exc:  # noqa: BLE001 - each worker deals with what its read raised
            if len(reads) == 1 or isinstance(exc, TRANSIENT):
                _settle(reads, exc)
                return
            for read in reads:
                await self._apply_together([read])
        else:
            _settle(reads, None)

    async def _apply(self, reads: list[tuple[str, list[_Item]]]) -> None:
        """Apply entries of one or more partitions (each in stream order) in one transaction,
        and acknowledge them once it has committed."""
        items = [i for _, part in reads for i in part]
        if not items:
            return
        handled = [i for i in items if self.sub.handles(i.payload)]
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = {
                r[0] for r in await conn.fetch(_INBOX, [i.envelope.id for i in handled], self.topic)
            }
            new = [i for i in handled if i.envelope.id in fresh]
            if duplicates := len(handled) - len(new):
                self.metrics.bus_duplicates.labels(self.topic, self.group).inc(duplicates)
            for run in _runs(new, self.sub.batch_handlers):
                await self._handle(conn, run)
            self.failpoints.hit("consumer.before_commit")
        self.failpoints.hit("consumer.after_commit")
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, part in reads:
                if part:
                    pipe.xack(stream, self.group, *[i.entry_id for i in part])
            await pipe.execute()
        self.metrics.bus_applied.labels(self.topic, self.group).inc(len(handled))

    async def _handle(self, conn: Connection, run: list[_Item]) -> None:
        """One handler call: a run of one batch-handled type, or a single event."""
        batch = self.sub.batch_handlers.get(type(run[0].payload))
        token = context.traceparent.set(context.child_traceparent(run[0].envelope.traceparent))
        try:
            if batch is not None:
                await batch(conn, [(i.payload, i.envelope) for i in run])
            else:
                await self.sub.handlers[type(run[0].payload)](conn, run[0].payload, run[0].envelope)
        finally:
            context.traceparent.reset(token)

    async def _failed(self, stream: str, item: _Item, exc: Exception) -> bool:
        """Log a handler failure; dead-letter the entry once it has had its deliveries."""
        log.error(
            "event handler failed",
            exc_info=exc,
            extra={
                "topic": self.topic,
                "event_id": str(item.envelope.id),
                "type": item.envelope.type,
            },
        )
        pending = await self.redis.xpending_range(
            stream, self.group, min=item.entry_id, max=item.entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        if deliveries < self.config.max_deliveries:
            return False
        reason = f"handler failed {deliveries} deliveries: {type(exc).__name__}: {exc}"
        await self._dead_letter(
            stream, item.entry_id, {b"e": encode(item.envelope)}, "handler", reason
        )
        return True

    async def _dead_letter(
        self, stream: str, entry_id: bytes, fields: Mapping[bytes, bytes], kind: str, reason: str
    ) -> None:
        """Park an entry, with why, in the group's dead-letter stream and acknowledge it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self._streams[stream],
                {"e": fields.get(b"e", b""), "reason": reason, "entry": entry_id, "stream": stream},
            )
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        self.metrics.bus_deadletter.labels(self.topic, self.group, kind).inc()
        log.error(
            "entry dead-lettered",
            extra={
                "topic": self.topic,
                "group": self.group,
                "entry": entry_id.decode(),
                "reason": reason,
            },
        )


def _settle(reads: list[_Read], error: Exception | None) -> None:
    """Tell each read's worker (unless it was cancelled) that its read was applied, or why not."""
    for read in reads:
        if read.applied.done():
            continue
        if error is None:
            read.applied.set_result(None)
        else:
            read.applied.set_exception(error)
