"""Forwarding to upstream services: keep-alive pools, deadlines, retries, breakers.

Each upstream has its own connection pool and circuit breaker; every forward runs under one
deadline (retries included); retries happen only where the route says they are safe and a
retry budget allows (Finagle/Envoy style), so a failing service is not buried under retries.

Forwarding headers: the gateway is the city's public edge, so it drops whatever ``Forwarded``,
``X-Forwarded-*`` or ``X-Real-IP`` a client sent (anyone can write them) and sets
``X-Forwarded-For`` (the peer it saw) and ``X-Forwarded-Proto`` itself; a service may trust them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from yarl import URL

from services.gateway.http1 import Pool, UpstreamError
from services.gateway.resilience import (
    BREAKER_STATE_VALUES,
    BreakerState,
    CircuitBreaker,
    Monotonic,
    RetryBudget,
)
from shared.http import Problem

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# RFC 9110 §7.6.1 hop-by-hop fields (plus the Proxy-* family, matched by prefix).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)
# Also not copied to the upstream: recomputed (Host, Content-Length), replaced by the caller
# (Authorization), set by the gateway (forwarding fields), or already handled here (Expect).
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length"}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BACKOFF_BASE_S = 0.005
_BACKOFF_CAP_S = 0.05


class ProxyMetrics:
    """The gateway's forwarding metrics; labels are upstream names and status codes only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time of each attempt to an upstream, by status code (or error, timeout).",
            ["upstream", "code"],
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.retries = Counter(
            "gateway_upstream_retries_total",
            "Attempts repeated after a failed one.",
            ["upstream"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "gateway_circuit_breaker_state",
            "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=registry,
        )
        self.shed = Counter(
            "gateway_shed_total",
            "Requests refused because too many were in flight.",
            registry=registry,
        )
        # Labelled children cached: labels() locks and hashes on every call.
        self._durations: dict[tuple[str, int | str], Histogram] = {}

    def observe(self, upstream: str, code: int | str, seconds: float) -> None:
        """One attempt's duration; ``code`` is the status, ``"error"`` or ``"timeout"``."""
        child = self._durations.get((upstream, code))
        if child is None:
            child = self._durations[upstream, code] = self.upstream_duration.labels(
                upstream, str(code)
            )
        child.observe(seconds)

    def breaker(self, upstream: str, state: BreakerState) -> None:
        self.breaker_state.labels(upstream).set(BREAKER_STATE_VALUES[state])


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service behind the gateway: its name, breaker and pool of connections."""

    name: str
    breaker: CircuitBreaker
    pool: Pool


class Upstreams:
    """The gateway's upstreams by name, each with its own keep-alive pool."""

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self._by_name = dict(upstreams)

    @classmethod
    def create(
        cls,
        urls: Mapping[str, str],
        *,
        breaker_threshold: int = 5,
        breaker_open_s: float = 5.0,
        connections_per_upstream: int = 100,
        monotonic: Monotonic = time.monotonic,
    ) -> Upstreams:
        """A pool and breaker per upstream URL (http or https); call from a running loop."""
        upstreams = {}
        for name, url in urls.items():
            breaker = CircuitBreaker(breaker_threshold, breaker_open_s, monotonic)
            upstreams[name] = Upstream(
                name, breaker, Pool(_base_url(name, url), connections=connections_per_upstream)
            )
        return cls(upstreams)

    def __getitem__(self, name: str) -> Upstream:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._by_name.values())

    async def close(self) -> None:
        for upstream in self._by_name.values():
            await upstream.pool.close()


