"""Who gets through the gateway to the wallet: forged and stale tokens are refused with the
reason, keys rotate under live tokens, clients and riders reach what their scopes and keys allow,
and the wallet trusts only what the gateway vouches for."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import OKPAlgorithm

from services.gateway.app import PARTS
from services.gateway.config import ExternalIssuer
from services.wallet.config import WalletConfig
from services.wallet.topups import parse_providers
from shared.auth import FORBIDDEN, UNAUTHENTICATED
from shared.config import PlatformConfig
from shared.service import Service
from tests.gateway_city import City, ManualClock, Phone, RegisteredClient, b64url, running_city
from tests.provider_peers import new_secret, signed_headers

INVALID_TOKEN = 'Bearer error="invalid_token"'
BALANCE = "/v1/wallet/balance"
DAY = "2029-12-30"  # a business day closed long before the city's clock (2030-01-01 08:30)
FINANCE = RegisteredClient("city-finance", "operator", "wallet:finance")
SANDBOX = RegisteredClient("sandbox", "provider", "wallet:settlement")
SANDBOX_SECRET = new_secret()
# Two payment providers the wallet takes top-ups from; "sandbox" is also a client of the city.
PROVIDERS = {
    "sandbox": {"scheme": "standard-webhooks", "secrets": [SANDBOX_SECRET]},
    "otherpay": {"scheme": "standard-webhooks", "secrets": [new_secret()]},
}
WALLET = WalletConfig(providers={p.name: p for p in parse_providers(json.dumps(PROVIDERS))})
IDP = "https://id.city.example"


@pytest.fixture
async def city(
    gateway_service: Service, wallet_service: Service, config: PlatformConfig
) -> AsyncIterator[City]:
    async with running_city(
        gateway_service, wallet_service, config, clients=(FINANCE, SANDBOX), wallet=WALLET
    ) as city:
        yield city


async def refused(answer: aiohttp.ClientResponse, status: int = 401) -> dict[str, Any]:
    """The problem of a refusal: RFC 9457 JSON, and a 401 says how to authenticate."""
    assert answer.status == status, await answer.text()
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert status != 401 or "WWW-Authenticate" in answer.headers
    body: dict[str, Any] = await answer.json(content_type=None)
    assert (body["status"], body["type"]) == (
        status,
        FORBIDDEN if status == 403 else UNAUTHENTICATED,
    )
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- forged, stale and oversized tokens ------------------------------------------------------


def claims(city: City, **changes: Any) -> dict[str, Any]:
    """An access token's claims as the token endpoint would issue them to a client."""
    now = city.clock.unix()
    return {"iss": "cardless-gateway", "aud": "cardless", "sub": "city-audit",
            "client_id": "city-audit", "scope": "wallet:read", "iat": now, "exp": now + 300,
            "jti": str(uuid.uuid4()), **changes}  # fmt: skip


def signed(city: City, **changes: Any) -> str:
    """A token signed with the gateway's own current key: only the claims are wrong."""
    return city.gateway[PARTS].keyring.sign(claims(city, **changes))


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWS no library would make for us: ``alg: none``, HMAC keyed with a public key."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def by_attacker(city: City, kid: str) -> str:
    """Right claims, signed with a key the gateway never had, under ``kid``."""
    return jwt.encode(claims(city), Ed25519PrivateKey.generate(), "EdDSA", headers={"kid": kid})


def alg_none(city: City) -> str:
    kid = jwt.get_unverified_header(signed(city))["kid"]
    return handmade({"alg": "none", "kid": kid, "typ": "at+jwt"}, claims(city), lambda _: b"")


def hmac_with_public_key(city: City) -> str:
    # The gateway's public key, as anyone reads it in the JWKS, used as an HMAC secret.
    kid = jwt.get_unverified_header(signed(city))["kid"]
    published = next(k for k in city.gateway[PARTS].keyring.verification_keys() if k.kid == kid)
    secret = published.key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": kid, "typ": "at+jwt"}
    return handmade(header, claims(city), lambda data: hmac.digest(secret, data, hashlib.sha256))


