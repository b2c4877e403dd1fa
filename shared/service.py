"""What a service is to the platform, and the composition root that wires one up.

A service module exposes a ``Service``: its name, its migrations, the events it produces, the
topics it consumes, and a function that adds its routes. ``create_app`` turns that and a
``PlatformConfig`` into a ready ``web.Application`` whose pool, Redis client and bus are opened
and closed in ``cleanup_ctx`` (in that order, and the reverse on shutdown), and whose
``shared.auth.VERIFIER`` checks the gateway's access tokens against ``AUTH_JWKS``, or against
the JWKS at ``AUTH_JWKS_URL`` fetched over an HTTP session of its own.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from shared import db, http
from shared.auth import VERIFIER, RemoteJwks, TokenVerifier
from shared.bus import Bus
from shared.clock import Clock, SystemClock
from shared.config import PlatformConfig
from shared.consumer import Subscription
from shared.events import EventCatalog
from shared.metrics import Metrics

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", PlatformConfig)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
BUS = web.AppKey("bus", Bus)
CLOCK = web.AppKey("clock", Clock)


@dataclass(frozen=True)
class Service:
    """A service as the platform sees it."""

    name: str
    add_routes: Callable[[web.Application], None]
    migrations: Path | None = None
    produces: Sequence[EventCatalog] = ()
    subscriptions: Callable[[web.Application], Sequence[Subscription]] = lambda _: ()
    error_map: Mapping[type[Exception], tuple[int, str]] = field(default_factory=dict)
    # Shared pieces whose tables live in this service's schema (``shared/migrations/<name>``).
    components: Sequence[str] = ()

    @property
    def schema(self) -> str:
        return db.check_schema(self.name.replace("-", "_"))

    def migration_plan(self) -> list[db.Migration]:
        return db.plan(self.migrations, self.name, self.components)


def load(selector: str) -> Service:
    """A registered service by name, or any Service by ``module:attribute``."""
    from services import REGISTRY

    target = REGISTRY.get(selector, selector)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise LookupError(
            f"unknown service {selector!r} (registered: {known}; or give module:attribute)"
        )
    service = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(service, Service):
        raise LookupError(f"{target} is not a shared.service.Service")
    return service


def selected(environ: Mapping[str, str]) -> list[str]:
    """The services to run: ``CARDLESS_SERVICES`` (comma-separated), else every registered."""
    from services import REGISTRY

    given = environ.get("CARDLESS_SERVICES", "").strip()
    return [s.strip() for s in given.split(",") if s.strip()] if given else sorted(REGISTRY)


def create_app(
    service: Service, config: PlatformConfig, *, clock: Clock | None = None
) -> web.Application:
    """The composition root: one service's application with every platform piece wired in."""
    metrics = Metrics(service.name.replace("-", "_"))
    app = http.base_app(metrics, max_body_bytes=config.max_body_bytes, error_map=service.error_map)
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    if config.auth.jwks_url is not None:
        # Its HTTP session must be opened inside the running loop: the verifier comes at start.
        app.cleanup_ctx.append(_remote_verifier(config.auth.jwks_url))
    else:
        app[VERIFIER] = TokenVerifier(config.auth, app[CLOCK])
        if not app[VERIFIER].configured:
            log.warning("no AUTH_JWKS nor AUTH_JWKS_URL: every authenticated route answers 401")
    app.cleanup_ctx.append(_resources(service))
    app.cleanup_ctx.append(_bus(service))
    service.add_routes(app)
    return app


def _remote_verifier(url: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def remote_verifier(app: web.Application) -> AsyncIterator[None]:
        """A verifier with the JWKS at ``url``, over a session closed last on shutdown."""
        auth = app[CONFIG].auth
        async with aiohttp.ClientSession() as session:
            keys = RemoteJwks(url, session=session, min_refresh_interval_s=auth.jwks_refresh_s)
            app[VERIFIER] = TokenVerifier(auth, app[CLOCK], keys)
            yield
            await keys.aclose()

    return remote_verifier


def _resources(service: Service) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        app[POOL] = await db.create_pool(
            config.database_url, service.schema, max_size=config.db_pool_max
        )
        app[REDIS] = aioredis.Redis.from_url(config.redis_url)
        steps = service.migration_plan()
        app[http.READINESS].update(
            {
                "database": lambda: _database_ready(app[POOL], service.schema, steps),
                "redis": lambda: _redis_ready(app[REDIS]),
            }
        )
        yield
        await app[REDIS].aclose()
        await app[POOL].close()

    return resources


async def _database_ready(pool: asyncpg.Pool, schema: str, steps: list[db.Migration]) -> str | None:
    missing = await db.pending(pool, schema, steps)
    return f"{missing} migration(s) not applied; run `cardless migrate`" if missing else None


async def _redis_ready(redis: aioredis.Redis) -> str | None:
    return None if await redis.ping() else "no PONG"


def _bus(service: Service) -> Callable[[web.Application], AsyncIterator[None]]:
    async def bus(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        app[BUS] = Bus(
            service=service.name,
            schema=service.schema,
            config=config.bus,
            pool=app[POOL],
            redis=app[REDIS],
            metrics=app[http.METRICS],
            clock=app[CLOCK],
            produces=service.produces,
            subscriptions=service.subscriptions(app),
        )
        async with app[BUS].running() as running:
            running.add_done_callback(_report_stopped_bus)
            app[http.READINESS]["bus"] = lambda: _bus_ready(running)
            yield

    return bus


def _report_stopped_bus(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("event bus stopped unexpectedly", exc_info=task.exception())


async def _bus_ready(task: asyncio.Task[None]) -> str | None:
    if not task.done():
        return None
    error = None if task.cancelled() else task.exception()
    return f"event bus stopped: {error!r}"


async def migrate(service: Service, database_url: str) -> list[str]:
    """Apply a service's pending migrations (platform tables first)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await db.migrate(conn, service.schema, service.migration_plan())
    finally:
        await conn.close()


def serve(service: Service, config: PlatformConfig) -> None:
    """Run one service until SIGINT/SIGTERM, then drain in-flight requests and the bus.
    On uvloop: the same asyncio, with a faster loop (about a fifth more through the gateway)."""
    web.run_app(
        create_app(service, config),
        loop=uvloop.new_event_loop(),
        host=config.host,
        port=config.port,
        reuse_port=config.reuse_port,
        shutdown_timeout=config.shutdown_timeout_s,
        print=None,
        access_log=None,
    )
