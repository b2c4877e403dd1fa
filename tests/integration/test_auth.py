"""A service reached over HTTP lets in only what the gateway authenticated, and says why not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from multidict import CIMultiDict

from shared.auth import FORBIDDEN, UNAUTHENTICATED, authenticate, parse_jwks
from shared.config import AuthConfig, PlatformConfig
from shared.service import Service, create_app

KID = "ed-2030-01"
SIGNING_KEY = Ed25519PrivateKey.generate()
JWKS = json.dumps({"keys": [{**OKPAlgorithm.to_jwk(SIGNING_KEY.public_key(), True), "kid": KID}]})


class ManualClock:
    """A clock the test moves by hand, so tokens expire without waiting."""

    def __init__(self) -> None:
        self.at = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at


def mint(clock: ManualClock, scope: str = "rides:read", **changes: Any) -> str:
    """What the gateway forwards: a five-minute access token for a rider."""
    now = int(clock.now().timestamp())
    claims: dict[str, Any] = {"iss": "cardless-gateway", "aud": "cardless-internal"}
    claims |= {"sub": "rider-7f3a", "scope": scope, "iat": now, "exp": now + 300, **changes}
    return jwt.encode(claims, SIGNING_KEY, "EdDSA", headers={"kid": KID})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def whoami(request: web.Request) -> web.Response:
    principal = await authenticate(request, "rides:read")
    return web.json_response({"subject": principal.subject, "scopes": sorted(principal.scopes)})


def serve(service: Service, config: PlatformConfig, clock: ManualClock) -> TestClient:
    # The real composition root, plus one authenticated route as a service would add it.
    app = create_app(service, config, clock=clock)
    app.router.add_get("/whoami", whoami)
    return TestClient(TestServer(app))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def client(
    notes: Service, config: PlatformConfig, clock: ManualClock
) -> AsyncIterator[TestClient]:
    with_keys = PlatformConfig(**{**config.__dict__, "auth": AuthConfig(jwks=parse_jwks(JWKS))})
    async with serve(notes, with_keys, clock) as client:
        yield client


async def problem(response: Any, status: int, type_: str) -> dict[str, Any]:
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = await response.json(content_type=None)
    assert (body["status"], body["type"]) == (status, type_)
    return body


async def test_a_good_token_reaches_the_handler_as_its_principal(
    client: TestClient, clock: ManualClock
) -> None:
    response = await client.get("/whoami", headers=bearer(mint(clock, "rides:read wallet:pay")))
    assert response.status == 200
    assert await response.json() == {
        "subject": "rider-7f3a",
        "scopes": ["rides:read", "wallet:pay"],
    }


async def test_the_scheme_is_case_insensitive(client: TestClient, clock: ManualClock) -> None:
    response = await client.get("/whoami", headers={"Authorization": f"bearer {mint(clock)}"})
    assert response.status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic cmlkZXI6cGFzcw=="}])
async def test_a_request_without_a_bearer_token_gets_the_challenge_without_an_error(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = await client.get("/whoami", headers=headers)
    body = await problem(response, 401, UNAUTHENTICATED)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert body["detail"] == "bearer token required"


async def test_a_bad_token_is_401_invalid_token_with_the_reason(
    client: TestClient, clock: ManualClock
) -> None:
    response = await client.get("/whoami", headers=bearer(mint(clock, iss="someone-else")))
    body = await problem(response, 401, UNAUTHENTICATED)
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body["detail"] == "wrong issuer"


async def test_a_clients_own_access_token_sent_past_the_gateway_is_refused(
    client: TestClient, clock: ManualClock
) -> None:
    # Signed by the gateway, but for its clients (aud "cardless"), not the internal audience.
    response = await client.get("/whoami", headers=bearer(mint(clock, aud="cardless")))
    body = await problem(response, 401, UNAUTHENTICATED)
    assert body["detail"] == "wrong audience"


@pytest.mark.parametrize(
    "headers",
    [
        CIMultiDict([("Authorization", "Bearer"), ("X-Other", "1")]),
        CIMultiDict([("Authorization", "Bearer a"), ("Authorization", "Bearer b")]),
    ],
    ids=["empty", "two-headers"],
)
async def test_a_malformed_authorization_header_is_401_invalid_token(
    client: TestClient, headers: CIMultiDict[str]
) -> None:
    response = await client.get("/whoami", headers=headers)
    body = await problem(response, 401, UNAUTHENTICATED)
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body["detail"] == "malformed Authorization header"


async def test_the_apps_clock_decides_when_a_token_has_expired(
    client: TestClient, clock: ManualClock
) -> None:
    token = mint(clock)
    assert (await client.get("/whoami", headers=bearer(token))).status == 200
    clock.at += timedelta(seconds=331)
    response = await client.get("/whoami", headers=bearer(token))
    assert (await problem(response, 401, UNAUTHENTICATED))["detail"] == "token expired"


async def test_a_token_without_the_routes_scope_is_403_insufficient_scope(
    client: TestClient, clock: ManualClock
) -> None:
    response = await client.get("/whoami", headers=bearer(mint(clock, "wallet:pay")))
    body = await problem(response, 403, FORBIDDEN)
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="rides:read"'
    )
    assert body["detail"] == "requires scope: rides:read"


async def test_without_keys_every_authenticated_route_answers_401(
    notes: Service, config: PlatformConfig, clock: ManualClock
) -> None:
    async with serve(notes, config, clock) as client:
        for headers in ({}, bearer(mint(clock))):
            response = await client.get("/whoami", headers=headers)
            body = await problem(response, 401, UNAUTHENTICATED)
            assert body["detail"] == "authentication is not configured"
        assert (await client.get("/healthz")).status == 200
