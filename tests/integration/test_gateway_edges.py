"""The gateway at its edges and under failure, over real sockets: limits shared by replicas, a
killed service, a silent one, oversized bodies, overload, Redis away, and what every answer
carries (security and CORS headers, request ids, traces, access logs, metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from yarl import URL

from services.gateway.app import PARTS, SETTINGS, add_routes
from services.gateway.clients import parse_clients
from services.gateway.config import GatewayConfig
from services.gateway.ratelimit import RateLimiter
from services.gateway.resp import RespPipe
from services.gateway.routes import ROUTES, Route
from services.gateway.tokens import TokenEndpoint, TokenKeys, TokenSettings
from shared.config import PlatformConfig
from shared.context import parse_traceparent
from shared.http import PROBLEM_JSON
from shared.keys import Keys
from shared.logs import JsonFormatter
from shared.service import CLOCK, POOL, Service, create_app
from tests.conftest import service_env
from tests.gateway_city import RegisteredClient
from tests.gateway_processes import GATEWAY_NAME, GATEWAY_TARGET, WALLET_NAME, WALLET_TARGET
from tests.support import ServiceProcess, eventually, free_port

BALANCE = "/v1/wallet/balance"
TOPUPS = "/v1/wallet/topups"
TAPS = "/v1/transit/taps"
# A route class that passes while Redis is away (routes.FAIL_OPEN_CLASSES); no service has a
# taps route yet, so the tests add one to a stand-in upstream.
TAPS_ROUTE = Route("POST", TAPS, "transit", ("transit:taps",), rate_class="taps")
TOPUP = {"amount": 5000, "currency": "CNY", "provider": "sandbox-pay"}
CITY_PAGES = "https://pay.city.example"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


OPERATOR = RegisteredClient("city-ops", "operator", "wallet:read", "wallet:topup", "transit:taps")


@dataclass(frozen=True)
class Seen:
    """A request as it reached the stand-in service."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Upstream:
    """A stand-in service (an outside party): records what reaches it and answers 200, or,
    while ``hanging``, holds every request until the test ends."""

    seen: list[Seen] = field(default_factory=list)
    hanging: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app)
        await self.server.start_server()

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(request.method, request.raw_path, request.headers, await request.read())
        )
        if self.hanging:
            await self.release.wait()
        return web.json_response({"from": "upstream"})

    async def hits(self) -> int:
        return len(self.seen)


@dataclass
class Gateway:
    """A gateway under test, reached over HTTP like any client would."""

    url: str
    session: aiohttp.ClientSession
    app: web.Application | None = None
    public_url: str | None = None  # where clients address their assertions, if not ``url``

    async def token(self) -> str:
        """An access token for OPERATOR, from the token endpoint at the public URL."""
        return await OPERATOR.token(self.session, f"{self.public_url or self.url}/oauth/token")

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Answer:
        """``method`` on ``path``, sent exactly as written (percent-escapes, dot segments)."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        url = URL(f"{self.url}{path}", encoded=True)
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            return Answer(response.status, response.headers, await response.read())

    async def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample at /metrics, None if it is not there."""
        async with self.session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


