"""Schemathesis fuzzes the city through the gateway: whatever a client sends, the answer is one
the merged OpenAPI document promises (a documented status, its content type, its body schema,
its headers), and never a 5xx.

The gateway and a real wallet run in process on real sockets; schemathesis (its CLI, as a
subprocess: an outside client) reads the gateway's ``/openapi.json`` and calls every operation
with a real token of a registered client holding every wallet scope. A paid top-up and a
configured provider are offered to it as likely values, so that cases reach the wallet's own
logic and its successful answers are checked too, not only its refusals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.gateway.app import add_routes
from services.gateway.clients import parse_clients
from services.gateway.config import GatewayConfig
from services.gateway.openapi import METHODS, UNAVAILABLE
from services.gateway.ratelimit import Limit
from shared.config import AuthConfig, PlatformConfig
from shared.service import Service, create_app
from tests.gateway_city import RegisteredClient
from tests.provider_peers import new_secret, signed_headers
from tests.support import free_port

FINANCE = "city-finance-fuzz"
SCOPES = ("wallet:read", "wallet:topup", "wallet:refund", "wallet:settlement", "wallet:finance")
PROVIDER = "sandbox"
PROVIDER_SECRET = new_secret()
# Bounded: a handful of cases per operation and phase keeps the run to seconds.
MAX_EXAMPLES = 8
SEED = 20_300_101
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
RUN_TIMEOUT_S = 90
# The run is about what the API answers, not how fast a client may ask: no 429 in the way.
UNLIMITED = Limit(requests=1_000_000, period_s=60)
TOKEN_VARIABLE = "CARDLESS_FUZZ_TOKEN"
# Read by schemathesis from its working directory. The token comes from the environment, so
# it is on no command line; likely values are offered half the time, random ones otherwise.
CONFIG = """\
headers = {{ Authorization = "Bearer ${{{token}}}" }}

[dictionaries.providers]
values = ["{provider}"]

[dictionaries.orders]
values = ["{order_id}"]

[parameters]
"path.provider" = {{ dictionary = "providers", probability = 0.5 }}
"body.provider" = {{ dictionary = "providers", probability = 0.5 }}
"path.order_id" = {{ dictionary = "orders", probability = 0.5 }}
"""


@pytest.fixture
def client() -> RegisteredClient:
    """A registered client: the city's finance office."""
    return RegisteredClient(FINANCE, "operator", *SCOPES)


@pytest.fixture
async def gateway_url(
    config: PlatformConfig,
    wallet_service: Service,
    gateway_service: Service,
    client: RegisteredClient,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[str]:
    """The gateway's URL, in front of a real wallet that checks the gateway's own keys."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sandbox = {
        "scheme": "standard-webhooks",
        "secrets": [PROVIDER_SECRET],
        "currency": "CNY",
        # Refunds are asked of the provider by webhook; nobody listens there, which is fine.
        "webhook_url": "http://127.0.0.1:9/refunds",
        "outgoing_secrets": [new_secret()],
    }
    monkeypatch.setenv("WALLET_PROVIDERS", json.dumps({PROVIDER: sandbox}))
    wallet_config = dataclasses.replace(
        config, auth=AuthConfig(jwks_url=f"{url}/.well-known/jwks.json")
    )
    async with TestServer(create_app(wallet_service, wallet_config)) as wallet:
        settings = GatewayConfig(
            public_url=url,
            upstreams={"wallet": str(wallet.make_url("")).rstrip("/")},
            clients=parse_clients(client.registry_json()),
            limits={name: UNLIMITED for name in ("default", "read", "money", "provider", "token")},
        )
        service = dataclasses.replace(
            gateway_service, add_routes=functools.partial(add_routes, settings=settings)
        )
        app = create_app(service, dataclasses.replace(config, port=port))
        async with TestServer(app, port=port):
            yield url


async def paid_top_up(http: aiohttp.ClientSession, gateway_url: str, token: str) -> str:
    """A top-up the client ordered and the provider paid, through the gateway; its id."""
    async with http.post(
        f"{gateway_url}/v1/wallet/topups",
        json={"provider": PROVIDER, "amount": 5000, "currency": "CNY"},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": '"fuzz-seed-order"'},
    ) as answer:
        assert answer.status == 201, await answer.text()
        order = await answer.json()
    data = {"order_id": order["id"], "provider_reference": "sbx-fuzz",
            "amount": order["pay"]["amount"], "currency": order["currency"]}  # fmt: skip
    body = json.dumps({"type": "payment.succeeded", "data": data}).encode()
    async with http.post(
        f"{gateway_url}/v1/wallet/providers/{PROVIDER}/notifications",
        data=body,
        headers=signed_headers(body, PROVIDER_SECRET),
    ) as answer:
        assert answer.status == 204, await answer.text()
    order_id: str = order["id"]
    return order_id


async def schemathesis(gateway_url: str, token: str, workdir: Path) -> tuple[int, str]:
    """One bounded schemathesis run against the live gateway; its exit code and its report."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "schemathesis.cli", "run"),
        f"{gateway_url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        "junit.xml",
        cwd=workdir,  # its config, and any file it writes, stay in the test's own directory
        env={**os.environ, TOKEN_VARIABLE: token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:  # timed out, or the test was cancelled
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def test_every_answer_through_the_gateway_is_one_the_document_promises(
    gateway_url: str, client: RegisteredClient, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        token = await client.token(http, f"{gateway_url}/oauth/token", " ".join(SCOPES))
        order_id = await paid_top_up(http, gateway_url, token)
        async with http.get(f"{gateway_url}/openapi.json") as answer:
            document = await answer.json()
    config = CONFIG.format(token=TOKEN_VARIABLE, provider=PROVIDER, order_id=order_id)
    (tmp_path / "schemathesis.toml").write_text(config)
    code, report = await schemathesis(gateway_url, token, tmp_path)
    assert code == 0, report
    assert wallet_operations(document) <= operations_run(tmp_path / "junit.xml"), report


def wallet_operations(document: dict[str, Any]) -> set[str]:
    """Every wallet operation of the merged document, as schemathesis names them."""
    assert "wallet" not in document["info"].get(UNAVAILABLE, {})
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        if path.startswith("/v1/wallet/")
        for method in item
        if method in METHODS
    }


def operations_run(junit: Path) -> set[str]:
    """The operations the run called, from its JUnit report."""
    return {case.attrib["name"] for case in ElementTree.parse(junit).iter("testcase")}
