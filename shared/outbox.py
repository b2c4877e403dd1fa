"""The transactional outbox and its relay to Redis streams.

A service writes its events into its own ``outbox`` table in the transaction that changes its
state. The relay publishes unpublished rows in order (one script of ``XADD``s per stream) and
then marks them published in the same database transaction. A crash between the two republishes
the batch: consumers see the same event id twice and their inbox drops the copy. Relays lock
partitions with transaction-scoped advisory locks, so replicas never interleave one partition's
events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import context
from shared.clock import Clock, wait_for_first
from shared.clock import wait_for_stop as _wait
from shared.config import BusConfig
from shared.db import Connection
from shared.events import Envelope, Event, encode, partition_of, seal
from shared.failpoints import Failpoints
from shared.keys import Keys
from shared.metrics import Metrics

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO outbox (topic, partition, event_id, body)
SELECT * FROM unnest($1::text[], $2::int[], $3::uuid[], $4::bytea[])"""

# Take every partition no other relay holds, and mark its oldest unpublished rows published.
# The mark takes effect only when the transaction commits, which is after the XADDs.
_CLAIM = """
WITH mine AS MATERIALIZED (
    SELECT p FROM generate_series(0, $1::int - 1) AS p
    WHERE pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox'), p)
), batch AS (
    SELECT seq FROM outbox
    WHERE published_at IS NULL AND partition IN (SELECT p FROM mine)
    ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE outbox SET published_at = now() FROM batch WHERE outbox.seq = batch.seq
RETURNING outbox.seq, outbox.topic, outbox.partition, outbox.body"""

# Append every body given to one stream, in order: one command per stream instead of one per
# event saves the client most of its work (packing and parsing each command) at full speed.
_APPEND = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end return #ARGV"


class Outbox:
    """Writes a service's events in the caller's transaction."""

    def __init__(self, service: str, partitions: int, clock: Clock) -> None:
        self.service, self.partitions, self.clock = service, partitions, clock

    async def add(self, conn: Connection, key: str, *payloads: Event) -> list[Envelope]:
        """Record events about ``key``; they are published only if the transaction commits."""
        return await self.add_many(conn, [(key, p) for p in payloads])

    async def add_many(
        self, conn: Connection, events: Sequence[tuple[str, Event]]
    ) -> list[Envelope]:
        """Record events about many keys at once (``(key, payload)`` pairs, in order)."""
        now, trace = self.clock.now(), context.traceparent.get()
        envelopes = [
            seal(p, key=key, source=self.service, occurred_at=now, traceparent=trace)
            for key, p in events
        ]
        if envelopes:
            await self.add_sealed(conn, envelopes, [p.topic for _, p in events])
        return envelopes

    async def add_sealed(
        self, conn: Connection, envelopes: Sequence[Envelope], topics: Sequence[str]
    ) -> None:
        """Record already-sealed envelopes (many keys at once, for batch producers)."""
        await conn.execute(
            _INSERT,
            list(topics),
            [partition_of(e.key, self.partitions) for e in envelopes],
            [e.id for e in envelopes],
            [encode(e) for e in envelopes],
        )


class Relay:
    """Publishes one service's outbox to its topics' streams."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        schema: str,
        keys: Keys,
        config: BusConfig,
        metrics: Metrics,
        failpoints: Failpoints,
    ) -> None:
        self.pool, self.redis, self.schema, self.keys = pool, redis, schema, keys
        self.config, self.metrics, self.failpoints = config, metrics, failpoints
        self._wake = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until ``stopping`` is set; woken by NOTIFY, with a slow poll as a backstop."""
        while not stopping.is_set():
            try:
                async with self.pool.acquire() as listener:
                    await self._listen(listener, stopping)
            except (OSError, asyncpg.PostgresError, RedisError) as exc:
                log.warning("relay interrupted; retrying", extra={"error": repr(exc)})
                await _wait(stopping, 1.0)

    async def _listen(self, listener: Connection, stopping: asyncio.Event) -> None:
        channel = f"cardless_outbox_{self.schema}"
        await listener.add_listener(channel, self._notified)
        try:
            while not stopping.is_set():
                self._wake.clear()
                while await self.publish_batch() == self.config.batch_size:
                    pass
                # The timeout is a backstop for a lost notification; a stop must not wait for it.
                await wait_for_first(self._wake, stopping, seconds=1.0)
        finally:
            await listener.remove_listener(channel, self._notified)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def publish_batch(self) -> int:
        """Publish up to one batch of unpublished rows; returns how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = sorted(
                await conn.fetch(_CLAIM, self.config.partitions, self.config.batch_size),
                key=lambda r: r["seq"],
            )
            if not rows:
                return 0
            streams: dict[str, list[bytes]] = defaultdict(list)
            for row in rows:
                streams[self.keys.stream(row["topic"], row["partition"])].append(row["body"])
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, bodies in streams.items():
                    pipe.eval(_APPEND, 1, stream, *bodies)
                await pipe.execute()
            self.failpoints.hit("relay.after_xadd")  # published, not yet marked: commit is next
        for topic, count in Counter(row["topic"] for row in rows).items():
            self.metrics.bus_published.labels(topic).inc(count)
        return len(rows)

    async def backlog(self) -> int:
        value = await self.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return int(value)