@dataclass(frozen=True)
class Answer:
    """What the client got back, read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        """The problem details of an error answer (asserting it is one)."""
        assert self.headers["Content-Type"].startswith(PROBLEM_JSON), self.headers
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status
        return body


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    service = Upstream()
    await service.start()
    yield service
    await service.stop()


OpenGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def open_gateway(
    gateway_service: Service,
    config: PlatformConfig,
    stack: AsyncExitStack,
    session: aiohttp.ClientSession,
) -> OpenGateway:
    """Start an in-process gateway with OPERATOR registered: ``await open_gateway(upstreams,
    routes=..., **GatewayConfig fields)``."""

    async def start(
        upstreams: dict[str, str], *, routes: Sequence[Route] = ROUTES, **settings: Any
    ) -> Gateway:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        gateway_config = GatewayConfig(
            public_url=url,
            upstreams=upstreams,
            clients=parse_clients(OPERATOR.registry_json()),
            **settings,
        )
        service = replace(
            gateway_service, add_routes=partial(add_routes, settings=gateway_config, routes=routes)
        )
        app = create_app(service, replace(config, port=port))
        server = TestServer(app, port=port)
        await server.start_server()
        stack.push_async_callback(server.close)
        return Gateway(url, session, app)

    return start


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Service processes a test starts; stopped when it ends, whatever happened."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


async def serving(session: aiohttp.ClientSession, process: ServiceProcess) -> str:
    """The base URL of ``process`` once it answers /healthz (its startup is complete)."""
    url = f"http://127.0.0.1:{process.port}"

    async def status() -> int | None:
        assert process.alive, f"{process.target} exited"
        try:
            async with session.get(f"{url}/healthz") as response:
                return response.status
        except aiohttp.ClientConnectionError:
            return None

    await eventually(status, lambda code: code == 200, within=60, what=f"{process.target} up")
    return url


async def chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    """``body`` as a chunked upload: no Content-Length announces its size."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def route(method: str, path: str) -> Route:
    return next(r for r in ROUTES if (r.method, r.path) == (method, path))


# Rate limits


async def test_replicas_share_one_rate_limit_and_refuse_past_it_with_retry_after(
    gateway_service: Service,
    config: PlatformConfig,
    session: aiohttp.ClientSession,
    upstream: Upstream,
    processes: list[ServiceProcess],
) -> None:
    env = service_env(
        config,
        **{GATEWAY_NAME: gateway_service.name},
        GATEWAY_UPSTREAMS=json.dumps({"wallet": upstream.url}),
        GATEWAY_CLIENTS=OPERATOR.registry_json(),
        GATEWAY_RATE_LIMITS=json.dumps({"read": {"requests": 5, "period_s": 60}}),
    )
    replicas = [ServiceProcess(GATEWAY_TARGET, env) for _ in range(2)]
    # Clients address one public URL (a load balancer's); both replicas answer for it.
    public_url = f"http://127.0.0.1:{replicas[0].port}"
    processes.extend(replica.start(GATEWAY_PUBLIC_URL=public_url) for replica in replicas)
    a, b = [Gateway(await serving(session, r), session, public_url=public_url) for r in replicas]
    token = await a.token()

    alternating = [await gateway.call("GET", BALANCE, token) for gateway in (a, b, a)]
    concurrent = await asyncio.gather(*(g.call("GET", BALANCE, token) for g in (a, b) * 4))
    after = await b.call("GET", BALANCE, token)

    assert [answer.status for answer in alternating] == [200, 200, 200]
    assert alternating[0].headers["RateLimit-Policy"] == '"read";q=5;w=60'
    assert alternating[0].headers["RateLimit"] == '"read";r=4;t=12'
    assert sorted(answer.status for answer in concurrent) == [200] * 2 + [429] * 6
    assert after.status == 429
    assert len(upstream.seen) == 5
    for refused in [answer for answer in concurrent if answer.status == 429] + [after]:
        # 60 s / 5: one more request's worth, less the (sub-second, rounded up) time since the
        # first request; a second more only on a machine slow enough to take over a second.
        assert refused.headers["Retry-After"] in {"12", "11"}
        assert refused.headers["RateLimit-Policy"] == '"read";q=5;w=60'
        assert refused.headers["RateLimit"].startswith('"read";r=0;t=')
        problem = refused.problem()
        assert (problem["type"], problem["violated-policies"]) == (QUOTA_EXCEEDED, ["read"])


# Upstream failures


