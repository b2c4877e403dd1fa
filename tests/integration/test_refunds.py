"""Refunds: a hold while the provider pays back, posted or voided on its word; the request
reaches the provider as a signed webhook, retried until it answers 2xx."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.wallet import finance, refunds, topups
from services.wallet.handlers import SETTINGS
from shared.config import PlatformConfig
from shared.db import in_transaction
from shared.money import Money
from shared.service import POOL, Service, create_app
from tests.provider_peers import new_secret, signed_headers
from tests.sandbox_provider import SandboxProvider
from tests.support import eventually
from tests.wallet_support import ask_refund, balances

THEIR_SECRET, OUR_SECRET = new_secret(), new_secret()


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[SandboxProvider, TestServer]]:
    provider = SandboxProvider("sandbox", THEIR_SECRET, OUR_SECRET, refuse_refund_requests=1)
    server = TestServer(provider.app())
    await server.start_server()
    yield provider, server
    await server.close()


@pytest.fixture
async def wallet(
    config: PlatformConfig,
    wallet_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: tuple[SandboxProvider, TestServer],
) -> AsyncIterator[TestClient]:
    provider, server = sandbox
    settings = {
        "scheme": "standard-webhooks",
        "secrets": [THEIR_SECRET],
        "webhook_url": str(server.make_url("/webhooks")),
        "outgoing_secrets": [OUR_SECRET],
    }
    monkeypatch.setenv("WALLET_PROVIDERS", json.dumps({"sandbox": settings}))
    async with TestClient(TestServer(create_app(wallet_service, config))) as client:
        provider.wallet_url = str(client.make_url("")).rstrip("/")
        yield client


async def paid_top_up(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer], minor: int
) -> topups.TopUpOrder:
    """A rider's order, paid in the sandbox provider's app (which notifies the wallet)."""
    app, (_, server) = wallet.server.app, sandbox
    provider = app[SETTINGS].providers["sandbox"]
    order = await in_transaction(
        app[POOL], lambda c: topups.create_order(c, provider, "rider-9", Money(minor, "CNY"))
    )
    amount = Money(minor, "CNY").to_decimal_string()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url("/pay"),
            json={"order_id": str(order.id), "amount": amount, "currency": "CNY"},
        ) as paid,
    ):
        assert (await paid.json())["notified"] == 204
    return order


async def notify(wallet: TestClient, event_type: str, data: dict[str, str]) -> None:
    body = json.dumps({"type": event_type, "data": data}).encode()
    response = await wallet.post(
        "/v1/wallet/providers/sandbox/notifications",
        data=body,
        headers=signed_headers(body, THEIR_SECRET),
    )
    assert response.status == 204


async def test_a_refund_holds_the_money_asks_the_provider_and_posts_on_its_word(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer]
) -> None:
    provider, _ = sandbox
    order = await paid_top_up(wallet, sandbox, 1250)
    refund_id = await ask_refund(wallet, "sandbox", order, 500)

    async def requested() -> list[dict[str, object]]:
        return [e for e in provider.received if e["type"] == "refund.requested"]

    (event,) = await eventually(requested, lambda r: len(r) == 1, what="the refund webhook")
    data = dict(event["data"])
    assert str(data.pop("provider_reference")).startswith("sbx-")
    assert data == {
        "refund_id": str(refund_id), "order_id": str(order.id), "amount": "5.00", "currency": "CNY",
    }  # fmt: skip

    async def attempts() -> list[int]:
        rows = await wallet.server.app[POOL].fetch(
            "SELECT http_status FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
            uuid.UUID(str(event["id"])),
        )
        return [r["http_status"] for r in rows]

    await eventually(attempts, lambda a: a == [503, 204], what="a retry after a refusal")
    await eventually(
        lambda: balances(wallet, order), lambda b: b == (750, 500), what="the refund posted"
    )
    await notify(wallet, "refund.succeeded", {"refund_id": str(refund_id)})  # said again
    assert await balances(wallet, order) == (750, 500)


async def test_a_failed_refund_gives_the_money_back_to_the_wallet(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer]
) -> None:
    provider, _ = sandbox
    provider.refunds_fail = True
    order = await paid_top_up(wallet, sandbox, 1000)
    refund_id = await ask_refund(wallet, "sandbox", order, 300)
    assert await balances(wallet, order) == (700, 0)  # held while the provider works
    await eventually(
        lambda: balances(wallet, order), lambda b: b == (1000, 0), what="the refund voided"
    )
    await notify(wallet, "refund.succeeded", {"refund_id": str(refund_id)})  # too late: ignored
    assert await balances(wallet, order) == (1000, 0)


@pytest.mark.parametrize(("minor", "reason"), [(1300, "at most"), (0, "positive")])
async def test_a_refund_beyond_what_is_left_is_refused_and_holds_nothing(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer], minor: int, reason: str
) -> None:
    order = await paid_top_up(wallet, sandbox, 1250)
    with pytest.raises(refunds.RefundRefused, match=reason):
        await ask_refund(wallet, "sandbox", order, minor)
    assert await balances(wallet, order) == (1250, 0)


async def test_refunds_together_never_exceed_the_top_up(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer]
) -> None:
    sandbox[0].refunds_fail = True  # keep them held: a held refund still counts
    order = await paid_top_up(wallet, sandbox, 1000)
    await ask_refund(wallet, "sandbox", order, 600)
    with pytest.raises(refunds.RefundRefused, match="at most"):
        await ask_refund(wallet, "sandbox", order, 500)
    await ask_refund(wallet, "sandbox", order, 400)


async def test_a_final_business_day_is_announced_to_the_provider_once(
    wallet: TestClient, sandbox: tuple[SandboxProvider, TestServer]
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
