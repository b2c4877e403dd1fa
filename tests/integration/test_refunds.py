"""Refunds: a hold while the provider pays back, posted or voided on its word; the request
reaches the provider as a signed webhook, retried until it answers 2xx."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

import pytest
import standardwebhooks
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.wallet import finance, refunds, store, topups
from services.wallet.app import SERVICE
from services.wallet.handlers import SETTINGS
from shared.config import PlatformConfig
from shared.db import in_transaction
from shared.money import Money
from shared.service import BUS, POOL, Service, create_app, migrate
from tests.provider_peers import new_secret, signed_headers
from tests.support import eventually

THEIR_SECRET, OUR_SECRET = new_secret(), new_secret()


@dataclass
class Sandbox:
    """The provider: verifies our webhooks with the reference library; refuses the first
    refund request it gets (to make us retry)."""

    received: list[dict[str, object]] = field(default_factory=list)
    refusals: int = 1

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = standardwebhooks.Webhook(OUR_SECRET).verify(body, dict(request.headers))
        except standardwebhooks.webhooks.WebhookVerificationError:
            return web.Response(status=401)
        if self.refusals and event["type"] == "refund.requested":
            self.refusals -= 1
            return web.Response(status=503)
        self.received.append({**event, "id": request.headers["webhook-id"]})
        return web.Response(status=204)


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[Sandbox, TestServer]]:
    provider = Sandbox()
    app = web.Application()
    app.router.add_post("/webhooks", provider.webhook)
    server = TestServer(app)
    await server.start_server()
    yield provider, server
    await server.close()


@pytest.fixture
async def wallet(
    config: PlatformConfig,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: tuple[Sandbox, TestServer],
) -> AsyncIterator[TestClient]:
    _, server = sandbox
    settings = {
        "scheme": "standard-webhooks",
        "secrets": [THEIR_SECRET],
        "webhook_url": str(server.make_url("/webhooks")),
        "outgoing_secrets": [OUR_SECRET],
    }
    monkeypatch.setenv("WALLET_PROVIDERS", json.dumps({"sandbox": settings}))
    service: Service = dataclasses.replace(SERVICE, name=f"wallet_{namespace}")
    await migrate(service, config.database_url)
    async with TestClient(TestServer(create_app(service, config))) as client:
        yield client


async def paid_top_up(wallet: TestClient, minor: int) -> topups.TopUpOrder:
    app = wallet.server.app
    provider = app[SETTINGS].providers["sandbox"]
    order = await in_transaction(
        app[POOL], lambda c: topups.create_order(c, provider, "rider-9", Money(minor, "CNY"))
    )
    await notify(wallet, "payment.succeeded", {
        "order_id": str(order.id), "provider_reference": "sbx-1",
        "amount": Money(minor, "CNY").to_decimal_string(), "currency": "CNY",
    })  # fmt: skip
    return order


async def notify(wallet: TestClient, event_type: str, data: dict[str, str]) -> None:
    body = json.dumps({"type": event_type, "data": data}).encode()
    response = await wallet.post(
        "/v1/wallet/providers/sandbox/notifications",
        data=body,
        headers=signed_headers(body, THEIR_SECRET),
    )
    assert response.status == 204


async def ask_refund(wallet: TestClient, order: topups.TopUpOrder, minor: int) -> uuid.UUID:
    app = wallet.server.app
    provider, refund_id = app[SETTINGS].providers["sandbox"], uuid.uuid4()
    await in_transaction(
        app[POOL],
        lambda c: refunds.request(
            c, provider, order.id, Money(minor, "CNY"), refund_id, app[BUS].publish_many
        ),
    )
    return refund_id


async def balances(wallet: TestClient, order: topups.TopUpOrder) -> tuple[int, int]:
    (account,) = await store.accounts(wallet.server.app[POOL], [order.account_id])
    return account.available, account.debits_posted


async def test_a_refund_holds_the_money_asks_the_provider_and_posts_on_its_word(
    wallet: TestClient, sandbox: tuple[Sandbox, TestServer]
) -> None:
    provider, _ = sandbox
    order = await paid_top_up(wallet, 1250)
    refund_id = await ask_refund(wallet, order, 500)
    assert await balances(wallet, order) == (750, 0)  # held, not yet gone

    async def received() -> list[dict[str, object]]:
        return [e for e in provider.received if e["type"] == "refund.requested"]

    (event,) = await eventually(received, lambda r: len(r) == 1, what="the refund webhook")
    assert event["type"] == "refund.requested"
    assert event["data"] == {
        "refund_id": str(refund_id), "order_id": str(order.id), "provider_reference": "sbx-1",
        "amount": "5.00", "currency": "CNY",
    }  # fmt: skip
    attempts = await wallet.server.app[POOL].fetch(
        "SELECT http_status FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
        uuid.UUID(str(event["id"])),
    )
    assert [a["http_status"] for a in attempts] == [503, 204]  # retried after a refusal

    await notify(wallet, "refund.succeeded", {"refund_id": str(refund_id)})
    await notify(wallet, "refund.succeeded", {"refund_id": str(refund_id)})  # said twice
    assert await balances(wallet, order) == (750, 500)


async def test_a_failed_refund_gives_the_money_back_to_the_wallet(wallet: TestClient) -> None:
    order = await paid_top_up(wallet, 1000)
    refund_id = await ask_refund(wallet, order, 300)
    await notify(wallet, "refund.failed", {"refund_id": str(refund_id)})
    await notify(wallet, "refund.succeeded", {"refund_id": str(refund_id)})  # too late: ignored
    assert await balances(wallet, order) == (1000, 0)


@pytest.mark.parametrize(("minor", "reason"), [(1300, "at most"), (0, "positive")])
async def test_a_refund_beyond_what_is_left_is_refused_and_holds_nothing(
    wallet: TestClient, minor: int, reason: str
) -> None:
    order = await paid_top_up(wallet, 1250)
    with pytest.raises(refunds.RefundRefused, match=reason):
        await ask_refund(wallet, order, minor)
    assert await balances(wallet, order) == (1250, 0)


async def test_refunds_together_never_exceed_the_top_up(wallet: TestClient) -> None:
    order = await paid_top_up(wallet, 1000)
    await ask_refund(wallet, order, 600)
    with pytest.raises(refunds.RefundRefused, match="at most"):
        await ask_refund(wallet, order, 500)
    await ask_refund(wallet, order, 400)
    assert await balances(wallet, order) == (0, 0)


async def test_a_final_business_day_is_announced_to_the_provider_once(
    wallet: TestClient, sandbox: tuple[Sandbox, TestServer]
) -> None:
    provider, _ = sandbox
    app = wallet.server.app
    settings = app[SETTINGS]
    now = datetime(2026, 6, 2, 5, 0, tzinfo=UTC)  # 13:00 in Shanghai: June 1st is final

    async def announce() -> date | None:
        return await in_transaction(app[POOL], lambda conn: finance.announce_final_day(
            conn, settings.providers["sandbox"], "Asia/Shanghai", time(4), now
        ))  # fmt: skip

    assert await announce() == date(2026, 6, 1)
    assert await announce() is None

    async def received() -> list[dict[str, object]]:
        return [e for e in provider.received if "2026-06-01" in str(e["data"])]

    (event,) = await eventually(received, lambda r: len(r) == 1, what="settlement.ready")
    assert event["type"] == "settlement.ready"
    assert event["data"] == {
        "business_day": "2026-06-01",
        "csv": "/v1/wallet/providers/sandbox/statements/2026-06-01.csv",
        "json": "/v1/wallet/providers/sandbox/statements/2026-06-01.json",
    }
