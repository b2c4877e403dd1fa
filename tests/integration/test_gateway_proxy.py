"""The gateway forwards to services over real sockets: requests arrive intact, answers come
back unchanged, every forward ends by its deadline, and a failing service is spared (retries
within a budget, a circuit breaker) while an overloaded gateway sheds at once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry
from yarl import URL

from services.gateway.proxy import Forwarder, ProxyMetrics, Upstreams
from services.gateway.resilience import CircuitBreaker, InFlightLimit, RetryBudget, shedding
from shared.http import PROBLEM_JSON, error_middleware
from tests.support import eventually

INTERNAL_TOKEN = "Bearer internal-token-for-rider-7f3a"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
THRESHOLD = 3
OPEN_S = 5.0


class FakeMonotonic:
    """A monotonic clock the test moves by hand: breakers reopen without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Seen:
    """A request as it reached the service."""

    method: str
    target: str
    headers: CIMultiDictProxy[str]
    body: bytes


class Toy:
    """A stand-in service: records every request that reaches it and answers as scripted
    (``answers`` first, then ``/slow`` waits for ``release``, ``/hop`` streams, else 200)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answers: deque[tuple[int, dict[str, Any]]] = deque()
        self.release = asyncio.Event()
        self.server: TestServer | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        # The same port after a restart, as a service's address does not change.
        self.server = TestServer(app, port=self.port)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.raw_path, request.headers, await request.read())
        )
        if self.answers:
            status, body = self.answers.popleft()
            return web.json_response(body, status=status, content_type=PROBLEM_JSON)
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/hop":
            return await hop_by_hop_answer(request)
        return web.json_response({"hello": "rider"}, headers={"X-Service": "toy"})


async def hop_by_hop_answer(request: web.Request) -> web.StreamResponse:
    """A chunked answer carrying hop-by-hop fields meant for the gateway alone."""
    response = web.StreamResponse(
        headers={
            "Connection": "keep-alive, X-Internal-Hop",
            "X-Internal-Hop": "for the next hop only",
            "Keep-Alive": "timeout=99",
            "Proxy-Status": "toy",
            "X-Service": "toy",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"streamed ")
    await response.write(b"in chunks")
    await response.write_eof()
    return response


def problem_body(status: int, title: str) -> dict[str, Any]:
    return {"type": "https://cardless.dev/problems/toy", "title": title, "status": status}


@dataclass
class Gateway:
    """The gateway's forwarding as its catch-all route would use it, without auth."""

    forwarder: Forwarder
    deadline_s: float = 5.0

    def __post_init__(self) -> None:
        self.received: list[CIMultiDictProxy[str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(request.headers)
        return await self.forwarder.forward(
            request,
            "toy",
            deadline_s=self.deadline_s,
            retryable=request.method in SAFE_METHODS,
            headers={"Authorization": INTERNAL_TOKEN, "X-Request-Id": "req-from-gateway"},
            body=await request.read(),
        )

    def client(
        self, limit: InFlightLimit | None = None, metrics: ProxyMetrics | None = None
    ) -> TestClient:
        middlewares = [error_middleware()]
        if limit is not None and metrics is not None:
            middlewares.append(shedding(limit, metrics))
        app = web.Application(middlewares=middlewares)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return TestClient(TestServer(app))


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ProxyMetrics:
    return ProxyMetrics(registry)


@pytest.fixture
async def toy() -> AsyncIterator[Toy]:
    service = Toy()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def upstreams(toy: Toy, clock: FakeMonotonic) -> AsyncIterator[Upstreams]:
    created = Upstreams.create(
        {"toy": toy.url},
        breaker_threshold=THRESHOLD,
        breaker_open_s=OPEN_S,
        connections_per_upstream=8,
        monotonic=clock,
    )
    yield created
    await created.close()


@pytest.fixture
def gateway(upstreams: Upstreams, metrics: ProxyMetrics, clock: FakeMonotonic) -> Gateway:
    return Gateway(Forwarder(upstreams, RetryBudget(monotonic=clock), metrics))


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[TestClient]:
    async with gateway.client() as started:
        yield started


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_request_reaches_the_service_intact_without_hop_by_hop_headers(
    client: TestClient, gateway: Gateway, toy: Toy
) -> None:
    target = "/rides/a%2Fb/history?from=2030-01-01&q=%41+b&flag"
    sent = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-Trace-Note": "keep me",
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "for the gateway only",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eDp5",
        "X-Forwarded-For": "203.0.113.66",
        "Forwarded": "for=203.0.113.66",
    }
    # Encoded as given: %41 and %2F are the client's spelling, and so must be the service's.
    url = URL(target, encoded=True)
    response = await client.get(url, headers=sent, data=b'{"n": 1}', chunked=True)

    assert response.status == 200
    assert await response.json() == {"hello": "rider"}
    assert response.headers["X-Service"] == "toy"
    assert gateway.received[0]["X-Hop-Secret"] == "for the gateway only"
    assert gateway.received[0]["Transfer-Encoding"] == "chunked"
    [seen] = toy.seen
    assert (seen.method, seen.target, seen.body) == ("GET", target, b'{"n": 1}')
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Trace-Note"] == "keep me"
    assert seen.headers["Content-Length"] == "8"
    assert seen.headers["Host"] == f"127.0.0.1:{toy.port}"
    for dropped in ("X-Hop-Secret", "Keep-Alive", "TE", "Proxy-Authorization", "Transfer-Encoding"):
        assert dropped not in seen.headers
    # The client's own forwarding claims are not believed: the gateway states the peer it saw.
    assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert "Forwarded" not in seen.headers


async def test_the_answer_comes_back_without_the_services_hop_by_hop_headers(
    client: TestClient,
) -> None:
    response = await client.get("/hop")

    assert response.status == 200
    assert await response.read() == b"streamed in chunks"
    assert response.headers["X-Service"] == "toy"
    assert response.headers["Content-Length"] == str(len(b"streamed in chunks"))
    for dropped in ("X-Internal-Hop", "Keep-Alive", "Proxy-Status", "Transfer-Encoding"):
        assert dropped not in response.headers


async def test_a_head_answer_keeps_the_length_of_what_a_get_would_return(
    client: TestClient,
) -> None:
    got = await client.get("/wallets/me")
    head = await client.head("/wallets/me")

    assert head.status == 200
    assert head.headers["Content-Length"] == got.headers["Content-Length"] != "0"
    assert await head.read() == b""


async def test_the_clients_authorization_is_replaced_by_the_gateways(
    client: TestClient, toy: Toy
) -> None:
    headers = {"Authorization": "Bearer the-clients-own-token", "X-Request-Id": "from-client"}
    response = await client.get("/wallets/me", headers=headers)

    assert response.status == 200
    [seen] = toy.seen
    assert seen.headers.getall("Authorization") == [INTERNAL_TOKEN]
    assert seen.headers.getall("X-Request-Id") == ["req-from-gateway"]


@pytest.mark.parametrize(
    ("status", "title"),
    [(404, "Not Found"), (409, "Conflict"), (422, "Unprocessable Content"), (500, "Oops")],
)
async def test_problem_answers_pass_through_unchanged(
    client: TestClient, toy: Toy, status: int, title: str
) -> None:
    toy.answers.append((status, problem_body(status, title)))

    response = await client.get("/wallets/me")

    assert response.status == status
    assert response.headers["Content-Type"] == f"{PROBLEM_JSON}; charset=utf-8"
    assert await response.json(content_type=None) == problem_body(status, title)
    assert len(toy.seen) == 1


async def test_a_dead_service_trips_the_breaker_and_one_probe_closes_it_again(
    client: TestClient, toy: Toy, clock: FakeMonotonic, registry: CollectorRegistry
) -> None:
    assert (await client.get("/wallets/me")).status == 200
    await toy.stop()

    for _ in range(THRESHOLD):
        refused = await client.post("/wallets/me/topups", data=b"{}")
        assert refused.status == 502
        assert refused.headers["Content-Type"].startswith(PROBLEM_JSON)
    assert sample(registry, "gateway_circuit_breaker_state", upstream="toy") == 2

    await toy.start()
    hits = len(toy.seen)
    paused = await client.get("/wallets/me")
    assert paused.status == 503
    assert paused.headers["Retry-After"] == str(int(OPEN_S))
    assert (await paused.json(content_type=None))["status"] == 503
    assert len(toy.seen) == hits  # answered by the breaker, the service never contacted

    clock.advance(OPEN_S)
    assert (await client.get("/wallets/me")).status == 200
    assert len(toy.seen) == hits + 1
    assert sample(registry, "gateway_circuit_breaker_state", upstream="toy") == 0
    assert (await client.get("/wallets/me")).status == 200


def test_a_half_open_breaker_lets_one_probe_through_at_a_time(clock: FakeMonotonic) -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_s=OPEN_S, monotonic=clock)
    breaker.record(False)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state == "closed"  # failures must be consecutive
    breaker.record(False)
    assert (breaker.state, breaker.allow(), breaker.retry_after_s()) == ("open", False, 5)

    clock.advance(OPEN_S - 0.5)
    assert (breaker.allow(), breaker.retry_after_s()) == (False, 1)
    clock.advance(0.5)
    assert breaker.state == "half_open"
    assert [breaker.allow(), breaker.allow()] == [True, False]

    breaker.record(False)
    assert (breaker.state, breaker.allow(), breaker.retry_after_s()) == ("open", False, 5)
    clock.advance(OPEN_S)
    assert breaker.allow()
    breaker.record(True)
    assert (breaker.state, breaker.allow(), breaker.allow()) == ("closed", True, True)


