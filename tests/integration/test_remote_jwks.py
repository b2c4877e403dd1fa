"""Keys by URL: a service follows its issuer's JWKS through rotations, outages and garbage."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from shared.auth import MAX_JWKS_BYTES, RemoteJwks, TokenVerifier, Unauthenticated, authenticate
from shared.config import AuthConfig, PlatformConfig
from shared.service import Service, create_app
from tests.support import eventually

NOW = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)
MIN_REFRESH_S, MAX_AGE_S = 30, 300
REFRESH_FAILED = "JWKS refresh failed; keeping the cached keys"


@dataclass(frozen=True)
class FixedClock:
    at: datetime

    def now(self) -> datetime:
        return self.at


class Ticker:
    """The cache's monotonic clock, moved by hand: refresh intervals pass without waiting."""

    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


class Signer:
    """One of the issuer's signing keys: mints internal tokens, publishes its public JWK."""

    def __init__(self, kid: str) -> None:
        self.kid, self.private = kid, Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, Any]:
        return {**OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid}

    def mint(self, scope: str = "rides:read") -> str:
        now = int(NOW.timestamp())
        claims = {"iss": "cardless-gateway", "aud": "cardless-internal", "sub": "rider-7f3a",
                  "scope": scope, "iat": now - 60, "exp": now + 240}  # fmt: skip
        return jwt.encode(claims, self.private, "EdDSA", headers={"kid": self.kid})


A, B = Signer("gw-2030-01"), Signer("gw-2030-02")


@dataclass
class Issuer:
    """The issuer's JWKS endpoint (an outside party): answers what the test says, counts hits."""

    keys: list[dict[str, Any]] = field(default_factory=lambda: [A.jwk()])
    status: int = 200
    body: bytes | None = None  # instead of the keys: garbage, for instance
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # while set and not released, requests wait
    hits: int = 0

    async def jwks(self, _: web.Request) -> web.Response:
        self.hits += 1
        if self.hold is not None:
            await self.hold.wait()
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        return web.Response(
            body=body, status=self.status, headers=self.headers, content_type="application/json"
        )


@dataclass
class Served:
    issuer: Issuer
    server: BaseTestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("/.well-known/jwks.json"))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    issuer = Issuer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", issuer.jwks)
    async with TestServer(app) as server:
        yield Served(issuer, server)


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
async def remote(served: Served, ticker: Ticker) -> AsyncIterator[RemoteJwks]:
    async with aiohttp.ClientSession() as session:
        keys = RemoteJwks(
            served.url,
            session=session,
            min_refresh_interval_s=MIN_REFRESH_S,
            max_age_s=MAX_AGE_S,
            monotonic=ticker,
        )
        yield keys
        await keys.aclose()


@pytest.fixture
def verifier(served: Served, remote: RemoteJwks) -> TokenVerifier:
    return TokenVerifier(AuthConfig(jwks_url=served.url), FixedClock(NOW), remote)


async def outcome(verifier: TokenVerifier, token: str) -> str:
    """ "accepted", or the reason the token was refused."""
    try:
        await verifier.verify(token)
    except Unauthenticated as refused:
        return refused.reason
    return "accepted"


async def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    """The records so far with this message; a probe for ``eventually``."""
    return [record for record in caplog.records if record.getMessage() == message]


async def test_a_token_of_a_key_the_issuer_serves_is_accepted_and_the_set_is_cached(
    served: Served, verifier: TokenVerifier
) -> None:
    principal = await verifier.verify(A.mint("rides:read wallet:pay"))
    assert (principal.subject, principal.scopes) == (
        "rider-7f3a",
        frozenset({"rides:read", "wallet:pay"}),
    )
    assert await outcome(verifier, A.mint()) == "accepted"
    assert served.issuer.hits == 1


