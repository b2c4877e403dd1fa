"""Rate limits shared by every gateway replica: GCRA in one Lua script on the Redis clock.

Each client and route class has one key holding its theoretical arrival time (TAT, in
microseconds on the Redis server's clock), expiring when the client's allowance is full again.
The script reads ``TIME`` itself, so replicas never disagree about the time, and decides and
records in one atomic round trip. Writing after ``TIME`` is allowed since Redis 5, where scripts
replicate their effects (the written TAT), not their text; Redis 7 and Valkey know no other way.

Clients learn their limits from the fields of draft-ietf-httpapi-ratelimit-headers-11 (May
2026, structured fields as since -08): ``RateLimit-Policy`` and ``RateLimit``, and
``Retry-After`` (RFC 9110 §10.2.3) on a refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from hiredis import ReplyError

from services.gateway.resp import RespPipe
from shared.keys import Keys

MAX_REQUESTS = 1_000_000  # per period of at least a second: an emission interval >= 1 us
MAX_PERIOD_S = 366 * 86_400
# Bounds the TAT's lead on now, so every number in the script stays an exact Lua double.
MAX_TOLERANCE_US = MAX_PERIOD_S * 1_000_000
_US = 1_000_000
_CLASS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SF_STRING = re.compile(r"^[\x20-\x7e]*$")

# KEYS[1]: the TAT. ARGV: emission interval, burst tolerance (burst x interval), increment
# (cost x interval), all in microseconds. Returns allowed, remaining, ms until full, ms until
# a request of this cost would pass.
_GCRA = """
local function ceil_ms(us) return math.floor((us + 999) / 1000) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local emission, tolerance, increment = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
local allowed, retry = 0, 0
if tat + increment - now <= tolerance then
  allowed, tat = 1, tat + increment
  -- '%.0f' writes the number in full: tostring would round it to 14 digits.
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ceil_ms(tat - now))
else
  retry = tat + increment - tolerance - now