async def test_not_implemented_is_not_held_against_the_service(
    client: TestClient, toy: Toy, upstreams: Upstreams
) -> None:
    for _ in range(THRESHOLD + 1):
        toy.answers.append((501, problem_body(501, "Not Implemented")))
        assert (await client.get("/wallets/me")).status == 501

    assert upstreams["toy"].breaker.state == "closed"
    assert len(toy.seen) == THRESHOLD + 1


async def test_a_slow_service_is_answered_504_at_the_deadline(
    client: TestClient, gateway: Gateway, toy: Toy, registry: CollectorRegistry
) -> None:
    gateway.deadline_s = 0.2

    response = await client.get("/slow")

    assert response.status == 504
    assert (await response.json(content_type=None))["title"] == "Gateway Timeout"
    assert len(toy.seen) == 1
    count = "gateway_upstream_duration_seconds_count"
    assert sample(registry, count, upstream="toy", code="timeout") == 1


async def test_a_hung_service_trips_the_breaker_like_a_dead_one(
    client: TestClient, gateway: Gateway, toy: Toy
) -> None:
    gateway.deadline_s = 0.05
    for _ in range(THRESHOLD):
        assert (await client.post("/slow")).status == 504
    # A 50 ms deadline on a busy machine can expire before the service even reads a request:
    # what matters is that once the breaker is open, nothing more reaches it.
    reached = len(toy.seen)

    paused = await client.get("/wallets/me")

    assert paused.status == 503
    assert len(toy.seen) == reached
    assert not any(seen.target == "/wallets/me" for seen in toy.seen)