async def test_a_key_rotated_in_is_picked_up_the_first_time_a_token_names_it(
    served: Served, verifier: TokenVerifier, ticker: Ticker
) -> None:
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += MIN_REFRESH_S
    served.issuer.keys = [A.jwk(), B.jwk()]
    assert await outcome(verifier, B.mint()) == "accepted"
    assert await outcome(verifier, A.mint()) == "accepted"
    assert served.issuer.hits == 2


async def test_an_unknown_kid_refreshes_at_most_once_per_minimum_interval(
    served: Served, verifier: TokenVerifier, ticker: Ticker
) -> None:
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += MIN_REFRESH_S
    for _ in range(5):
        assert await outcome(verifier, B.mint()) == "unknown kid"
    assert served.issuer.hits == 2
    ticker.at += MIN_REFRESH_S - 1
    assert await outcome(verifier, B.mint()) == "unknown kid"
    assert served.issuer.hits == 2
    ticker.at += 1
    assert await outcome(verifier, B.mint()) == "unknown kid"
    assert served.issuer.hits == 3


async def test_twenty_concurrent_tokens_of_a_new_key_share_one_fetch(
    served: Served, verifier: TokenVerifier, ticker: Ticker
) -> None:
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += MIN_REFRESH_S
    served.issuer.keys, served.issuer.hold = [A.jwk(), B.jwk()], asyncio.Event()
    checks = [asyncio.create_task(outcome(verifier, B.mint())) for _ in range(20)]
    await eventually(lambda: _value(served.issuer.hits), lambda hits: hits == 2, what="fetch")
    served.issuer.hold.set()
    assert await asyncio.gather(*checks) == ["accepted"] * 20
    assert served.issuer.hits == 2