end
local remaining = math.max(math.floor((tolerance - (tat - now)) / emission), 0)
return {allowed, remaining, ceil_ms(tat - now), ceil_ms(retry)}
"""


class LimitsError(ValueError):
    """A rate limit we cannot use; the message is one line naming the class and the field."""


class RateLimitUnavailable(Exception):
    """Redis could not be asked; the caller decides whether to let the request through."""


@dataclass(frozen=True, slots=True)
class Limit:
    """``requests`` per ``period_s`` seconds, at most ``burst`` (default ``requests``) at once."""

    requests: int
    period_s: int
    burst: int | None = None

    def __post_init__(self) -> None:
        _check_range("requests", self.requests, MAX_REQUESTS)
        _check_range("period_s", self.period_s, MAX_PERIOD_S)
        if self.burst is not None:
            _check_range("burst", self.burst, MAX_REQUESTS)
        if self.capacity * self.emission_us > MAX_TOLERANCE_US:
            raise LimitsError("burst: may hold at most 366 days of requests")

    @property
    def capacity(self) -> int:
        """How many requests may come at once, after a quiet spell."""
        return self.requests if self.burst is None else self.burst

    @property
    def emission_us(self) -> int:
        """The interval between requests at the sustained rate, in whole microseconds.

        Rounded up: never faster than configured, and slower by under a microsecond a request.
        """
        return -(-self.period_s * _US // self.requests)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request, with what the client may be told about its quota."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int


class _LimitSpec(msgspec.Struct, forbid_unknown_fields=True):
    requests: int
    period_s: int
    burst: int | None = None


def parse_limits(text: str) -> dict[str, Limit]:
    """Route classes and their limits from JSON: ``{"money": {"requests": 10, "period_s": 60,
    "burst": 5}, ...}``; raises ``LimitsError``."""
    try:
        classes = msgspec.json.decode(text, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError as exc:  # ValidationError included
        raise LimitsError(f"rate limits: {exc}") from None
    return {name: _parse_class(name, spec) for name, spec in classes.items()}


def _parse_class(name: str, spec: msgspec.Raw) -> Limit:
    if not _CLASS_NAME.match(name):
        raise LimitsError(f"{name!r}: a class name is 1 to 64 of A-Z a-z 0-9 _ . -")
    try:
        fields = msgspec.json.decode(spec, type=_LimitSpec)
        return Limit(fields.requests, fields.period_s, fields.burst)
    except LimitsError as exc:  # already names the field
        raise LimitsError(f"{name}.{exc}") from None
    except msgspec.DecodeError as exc:
        raise LimitsError(f"{name}: {exc}") from None


def _check_range(field: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise LimitsError(f"{field}: expected an integer from 1 to {maximum}, got {value!r}")


class RateLimiter:
    """Checks requests against limits kept in Redis, shared by every gateway replica.

    Each check is one ``EVALSHA`` on a pipelined connection (``RespPipe``): the checks of one
    event-loop turn reach Redis in one write, and nothing waits to fill a batch.
    """

    def __init__(self, redis: RespPipe, keys: Keys, *, timeout_s: float = 0.25) -> None:
        self._redis, self._keys, self._timeout_s = redis, keys, timeout_s
        self._sha = hashlib.sha1(_GCRA.encode(), usedforsecurity=False).hexdigest()

    async def check(self, client: str, route_class: str, limit: Limit, cost: int = 1) -> Decision:
        """Count a request of ``cost`` against ``limit``; a refused one is not counted.

        Raises ``ValueError`` if ``cost`` is outside 1..burst (it could never pass), and
        ``RateLimitUnavailable`` if Redis cannot be asked within the timeout.
        """
        if not 1 <= cost <= limit.capacity:
            raise ValueError(f"cost must be from 1 to {limit.capacity}, got {cost}")
        emission = limit.emission_us
        key = self._keys.rate_limit(client, route_class)
        args = (emission, limit.capacity * emission, cost * emission)
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._evalsha(key, args)
        except OSError as exc:  # ConnectionError, TimeoutError
            # The type only: the message could name the server, and the key names the client.
            raise RateLimitUnavailable(f"rate limiter unavailable: {type(exc).__name__}") from exc
        if isinstance(reply, ReplyError):
            raise RateLimitUnavailable("rate limiter unavailable: the script failed")
        allowed, remaining, reset_ms, retry_ms = (int(value) for value in reply)
        return Decision(
            allowed=allowed == 1,
            limit=limit.requests,
            remaining=remaining,
            reset_s=_ceil_s(reset_ms),
            retry_after_s=_ceil_s(retry_ms),
        )

    async def _evalsha(self, key: str, args: tuple[int, int, int]) -> Any:
        try:
            reply = await self._redis.call("EVALSHA", self._sha, 1, key, *args)
        except ConnectionError:  # a connection lost (a server restart): once more, on a new one
            reply = await self._redis.call("EVALSHA", self._sha, 1, key, *args)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # The server lost the script (a restart, a failover): load it again.
            await self._redis.call("SCRIPT", "LOAD", _GCRA)
            reply = await self._redis.call("EVALSHA", self._sha, 1, key, *args)
        return reply


def headers(decision: Decision, policy: str, limit: Limit) -> dict[str, str]:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields, and ``Retry-After`` on a refusal.

    Raises ``ValueError`` if ``policy`` is not printable ASCII (a structured-field string).
    """
    name = _sf_string(policy)
    fields = {
        "RateLimit-Policy": f"{name};q={limit.requests};w={limit.period_s}",
        "RateLimit": f"{name};r={decision.remaining};t={decision.reset_s}",
    }
    if not decision.allowed:
        fields["Retry-After"] = str(max(1, decision.retry_after_s))
    return fields


def _sf_string(value: str) -> str:
    """``value`` as an RFC 9651 String."""
    if not _SF_STRING.match(value):
        raise ValueError("a policy name must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ceil_s(ms: int) -> int:
    return -(-ms // 1000)