async def test_a_retryable_get_survives_one_503(
    client: TestClient, toy: Toy, registry: CollectorRegistry
) -> None:
    toy.answers.append((503, problem_body(503, "Service Unavailable")))

    response = await client.get("/wallets/me?page=2")

    assert response.status == 200
    assert [seen.target for seen in toy.seen] == ["/wallets/me?page=2"] * 2
    assert sample(registry, "gateway_upstream_retries_total", upstream="toy") == 1


async def test_a_non_retryable_post_is_not_retried(client: TestClient, toy: Toy) -> None:
    toy.answers.append((503, problem_body(503, "Busy")))

    response = await client.post("/wallets/me/topups", data=b'{"amount": 500}')

    assert response.status == 503
    assert await response.json(content_type=None) == problem_body(503, "Busy")
    assert len(toy.seen) == 1


async def test_retries_stop_when_the_budget_is_spent_and_resume_as_it_refills(
    upstreams: Upstreams,
    metrics: ProxyMetrics,
    registry: CollectorRegistry,
    clock: FakeMonotonic,
    toy: Toy,
) -> None:
    # No share of traffic, and a floor of one retry per ten-second window.
    budget = RetryBudget(ratio=0.0, min_per_s=0.1, monotonic=clock)
    busy = (503, problem_body(503, "Busy"))
    async with Gateway(Forwarder(upstreams, budget, metrics)).client() as client:
        toy.answers.extend([busy, (200, {"n": 1}), busy])
        assert (await client.get("/wallets/me")).status == 200
        assert (await client.get("/wallets/me")).status == 503
        assert len(toy.seen) == 3

        clock.advance(10)
        toy.answers.extend([busy, (200, {"n": 2})])
        assert (await client.get("/wallets/me")).status == 200
        assert len(toy.seen) == 5
    assert sample(registry, "gateway_upstream_retries_total", upstream="toy") == 2


def test_the_in_flight_limit_refuses_above_its_maximum() -> None:
    limit = InFlightLimit(2)

    assert [limit.try_acquire() for _ in range(3)] == [True, True, False]
    assert limit.in_flight == 2
    limit.release()
    assert (limit.try_acquire(), limit.in_flight) == (True, 2)


async def test_requests_over_the_in_flight_cap_are_shed_at_once(
    gateway: Gateway, toy: Toy, metrics: ProxyMetrics, registry: CollectorRegistry
) -> None:
    limit = InFlightLimit(1)
    async with gateway.client(limit, metrics) as client:

        async def slow_status() -> int:
            return (await client.get("/slow")).status

        async def hits() -> int:
            return len(toy.seen)

        first = asyncio.create_task(slow_status())
        await eventually(hits, lambda n: n == 1, what="the first request at the service")

        shed = await client.get("/wallets/me")
        assert shed.status == 503
        assert shed.headers["Retry-After"] == "1"
        assert len(toy.seen) == 1
        assert sample(registry, "gateway_shed_total") == 1

        toy.release.set()
        assert await first == 200
        assert limit.in_flight == 0