async def test_a_killed_service_gets_502s_then_the_breaker_answers_503_until_it_is_back(
    wallet_service: Service,
    config: PlatformConfig,
    open_gateway: OpenGateway,
    session: aiohttp.ClientSession,
    processes: list[ServiceProcess],
) -> None:
    wallet = ServiceProcess(
        WALLET_TARGET, service_env(config, **{WALLET_NAME: wallet_service.name})
    )
    gateway = await open_gateway(
        {"wallet": f"http://127.0.0.1:{wallet.port}"}, breaker_failures=3, breaker_open_s=2
    )
    wallet.env["AUTH_JWKS_URL"] = f"{gateway.url}/.well-known/jwks.json"
    processes.append(wallet.start())
    await serving(session, wallet)
    token = await gateway.token()
    assert (await gateway.call("GET", BALANCE, token)).status == 200

    wallet.kill()
    # A POST without an Idempotency-Key is never retried: one request, one failed attempt.
    failed = [await gateway.call("POST", TOPUPS, token, json=TOPUP) for _ in range(3)]
    paused = await gateway.call("GET", BALANCE, token)

    assert [answer.status for answer in failed] == [502, 502, 502]
    assert all(answer.problem()["title"] == "Bad Gateway" for answer in failed)
    assert paused.status == 503
    assert int(paused.headers["Retry-After"]) >= 1
    assert paused.problem()["title"] == "Service Unavailable"
    attempts = "gateway_upstream_duration_seconds_count"
    # Three attempts failed, and the paused request made none: the breaker answered it.
    assert await gateway.metric(attempts, upstream="wallet", code="error") == 3
    assert await gateway.metric("gateway_circuit_breaker_state", upstream="wallet") == 2

    wallet.start()
    await serving(session, wallet)

    async def balance() -> int:
        return (await gateway.call("GET", BALANCE, token)).status

    await eventually(balance, lambda status: status == 200, within=60, what="the wallet again")
    assert await gateway.metric("gateway_circuit_breaker_state", upstream="wallet") == 0


async def test_a_service_that_never_answers_gets_504_at_the_routes_deadline(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    hasty = tuple(replace(r, timeout_s=0.2) for r in ROUTES)
    gateway = await open_gateway({"wallet": upstream.url}, routes=hasty)
    token = await gateway.token()
    upstream.hanging = True

    answer = await gateway.call("GET", BALANCE, token)

    assert answer.status == 504
    assert answer.problem()["title"] == "Gateway Timeout"
    assert len(upstream.seen) == 1


# Bodies and overload


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_routes_limit_is_refused_413_and_never_forwarded(
    open_gateway: OpenGateway, upstream: Upstream, chunked: bool
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()
    limit = route("POST", TOPUPS).max_body_bytes

    def body(size: int) -> bytes | AsyncIterator[bytes]:
        return chunks(b"x" * size) if chunked else b"x" * size

    fits = await gateway.call("POST", TOPUPS, token, data=body(limit))
    too_large = await gateway.call("POST", TOPUPS, token, data=body(limit + 1))

    assert fits.status == 200
    assert too_large.status == 413
    assert too_large.problem()["title"] == "Content Too Large"
    assert [len(seen.body) for seen in upstream.seen] == [limit]


async def test_a_request_over_the_in_flight_cap_is_shed_at_once_with_503(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url}, max_in_flight=1)
    token = await gateway.token()
    upstream.hanging = True
    held = asyncio.create_task(gateway.call("GET", BALANCE, token))
    await eventually(upstream.hits, lambda n: n == 1, what="the first request at the service")

    shed = await gateway.call("GET", BALANCE, token)

    assert shed.status == 503
    assert shed.headers["Retry-After"] == "1"
    assert shed.problem()["title"] == "Service Unavailable"
    assert len(upstream.seen) == 1
    assert await gateway.metric("gateway_shed_total") == 1
    upstream.release.set()
    assert (await held).status == 200


async def test_with_the_limiters_redis_away_money_is_refused_and_taps_pass(
    open_gateway: OpenGateway, upstream: Upstream, config: PlatformConfig, stack: AsyncExitStack
) -> None:
    gateway = await open_gateway(
        {"wallet": upstream.url, "transit": upstream.url}, routes=(*ROUTES, TAPS_ROUTE)
    )
    token = await gateway.token()
    # Only the limiter loses Redis: the token endpoint and readiness keep theirs.
    away = RespPipe(f"redis://127.0.0.1:{free_port()}")
    stack.push_async_callback(away.aclose)
    assert gateway.app is not None
    gateway.app[PARTS].limiter = RateLimiter(away, Keys(config.bus.namespace))

    money = await gateway.call("POST", TOPUPS, token, json=TOPUP)
    tap = await gateway.call("POST", TAPS, token, json={"gate": "station-0001"})

    assert money.status == 503
    assert money.headers["Retry-After"] == "1"
    assert money.problem()["title"] == "Service Unavailable"
    assert tap.status == 200
    assert [seen.path for seen in upstream.seen] == [TAPS]
    decisions = "gateway_rate_limit_decisions_total"
    assert await gateway.metric(decisions, **{"class": "money", "decision": "fail_closed"}) == 1
    assert await gateway.metric(decisions, **{"class": "taps", "decision": "fail_open"}) == 1


async def test_with_redis_away_a_token_is_refused_with_503_never_issued_unchecked(
    open_gateway: OpenGateway, upstream: Upstream, config: PlatformConfig, stack: AsyncExitStack
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    assert gateway.app is not None
    settings, parts = gateway.app[SETTINGS], gateway.app[PARTS]
    # The token endpoint keeps each assertion's id in Redis so that it is used once: with
    # Redis away it must refuse, not skip the check.
    away = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0)
    )
    stack.push_async_callback(away.aclose)
    parts.tokens = TokenEndpoint(
        parts.keyring,
        settings.clients,
        away,
        TokenKeys(config.bus.namespace),
        gateway.app[POOL],
        gateway.app[CLOCK],
        TokenSettings(token_url=settings.token_url),
    )

    answer = await gateway.call("POST", "/oauth/token", data=OPERATOR.form(settings.token_url))

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "1"
    assert "access_token" not in answer.problem()


