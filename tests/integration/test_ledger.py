"""The ledger in the real PostgreSQL: every result as the model ledger says, under concurrency
and killed writers the invariants hold, and the database refuses what would break them."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.wallet import store
from services.wallet.events import (
    HoldExpired,
    HoldPlaced,
    TransferPosted,
    TransferVoided,
    wallet_events,
)
from services.wallet.ledger import (
    MAX_AMOUNT,
    Account,
    AccountFlags,
    Outcome,
    Result,
    Transfer,
    TransferFlags,
)
from services.wallet.writer import LedgerUnavailable, LedgerWriter
from shared import db
from shared.clock import SystemClock
from shared.config import PlatformConfig
from shared.db import Connection
from shared.events import Event, decode
from shared.outbox import Outbox
from shared.service import Service
from tests.ledger_model import Model
from tests.support import eventually

CNY, EUR = 156, 978
F = TransferFlags
LIMITED = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@pytest.fixture
async def ledger_pool(
    wallet_service: Service, config: PlatformConfig
) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(config.database_url, wallet_service.schema, max_size=6)
    yield pool
    await pool.close()


def accounts_of_a_city() -> list[Account]:
    """A clearing account, four wallets, an operator, and the odd ones out."""
    return [
        Account(uuid.uuid4(), CNY, 3),
        *(Account(uuid.uuid4(), CNY, 1, LIMITED) for _ in range(4)),
        Account(uuid.uuid4(), CNY, 2),
        Account(uuid.uuid4(), CNY, 2, AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
        Account(uuid.uuid4(), CNY, 1, AccountFlags.CLOSED),
        Account(uuid.uuid4(), EUR, 1),
    ]


async def apply(pool: asyncpg.Pool, batch: Sequence[Transfer]) -> list[Outcome]:
    async with pool.acquire() as conn, conn.transaction():
        return await store.create_transfers(conn, batch)


@st.composite
def batches(draw: st.DrawFn, ids: list[uuid.UUID]) -> list[list[Transfer]]:
    """Batches of transfers of every kind, many of them wrong on purpose."""
    accounts = [*ids, uuid.uuid4()]  # and one that was never opened
    amounts = st.one_of(st.integers(1, 1500), st.sampled_from([0, -5, MAX_AMOUNT]))
    earlier: list[Transfer] = []
    out = []
    for _ in range(draw(st.integers(1, 4))):
        batch: list[Transfer] = []
        for _ in range(draw(st.integers(1, 30))):
            kind = draw(st.sampled_from(["move", "move", "hold", "post", "void", "again"]))
            linked = F.LINKED if draw(st.integers(0, 5)) == 0 else F.NONE
            used = {t.id for t in batch}
            if kind == "again" and earlier:
                t = draw(st.sampled_from(earlier))
                if t.id in used:
                    continue
                if draw(st.booleans()):
                    t = dataclasses.replace(t, amount=t.amount + 1)
            elif kind in ("post", "void") and earlier:
                pending = draw(st.sampled_from(earlier)).id
                flag = F.POST_PENDING_TRANSFER if kind == "post" else F.VOID_PENDING_TRANSFER
                t = Transfer(
                    id=uuid.uuid4(),
                    pending_id=pending,
                    amount=draw(st.sampled_from([0, 0, 1, 100, 700])),
                    flags=flag | linked,
                )
            else:
                pending = F.PENDING if kind == "hold" else F.NONE
                t = Transfer(
                    id=uuid.uuid4(),
                    debit_account_id=draw(st.sampled_from(accounts)),
                    credit_account_id=draw(st.sampled_from(accounts)),
                    amount=draw(amounts),
                    ledger=draw(st.sampled_from([CNY, CNY, CNY, EUR, 0])),
                    code=draw(st.sampled_from([1, 2])),
                    flags=pending | linked,
                    reference=draw(st.sampled_from([None, "ride"])),
                )
            batch.append(t)
            earlier.append(t)
        out.append(batch)
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_transfer_gets_the_result_and_effect_the_model_ledger_gives(
    ledger_pool: asyncpg.Pool, data: st.DataObject
) -> None:
    city = accounts_of_a_city()
    model = Model()
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, city)
    for a in city:
        model.open(a)
    clearing, wallets = city[0], city[1:5]
    funding = [
        Transfer(uuid.uuid4(), clearing.id, w.id, amount=1000, ledger=CNY, code=1) for w in wallets
    ]
    assert model.apply(funding) == [r.result for r in await apply(ledger_pool, funding)]

    for batch in data.draw(batches([a.id for a in city])):
        got = [o.result for o in await apply(ledger_pool, batch)]
        assert got == model.apply(batch), batch

    stored = await store.accounts(ledger_pool, [a.id for a in city])
    assert stored == sorted(model.accounts.values(), key=lambda a: a.id)


async def test_a_hold_past_its_timeout_expires_on_database_time(ledger_pool: asyncpg.Pool) -> None:
    clearing, rider, pharmacy = (Account(uuid.uuid4(), CNY, c) for c in (3, 1, 2))
    rider = dataclasses.replace(rider, flags=LIMITED)
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, [clearing, rider, pharmacy])
    hold = Transfer(uuid.uuid4(), rider.id, pharmacy.id, 400, CNY, 4, F.PENDING, timeout_s=1)
    top_up = Transfer(uuid.uuid4(), clearing.id, rider.id, 500, CNY, 1)
    assert [o.result for o in await apply(ledger_pool, [top_up, hold])] == [Result.CREATED] * 2
    (held,) = await store.accounts(ledger_pool, [rider.id])
    assert held.available == 100

    async def rider_after_a_sweep() -> Account:
        await apply(ledger_pool, [])  # what an idle writer does every second
        return (await store.accounts(ledger_pool, [rider.id]))[0]

    released = await eventually(
        rider_after_a_sweep, lambda a: a.debits_pending == 0, what="hold expiry"
    )
    assert released.available == 500
    post = Transfer(uuid.uuid4(), pending_id=hold.id, flags=F.POST_PENDING_TRANSFER)
    assert (await apply(ledger_pool, [post]))[0].result is Result.PENDING_TRANSFER_EXPIRED
    void = Transfer(uuid.uuid4(), pending_id=hold.id, flags=F.VOID_PENDING_TRANSFER)
    assert (await apply(ledger_pool, [void]))[0].result is Result.PENDING_TRANSFER_EXPIRED


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE accounts SET debits_posted = credits_posted + 1 WHERE code = 1", "within_credits"),
        ("UPDATE accounts SET credits_posted = credits_posted + 1", "would not balance"),
        ("UPDATE transfers SET amount = amount + 1", "append-only"),
        ("DELETE FROM transfers", "append-only"),
        ("DELETE FROM accounts", "append-only"),
        ("UPDATE holds SET resolution = 'voided'", "already posted"),
        (
            "INSERT INTO accounts (id, ledger, code, credits_posted) VALUES"
            " (gen_random_uuid(), 156, 1, 5)",
            "zero balances",
        ),
    ],
)
async def test_the_database_refuses_what_would_break_the_ledger(
    ledger_pool: asyncpg.Pool, statement: str, refusal: str
) -> None:
    clearing, rider, shop = (
        Account(uuid.uuid4(), CNY, 3),
        Account(uuid.uuid4(), CNY, 1, LIMITED),
        Account(uuid.uuid4(), CNY, 2),
    )
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, [clearing, rider, shop])
    hold = Transfer(uuid.uuid4(), rider.id, shop.id, 10, CNY, 4, F.PENDING)
    post = Transfer(uuid.uuid4(), pending_id=hold.id, flags=F.POST_PENDING_TRANSFER)
    top_up = Transfer(uuid.uuid4(), clearing.id, rider.id, 50, CNY, 1)
    assert all(o.result.ok for o in await apply(ledger_pool, [top_up, hold, post]))
    before = await store.accounts(ledger_pool, [clearing.id, rider.id, shop.id])

    with pytest.raises(asyncpg.PostgresError, match=refusal):
        await ledger_pool.execute(statement)
    assert await store.accounts(ledger_pool, [clearing.id, rider.id, shop.id]) == before


async def test_created_transfers_are_published_with_the_state_change(
    ledger_pool: asyncpg.Pool, wallet_service: Service
) -> None:
    clearing, rider, shop = (
        Account(uuid.uuid4(), CNY, 3),
        Account(uuid.uuid4(), CNY, 1, LIMITED),
        Account(uuid.uuid4(), CNY, 2),
    )
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, [clearing, rider, shop])
    outbox = Outbox("wallet", 4, SystemClock())

    writer = LedgerWriter(ledger_pool, outbox.add_many, shards=2)
    writer.start()
    hold = Transfer(uuid.uuid4(), rider.id, shop.id, 30, CNY, 4, F.PENDING)
    batch = [
        Transfer(uuid.uuid4(), clearing.id, rider.id, 100, CNY, 1),
        hold,
        Transfer(uuid.uuid4(), pending_id=hold.id, flags=F.VOID_PENDING_TRANSFER),
        Transfer(uuid.uuid4(), rider.id, shop.id, 1000, CNY, 2),  # more than the rider has
    ]
    outcomes = await writer.submit(batch)
    again = await writer.submit(batch[:1])
    await writer.stop()

    assert [o.result for o in outcomes] == [Result.CREATED] * 3 + [Result.EXCEEDS_CREDITS]
    assert again[0].result is Result.EXISTS
    bodies = await ledger_pool.fetch("SELECT body FROM outbox ORDER BY seq")
    events = [wallet_events.decode(decode(r["body"])) for r in bodies]
    assert [type(e) for e in events] == [TransferPosted, HoldPlaced, TransferVoided]
    assert events[2].amount == 30
    assert events[0].debit_account_id == clearing.id


def _fund_and_spend(
    rng: random.Random, clearing: Account, wallets: list[Account], operator: Account, n: int
) -> list[list[Transfer]]:
    """Submissions: top-ups, fares, holds and their captures or releases, linked pairs."""
    submissions: list[list[Transfer]] = []
    holds: list[Transfer] = []
    for _ in range(n):
        w = rng.choice(wallets).id
        roll = rng.random()
        if roll < 0.2:
            t = [Transfer(uuid.uuid4(), clearing.id, w, rng.randint(1, 500), CNY, 1)]
        elif roll < 0.3:
            h = Transfer(uuid.uuid4(), w, operator.id, rng.randint(1, 300), CNY, 4, F.PENDING)
            holds.append(h)
            t = [h]
        elif roll < 0.4 and holds:
            h = holds.pop(rng.randrange(len(holds)))
            flag = rng.choice([F.POST_PENDING_TRANSFER, F.VOID_PENDING_TRANSFER])
            t = [Transfer(uuid.uuid4(), pending_id=h.id, amount=rng.choice([0, 1]), flags=flag)]
        elif roll < 0.45:
            other = rng.choice(wallets).id
            t = [
                Transfer(uuid.uuid4(), w, operator.id, rng.randint(1, 200), CNY, 2, F.LINKED),
                Transfer(uuid.uuid4(), clearing.id, other, rng.randint(1, 200), CNY, 1)
                if other != w
                else Transfer(uuid.uuid4(), clearing.id, w, 1, CNY, 1),
            ]
        else:
            t = [Transfer(uuid.uuid4(), w, operator.id, rng.randint(1, 400), CNY, 2)]
        submissions.append(t)
    return submissions


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1))
async def test_concurrent_transfers_with_killed_writers_keep_every_invariant(
    ledger_pool: asyncpg.Pool, wallet_service: Service, config: PlatformConfig, seed: int
) -> None:
    rng = random.Random(seed)
    clearing = Account(uuid.uuid4(), CNY, 3)
    wallets = [Account(uuid.uuid4(), CNY, 1, LIMITED) for _ in range(40)]
    operator = Account(uuid.uuid4(), CNY, 2)
    city = [clearing, *wallets, operator]
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, city)
    submissions = _fund_and_spend(rng, clearing, wallets, operator, 2500)

    async def nothing(conn: Connection, events: Sequence[tuple[str, Event]]) -> None:
        return None

    # Two writers on two pools: two wallet processes, each with two shards.
    pools = [
        ledger_pool,
        await db.create_pool(config.database_url, wallet_service.schema, max_size=4),
    ]
    writers = [LedgerWriter(p, nothing, shards=2, max_batch=200) for p in pools]
    for w in writers:
        w.start()
    acknowledged: dict[uuid.UUID, Result] = {}
    answered = asyncio.Event()

    async def client(mine: list[list[Transfer]]) -> None:
        for n, submission in enumerate(mine):
            while True:  # a client retries with the same ids until it gets an answer
                try:
                    outcomes = await rng.choice(writers).submit(submission)
                    break
                except LedgerUnavailable:
                    continue
            acknowledged.update({o.transfer.id: o.result for o in outcomes})
            if n % 8 == 0:
                answered.set()

    killed, finished = [0], False
    assassin = await asyncpg.connect(config.database_url)

    async def killer() -> None:
        """Every little while, kill the writers' connections that are inside a batch."""
        while True:
            await answered.wait()
            answered.clear()
            if finished:
                return
            killed[0] += await assassin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND state = 'active'"
                " AND query LIKE '%create_transfers%'",
                wallet_service.schema,
            )

    kills = asyncio.create_task(killer())
    await asyncio.gather(*(client(submissions[i::16]) for i in range(16)))
    finished = True
    answered.set()
    await kills
    await assassin.close()
    for w in writers:
        await w.stop()
    await pools[1].close()

    assert killed[0] > 0
    await audit(ledger_pool, city, acknowledged)