async def test_while_the_issuer_answers_500_the_cached_keys_keep_working(
    served: Served, verifier: TokenVerifier, ticker: Ticker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.auth")
    assert await outcome(verifier, A.mint()) == "accepted"
    served.issuer.status = 500
    ticker.at += MAX_AGE_S
    assert await outcome(verifier, A.mint()) == "accepted"
    [failure] = await eventually(lambda: logged(caplog, REFRESH_FAILED), bool, what="warning")
    assert failure.__dict__["reason"] == "JwksError: answered HTTP 500"
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += MIN_REFRESH_S
    assert await outcome(verifier, B.mint()) == "unknown kid"
    assert await outcome(verifier, A.mint()) == "accepted"
    assert served.issuer.hits == 3


async def test_when_the_issuer_goes_away_the_cached_keys_keep_working(
    served: Served, verifier: TokenVerifier, ticker: Ticker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.auth")
    assert await outcome(verifier, A.mint()) == "accepted"
    await served.server.close()
    ticker.at += MAX_AGE_S
    assert await outcome(verifier, A.mint()) == "accepted"
    await eventually(lambda: logged(caplog, REFRESH_FAILED), bool, what="warning")
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += MIN_REFRESH_S
    assert await outcome(verifier, B.mint()) == "unknown kid"
    assert len(await logged(caplog, REFRESH_FAILED)) == 2


def _rsa_only() -> bytes:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return json.dumps(
        {"keys": [{**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": "r"}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>upstream busy</html>", 'expected a JWKS, JSON like {"keys": [...]}'),
        (b'{"keys": {"gw-2030-01": {}}}', 'expected a JWKS, JSON like {"keys": [...]}'),
        (b"\xff\xfe{\x00", 'expected a JWKS, JSON like {"keys": [...]}'),
        (b'{"keys": []}', "no usable key in the JWKS"),
        (_rsa_only(), "no usable key in the JWKS"),
        (
            json.dumps({"keys": [B.jwk()], "padding": "x" * MAX_JWKS_BYTES}).encode(),
            f"answered more than {MAX_JWKS_BYTES} bytes",
        ),
    ],
    ids=["html", "not-a-jwks", "not-utf8", "empty", "rsa-only", "oversized"],
)
async def test_a_garbage_jwks_keeps_the_stale_set_in_service(
    served: Served,
    verifier: TokenVerifier,
    ticker: Ticker,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.auth")
    assert await outcome(verifier, A.mint()) == "accepted"
    served.issuer.body = body
    ticker.at += MAX_AGE_S
    assert await outcome(verifier, A.mint()) == "accepted"
    [failure] = await eventually(lambda: logged(caplog, REFRESH_FAILED), bool, what="warning")
    assert failure.__dict__["reason"] == f"JwksError: {reason}"
    assert await outcome(verifier, A.mint()) == "accepted"
    assert await outcome(verifier, B.mint()) == "unknown kid"
    assert A.jwk()["x"] not in caplog.text
    assert B.jwk()["x"] not in caplog.text


async def test_a_key_the_issuer_withdrew_is_refused_once_the_cache_refreshes(
    served: Served, verifier: TokenVerifier, ticker: Ticker
) -> None:
    served.issuer.keys = [A.jwk(), B.jwk()]
    assert await outcome(verifier, A.mint()) == "accepted"
    served.issuer.keys = [B.jwk()]
    ticker.at += MAX_AGE_S
    # The cached key answers while the refresh runs in the background; then it is gone.
    await eventually(lambda: outcome(verifier, A.mint()), lambda r: r == "unknown kid")
    assert await outcome(verifier, B.mint()) == "accepted"
    assert served.issuer.hits == 2


@pytest.mark.parametrize(
    ("cache_control", "fresh_s"),
    [("public, max-age=60", 60), ("max-age=86400", MAX_AGE_S), ("no-cache", MAX_AGE_S)],
)
async def test_the_issuers_max_age_decides_when_the_set_is_refreshed_within_our_maximum(
    served: Served, verifier: TokenVerifier, ticker: Ticker, cache_control: str, fresh_s: int
) -> None:
    served.issuer.headers = {"Cache-Control": cache_control}
    assert await outcome(verifier, A.mint()) == "accepted"
    ticker.at += fresh_s - 1
    assert await outcome(verifier, A.mint()) == "accepted"
    assert served.issuer.hits == 1
    ticker.at += 1
    assert await outcome(verifier, A.mint()) == "accepted"
    await eventually(lambda: _value(served.issuer.hits), lambda hits: hits == 2, what="refresh")


async def test_keys_the_service_cannot_use_are_skipped_with_a_warning_naming_only_their_place(
    served: Served, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.auth")
    rsa_only = json.loads(_rsa_only())["keys"]
    served.issuer.keys = [*rsa_only, {**B.jwk(), "use": "enc"}, A.jwk()]
    assert await outcome(verifier, A.mint()) == "accepted"
    assert await outcome(verifier, B.mint()) == "unknown kid"
    reasons = [r.__dict__["reason"] for r in await logged(caplog, "JWKS key skipped")]
    assert reasons == [
        "keys[0]: only OKP Ed25519 and EC P-256 keys are accepted",
        "keys[1]: this key may only sign with EdDSA",
    ]
    assert rsa_only[0]["n"] not in caplog.text
    assert B.jwk()["x"] not in caplog.text


async def whoami(request: web.Request) -> web.Response:
    principal = await authenticate(request, "rides:read")
    return web.json_response({"subject": principal.subject})


async def test_a_service_configured_with_a_jwks_url_lets_in_tokens_of_the_issuers_keys(
    served: Served, notes: Service, config: PlatformConfig
) -> None:
    by_url = replace(config, auth=AuthConfig(jwks_url=served.url))
    app = create_app(notes, by_url, clock=FixedClock(NOW))
    app.router.add_get("/whoami", whoami)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {A.mint()}"})
        assert (response.status, await response.json()) == (200, {"subject": "rider-7f3a"})
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {B.mint()}"})
        assert response.status == 401
        assert (await response.json(content_type=None))["detail"] == "unknown kid"
    assert served.issuer.hits == 1


async def _value(value: int) -> int:
    return value
