"""The demo riders `cardless up` seeds: each a phone key rebuilt from the data directory's
seed, a gateway rider its sign-in finds, a wallet funded once from the demo grant, and a ride
credential a gate accepts; seeding again funds nobody twice, and a day later renews credentials."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import jwt
import pytest
from jwt.utils import base64url_decode

from services.gateway import demo
from services.gateway.assertions import authenticate_phone
from services.gateway.tokens import TokenSettings
from services.transit import demo as transit_demo
from services.transit import ridecode
from services.transit.app import policy
from services.transit.config import TransitConfig
from services.transit.denylist import DenyList
from services.transit.gate import GateVerifier
from services.transit.handlers import short_kid
from services.wallet.demo import OPENING_BALANCE_MINOR, grant_account
from services.wallet.ledger import TransferCode, wallet_account
from shared import db, riders
from shared.clock import SystemClock
from shared.config import PlatformConfig
from shared.keyring import Keyring
from shared.service import Service
from tests.gateway_city import ManualClock

RIDERS = 40


@dataclass
class Demo:
    """The three schemas the riders are seeded into, and how to seed them again."""

    schemas: dict[str, str]
    database_url: str
    data_dir: Path
    gateway: asyncpg.Pool
    wallet: asyncpg.Pool
    transit: asyncpg.Pool

    async def seed(self, clock: ManualClock | None = None) -> int:
        environ = {riders.DEMO_RIDERS: str(RIDERS)}
        return await riders.seed(self.schemas, self.database_url, self.data_dir, environ, clock)


@pytest.fixture
async def demo_city(
    config: PlatformConfig,
    gateway_service: Service,
    wallet_service: Service,
    transit_service: Service,
    tmp_path: Path,
) -> AsyncIterator[Demo]:
    services = {"gateway": gateway_service, "wallet": wallet_service, "transit": transit_service}
    pools = {n: await db.create_pool(config.database_url, s.schema) for n, s in services.items()}
    schemas = {name: service.schema for name, service in services.items()}
    yield Demo(schemas, config.database_url, tmp_path, **pools)
    for pool in pools.values():
        await pool.close()


async def test_each_demo_rider_signs_in_as_its_own_rider_with_a_key_rebuilt_from_the_seed(
    demo_city: Demo,
) -> None:
    assert await demo_city.seed() == RIDERS
    seed_file = demo_city.data_dir / "riders" / "seed"
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    seed = demo.rider_seed(demo_city.data_dir, create=False)
    subjects = []
    for i in (0, RIDERS - 1):
        phone = demo.phone_key(seed, i)
        jkt, _ = authenticate_phone(sign_in(phone), now=time.time(), settings=SETTINGS)
        riders = await demo_city.gateway.fetch("SELECT rider_id FROM riders WHERE jkt = $1", jkt)
        [subject] = [row["rider_id"] for row in riders]
        assert subject.startswith("rider_")
        subjects.append(subject)
    assert len(set(subjects)) == 2
    assert await demo_city.gateway.fetchval("SELECT count(*) FROM riders") == RIDERS


SETTINGS = TokenSettings(token_url="http://gateway.test/oauth/token")


def sign_in(phone: demo.Ed25519PrivateKey) -> str:
    """The phone's sign-in assertion, as `cardless rider` signs it."""
    now = int(time.time())
    claims = {"aud": SETTINGS.token_url, "iat": now, "exp": now + 60, "jti": "j1"}
    jwk = {**jwt.algorithms.OKPAlgorithm.to_jwk(phone.public_key(), as_dict=True), "alg": "EdDSA"}
    return jwt.encode(claims, phone, algorithm="EdDSA", headers={"jwk": jwk})


async def test_every_demo_wallet_is_funded_once_from_the_demo_grant(demo_city: Demo) -> None:
    await demo_city.seed()
    await demo_city.seed()  # a second `up`
    subjects = [r[0] for r in await demo_city.gateway.fetch("SELECT rider_id FROM riders")]
    balances = await demo_city.wallet.fetch(
        "SELECT id, credits_posted - debits_posted AS balance FROM accounts"
        " WHERE id = ANY($1::uuid[])",
        [wallet_account(s, "CNY") for s in subjects],
    )
    assert sorted(r["balance"] for r in balances) == [OPENING_BALANCE_MINOR] * RIDERS
    grant = await demo_city.wallet.fetchrow(
        "SELECT debits_posted, credits_posted, code FROM accounts WHERE id = $1", grant_account()
    )
    assert (grant["debits_posted"], grant["credits_posted"]) == (RIDERS * OPENING_BALANCE_MINOR, 0)
    codes = await demo_city.wallet.fetch("SELECT DISTINCT code FROM transfers")
    assert [r["code"] for r in codes] == [TransferCode.TOP_UP]
    published = await demo_city.wallet.fetchval("SELECT count(*) FROM outbox")
    assert published == RIDERS, "each opening balance announced once, as every transfer is"


async def test_a_demo_riders_code_opens_a_gate_and_a_second_seeding_issues_nothing_new(
    demo_city: Demo,
) -> None:
    await demo_city.seed()
    credentials = transit_demo.load(demo_city.data_dir)
    assert len(credentials) == RIDERS
    await demo_city.seed()
    assert transit_demo.load(demo_city.data_dir) == credentials
    assert await issued(demo_city) == RIDERS

    gate = await gate_at(demo_city, "WG")
    codes = riders.ride_codes(demo_city.data_dir, 5, 3)
    decisions = [gate.scan(base64url_decode(c), now=int(time.time())) for c in codes]
    assert [(d.open, d.reason) for d in decisions] == [(True, "ok")] * 3
    again = riders.ride_codes(demo_city.data_dir, 5, 1)[0]
    assert gate.scan(base64url_decode(again), now=int(time.time()), direction="exit").open


async def issued(demo_city: Demo) -> int:
    count: int = await demo_city.transit.fetchval("SELECT count(*) FROM ride_credentials")
    return count


async def gate_at(demo_city: Demo, station: str) -> GateVerifier:
    keyring = Keyring(demo_city.transit, SystemClock(), policy(TransitConfig()))
    await keyring.load()
    issuers = {short_kid(k.kid): k.key for k in keyring.verification_keys()}
    return GateVerifier(station=station, issuer_keys=issuers, deny=DenyList())


async def test_a_day_later_seeding_renews_the_credentials_and_funds_nobody_again(
    demo_city: Demo,
) -> None:
    await demo_city.seed()
    before = transit_demo.load(demo_city.data_dir)
    transfers = await demo_city.wallet.fetchval("SELECT count(*) FROM transfers")
    tomorrow = ManualClock(datetime.now(UTC) + timedelta(days=1, minutes=1))
    await demo_city.seed(tomorrow)
    after = transit_demo.load(demo_city.data_dir)
    renewed = [ridecode.parse_credential(c) for c in after]
    assert all(c.not_after > tomorrow.unix() for c in renewed)
    assert not set(before) & set(after)
    assert await issued(demo_city) == 2 * RIDERS
    assert await demo_city.wallet.fetchval("SELECT count(*) FROM transfers") == transfers


async def test_ride_codes_need_seeded_riders(tmp_path: Path, demo_city: Demo) -> None:
    with pytest.raises(demo.DemoError, match="run `cardless up` first"):
        riders.ride_codes(tmp_path / "elsewhere", 0, 1)
    await demo_city.seed()
    with pytest.raises(riders.NoRiders, match="40 demo riders"):
        riders.ride_codes(demo_city.data_dir, RIDERS - 1, 2)
