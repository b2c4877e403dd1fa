"""Staying up when upstreams fail or load peaks: circuit breakers, a retry budget, shedding.

A breaker per upstream stops calling a failing service and probes it back (closed -> open ->
half-open); the retry budget caps retries at a share of requests (Finagle/Envoy style), so a
failing service is not buried under retries; the in-flight limit answers 503 at once rather
than queueing when the gateway is at capacity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.http import Handler, Problem

if TYPE_CHECKING:
    from services.gateway.proxy import ProxyMetrics

BreakerState = Literal["closed", "open", "half_open"]
Monotonic = Callable[[], float]
# gateway_circuit_breaker_state: 0 closed, 1 half-open (probing), 2 open.
BREAKER_STATE_VALUES: Mapping[BreakerState, int] = {"closed": 0, "half_open": 1, "open": 2}
_RETRY_WINDOW_S = 10
_NOT_SHED = ("/healthz", "/readyz", "/metrics")


class CircuitBreaker:
    """Stops forwarding to an upstream after consecutive failures, then probes it one at a time.

    A late answer to a request sent before the breaker opened changes nothing while it is open.
    """

    def __init__(
        self, failure_threshold: int = 5, open_s: float = 5.0, monotonic: Monotonic = time.monotonic
    ) -> None:
        if failure_threshold < 1 or open_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_s > 0")
        self._threshold, self._open_s, self._monotonic = failure_threshold, open_s, monotonic
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return "closed"
        return "open" if self._monotonic() < self._open_until else "half_open"

    def allow(self) -> bool:
        """Whether a request may go to the upstream now (half-open: only the one probe)."""
        if self._open_until is None:
            return True
        if self._probing or self._monotonic() < self._open_until:
            return False
        self._probing = True
        return True

    def record(self, success: bool) -> None:
        """The outcome of a request that ``allow`` let through."""
        if self._open_until is None:
            self._failures = 0 if success else self._failures + 1
            if self._failures >= self._threshold:
                self._trip()
        elif self._monotonic() >= self._open_until:
            if success:
                self._open_until, self._failures, self._probing = None, 0, False
            else:
                self._trip()

    def retry_after_s(self) -> int:
        """Whole seconds until a probe may go through (at least 1), for ``Retry-After``."""
        if self._open_until is None:
            return 1
        return max(1, math.ceil(self._open_until - self._monotonic()))

    def _trip(self) -> None:
        self._open_until = self._monotonic() + self._open_s
        self._failures, self._probing = 0, False


class RetryBudget:
    """Retries allowed while they stay within ``ratio`` of requests over the last ~10 s, plus a
    floor of ``min_per_s`` so a quiet gateway can still retry."""

    def __init__(
        self, ratio: float = 0.2, min_per_s: float = 10, monotonic: Monotonic = time.monotonic
    ) -> None:
        if ratio < 0 or min_per_s < 0:
            raise ValueError("ratio and min_per_s must be >= 0")
        self._ratio, self._floor, self._monotonic = ratio, min_per_s * _RETRY_WINDOW_S, monotonic
        # One slot per second of the window, reused round-robin: no allocation per request.
        self._seconds = [-1] * _RETRY_WINDOW_S
        self._requests = [0] * _RETRY_WINDOW_S
        self._retries = [0] * _RETRY_WINDOW_S

    def record_request(self) -> None:
        """Count a forwarded request (not its retries)."""
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        slot = self._slot()
        oldest = self._seconds[slot] - _RETRY_WINDOW_S
        live = [i for i, second in enumerate(self._seconds) if second > oldest]
        requests = sum(self._requests[i] for i in live)
        retries = sum(self._retries[i] for i in live)
        if retries + 1 > self._ratio * requests + self._floor:
            return False
        self._retries[slot] += 1
        return True

    def _slot(self) -> int:
        second = int(self._monotonic())
        slot = second % _RETRY_WINDOW_S
        if self._seconds[slot] != second:
            self._seconds[slot], self._requests[slot], self._retries[slot] = second, 0, 0
        return slot


class InFlightLimit:
    """A cap on requests in progress; above it the gateway sheds at once instead of queueing."""

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError("maximum must be >= 1")
        self.maximum = maximum
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.maximum:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


def shedding(
    limit: InFlightLimit, metrics: ProxyMetrics, *, exempt: Collection[str] = _NOT_SHED
) -> Middleware:
    """Middleware: above ``limit`` requests in flight, answer 503 at once (health and metrics
    paths exempt, so probes see a busy gateway as alive). Put it inside the error middleware."""

    @web.middleware
    async def shed(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt:
            return await handler(request)
        if not limit.try_acquire():
            metrics.shed.inc()
            raise Problem(
                503,
                "Service Unavailable",
                "the gateway is at capacity; try again shortly",
                headers={"Retry-After": "1"},
            )
        try:
            return await handler(request)
        finally:
            limit.release()

    return shed
