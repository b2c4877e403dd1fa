"""Provider notifications credit a top-up exactly once, and only when everything checks out.

The providers are played by their own libraries (``standardwebhooks``, ``python-alipay-sdk``):
they sign; the wallet, served for real on PostgreSQL, verifies.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.wallet import store, topups
from services.wallet.events import TopUpCompleted, wallet_events
from services.wallet.handlers import SETTINGS
from shared.config import PlatformConfig
from shared.db import in_transaction
from shared.events import decode
from shared.money import Money
from shared.service import POOL, Service, create_app
from tests.provider_peers import (
    alipay_trade_notification,
    new_secret,
    rsa_pem_pair,
    signed_headers,
)

SANDBOX_SECRET, OLD_SECRET = new_secret(), new_secret()
ALIPAY_APP = "2021000000000001"


ALIPAY_PRIVATE, ALIPAY_PUBLIC = rsa_pem_pair()
STRANGER_PRIVATE, _ = rsa_pem_pair()


@pytest.fixture
async def wallet(
    config: PlatformConfig, wallet_service: Service, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    monkeypatch.setenv(
        "WALLET_PROVIDERS",
        json.dumps(
            {
                "sandbox": {"scheme": "standard-webhooks", "secrets": [OLD_SECRET, SANDBOX_SECRET]},
                "alipay": {
                    "scheme": "alipay-rsa2",
                    "public_keys": [ALIPAY_PUBLIC],
                    "app_id": ALIPAY_APP,
                },
            }
        ),
    )
    async with TestClient(TestServer(create_app(wallet_service, config))) as client:
        yield client


async def order(client: TestClient, provider: str, minor: int = 1250) -> topups.TopUpOrder:
    app = client.server.app
    chosen = app[SETTINGS].providers[provider]
    return await in_transaction(
        app[POOL], lambda conn: topups.create_order(conn, chosen, "rider-7", Money(minor, "CNY"))
    )


async def available(client: TestClient, o: topups.TopUpOrder) -> int:
    (account,) = await store.accounts(client.server.app[POOL], [o.account_id])
    return account.available


def payment_event(o: topups.TopUpOrder, amount: str = "12.50") -> bytes:
    data = {
        "order_id": str(o.id),
        "provider_reference": f"sbx-{o.id.hex[:8]}",
        "amount": amount,
        "currency": "CNY",
    }
    return json.dumps({"type": "payment.succeeded", "data": data}).encode()


def sandbox_signed(
    body: bytes, *, secret: str = SANDBOX_SECRET, at: datetime | None = None
) -> dict[str, str]:
    return signed_headers(body, secret, at=at)


async def notify_sandbox(client: TestClient, body: bytes, headers: dict[str, str]) -> int:
    response = await client.post(
        "/v1/wallet/providers/sandbox/notifications", data=body, headers=headers
    )
    return response.status


async def test_a_signed_payment_credits_the_wallet_once_however_often_it_is_sent(
    wallet: TestClient,
) -> None:
    o = await order(wallet, "sandbox")
    body = payment_event(o)
    headers = sandbox_signed(body)
    assert await notify_sandbox(wallet, body, headers) == 204
    assert await available(wallet, o) == 1250
    assert await notify_sandbox(wallet, body, headers) == 204  # replayed as is
    assert await notify_sandbox(wallet, body, sandbox_signed(body)) == 204  # sent again, new id
    assert await available(wallet, o) == 1250

    rows = await wallet.server.app[POOL].fetch("SELECT body FROM outbox ORDER BY seq")
    events = [wallet_events.decode(decode(r["body"])) for r in rows]
    completed = [e for e in events if isinstance(e, TopUpCompleted)]
    assert [(e.order_id, e.amount) for e in completed] == [(o.id, 1250)]


async def test_a_notification_signed_with_the_previous_secret_is_accepted_during_rotation(
    wallet: TestClient,
) -> None:
    o = await order(wallet, "sandbox")
    body = payment_event(o)
    assert await notify_sandbox(wallet, body, sandbox_signed(body, secret=OLD_SECRET)) == 204
    assert await available(wallet, o) == 1250


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("tampered body", 401),
        ("wrong key", 401),
        ("old timestamp", 401),
        ("future timestamp", 401),
        ("wrong amount", 422),
        ("unknown order", 404),
        ("not json", 400),
        ("no signature", 401),
    ],
)
async def test_a_bad_notification_is_refused_and_credits_nothing(
    wallet: TestClient, case: str, status: int
) -> None:
    o = await order(wallet, "sandbox")
    body = payment_event(o)
    headers = sandbox_signed(body)
    stranger = new_secret()
    if case == "tampered body":
        body = payment_event(o, amount="125.00")
    elif case == "wrong key":
        headers = sandbox_signed(body, secret=stranger)
    elif case == "old timestamp":
        headers = sandbox_signed(body, at=datetime.now(UTC) - timedelta(minutes=6))
    elif case == "future timestamp":
        headers = sandbox_signed(body, at=datetime.now(UTC) + timedelta(minutes=6))
    elif case == "wrong amount":
        body = payment_event(o, amount="12.49")
        headers = sandbox_signed(body)
    elif case == "unknown order":
        body = payment_event(dataclasses.replace(o, id=uuid.uuid4()))
        headers = sandbox_signed(body)
    elif case == "not json":
        body = b"payment succeeded, trust me"
        headers = sandbox_signed(body)
    elif case == "no signature":
        del headers["webhook-signature"]

    response = await wallet.post(
        "/v1/wallet/providers/sandbox/notifications", data=body, headers=headers
    )
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert (await response.json(content_type=None))["type"].endswith("/notification")
    assert await available(wallet, o) == 0
    logged = await wallet.server.app[POOL].fetchval(
        "SELECT outcome FROM provider_notifications ORDER BY received_at DESC LIMIT 1"
    )
    assert logged.startswith("rejected")


def alipay_form(
    o: topups.TopUpOrder,
    *,
    private_key: str = ALIPAY_PRIVATE,
    status: str = "TRADE_SUCCESS",
    amount: str = "12.50",
    sent: datetime | None = None,
) -> dict[str, str]:
    """A trade notification as Alipay sends it, signed by Alipay's own SDK."""
    return alipay_trade_notification(
        app_id=ALIPAY_APP, out_trade_no=str(o.id), private_key=private_key,
        public_key=ALIPAY_PUBLIC, status=status, amount=amount, sent=sent,
    )  # fmt: skip