def scope_widened(city: City) -> str:
    # A token for wallet:settlement, its payload rewritten to add wallet:read after signing.
    header, _, signature = signed(city, scope="wallet:settlement").split(".")
    payload = b64url(json.dumps(claims(city, scope="wallet:settlement wallet:read")).encode())
    return f"{header}.{payload}.{signature}"


def ago(city: City, seconds: int) -> int:
    return city.clock.unix() - seconds


ATTACKS: dict[str, tuple[Callable[[City], str], str]] = {
    "alg none": (alg_none, "algorithm not allowed for this key"),
    "hmac with the public key": (hmac_with_public_key, "algorithm not allowed for this key"),
    "expired": (lambda c: signed(c, iat=ago(c, 900), exp=ago(c, 300)), "token expired"),
    "not yet valid": (lambda c: signed(c, nbf=ago(c, -300)), "token not yet valid"),
    "internal audience": (lambda c: signed(c, aud="cardless-internal"), "wrong audience"),
    "another issuer": (lambda c: signed(c, iss="https://id.elsewhere.example"), "unknown issuer"),
    "unknown kid": (lambda c: by_attacker(c, "gw-2030-99"), "unknown kid"),
    "scope widened": (scope_widened, "bad signature"),
    "kid path traversal": (lambda c: by_attacker(c, "../../etc/passwd"), "unknown kid"),
    "kid sql injection": (lambda c: by_attacker(c, "' OR 1=1 --"), "unknown kid"),
}


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_forged_or_stale_token_is_refused_with_the_reason(city: City, attack: str) -> None:
    forge, reason = ATTACKS[attack]
    kids = await city.jwks_kids()
    answer = await city.http.get(city.url(BALANCE), headers=bearer(forge(city)))
    body = await refused(answer)
    assert answer.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert body["detail"] == reason
    # The same claims, honestly signed, pass: only the attack made the difference; and the
    # attempt changed nothing (a kid is looked up, never used as a path or in SQL).
    answer = await city.http.get(city.url(BALANCE), headers=bearer(signed(city)))
    assert answer.status == 200
    assert await city.jwks_kids() == kids


async def test_a_token_over_8_kib_is_refused_before_anything_reads_it(city: City) -> None:
    token = signed(city, padding="x" * 9000)
    answer = await city.http.get(city.url(BALANCE), headers=bearer(token))
    body = await refused(answer)
    assert body["detail"] == "token too large"


# --- key rotation ----------------------------------------------------------------------------


async def rider_balance(city: City, phone: Phone, token: str) -> aiohttp.ClientResponse:
    return await city.http.get(
        city.url(BALANCE), headers=city.as_rider(phone, token, "GET", BALANCE)
    )


def kid(token: str) -> str:
    found: str = jwt.get_unverified_header(token)["kid"]
    return found


async def test_tokens_of_the_old_and_the_new_key_both_work_until_the_old_key_is_retired(
    gateway_service: Service, wallet_service: Service, config: PlatformConfig
) -> None:
    # Keys sign for an hour each and tokens live ten minutes (published 10.5 minutes longer).
    async with running_city(
        gateway_service, wallet_service, config, key_rotation_s=3600, token_ttl_s=600
    ) as city:
        phone = Phone()
        first = await city.rider_token(phone)
        assert (await rider_balance(city, phone, first)).status == 200
        old_key = kid(first)

        city.clock.advance(3600 - 60)  # a minute before the next key starts signing
        before = await city.rider_token(phone)
        assert kid(before) == old_key
        city.clock.advance(120)  # the next key signs; the old one stays published
        await city.rotate()
        after = await city.rider_token(phone)
        new_key = kid(after)
        assert new_key != old_key
        assert {old_key, new_key} <= await city.jwks_kids()
        for token in (before, after):
            answer = await rider_balance(city, phone, token)
            assert answer.status == 200
            assert await answer.json() == {"currency": "CNY", "available": 0, "held": 0}

        city.clock.advance(640)  # past the old key's publication: its tokens have all expired
        await city.rotate()
        kids = await city.jwks_kids()
        assert old_key not in kids
        assert new_key in kids
        body = await refused(await rider_balance(city, phone, before))
        assert body["detail"] == "unknown kid"  # not merely expired: the key itself is gone
        latest = await city.rider_token(phone)
        assert kid(latest) == new_key
        assert (await rider_balance(city, phone, latest)).status == 200


