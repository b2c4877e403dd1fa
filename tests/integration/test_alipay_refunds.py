"""Refunds of Alipay top-ups: we call Alipay's ``alipay.trade.refund``, signed with our app's
key, and its signed synchronous answer posts the hold or voids it; a busy gateway is asked
again with the same ``out_request_no``, so the money goes back once.

Alipay's gateway is a stand-in (``tests.alipay_gateway``) that checks our signature with
Alipay's own SDK and signs its answers with Alipay's key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.wallet import topups
from services.wallet.handlers import SETTINGS
from shared.config import PlatformConfig
from shared.db import in_transaction
from shared.money import Money
from shared.service import POOL, Service, create_app
from tests.alipay_gateway import AlipayGateway
from tests.provider_peers import alipay_trade_notification, rsa_pem_pair
from tests.support import eventually
from tests.wallet_support import ask_refund, balances

APP_ID = "2021000000000002"
ALIPAY_PRIVATE, ALIPAY_PUBLIC = rsa_pem_pair()
APP_PRIVATE, APP_PUBLIC = rsa_pem_pair()
STRANGER_PRIVATE, _ = rsa_pem_pair()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[AlipayGateway, TestServer]]:
    alipay = AlipayGateway(APP_ID, APP_PUBLIC, ALIPAY_PRIVATE, ALIPAY_PUBLIC)
    server = TestServer(alipay.app())
    await server.start_server()
    yield alipay, server
    await server.close()


@pytest.fixture
async def wallet(
    config: PlatformConfig,
    wallet_service: Service,
    monkeypatch: pytest.MonkeyPatch,
    gateway: tuple[AlipayGateway, TestServer],
) -> AsyncIterator[TestClient]:
    settings = {
        "scheme": "alipay-rsa2",
        "public_keys": [ALIPAY_PUBLIC],
        "app_id": APP_ID,
        "gateway_url": str(gateway[1].make_url("/gateway.do")),
        "app_private_key": APP_PRIVATE,
    }
    monkeypatch.setenv("WALLET_PROVIDERS", json.dumps({"alipay": settings}))
    monkeypatch.setenv("WALLET_WEBHOOK_BACKOFF_S", "1")
    async with TestClient(TestServer(create_app(wallet_service, config))) as client:
        yield client


async def paid_top_up(wallet: TestClient, alipay: AlipayGateway, minor: int) -> topups.TopUpOrder:
    """An order paid in Alipay: Alipay's signed notification credits it, Alipay keeps the trade."""
    app = wallet.server.app
    provider = app[SETTINGS].providers["alipay"]
    order = await in_transaction(
        app[POOL], lambda c: topups.create_order(c, provider, "rider-5", Money(minor, "CNY"))
    )
    amount = Money(minor, "CNY").to_decimal_string()
    form = alipay_trade_notification(
        app_id=APP_ID, out_trade_no=str(order.id), private_key=ALIPAY_PRIVATE,
        public_key=ALIPAY_PUBLIC, amount=amount,
    )  # fmt: skip
    response = await wallet.post(
        "/v1/wallet/providers/alipay/notifications",
        data=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert (response.status, await response.text()) == (200, "success")
    alipay.trades[str(order.id)] = Decimal(amount)
    return order


async def attempts(wallet: TestClient) -> list[str | None]:
    rows = await wallet.server.app[POOL].fetch(
        "SELECT error FROM webhook_attempts ORDER BY at, attempt"
    )
    return [row["error"] for row in rows]


async def test_alipay_pays_the_refund_back_and_the_hold_is_posted(
    wallet: TestClient, gateway: tuple[AlipayGateway, TestServer]
) -> None:
    alipay, _ = gateway
    order = await paid_top_up(wallet, alipay, 1250)
    refund_id = await ask_refund(wallet, "alipay", order, 500)
    await eventually(lambda: balances(wallet, order), lambda b: b == (750, 500),
                     what="the refund posted on Alipay's answer")  # fmt: skip
    assert alipay.refunds[str(refund_id)] == Decimal("5.00")
    assert alipay.refunded(str(order.id)) == Decimal("5.00")


async def test_a_busy_gateway_is_asked_again_and_refunds_once(
    wallet: TestClient, gateway: tuple[AlipayGateway, TestServer]
) -> None:
    alipay, _ = gateway
    alipay.busy_answers = 2
    order = await paid_top_up(wallet, alipay, 1000)
    await ask_refund(wallet, "alipay", order, 1000)
    await eventually(lambda: balances(wallet, order), lambda b: b == (0, 1000),
                     what="the refund posted after two busy answers")  # fmt: skip
    assert alipay.calls == 3
    assert alipay.refunded(str(order.id)) == Decimal("10.00")
    assert await attempts(wallet) == ["alipay 20000 ACQ.SYSTEM_ERROR"] * 2 + [None]


async def test_a_refund_alipay_refuses_gives_the_money_back(
    wallet: TestClient, gateway: tuple[AlipayGateway, TestServer]
) -> None:
    alipay, _ = gateway
    order = await paid_top_up(wallet, alipay, 1000)
    alipay.trades[str(order.id)] = Decimal("1.00")  # Alipay holds less than we were told
    await ask_refund(wallet, "alipay", order, 300)
    await eventually(lambda: balances(wallet, order), lambda b: b == (1000, 0),
                     what="the hold voided on Alipay's refusal")  # fmt: skip
    assert await attempts(wallet) == ["alipay 40004 ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"]


async def test_an_answer_not_signed_by_alipay_settles_nothing(
    wallet: TestClient, gateway: tuple[AlipayGateway, TestServer]
) -> None:
    alipay, _ = gateway
    order = await paid_top_up(wallet, alipay, 1000)
    alipay.alipay_private_key = STRANGER_PRIVATE  # someone else answers in Alipay's name
    await ask_refund(wallet, "alipay", order, 300)
    await eventually(lambda: attempts(wallet), lambda a: len(a) >= 2,
                     what="the forged answers refused and the call retried")  # fmt: skip
    assert set(await attempts(wallet)) == {"answer refused: no matching signature"}
    assert await balances(wallet, order) == (700, 0), "still held, neither posted nor voided"
