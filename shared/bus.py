"""A service's side of the event bus: its outbox, relay, consumers, and their upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence

import asyncpg
import redis.asyncio as aioredis

from shared import idempotency
from shared.clock import Clock, every
from shared.config import BusConfig
from shared.consumer import TRANSIENT, Consumer, Subscription
from shared.db import Connection
from shared.events import Envelope, Event, EventCatalog
from shared.failpoints import Failpoints
from shared.keys import Keys
from shared.metrics import Metrics
from shared.outbox import Outbox, Relay

UPKEEP_EVERY_S = 30.0


class Bus:
    """Everything one service process does on the bus."""

    def __init__(
        self,
        *,
        service: str,
        schema: str,
        config: BusConfig,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        metrics: Metrics,
        clock: Clock,
        produces: Sequence[EventCatalog] = (),
        subscriptions: Sequence[Subscription] = (),
        failpoints: Failpoints | None = None,
    ) -> None:
        self.service, self.config, self.pool, self.redis = service, config, pool, redis
        self.metrics, self.produces = metrics, produces
        self.keys = Keys(config.namespace)
        failpoints = failpoints or Failpoints.from_env()
        self.outbox = Outbox(service, config.partitions, clock)
        self.relay = Relay(
            pool=pool,
            redis=redis,
            schema=schema,
            keys=self.keys,
            config=config,
            metrics=metrics,
            failpoints=failpoints,
        )
        name = f"{service}-{socket.gethostname()}-{os.getpid()}"
        self.consumers = [
            Consumer(
                subscription=sub,
                group=service,
                name=name,
                pool=pool,
                redis=redis,
                keys=self.keys,
                config=config,
                metrics=metrics,
                failpoints=failpoints,
            )
            for sub in subscriptions
        ]

    async def publish(self, conn: Connection, key: str, *payloads: Event) -> list[Envelope]:
        """Write events in the caller's transaction; they leave only if it commits."""
        return await self.outbox.add(conn, key, *payloads)

    async def publish_many(
        self, conn: Connection, events: Sequence[tuple[str, Event]]
    ) -> list[Envelope]:
        """Write events about many keys (``(key, payload)`` pairs) in the caller's transaction."""
        return await self.outbox.add_many(conn, events)

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay, consume and keep tidy until ``stopping`` is set; consumers finish their batch."""
        await asyncio.gather(
            self.relay.run(stopping),
            *(c.run(stopping) for c in self.consumers),
            self._upkeep(stopping),
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        """Run the bus for the duration of the block; on exit consumers finish their batch."""
        stopping = asyncio.Event()
        task = asyncio.create_task(self.run(stopping), name=f"{self.service}-bus")
        try:
            yield task
        finally:
            stopping.set()
            if not task.done():  # a bus that already stopped was reported when it did
                await task

    async def _upkeep(self, stopping: asyncio.Event) -> None:
        await every(
            UPKEEP_EVERY_S,
            self._tidy,
            stopping,
            retry_on=(*TRANSIENT, asyncpg.PostgresError),
            what="bus upkeep",
        )

    async def _tidy(self) -> None:
        await self.trim()
        await self.prune()
        self.metrics.bus_outbox_backlog.set(await self.relay.backlog())

    async def trim(self) -> int:
        """Drop stream entries every group has acknowledged, and never one that any has not."""
        dropped = 0
        for catalog in self.produces:
            for p in range(self.config.partitions):
                dropped += await trim_acknowledged(self.redis, self.keys.stream(catalog.topic, p))
        return dropped

    async def prune(self) -> None:
        """Forget published outbox rows and inbox ids past retention, and expired
        Idempotency-Key answers (the platform's tables in every service schema)."""
        hours = self.config.retention_hours
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)", hours
            )
            await conn.execute(
                "DELETE FROM inbox WHERE applied_at < now() - make_interval(hours => $1)", hours
            )
        await idempotency.prune(self.pool, self.outbox.clock.now())


async def trim_acknowledged(redis: aioredis.Redis, stream: str) -> int:
    """Trim ``stream`` below the oldest entry some group still needs; returns entries dropped."""
    groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
    if not groups:
        return 0  # nobody has read it yet: nothing is known to be acknowledged
    floor = None
    for group in groups:
        needed = group["last-delivered-id"]
        if int(group["pending"]):
            summary = await redis.xpending(stream, group["name"])
            needed = summary["min"]
        floor = needed if floor is None else min(floor, needed, key=_entry_id)
    return int(await redis.xtrim(stream, minid=floor, approximate=False))


def _entry_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