# --- clients: client credentials with private_key_jwt ----------------------------------------


def operator_statement(operator: str = "metro") -> str:
    return f"/v1/wallet/operators/{operator}/statements/{DAY}.json"


def provider_statement(provider: str) -> str:
    return f"/v1/wallet/providers/{provider}/statements/{DAY}.json"


async def test_the_operators_finance_team_reads_a_statement_with_its_client_token(
    city: City,
) -> None:
    token = await city.client_token(FINANCE)
    answer = await city.http.get(city.url(operator_statement()), headers=bearer(token))
    assert answer.status == 200
    statement = await answer.json()
    assert (statement["owner"], statement["business_day"]) == ("operator:metro", DAY)


async def test_a_provider_reads_its_own_statement_and_not_another_providers(city: City) -> None:
    token = await city.client_token(SANDBOX)
    own = await city.http.get(city.url(provider_statement("sandbox")), headers=bearer(token))
    assert own.status == 200
    assert (await own.json())["owner"] == "provider:sandbox"

    other = await city.http.get(city.url(provider_statement("otherpay")), headers=bearer(token))
    body = await refused(other, 403)
    assert body["detail"] == "only its own provider may"
    # The statement is there: finance, exempt from the owner rule, reads it.
    finance = bearer(await city.client_token(FINANCE))
    assert (
        await city.http.get(city.url(provider_statement("otherpay")), headers=finance)
    ).status == 200


async def test_a_client_without_the_routes_scope_gets_403_insufficient_scope(city: City) -> None:
    token = await city.client_token(SANDBOX)
    answer = await city.http.get(city.url(operator_statement()), headers=bearer(token))
    body = await refused(answer, 403)
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="wallet:finance"'
    )
    assert body["detail"] == "requires scope: wallet:finance"


async def test_a_request_without_a_token_gets_the_bearer_challenge(city: City) -> None:
    answer = await city.http.get(city.url(operator_statement()))
    body = await refused(answer)
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert body["detail"] == "bearer token required"


# --- riders: tokens bound to the phone by DPoP -----------------------------------------------


async def test_a_riders_token_works_only_with_a_fresh_proof_of_the_same_phone(city: City) -> None:
    phone = Phone()
    token = await city.rider_token(phone)
    signed_in = city.as_rider(phone, token, "GET", BALANCE)
    answer = await city.http.get(city.url(BALANCE), headers=signed_in)
    assert answer.status == 200
    assert await answer.json() == {"currency": "CNY", "available": 0, "held": 0}

    now = city.clock.unix()
    attempts = {
        "missing DPoP proof": {"Authorization": f"DPoP {token}"},
        "DPoP URL does not match": city.as_rider(phone, token, "GET", "/v1/wallet/statement"),
        "DPoP method does not match": city.as_rider(phone, token, "POST", BALANCE),
        "DPoP proof replayed": signed_in,
        "DPoP key does not match the token": {
            "Authorization": f"DPoP {token}",
            "DPoP": Phone().proof("GET", city.url(BALANCE), token, now),
        },
    }
    for reason, headers in attempts.items():
        answer = await city.http.get(city.url(BALANCE), headers=headers)
        body = await refused(answer)
        assert body["detail"] == reason
        # RFC 9449 §7.1: the challenge tells the phone it is its proof that failed.
        assert answer.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')


# --- what reaches the wallet: the gateway's internal token, with the caller's subject --------


async def test_a_clients_own_token_sent_straight_to_the_wallet_is_refused(city: City) -> None:
    token = await city.client_token(FINANCE)
    through = await city.http.get(city.url(operator_statement()), headers=bearer(token))
    assert through.status == 200
    direct = await city.http.get(f"{city.wallet_url}{operator_statement()}", headers=bearer(token))
    body = await refused(direct)
    assert body["detail"] == "wrong audience"  # the wallet takes only cardless-internal