async def audit(
    pool: asyncpg.Pool, city: list[Account], acknowledged: dict[uuid.UUID, Result]
) -> None:
    """Replaying what the database stored, in its order, through the model reproduces it."""
    ids = [a.id for a in city]
    rows = await pool.fetch(
        "SELECT id FROM transfers WHERE debit_account_id = ANY($1) OR credit_account_id = ANY($1)"
        " ORDER BY seq",
        ids,
    )
    stored = {r["id"] for r in rows}
    assert {i for i, r in acknowledged.items() if r.ok} == stored  # durable, and nothing else
    model = Model()
    for a in city:
        model.open(dataclasses.replace(a))
    history = await pool.fetch(
        "SELECT id, debit_account_id, credit_account_id, amount, pending_id, ledger, code, flags,"
        " timeout_s, reference FROM transfers WHERE id = ANY($1) ORDER BY seq",
        list(stored),
    )
    for h in history:
        t = Transfer(**{**dict(h), "flags": TransferFlags(h["flags"])})
        assert model.apply([dataclasses.replace(t, flags=t.flags & ~F.LINKED)]) == [Result.CREATED]
    now = await store.accounts(pool, ids)
    assert now == sorted(model.accounts.values(), key=lambda a: a.id)
    assert all(
        a.debits_posted + a.debits_pending <= a.credits_posted for a in now if a.flags & LIMITED
    )
    assert sum(a.debits_posted for a in now) == sum(a.credits_posted for a in now)
    assert sum(a.debits_pending for a in now) == sum(a.credits_pending for a in now)
    resolutions = await pool.fetch(
        "SELECT pending_id, resolution, resolved_by FROM holds"
        " WHERE resolution IS NOT NULL AND pending_id = ANY($1)",
        list(stored),
    )
    resolved_by = [r["resolved_by"] for r in resolutions]
    assert len(resolved_by) == len(set(resolved_by))
    assert {r["pending_id"]: r["resolution"] for r in resolutions} == {
        k: v for k, v in model.holds.items() if v != "pending"
    }


