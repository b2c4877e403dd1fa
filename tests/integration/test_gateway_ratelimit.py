"""The gateway's rate limiter against the real Redis: bursts, replicas sharing one limit,
separation by client and class, replenishment, the advertised headers, and Redis away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from services.gateway.ratelimit import (
    Decision,
    Limit,
    LimitsError,
    RateLimiter,
    RateLimitUnavailable,
    headers,
    parse_limits,
)
from services.gateway.resp import RespPipe
from shared.city import Servers
from shared.keys import Keys
from tests.support import eventually, free_port

# 12 s between requests: a test's few calls finish long before a single one is replenished.
FIVE_A_MINUTE = Limit(requests=5, period_s=60)


@pytest.fixture
async def limiter(servers: Servers, namespace: str) -> AsyncIterator[RateLimiter]:
    pipe = RespPipe(servers.redis_url)
    yield RateLimiter(pipe, Keys(namespace))
    await pipe.aclose()


@pytest.fixture
async def other_replica(servers: Servers, namespace: str) -> AsyncIterator[RateLimiter]:
    """A second gateway replica: its own Redis connection, the same namespace."""
    pipe = RespPipe(servers.redis_url)
    yield RateLimiter(pipe, Keys(namespace))
    await pipe.aclose()


async def burst(limiter: RateLimiter, count: int, client: str = "gate-17") -> list[Decision]:
    return [await limiter.check(client, "taps", FIVE_A_MINUTE) for _ in range(count)]


async def test_a_full_burst_passes_and_the_next_request_waits_one_emission_interval(
    limiter: RateLimiter,
) -> None:
    passed = await burst(limiter, 5)
    refused = await limiter.check("gate-17", "taps", FIVE_A_MINUTE)

    assert all(d.allowed for d in passed)
    assert [d.remaining for d in passed] == [4, 3, 2, 1, 0]
    assert not refused.allowed
    assert refused.retry_after_s == 12  # 60 s / 5, rounded up
    assert (refused.remaining, refused.limit, refused.reset_s) == (0, 5, 60)


async def test_a_smaller_burst_caps_requests_at_once_but_not_the_rate(
    limiter: RateLimiter,
) -> None:
    money = Limit(requests=10, period_s=60, burst=3)
    decisions = [await limiter.check("agency-1", "money", money) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_s == 6
    assert decisions[-1].limit == 10


async def test_two_replicas_share_one_limit_under_concurrent_requests(
    limiter: RateLimiter, other_replica: RateLimiter
) -> None:
    attempts = [
        replica.check("rider-9", "taps", FIVE_A_MINUTE)
        for replica in (limiter, other_replica)
        for _ in range(5)
    ]
    decisions = await asyncio.gather(*attempts)

    assert sum(d.allowed for d in decisions) == 5


async def test_a_refused_request_is_not_counted(limiter: RateLimiter) -> None:
    await burst(limiter, 5)
    first, second = await burst(limiter, 2)

    # Were refusals counted, the second would be told to wait a further interval.
    assert [first.allowed, second.allowed] == [False, False]
    assert second.retry_after_s == 12


async def test_the_limit_holds_after_redis_loses_its_scripts(
    limiter: RateLimiter, redis: aioredis.Redis
) -> None:
    await burst(limiter, 4)
    await redis.script_flush()  # as after a restart or a failover to a fresh replica

    assert [d.allowed for d in await burst(limiter, 2)] == [True, False]


async def test_a_clients_state_expires_once_its_allowance_is_full_again(
    limiter: RateLimiter, redis: aioredis.Redis, namespace: str
) -> None:
    await burst(limiter, 2)

    ttl_ms = await redis.pttl(Keys(namespace).rate_limit("gate-17", "taps"))
    assert 0 < ttl_ms <= 24_000  # two emission intervals


async def test_clients_do_not_share_a_limit(limiter: RateLimiter) -> None:
    await burst(limiter, 5, client="gate-17")

    assert (await limiter.check("gate-18", "taps", FIVE_A_MINUTE)).allowed


async def test_route_classes_do_not_share_a_limit(limiter: RateLimiter) -> None:
    await burst(limiter, 5)

    assert (await limiter.check("gate-17", "money", FIVE_A_MINUTE)).allowed


async def test_separators_in_a_client_id_cannot_reach_another_clients_limit(
    limiter: RateLimiter,
) -> None:
    for _ in range(5):
        await limiter.check("a:b", "c", FIVE_A_MINUTE)
    await limiter.check("{a}", "b:c", FIVE_A_MINUTE)

    assert (await limiter.check("a", "b:c", FIVE_A_MINUTE)).allowed
    assert (await limiter.check("a", "b%3Ac", FIVE_A_MINUTE)).allowed
    assert (await limiter.check("{a}", "b:c", FIVE_A_MINUTE)).remaining == 3


async def test_allowance_comes_back_as_the_redis_clock_moves(limiter: RateLimiter) -> None:
    # One request a millisecond and no burst: the second of two quick requests is refused,
    # and a later one passes once the server's clock has moved on.
    per_ms = Limit(requests=1000, period_s=1, burst=1)

    async def two_quick_requests() -> Decision:
        await limiter.check("gate-3", "taps", per_ms)
        return await limiter.check("gate-3", "taps", per_ms)

    refused = await eventually(
        two_quick_requests, lambda d: not d.allowed, what="a refusal in a burst"
    )
    assert refused.retry_after_s == 1  # under a millisecond, rounded up to a whole second
    await eventually(
        lambda: limiter.check("gate-3", "taps", per_ms), lambda d: d.allowed, what="replenished"
    )


async def test_headers_advertise_the_policy_and_what_is_left(limiter: RateLimiter) -> None:
    await limiter.check("gate-17", "taps", FIVE_A_MINUTE)
    decision = await limiter.check("gate-17", "taps", FIVE_A_MINUTE)

    assert headers(decision, "taps", FIVE_A_MINUTE) == {
        "RateLimit-Policy": '"taps";q=5;w=60',
        "RateLimit": '"taps";r=3;t=24',
    }


async def test_a_refusal_carries_retry_after_in_whole_seconds(limiter: RateLimiter) -> None:
    await burst(limiter, 5)
    refused = await limiter.check("gate-17", "taps", FIVE_A_MINUTE)

    assert headers(refused, "taps", FIVE_A_MINUTE) == {
        "RateLimit-Policy": '"taps";q=5;w=60',
        "RateLimit": '"taps";r=0;t=60',
        "Retry-After": "12",
    }


def test_a_policy_name_is_quoted_as_a_structured_field_string() -> None:
    decision = Decision(allowed=True, limit=5, remaining=5, reset_s=0, retry_after_s=0)

    fields = headers(decision, 'per "rider" \\ day', FIVE_A_MINUTE)

    assert fields["RateLimit"] == '"per \\"rider\\" \\\\ day";r=5;t=0'
    with pytest.raises(ValueError, match="printable ASCII"):
        headers(decision, "taps\r\nSet-Cookie: x", FIVE_A_MINUTE)


async def test_a_cost_above_the_burst_is_refused_before_asking_redis(
    limiter: RateLimiter,
) -> None:
    with pytest.raises(ValueError, match="cost must be from 1 to 5"):
        await limiter.check("gate-17", "taps", FIVE_A_MINUTE, cost=6)


async def test_redis_away_raises_rate_limit_unavailable(namespace: str) -> None:
    nobody = RespPipe(f"redis://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(RateLimitUnavailable, match="ConnectionError"):
            await RateLimiter(nobody, Keys(namespace)).check("gate-17", "taps", FIVE_A_MINUTE)
    finally:
        await nobody.aclose()


async def test_a_redis_that_never_answers_is_given_up_on_at_the_timeout(namespace: str) -> None:
    # A stalled limiter would stall every gate behind it.
    # A server that takes the commands and answers nothing.
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stalled = RespPipe(f"redis://127.0.0.1:{port}")
    try:
        limiter = RateLimiter(stalled, Keys(namespace), timeout_s=0.1)
        with pytest.raises(RateLimitUnavailable, match="TimeoutError"):
            await limiter.check("gate-17", "taps", FIVE_A_MINUTE)
    finally:
        await stalled.aclose()
        server.close()
        await server.wait_closed()


async def test_a_lost_connection_is_replaced_without_failing_the_request(
    servers: Servers, redis: aioredis.Redis, namespace: str
) -> None:
    pipe = RespPipe(servers.redis_url)
    limiter = RateLimiter(pipe, Keys(namespace))
    try:
        await limiter.check("gate-17", "taps", FIVE_A_MINUTE)
        ours = await pipe.call("CLIENT", "ID")
        killed = await redis.client_kill_filter(_id=ours)  # as a server restart would

        after = await limiter.check("gate-17", "taps", FIVE_A_MINUTE)
    finally:
        await pipe.aclose()

    assert killed == 1
    assert (after.allowed, after.remaining) == (True, 3)


async def test_the_database_named_in_the_url_holds_the_limits(
    servers: Servers, namespace: str
) -> None:
    database_3 = urlsplit(servers.redis_url)._replace(path="/3").geturl()
    pipe = RespPipe(database_3)
    other_db = aioredis.Redis.from_url(database_3)
    try:
        await RateLimiter(pipe, Keys(namespace)).check("gate-17", "taps", FIVE_A_MINUTE)
        assert await other_db.exists(Keys(namespace).rate_limit("gate-17", "taps")) == 1
    finally:
        await pipe.aclose()
        await other_db.aclose()


def test_limits_are_read_from_json() -> None:
    limits = parse_limits(
        '{"taps": {"requests": 600, "period_s": 60},'
        ' "money": {"requests": 10, "period_s": 60, "burst": 5}}'
    )

    assert limits == {"taps": Limit(600, 60), "money": Limit(10, 60, burst=5)}
    assert (limits["taps"].capacity, limits["money"].capacity) == (600, 5)


def test_the_emission_interval_is_whole_microseconds_rounded_up() -> None:
    assert Limit(600, 60).emission_us == 100_000
    assert Limit(7, 60).emission_us == 8_571_429


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"money": {"requests": 0, "period_s": 60}}', "money.requests: expected an integer"),
        ('{"money": {"requests": 10, "period_s": 60, "burst": 0}}', "money.burst: expected"),
        ('{"money": {"requests": 10, "period_s": 1.5}}', r"money: .*\$\.period_s"),
        ('{"money": {"requests": 10, "period_s": 60, "burts": 5}}', "money: .*`burts`"),
        ('{"money": {"period_s": 60}}', "money: .*`requests`"),
        ('{"money": {"requests": 10, "period_s": 60, "burst": true}}', r"money: .*\$\.burst"),
        ('{"bad name": {"requests": 1, "period_s": 1}}', "'bad name': a class name"),
        ('{"taps": {"requests": 1, "period_s": 1}', "rate limits: "),
        ('[{"requests": 1, "period_s": 1}]', "rate limits: "),
        ('{"slow": {"requests": 1, "period_s": 31622400, "burst": 2}}', "slow.burst: "),
    ],
)
def test_a_bad_limit_is_named_by_class_and_field(text: str, message: str) -> None:
    with pytest.raises(LimitsError, match=message) as error:
        parse_limits(text)

    assert "\n" not in str(error.value)