async def test_through_the_gateway_each_rider_reaches_only_their_own_wallet(city: City) -> None:
    alice, bob = Phone(), Phone()
    alices, bobs = await city.rider_token(alice), await city.rider_token(bob)
    topups = "/v1/wallet/topups"
    headers = {**city.as_rider(alice, alices, "POST", topups), "Idempotency-Key": '"t-1"'}
    body = {"provider": "sandbox", "amount": 1250, "currency": "CNY"}
    created = await city.http.post(city.url(topups), json=body, headers=headers)
    assert created.status == 201
    order = await created.json()
    await pay(city, order)

    async def balance(phone: Phone, token: str) -> Any:
        return await (await rider_balance(city, phone, token)).json()

    assert (await balance(alice, alices))["available"] == 1250
    assert (await balance(bob, bobs))["available"] == 0
    path = f"{topups}/{order['id']}"
    mine = await city.http.get(city.url(path), headers=city.as_rider(alice, alices, "GET", path))
    assert (mine.status, (await mine.json())["status"]) == (200, "paid")
    theirs = await city.http.get(city.url(path), headers=city.as_rider(bob, bobs, "GET", path))
    assert theirs.status == 404


async def pay(city: City, order: dict[str, Any]) -> None:
    """The provider's signed notification that the rider paid, through the gateway."""
    data = {"order_id": order["id"], "provider_reference": "sbx-1",
            "amount": order["pay"]["amount"], "currency": order["currency"]}  # fmt: skip
    body = json.dumps({"type": "payment.succeeded", "data": data}).encode()
    headers = signed_headers(body, SANDBOX_SECRET, at=city.clock.now())
    notification = "/v1/wallet/providers/sandbox/notifications"
    answer = await city.http.post(city.url(notification), data=body, headers=headers)
    assert answer.status == 204


# --- an external issuer: the city's identity provider ----------------------------------------


class IdentityProvider:
    """The city's identity provider (an outside party): publishes one key, signs tokens."""

    def __init__(self) -> None:
        self.key, self.kid = Ed25519PrivateKey.generate(), "idp-1"

    async def jwks(self, _: web.Request) -> web.Response:
        jwk = OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA"}]})

    def token(
        self, clock: ManualClock, scope: str, *, key: Ed25519PrivateKey | None = None, kid: str = ""
    ) -> str:
        now = clock.unix()
        claims = {"iss": IDP, "aud": "cardless", "sub": "citizen-7", "scope": scope,
                  "iat": now, "exp": now + 300}  # fmt: skip
        headers = {"kid": kid or self.kid}
        return jwt.encode(claims, key or self.key, "EdDSA", headers=headers)


@pytest.fixture
async def idp() -> AsyncIterator[tuple[IdentityProvider, str]]:
    provider = IdentityProvider()
    app = web.Application()
    app.router.add_get("/jwks.json", provider.jwks)
    async with TestServer(app) as server:
        yield provider, str(server.make_url("/jwks.json"))


async def test_an_external_issuers_token_is_accepted_only_for_the_scopes_it_is_trusted_with(
    gateway_service: Service,
    wallet_service: Service,
    config: PlatformConfig,
    idp: tuple[IdentityProvider, str],
) -> None:
    provider, jwks_url = idp
    trusted = ExternalIssuer(IDP, jwks_url, "cardless", frozenset({"wallet:read"}))
    async with running_city(
        gateway_service, wallet_service, config, issuers=(trusted,), wallet=WALLET
    ) as city:
        # The identity provider claims more than the city trusts it with.
        token = provider.token(city.clock, "wallet:read wallet:finance")
        answer = await city.http.get(city.url(BALANCE), headers=bearer(token))
        assert answer.status == 200
        assert await answer.json() == {"currency": "CNY", "available": 0, "held": 0}
        answer = await city.http.get(city.url(operator_statement()), headers=bearer(token))
        assert (await refused(answer, 403))["detail"] == "requires scope: wallet:finance"

        direct = await city.http.get(f"{city.wallet_url}{BALANCE}", headers=bearer(token))
        assert (await refused(direct))["detail"] == "unknown kid"  # the wallet trusts the gateway

        rogue = Ed25519PrivateKey.generate()
        for forged_token, reason in (
            (provider.token(city.clock, "wallet:read", key=rogue, kid="idp-2"), "unknown kid"),
            (provider.token(city.clock, "wallet:read", key=rogue), "bad signature"),
        ):
            answer = await city.http.get(city.url(BALANCE), headers=bearer(forged_token))
            assert (await refused(answer))["detail"] == reason