async def test_a_hold_that_expires_with_no_traffic_is_released_and_announced(
    ledger_pool: asyncpg.Pool,
) -> None:
    clearing, rider, pharmacy = (Account(uuid.uuid4(), CNY, c) for c in (3, 1, 2))
    async with ledger_pool.acquire() as conn:
        await store.open_accounts(conn, [clearing, dataclasses.replace(rider, flags=LIMITED),
                                         pharmacy])  # fmt: skip
    writer = LedgerWriter(ledger_pool, Outbox("wallet", 4, SystemClock()).add_many, idle_s=0.1)
    writer.start()
    hold = Transfer(uuid.uuid4(), rider.id, pharmacy.id, 400, CNY, 4, F.PENDING, timeout_s=1)
    top_up = Transfer(uuid.uuid4(), clearing.id, rider.id, 500, CNY, 1)
    assert [o.result for o in await writer.submit([top_up, hold])] == [Result.CREATED] * 2

    async def expiries() -> list[HoldExpired]:
        rows = await ledger_pool.fetch("SELECT body FROM outbox ORDER BY seq")
        events = [wallet_events.decode(decode(r["body"])) for r in rows]
        return [e for e in events if isinstance(e, HoldExpired)]

    (expired,) = await eventually(expiries, lambda e: len(e) == 1, what="the hold's expiry")
    await writer.stop()
    assert (expired.transfer_id, expired.amount, expired.debit_account_id) == (
        hold.id,
        400,
        rider.id,
    )
    (released,) = await store.accounts(ledger_pool, [rider.id])
    assert (released.available, released.debits_pending) == (500, 0)
