"""The wallet over HTTP as riders, providers and finance use it, with the gateway's tokens."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.wallet.app import ROUTES
from shared.config import PlatformConfig
from shared.service import POOL, Service, create_app
from tests.provider_peers import new_secret, signed_headers
from tests.support import behind_the_gateway
from tests.support import gateway_token as token

SANDBOX_SECRET = new_secret()


def rider() -> dict[str, str]:
    # Minted when used, never at import: a token made at collection would expire mid-session.
    return token("rider-42", "wallet:read", "wallet:topup", "wallet:refund")


@pytest.fixture
async def api(
    config: PlatformConfig, wallet_service: Service, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    settings = {
        "scheme": "standard-webhooks",
        "secrets": [SANDBOX_SECRET],
        "webhook_url": "http://127.0.0.1:9/never",
        "outgoing_secrets": [new_secret()],
    }
    monkeypatch.setenv("WALLET_PROVIDERS", json.dumps({"sandbox": settings}))  # fmt: skip
    app = create_app(wallet_service, behind_the_gateway(config))
    async with TestClient(TestServer(app)) as client:
        yield client


async def top_up(api: TestClient, body: Any, key: str | None = "k-1") -> Any:
    headers = {**rider(), **({"Idempotency-Key": f'"{key}"'} if key else {})}
    return await api.post("/v1/wallet/topups", json=body, headers=headers)


async def pay(api: TestClient, order: dict[str, Any]) -> None:
    data = {"order_id": order["id"], "provider_reference": "sbx-9",
            "amount": order["pay"]["amount"], "currency": order["currency"]}  # fmt: skip
    body = json.dumps({"type": "payment.succeeded", "data": data}).encode()
    response = await api.post(
        "/v1/wallet/providers/sandbox/notifications",
        data=body,
        headers=signed_headers(body, SANDBOX_SECRET),
    )
    assert response.status == 204


async def test_a_rider_tops_up_pays_and_sees_the_money_and_the_statement(api: TestClient) -> None:
    first = await top_up(api, {"provider": "sandbox", "amount": 1250, "currency": "CNY"})
    assert first.status == 201
    order = await first.json()
    again = await top_up(api, {"provider": "sandbox", "amount": 1250, "currency": "CNY"})
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == order["id"]

    await pay(api, order)
    balance = await (await api.get("/v1/wallet/balance", headers=rider())).json()
    assert balance == {"currency": "CNY", "available": 1250, "held": 0}
    status = await (await api.get(f"/v1/wallet/topups/{order['id']}", headers=rider())).json()
    assert status["status"] == "paid"
    page = await (await api.get("/v1/wallet/statement", headers=rider())).json()
    assert [(e["kind"], e["amount"], e["type"]) for e in page["items"]] == [
        ("posted", 1250, "top_up")
    ]
    assert page["next"] is None

    refund = await api.post(
        f"/v1/wallet/topups/{order['id']}/refunds",
        json={"amount": 250, "currency": "CNY"},
        headers={**rider(), "Idempotency-Key": "r-1"},
    )
    assert refund.status == 201
    balance = await (await api.get("/v1/wallet/balance", headers=rider())).json()
    assert balance == {"currency": "CNY", "available": 1000, "held": 250}


async def test_a_rider_sees_only_their_own_top_ups(api: TestClient) -> None:
    order = await (
        await top_up(api, {"provider": "sandbox", "amount": 100, "currency": "CNY"})
    ).json()
    stranger = token("rider-43", "wallet:read", "wallet:refund")
    assert (await api.get(f"/v1/wallet/topups/{order['id']}", headers=stranger)).status == 404
    taken = await api.post(
        f"/v1/wallet/topups/{order['id']}/refunds",
        json={"amount": 100, "currency": "CNY"},
        headers={**stranger, "Idempotency-Key": "r-x"},
    )
    assert taken.status == 404


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"provider": "sandbox", "amount": 0, "currency": "CNY"}, 422, "wallet/top-up-refused"),
        ({"provider": "sandbox", "amount": -5, "currency": "CNY"}, 422, "wallet/top-up-refused"),
        ({"provider": "sandbox", "amount": 12.5, "currency": "CNY"}, 422, "invalid-body"),
        ({"provider": "sandbox", "amount": 10**9, "currency": "CNY"}, 422, "wallet/top-up-refused"),
        (
            {"provider": "sandbox", "amount": 10**30, "currency": "CNY"},
            422,
            "wallet/top-up-refused",
        ),
        ({"provider": "sandbox", "amount": 100, "currency": "EUR"}, 422, "wallet/top-up-refused"),
        ({"provider": "sandbox", "amount": 100, "currency": "XYZ"}, 422, "wallet/unknown-currency"),
        ({"provider": "nobody", "amount": 100, "currency": "CNY"}, 422, "wallet/unknown-provider"),
        ({"provider": "sandbox", "amount": 100, "currency": "CNY", "tip": 1}, 422, "invalid-body"),
        ({"provider": "sandbox", "amount": "1.00", "currency": "CNY"}, 422, "invalid-body"),
    ],
)
async def test_bad_input_is_a_problem_with_a_stable_type_and_applies_nothing(
    api: TestClient, body: dict[str, Any], status: int, problem: str
) -> None:
    response = await top_up(api, body, key=f"k-{uuid.uuid4()}")
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert (await response.json(content_type=None))["type"].endswith(problem)
    assert await api.server.app[POOL].fetchval("SELECT count(*) FROM topups") == 0


async def test_a_money_moving_post_without_an_idempotency_key_is_refused(api: TestClient) -> None:
    response = await top_up(api, {"provider": "sandbox", "amount": 100, "currency": "CNY"}, None)
    assert response.status == 400
    assert (await response.json(content_type=None))["type"].endswith("idempotency-key-missing")
    malformed = await api.post(
        "/v1/wallet/topups", data=b"{", headers={**rider(), "Idempotency-Key": "k-2"}
    )
    assert malformed.status == 400


async def test_without_the_gateways_token_or_its_scope_nothing_is_served(api: TestClient) -> None:
    bare = await api.get("/v1/wallet/balance")
    assert bare.status == 401
    assert bare.headers["WWW-Authenticate"].startswith("Bearer")
    narrow = await api.post(
        "/v1/wallet/topups",
        json={"provider": "sandbox", "amount": 100, "currency": "CNY"},
        headers={**token("rider-42", "wallet:read"), "Idempotency-Key": "k"},
    )
    assert narrow.status == 403


async def test_statements_are_for_their_provider_or_finance_and_only_for_final_days(
    api: TestClient,
) -> None:
    path = "/v1/wallet/providers/sandbox/statements/{}.csv"
    sandbox = token("sandbox", "wallet:settlement")
    assert (await api.get(path.format("2999-01-01"), headers=sandbox)).status == 409
    closed = await api.get(path.format("2026-01-01"), headers=sandbox)
    assert closed.status == 200
    assert (await closed.read()).startswith(b"format,cardless.statement.v1\r\n")
    other = token("alipay", "wallet:settlement")
    assert (await api.get(path.format("2026-01-01"), headers=other)).status == 403
    finance = token("finance-1", "wallet:finance")
    operator = await api.get("/v1/wallet/operators/metro/statements/2026-01-01.json",
                             headers=finance)  # fmt: skip
    assert operator.status == 200


async def test_the_openapi_document_describes_every_route(api: TestClient) -> None:
    document = await (await api.get("/v1/wallet/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    described = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {(m, p.replace("{format:csv|json}", "{format}")) for m, p, _ in ROUTES}
    assert served == described
