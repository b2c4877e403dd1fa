"""The demo city's riders, seeded by ``cardless up`` (``CARDLESS_DEMO_RIDERS``, 2000 by default):
a phone key each, derived from a secret in the data directory; a gateway rider, a funded wallet
and a ride credential, each seeded by its own service's code in its own schema. And the ride
codes their phones show (``cardless riders codes``), made with no network."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from jwt.utils import base64url_encode

from services.gateway import demo
from services.transit import demo as transit_demo
from services.transit.app import policy as transit_policy
from services.transit.config import TransitConfig
from services.transit.ridecode import PublicKey
from services.wallet import demo as wallet_demo
from shared import db
from shared.clock import Clock, SystemClock
from shared.config import BusConfig, Env, OperatorError
from shared.keyring import Keyring
from shared.outbox import Outbox

DEMO_RIDERS = "CARDLESS_DEMO_RIDERS"  # how many demo riders `up` seeds; 0: none
DEFAULT_DEMO_RIDERS = 2000
GATEWAY = "gateway"
T = TypeVar("T")


class NoRiders(OperatorError):
    """The demo riders asked for are not there; one line saying why."""


async def seed(
    schemas: Mapping[str, str],
    database_url: str,
    data_dir: Path,
    environ: Mapping[str, str],
    clock: Clock | None = None,
) -> int:
    """The demo riders (``CARDLESS_DEMO_RIDERS``): a phone key each, derived from the seed in
    the data directory; a gateway rider, a funded wallet and a ride credential, each seeded by
    its own service's code in its schema (``schemas``: service name to schema) if that service
    runs. The gateway names riders, so without it none are seeded. Idempotent: a second ``up``
    funds nobody twice and renews only credentials that run low. How many riders there are."""
    env = Env(environ)
    count = env.integer(DEMO_RIDERS, DEFAULT_DEMO_RIDERS, minimum=0, maximum=100_000)
    if count == 0 or GATEWAY not in schemas:
        return 0
    clock = clock or SystemClock()
    now = clock.now()
    seed = demo.rider_seed(data_dir)
    phones = [demo.phone_key(seed, i) for i in range(count)]
    jkts = [demo.phone_thumbprint(phone) for phone in phones]
    subjects = await _in_schema(
        database_url, schemas[GATEWAY], lambda conn: demo.seed_riders(conn, jkts, now)
    )
    if "wallet" in schemas:
        outbox = Outbox("wallet", BusConfig.from_env(env).partitions, clock)
        await _in_schema(
            database_url,
            schemas["wallet"],
            lambda conn: wallet_demo.fund(conn, subjects, outbox.add_many),
        )
    if "transit" in schemas:
        riders = [(s, p.public_key()) for s, p in zip(subjects, phones, strict=True)]
        saved = transit_demo.load(data_dir)
        held = [saved[i] if i < len(saved) else None for i in range(count)]
        config = TransitConfig.from_env(environ)
        credentials = await _credentials(
            database_url, schemas["transit"], riders, held, config, clock
        )
        transit_demo.save(data_dir, credentials)
    return count


async def _credentials(
    database_url: str,
    schema: str,
    riders: Sequence[tuple[str, PublicKey]],
    held: Sequence[bytes | None],
    config: TransitConfig,
    clock: Clock,
) -> list[bytes]:
    """Transit's part: its issuer key signing now (made if missing), then the credentials."""
    pool = await db.create_pool(database_url, schema, max_size=2)
    try:
        keyring = Keyring(pool, clock, transit_policy(config))
        await keyring.refresh()
        issuing = transit_demo.Issuing(keyring, clock.now(), config.credential_ttl_s)
        return await db.in_transaction(
            pool, lambda conn: transit_demo.seed(conn, riders, held, issuing)
        )
    finally:
        await pool.close()


async def _in_schema(
    database_url: str, schema: str, work: Callable[[db.Connection], Awaitable[T]]
) -> T:
    """``work`` in one transaction on ``schema``."""
    pool = await db.create_pool(database_url, schema, max_size=1)
    try:
        return await db.in_transaction(pool, work)
    finally:
        await pool.close()


def ride_codes(data_dir: Path, start: int, count: int) -> list[str]:
    """Fresh ride codes (base64url) of demo riders ``start`` to ``start + count - 1``, signed
    by their phones now: what a gate's camera reads."""
    seed = demo.rider_seed(data_dir, create=False)
    credentials = transit_demo.load(data_dir)
    if start < 0 or count < 0 or start + count > len(credentials):
        raise NoRiders(
            f"{len(credentials)} demo riders have credentials in {data_dir / 'riders'};"
            f" asked for riders {start} to {start + count - 1}"
        )
    now = time.time()
    return [
        base64url_encode(
            transit_demo.ride_code(credentials[i], demo.phone_key(seed, i), now)
        ).decode()
        for i in range(start, start + count)
    ]
