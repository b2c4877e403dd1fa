"""Idempotency-Key: a payment retried with its key is made once and answered the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared import idempotency
from shared.config import PlatformConfig
from shared.idempotency import KEY_IN_USE, KEY_INVALID, KEY_MISSING, KEY_REUSED, LEASE, RETENTION
from shared.service import Service, create_app
from tests.platform_app import PAYMENT_HOOK

TEN_EUR = {"amount": 1000, "currency": "EUR"}
FIVE_EUR = {"amount": 500, "currency": "EUR"}


class ManualClock:
    """A clock the test moves by hand, so leases and retention end without waiting."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, by: timedelta) -> None:
        self.at += by


class Hook:
    """Runs inside the payment's transaction: holds the next payment in flight, or fails it."""

    def __init__(self) -> None:
        self.hold_next = False
        self.fail_next = False
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def __call__(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the provider went away")
        if self.hold_next:
            self.hold_next = False
            self.entered.set()
            await self.released.wait()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hook() -> Hook:
    return Hook()


@pytest.fixture
async def client(
    notes: Service, config: PlatformConfig, clock: ManualClock, hook: Hook
) -> AsyncIterator[TestClient]:
    app = create_app(notes, config, clock=clock)
    app[PAYMENT_HOOK] = hook
    async with TestClient(TestServer(app)) as client:
        yield client


@dataclass(frozen=True)
class Answer:
    """What the client got: status, the headers a replay must repeat, and the body bytes."""

    status: int
    content_type: str
    location: str | None
    replayed: bool
    body: bytes

    def same_as(self, other: Answer) -> bool:
        return (self.status, self.content_type, self.location, self.body) == (
            other.status,
            other.content_type,
            other.location,
            other.body,
        )

    @property
    def problem_type(self) -> object:
        assert self.content_type.startswith("application/problem+json")
        return msgspec.json.decode(self.body)["type"]


async def pay(
    client: TestClient,
    key: str | None,
    body: dict[str, object] = TEN_EUR,
    *,
    principal: str | None = None,
) -> Answer:
    headers = {} if key is None else {"Idempotency-Key": key}
    if principal is not None:
        headers["X-Principal"] = principal
    response = await client.post("/payments", data=msgspec.json.encode(body), headers=headers)
    return Answer(
        status=response.status,
        content_type=response.headers["Content-Type"],
        location=response.headers.get("Location"),
        replayed=response.headers.get("Idempotent-Replayed") == "true",
        body=await response.read(),
    )


async def payments(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM notes WHERE key LIKE 'payment:%'")
    return count


async def test_a_payment_without_an_idempotency_key_is_refused(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    response = await pay(client, None)
    assert response.status == 400
    assert response.problem_type == KEY_MISSING
    assert await payments(pool) == 0


@pytest.mark.parametrize(
    "key",
    ["x" * 256, '"x y"', "caf\u00e9", '"unbalanced', "back\\slash", '""', '"k";p=1'],
)
async def test_a_malformed_key_is_refused(client: TestClient, pool: asyncpg.Pool, key: str) -> None:
    response = await pay(client, key)
    assert response.status == 400
    assert response.problem_type == KEY_INVALID
    assert await payments(pool) == 0


async def test_two_key_headers_are_refused(client: TestClient) -> None:
    response = await client.post(
        "/payments",
        data=msgspec.json.encode(TEN_EUR),
        headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert response.status == 400
    assert (await response.json(content_type=None))["type"] == KEY_INVALID


async def test_a_retry_replays_the_stored_answer_and_pays_once(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    first = await pay(client, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    assert first.status == 201
    assert (first.location or "").startswith("/notes/")
    assert not first.replayed
    again = await pay(client, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    assert again.replayed
    assert first.same_as(again)
    assert await payments(pool) == 1


async def test_a_quoted_and_a_bare_key_are_the_same_key(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    first = await pay(client, '"order-42"')
    bare = await pay(client, "order-42")
    assert first.status == 201
    assert bare.replayed
    assert first.same_as(bare)
    assert await payments(pool) == 1


async def test_the_same_key_with_another_body_is_refused_with_422(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    assert (await pay(client, "order-42", TEN_EUR)).status == 201
    other = await pay(client, "order-42", FIVE_EUR)
    assert other.status == 422
    assert other.problem_type == KEY_REUSED
    assert await payments(pool) == 1


async def test_a_duplicate_while_the_first_is_in_flight_is_409_and_never_runs_twice(
    client: TestClient, pool: asyncpg.Pool, hook: Hook
) -> None:
    hook.hold_next = True
    first = asyncio.create_task(pay(client, "order-42"))
    await hook.entered.wait()
    duplicate = await pay(client, "order-42")
    assert duplicate.status == 409
    assert duplicate.problem_type == KEY_IN_USE
    hook.released.set()
    assert (await first).status == 201
    assert (await pay(client, "order-42")).replayed
    assert await payments(pool) == 1


async def test_racing_duplicates_pay_once(client: TestClient, pool: asyncpg.Pool) -> None:
    answers = await asyncio.gather(*(pay(client, "order-42") for _ in range(10)))
    assert {a.status for a in answers} <= {201, 409}
    assert [a.status for a in answers if not a.replayed].count(201) == 1
    assert await payments(pool) == 1


async def test_a_stored_4xx_is_replayed(client: TestClient, pool: asyncpg.Pool) -> None:
    first = await pay(client, "order-42", {"amount": 0, "currency": "EUR"})
    assert first.status == 422
    assert b"amount must be positive" in first.body
    again = await pay(client, "order-42", {"amount": 0, "currency": "EUR"})
    assert again.replayed
    assert first.same_as(again)
    assert await payments(pool) == 0


async def test_a_5xx_is_not_stored_and_a_retry_runs_again(
    client: TestClient, pool: asyncpg.Pool, hook: Hook
) -> None:
    hook.fail_next = True
    failed = await pay(client, "order-42")
    assert failed.status == 500
    assert await payments(pool) == 0  # the failed attempt's payment was rolled back
    retry = await pay(client, "order-42")
    assert retry.status == 201
    assert not retry.replayed
    assert await payments(pool) == 1


async def test_a_request_whose_lease_ended_is_taken_over_and_pays_once(
    client: TestClient, pool: asyncpg.Pool, hook: Hook, clock: ManualClock
) -> None:
    hook.hold_next = True
    stuck = asyncio.create_task(pay(client, "order-42"))
    await hook.entered.wait()
    clock.advance(LEASE + timedelta(seconds=1))
    takeover = await pay(client, "order-42")
    assert takeover.status == 201
    assert not takeover.replayed
    again = await pay(client, "order-42")
    assert again.replayed
    assert takeover.same_as(again)
    hook.released.set()
    stale = await stuck
    assert stale.status == 409  # it lost its key: its payment is rolled back
    assert stale.problem_type == KEY_IN_USE
    assert await payments(pool) == 1


async def test_prune_forgets_only_expired_keys_in_bounded_batches(
    client: TestClient, pool: asyncpg.Pool, clock: ManualClock
) -> None:
    for key in ("old-1", "old-2", "old-3"):
        assert (await pay(client, key)).status == 201
    clock.advance(RETENTION / 2)
    assert (await pay(client, "recent")).status == 201
    clock.advance(RETENTION / 2 + timedelta(seconds=1))
    assert await idempotency.prune(pool, clock.now(), batch=2) == 2
    assert await idempotency.prune(pool, clock.now(), batch=2) == 1
    assert await idempotency.prune(pool, clock.now(), batch=2) == 0
    assert (await pay(client, "recent")).replayed
    forgotten = await pay(client, "old-1", FIVE_EUR)
    assert forgotten.status == 201
    assert not forgotten.replayed


async def test_an_expired_key_is_forgotten_even_before_it_is_pruned(
    client: TestClient, clock: ManualClock
) -> None:
    assert (await pay(client, "order-42", TEN_EUR)).status == 201
    clock.advance(RETENTION + timedelta(seconds=1))
    reused = await pay(client, "order-42", FIVE_EUR)
    assert reused.status == 201
    assert not reused.replayed


async def test_two_principals_with_the_same_key_do_not_collide(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    alice = await pay(client, "order-42", TEN_EUR, principal="alice")
    bob = await pay(client, "order-42", FIVE_EUR, principal="bob")
    assert (alice.status, bob.status) == (201, 201)
    assert alice.same_as(await pay(client, "order-42", TEN_EUR, principal="alice"))
    assert bob.same_as(await pay(client, "order-42", FIVE_EUR, principal="bob"))
    assert await payments(pool) == 2


async def test_replays_and_conflicts_are_logged_without_the_key(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    key = "secret-order-key-42"
    with caplog.at_level(logging.INFO, logger="shared.idempotency"):
        await pay(client, key, TEN_EUR)
        await pay(client, key, TEN_EUR)
        await pay(client, key, FIVE_EUR)
    records = [r for r in caplog.records if r.name == "shared.idempotency"]
    assert [r.getMessage() for r in records] == [
        "idempotent request replayed",
        "idempotency key reused for another request",
    ]
    assert all(r.levelno == logging.INFO for r in records)
    assert all(key not in str(vars(r)) for r in records)
    assert all("amount" not in str(vars(r)) for r in records)