# What every answer carries


async def test_every_answer_carries_the_security_headers_errors_included(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()

    answers = [
        await gateway.call("GET", BALANCE, token),
        await gateway.call("GET", BALANCE),
        await gateway.call("GET", "/v1/nowhere", token),
        await gateway.call("GET", "/.well-known/jwks.json"),
    ]

    assert [answer.status for answer in answers] == [200, 401, 404, 200]
    for answer in answers:
        assert {name: answer.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS


async def test_the_citys_pages_get_cors_headers_and_their_preflights_are_answered_here(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url}, cors_origins=frozenset({CITY_PAGES}))
    token = await gateway.token()
    asked = {
        "Origin": CITY_PAGES,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, dpop, content-type, idempotency-key",
    }

    answer = await gateway.call("GET", BALANCE, token, headers={"Origin": CITY_PAGES})
    preflight = await gateway.call("OPTIONS", TOPUPS, headers=asked)

    assert answer.status == 200
    assert answer.headers["Access-Control-Allow-Origin"] == CITY_PAGES
    assert "Origin" in answer.headers["Vary"]
    exposed = answer.headers["Access-Control-Expose-Headers"].split(", ")
    assert {"X-Request-Id", "Retry-After", "RateLimit", "RateLimit-Policy"} <= set(exposed)
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == CITY_PAGES
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"].split(", ")
    allowed = {h.lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(", ")}
    assert {"authorization", "dpop", "content-type", "idempotency-key"} <= allowed
    assert [seen.method for seen in upstream.seen] == ["GET"]  # the preflight stayed here


async def test_a_foreign_origin_gets_no_cors_headers(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url}, cors_origins=frozenset({CITY_PAGES}))
    token = await gateway.token()
    foreign = {"Origin": "https://pay.city.example.evil.test"}

    answers = [
        await gateway.call("GET", BALANCE, token, headers=foreign),
        await gateway.call(
            "OPTIONS", TOPUPS, headers={**foreign, "Access-Control-Request-Method": "POST"}
        ),
    ]

    assert [answer.status for answer in answers] == [200, 204]
    for answer in answers:
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")]


