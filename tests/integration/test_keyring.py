"""The gateway's signing keys rotate on schedule, are published before they sign, outlive their
tokens, and stay one per instant however many replicas refresh at once."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
import pytest

from shared import db
from shared.auth import TokenVerifier, Unauthenticated, parse_jwks
from shared.config import AuthConfig, PlatformConfig
from shared.keyring import Keyring, NoSigningKey, RotationPolicy
from shared.service import Service

POLICY = RotationPolicy(sign_for_s=3600, publish_ahead_s=600, token_ttl_s=300, leeway_s=30)


class ManualClock:
    """A clock the test moves by hand, so keys rotate without waiting."""

    def __init__(self) -> None:
        self.at = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def open_pool(config: PlatformConfig, schema: str) -> asyncpg.Pool:
    return await db.create_pool(config.database_url, schema, max_size=4)


@pytest.fixture
async def keyring(gateway_pool: asyncpg.Pool, clock: ManualClock) -> Keyring:
    keyring = Keyring(gateway_pool, clock, POLICY)
    await keyring.refresh()
    return keyring


def mint(keyring: Keyring, clock: ManualClock) -> str:
    now = int(clock.now().timestamp())
    claims = {"iss": "cardless-gateway", "aud": "cardless", "sub": "rider_1", "scope": ""}
    return keyring.sign({**claims, "iat": now, "exp": now + POLICY.token_ttl_s})


def kid(token: str) -> str:
    value: str = jwt.get_unverified_header(token)["kid"]
    return value


def published(keyring: Keyring) -> list[str]:
    return [key["kid"] for key in keyring.jwks()["keys"]]


async def verify(keyring: Keyring, clock: ManualClock, token: str) -> str:
    """What a service does: verify against the published JWKS, as fetched over HTTP."""
    keys = parse_jwks(json.dumps(keyring.jwks()))
    principal = await TokenVerifier(AuthConfig(audience="cardless", jwks=keys), clock).verify(token)
    return principal.subject


async def test_a_token_is_signed_by_the_published_key_and_verifies_against_the_jwks(
    keyring: Keyring, clock: ManualClock
) -> None:
    token = mint(keyring, clock)
    header = jwt.get_unverified_header(token)
    assert (header["typ"], header["alg"]) == ("at+jwt", "EdDSA")
    assert published(keyring) == [header["kid"]]
    assert await verify(keyring, clock, token) == "rider_1"
    assert [key.kid for key in keyring.verification_keys()] == [header["kid"]]


async def test_the_jwks_publishes_public_keys_for_signing_only(keyring: Keyring) -> None:
    (jwk,) = keyring.jwks()["keys"]
    assert "d" not in jwk
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")


async def test_keys_rotate_on_schedule_and_the_next_is_published_ahead(
    keyring: Keyring, clock: ManualClock
) -> None:
    first = kid(mint(keyring, clock))
    clock.advance(POLICY.sign_for_s - POLICY.publish_ahead_s - 1)
    await keyring.refresh()
    assert published(keyring) == [first]
    clock.advance(1)  # publish_ahead_s before the rotation, the next key is in the JWKS
    await keyring.refresh()
    (_, upcoming) = published(keyring)
    assert kid(mint(keyring, clock)) == first
    clock.advance(POLICY.publish_ahead_s)  # the rotation, due even without a refresh
    assert kid(mint(keyring, clock)) == upcoming


async def test_during_the_overlap_a_token_of_the_old_key_still_verifies(
    keyring: Keyring, clock: ManualClock
) -> None:
    clock.advance(POLICY.sign_for_s - 1)
    old_token = mint(keyring, clock)
    clock.advance(1)
    await keyring.refresh()
    new_token = mint(keyring, clock)
    assert kid(old_token) != kid(new_token)
    clock.advance(POLICY.token_ttl_s - 2)  # the old token's last moments
    await keyring.refresh()
    assert published(keyring) == [kid(old_token), kid(new_token)]
    assert await verify(keyring, clock, old_token) == "rider_1"
    assert await verify(keyring, clock, new_token) == "rider_1"


async def test_after_the_overlap_the_old_key_leaves_the_jwks(
    keyring: Keyring, clock: ManualClock
) -> None:
    old_token = mint(keyring, clock)
    clock.advance(POLICY.sign_for_s + POLICY.token_ttl_s + POLICY.leeway_s)
    assert kid(old_token) not in published(keyring)  # even before the next refresh
    await keyring.refresh()
    assert kid(old_token) not in published(keyring)
    with pytest.raises(Unauthenticated, match="unknown kid"):
        await verify(keyring, clock, old_token)


async def test_a_keyring_refreshed_long_after_its_keys_lapsed_signs_again(
    keyring: Keyring, clock: ManualClock
) -> None:
    lapsed = kid(mint(keyring, clock))
    clock.advance(10 * POLICY.sign_for_s)
    with pytest.raises(NoSigningKey):
        mint(keyring, clock)
    await keyring.refresh()
    fresh = mint(keyring, clock)
    assert kid(fresh) != lapsed
    assert published(keyring) == [kid(fresh)]


async def test_a_keyring_never_refreshed_refuses_to_sign(
    gateway_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    with pytest.raises(NoSigningKey, match="refresh"):
        mint(Keyring(gateway_pool, clock, POLICY), clock)


async def test_a_token_may_not_outlive_its_keys_publication(
    keyring: Keyring, clock: ManualClock
) -> None:
    now = int(clock.now().timestamp())
    with pytest.raises(ValueError, match="exp"):
        keyring.sign({"sub": "rider_1", "exp": now + POLICY.token_ttl_s + 1})
    with pytest.raises(ValueError, match="exp"):
        keyring.sign({"sub": "rider_1"})


async def test_es256_keys_when_the_policy_asks_for_them(
    gateway_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    keyring = Keyring(gateway_pool, clock, dataclasses.replace(POLICY, algorithm="ES256"))
    await keyring.refresh()
    token = mint(keyring, clock)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert await verify(keyring, clock, token) == "rider_1"


async def test_replicas_refreshing_together_agree_on_one_key_at_each_instant(
    config: PlatformConfig, gateway_service: Service, clock: ManualClock
) -> None:
    pools = [await open_pool(config, gateway_service.schema) for _ in range(3)]
    try:
        replicas = [Keyring(pool, clock, POLICY) for pool in pools]
        for _ in range(6):
            await asyncio.gather(*(replica.refresh() for replica in replicas))
            jwks = [replica.jwks() for replica in replicas]
            assert all(one == jwks[0] for one in jwks)
            assert len({kid(mint(replica, clock)) for replica in replicas}) == 1
            clock.advance(POLICY.sign_for_s / 2)
        rows = await pools[0].fetch(
            "SELECT signs_from, signs_until FROM signing_keys ORDER BY signs_from"
        )
    finally:
        await asyncio.gather(*(pool.close() for pool in pools))
    assert all(a["signs_until"] == b["signs_from"] for a, b in itertools.pairwise(rows))


async def test_the_table_refuses_two_keys_signing_at_once(gateway_pool: asyncpg.Pool) -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    insert = (
        "INSERT INTO signing_keys"
        " (kid, algorithm, private_pkcs8, signs_from, signs_until, published_until)"
        " VALUES ($1, 'EdDSA', '\\x00', $2, $3, $4)"
    )
    hour = timedelta(hours=1)
    await gateway_pool.execute(insert, "a", at, at + hour, at + 2 * hour)
    with pytest.raises(asyncpg.ExclusionViolationError):
        await gateway_pool.execute(insert, "b", at + hour / 2, at + 2 * hour, at + 3 * hour)