def _base_url(name: str, url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.raw_query_string:
        raise ValueError(f"upstream {name}: expected http(s)://host:port[/prefix], got {url!r}")
    return url.rstrip("/")


class Forwarder:
    """Sends a request on to its upstream under a deadline, with safe retries and breakers."""

    def __init__(
        self,
        upstreams: Upstreams,
        budget: RetryBudget,
        metrics: ProxyMetrics,
        *,
        max_attempts: int = 3,
    ) -> None:
        self._upstreams, self._budget, self._metrics = upstreams, budget, metrics
        self._max_attempts = max_attempts
        for upstream in upstreams:
            metrics.breaker(upstream.name, upstream.breaker.state)

    async def forward(
        self,
        request: web.Request,
        upstream: str,
        *,
        deadline_s: float,
        retryable: bool,
        headers: Mapping[str, str],
        body: bytes,
    ) -> web.Response:
        """The upstream's answer to ``request``, or a 502/503/504 ``Problem``.

        ``headers`` (the internal Authorization, X-Request-Id, traceparent) override the
        client's; ``KeyError`` for an upstream that was never created.
        """
        target = self._upstreams[upstream]
        url = _request_target(request.rel_url)
        outgoing = _request_headers(request, headers)
        self._budget.record_request()
        try:
            async with asyncio.timeout(deadline_s):
                return await self._attempts(target, request.method, url, outgoing, body, retryable)
        except TimeoutError:
            raise Problem(
                504, "Gateway Timeout", f"the {upstream} service did not answer in time"
            ) from None

    async def _attempts(
        self,
        target: Upstream,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: bytes,
        retryable: bool,
    ) -> web.Response:
        attempt = 1
        while True:
            self._admit(target)
            response = await self._attempt(target, method, url, headers, body)
            if response is not None and response.status not in RETRYABLE_STATUSES:
                return response
            if not retryable or attempt >= self._max_attempts or not self._budget.try_retry():
                if response is None:
                    raise Problem(502, "Bad Gateway", f"the {target.name} service is unreachable")
                return response
            self._metrics.retries.labels(target.name).inc()
            await asyncio.sleep(_backoff_s(attempt))
            attempt += 1

    def _admit(self, target: Upstream) -> None:
        if target.breaker.allow():
            return
        self._metrics.breaker(target.name, target.breaker.state)
        raise Problem(
            503,
            "Service Unavailable",
            f"the {target.name} service is failing; requests to it are paused",
            headers={"Retry-After": str(target.breaker.retry_after_s())},
        )

    async def _attempt(
        self, target: Upstream, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> web.Response | None:
        """One try: the upstream's answer, or None when it could not be reached or broke off."""
        started = time.perf_counter()
        code: int | str = "timeout"
        try:
            answer = await target.pool.request(method, url, headers.items(), body)
            code = status = answer.status
        except UpstreamError as error:
            code = "error"
            log.info(
                "upstream attempt failed", extra={"upstream": target.name, "error": str(error)}
            )
            self._settle(target, success=False)
            return None
        except asyncio.CancelledError:
            # The deadline (or shutdown) cut the attempt short: a failure, so a half-open
            # breaker's probe is never left outstanding.
            self._settle(target, success=False)
            raise
        finally:
            self._metrics.observe(target.name, code, time.perf_counter() - started)
        self._settle(target, success=status < 500 or status == 501)
        return web.Response(
            status=status,
            reason=answer.reason,
            body=answer.body,
            headers=_response_headers(answer.headers, keep_length=method == "HEAD"),
        )

    def _settle(self, target: Upstream, *, success: bool) -> None:
        before = target.breaker.state
        target.breaker.record(success)
        after = target.breaker.state
        if after != before:
            self._metrics.breaker(target.name, after)
            log.warning("circuit breaker changed", extra={"upstream": target.name, "state": after})


def _request_target(target: URL) -> str:
    """The path and query exactly as the client encoded them."""
    query = target.raw_query_string
    return f"{target.raw_path}?{query}" if query else target.raw_path


def _request_headers(request: web.Request, extra: Mapping[str, str]) -> CIMultiDict[str]:
    headers = _end_to_end(request.headers.items(), _NOT_FORWARDED)
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    headers["X-Forwarded-Proto"] = request.scheme
    headers.update(extra)
    return headers


def _response_headers(headers: list[tuple[str, str]], *, keep_length: bool) -> CIMultiDict[str]:
    # A HEAD answer has no body: its Content-Length describes the GET's and passes through.
    return _end_to_end(headers, _HOP_BY_HOP if keep_length else _NOT_RETURNED)


def _end_to_end(headers: Collection[tuple[str, str]], drop: Collection[str]) -> CIMultiDict[str]:
    """``headers`` without ``drop``, Proxy-* and whatever the Connection fields name."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        lower = name.lower()
        if lower in drop or lower in named or lower.startswith("proxy-"):
            continue
        out.add(name, value)
    return out


def _backoff_s(attempt: int) -> float:
    """Full jitter: spread retries so a blip does not come back as a synchronised wave."""
    return random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))