async def test_the_clients_request_id_reaches_the_service_and_comes_back(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()

    answer = await gateway.call("GET", BALANCE, token, headers={"X-Request-Id": "gate-17:r-0042"})

    assert answer.status == 200
    assert answer.headers["X-Request-Id"] == "gate-17:r-0042"
    [seen] = upstream.seen
    assert seen.headers.getall("X-Request-Id") == ["gate-17:r-0042"]


async def test_the_clients_trace_continues_at_the_service(
    open_gateway: OpenGateway, upstream: Upstream
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    answer = await gateway.call(
        "GET", BALANCE, token, headers={"traceparent": f"00-{trace_id}-{client_span}-01"}
    )

    assert answer.status == 200
    [seen] = upstream.seen
    upstream_trace, gateway_span = parse_traceparent(seen.headers["traceparent"]) or ("", "")
    assert upstream_trace == trace_id
    assert gateway_span != client_span  # the gateway's own span, a child of the client's
    assert (parse_traceparent(answer.headers["traceparent"]) or ("",))[0] == trace_id


@pytest.mark.parametrize(
    "path",
    [
        "/v1/wallet/topups/..",
        "/v1/wallet/topups/%2E%2E",
        "/v1/wallet/topups/..%2Fbalance",
        "/v1/wallet/topups/order-1%2Frefunds",
        "/v1/wallet/topups/order-1%5Crefunds",
    ],
)
async def test_dot_segments_and_encoded_slashes_are_refused_400(
    open_gateway: OpenGateway, upstream: Upstream, path: str
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()

    answer = await gateway.call("GET", path, token)

    assert answer.status == 400
    assert answer.problem()["title"] == "Bad Request"
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/v1/nowhere", "/v1/wallet/nowhere", "/v1/wallet/x/../balance"])
async def test_a_path_no_route_names_is_a_404_problem_never_forwarded(
    open_gateway: OpenGateway, upstream: Upstream, path: str
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()

    answer = await gateway.call("GET", path, token)

    assert answer.status == 404
    assert answer.problem()["title"] == "Not Found"
    assert upstream.seen == []


async def test_each_request_writes_one_json_access_log_line_with_the_route_never_the_token(
    open_gateway: OpenGateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    await gateway.call("GET", f"{BALANCE}?currency=CNY", token)
    await gateway.call("GET", "/v1/wallet/topups/order-8812", token)
    await gateway.call("GET", "/v1/nowhere", token)

    formatter = JsonFormatter("gateway")
    lines = [formatter.format(r) for r in caplog.records if r.name == "cardless.access"]
    logged = [json.loads(line) for line in lines]
    assert [(e["method"], e["route"], e["status"]) for e in logged] == [
        ("GET", BALANCE, 200),
        ("GET", "/v1/wallet/topups/{order_id}", 200),
        ("GET", "unmatched", 404),
    ]
    assert [e["client_id"] for e in logged[:2]] == ["city-ops", "city-ops"]
    assert not any("order-8812" in line or "currency" in line for line in lines)
    everything = "\n".join(formatter.format(record) for record in caplog.records)
    assert token not in everything
    assert token.rsplit(".", 1)[1] not in everything  # not even its signature


async def test_metrics_describe_requests_upstreams_rate_limits_and_breakers(
    open_gateway: OpenGateway, upstream: Upstream, gateway_service: Service
) -> None:
    gateway = await open_gateway({"wallet": upstream.url})
    token = await gateway.token()

    assert (await gateway.call("GET", BALANCE, token)).status == 200

    # The platform names request metrics after the service: ``gateway_...`` in a deployment,
    # this test's own service name here.
    requests = f"{gateway_service.name}_request_duration_seconds_count"
    assert await gateway.metric(requests, route=BALANCE, method="GET", code="200") == 1
    assert await gateway.metric(requests, route="/oauth/token", method="POST", code="200") == 1
    upstreams = "gateway_upstream_duration_seconds_count"
    assert await gateway.metric(upstreams, upstream="wallet", code="200") == 1
    decisions = "gateway_rate_limit_decisions_total"
    assert await gateway.metric(decisions, **{"class": "read", "decision": "allowed"}) == 1
    assert await gateway.metric("gateway_circuit_breaker_state", upstream="wallet") == 0