async def notify_alipay(client: TestClient, form: dict[str, str]) -> tuple[int, str]:
    response = await client.post(
        "/v1/wallet/providers/alipay/notifications",
        data=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    return response.status, await response.text()


async def test_an_alipay_trade_notification_credits_once_and_is_answered_success(
    wallet: TestClient,
) -> None:
    o = await order(wallet, "alipay")
    form = alipay_form(o)
    assert await notify_alipay(wallet, form) == (200, "success")
    assert await notify_alipay(wallet, form) == (200, "success")
    assert await available(wallet, o) == 1250


async def test_an_alipay_trade_that_is_not_paid_is_acknowledged_and_credits_nothing(
    wallet: TestClient,
) -> None:
    o = await order(wallet, "alipay")
    assert await notify_alipay(wallet, alipay_form(o, status="WAIT_BUYER_PAY")) == (200, "success")
    assert await available(wallet, o) == 0


@pytest.mark.parametrize("case", ["changed amount", "stranger's key", "stale", "wrong amount"])
async def test_a_bad_alipay_notification_is_refused_and_credits_nothing(
    wallet: TestClient, case: str
) -> None:
    o = await order(wallet, "alipay")
    if case == "changed amount":
        form = {**alipay_form(o), "total_amount": "1250.00"}
    elif case == "stranger's key":
        form = alipay_form(o, private_key=STRANGER_PRIVATE)
    elif case == "stale":
        form = alipay_form(o, sent=datetime.now(UTC) - timedelta(hours=1))
    else:
        form = alipay_form(o, amount="12.00")
    status, _ = await notify_alipay(wallet, form)
    assert status in (401, 422)
    assert await available(wallet, o) == 0


async def test_an_unknown_provider_is_a_404_problem(wallet: TestClient) -> None:
    response = await wallet.post("/v1/wallet/providers/nobody/notifications", data=b"{}")
    assert response.status == 404
    assert (await response.json(content_type=None))["type"].endswith("/unknown-provider")


async def test_only_the_first_of_two_simultaneous_notifications_credits(
    wallet: TestClient,
) -> None:
    import asyncio

    o = await order(wallet, "sandbox")
    body = payment_event(o)
    statuses = await asyncio.gather(
        *(notify_sandbox(wallet, body, sandbox_signed(body)) for _ in range(8))
    )
    assert statuses == [204] * 8
    assert await available(wallet, o) == 1250
    pool: asyncpg.Pool = wallet.server.app[POOL]
    outcomes = await pool.fetch(
        "SELECT outcome FROM provider_notifications WHERE order_id = $1", o.id
    )
    assert sorted(r["outcome"] for r in outcomes) == ["already credited"] * 7 + ["credited"]
