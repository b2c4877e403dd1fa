"""Real servers for the whole test session, and per-test isolation.

Valkey and PostgreSQL start once (embedded, in a temporary directory) unless REDIS_URL and
DATABASE_URL name servers to use. Each test gets its own Redis key namespace and its own
PostgreSQL schema, so tests never see each other's streams or rows.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.gateway.app import SERVICE as GATEWAY
from services.identity.app import SERVICE as IDENTITY
from services.transit.app import SERVICE as TRANSIT
from services.wallet.app import SERVICE as WALLET
from shared import db
from shared.city import Servers
from shared.config import BusConfig, PlatformConfig
from shared.embedded import EmbeddedServers
from shared.service import Service, migrate
from tests.platform_app import make_service

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    if redis_url and database_url:
        yield Servers(redis_url, database_url)
        return
    with EmbeddedServers(tmp_path_factory.mktemp("city")) as embedded:
        yield Servers(embedded.valkey.url, embedded.postgres.url)


@pytest.fixture
def namespace() -> str:
    """A name no other test uses: the Redis key prefix and the schema of this test."""
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
def bus_config(namespace: str) -> BusConfig:
    # Short leases and blocks so that tests which kill consumers move on quickly.
    return BusConfig(
        namespace=namespace,
        partitions=4,
        block_ms=100,
        lease_ms=1000,
        claim_idle_ms=1000,
        max_deliveries=3,
    )


@pytest.fixture
def config(servers: Servers, namespace: str, bus_config: BusConfig) -> PlatformConfig:
    return PlatformConfig(
        service=f"notes_{namespace}",
        redis_url=servers.redis_url,
        database_url=servers.database_url,
        bus=bus_config,
    )


@pytest.fixture
async def notes(config: PlatformConfig) -> Service:
    """The platform test app under this test's own schema, migrated."""
    service = make_service(config.service)
    await migrate(service, config.database_url)
    return service


async def _migrated(service: Service, config: PlatformConfig, namespace: str) -> Service:
    """``service`` under this test's own schema, migrated."""
    own = dataclasses.replace(service, name=f"{service.name}_{namespace}")
    await migrate(own, config.database_url)
    return own


@pytest.fixture
async def wallet_service(config: PlatformConfig, namespace: str) -> Service:
    return await _migrated(WALLET, config, namespace)


@pytest.fixture
async def identity_service(config: PlatformConfig, namespace: str) -> Service:
    return await _migrated(IDENTITY, config, namespace)


@pytest.fixture
async def transit_service(config: PlatformConfig, namespace: str) -> Service:
    return await _migrated(TRANSIT, config, namespace)


@pytest.fixture
async def gateway_service(config: PlatformConfig, namespace: str) -> Service:
    return await _migrated(GATEWAY, config, namespace)


@pytest.fixture
async def gateway_pool(
    gateway_service: Service, config: PlatformConfig
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the gateway's schema for this test."""
    pool = await db.create_pool(config.database_url, gateway_service.schema, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def pool(notes: Service, config: PlatformConfig) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(config.database_url, notes.schema, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def redis(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis_url)
    yield client
    await client.aclose()


def service_env(config: PlatformConfig, **extra: str) -> dict[str, str]:
    """The environment of a `cardless serve` subprocess running this test's notes service."""
    return {
        **os.environ,
        "REDIS_URL": config.redis_url,
        "DATABASE_URL": config.database_url,
        "NOTES_SERVICE_NAME": config.service,
        "CARDLESS_NAMESPACE": config.bus.namespace,
        "BUS_PARTITIONS": str(config.bus.partitions),
        "BUS_BLOCK_MS": str(config.bus.block_ms),
        "BUS_LEASE_MS": str(config.bus.lease_ms),
        "BUS_CLAIM_IDLE_MS": str(config.bus.claim_idle_ms),
        "BUS_MAX_DELIVERIES": str(config.bus.max_deliveries),
        "PYTHONPATH": str(REPO),
        **extra,
    }
