"""The token endpoint over HTTP: clients authenticate with their registered keys and riders with
their phone's, each assertion once; rider tokens are bound to the phone by DPoP proofs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from services.gateway.clients import parse_clients
from services.gateway.tokens import (
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER,
    RIDER_SCOPES,
    TokenEndpoint,
    TokenKeys,
    TokenSettings,
)
from shared.auth import Principal, TokenVerifier, Unauthenticated, parse_jwks
from shared.config import AuthConfig
from shared.keyring import Keyring, RotationPolicy, jwk_thumbprint

TOKEN_URL = "https://gateway.test/oauth/token"
API_URL = "https://gateway.test/wallet/balance"
SETTINGS = TokenSettings(token_url=TOKEN_URL)
POLICY = RotationPolicy(sign_for_s=3600, publish_ahead_s=600, token_ttl_s=600, leeway_s=30)


class ManualClock:
    """A clock the test moves by hand, so proofs age without waiting."""

    def __init__(self) -> None:
        self.at = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def unix(self) -> int:
        return int(self.at.timestamp())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS no library would make: ``alg: none``, or HMAC keyed with a public key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def present(claims: dict[str, Any]) -> dict[str, Any]:
    """Claims set to None are left out, so a test can drop a required one."""
    return {name: value for name, value in claims.items() if value is not None}


class Party:
    """An outside party's key pair: Ed25519 (EdDSA) or P-256 (ES256)."""

    def __init__(self, algorithm: str = "EdDSA") -> None:
        self.algorithm = algorithm
        self.key: Any = (
            Ed25519PrivateKey.generate()
            if algorithm == "EdDSA"
            else ec.generate_private_key(ec.SECP256R1())
        )

    @property
    def jwk(self) -> dict[str, Any]:
        kind = OKPAlgorithm if self.algorithm == "EdDSA" else ECAlgorithm
        jwk: dict[str, Any] = kind.to_jwk(self.key.public_key(), as_dict=True)
        return jwk

    @property
    def public_pem(self) -> bytes:
        pem: bytes = self.key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        return pem


class Provider(Party):
    """A registered client (a payment provider, an agency) signing ``private_key_jwt``."""

    def __init__(self, client_id: str, kid: str, algorithm: str = "EdDSA") -> None:
        super().__init__(algorithm)
        self.client_id, self.kid = client_id, kid

    def claims(self, clock: ManualClock, **changes: Any) -> dict[str, Any]:
        now = clock.unix()
        claims: dict[str, Any] = {"iss": self.client_id, "sub": self.client_id, "aud": TOKEN_URL}
        claims |= {"iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
        return present({**claims, **changes})

    def assertion(self, clock: ManualClock, **changes: Any) -> str:
        headers = {"kid": self.kid}
        return jwt.encode(self.claims(clock, **changes), self.key, self.algorithm, headers=headers)


class Phone(Party):
    """A rider's phone: its own key signs the sign-in assertion and every DPoP proof."""

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)

    def sign_in(self, clock: ManualClock, **changes: Any) -> str:
        now = clock.unix()
        claims = {"aud": TOKEN_URL, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
        headers = {"jwk": self.jwk}
        return jwt.encode(present({**claims, **changes}), self.key, self.algorithm, headers=headers)

    def proof_claims(self, clock: ManualClock, token: str, **changes: Any) -> dict[str, Any]:
        ath = b64(hashlib.sha256(token.encode()).digest())
        claims = {"htm": "GET", "htu": API_URL, "iat": clock.unix(), "jti": str(uuid.uuid4())}
        return present({**claims, "ath": ath, **changes})

    def proof(self, clock: ManualClock, token: str, **changes: Any) -> str:
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        claims = self.proof_claims(clock, token, **changes)
        return jwt.encode(claims, self.key, self.algorithm, headers=headers)


PROVIDER = Provider("alipay-sandbox", "alipay-1")
AGENCY = Provider("metro-agency", "agency-1", "ES256")
REGISTRY = json.dumps(
    {
        "clients": [
            {
                "client_id": PROVIDER.client_id,
                "kind": "provider",
                "scopes": ["wallet:settlement", "wallet:refunds"],
                "jwks": {"keys": [{**PROVIDER.jwk, "kid": PROVIDER.kid}]},
            },
            {
                "client_id": AGENCY.client_id,
                "kind": "agency",
                "scopes": ["transit:fares"],
                "jwks": {"keys": [{**AGENCY.jwk, "kid": AGENCY.kid}]},
            },
        ]
    }
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def keyring(gateway_pool: asyncpg.Pool, clock: ManualClock) -> Keyring:
    keyring = Keyring(gateway_pool, clock, POLICY)
    await keyring.refresh()
    return keyring


@pytest.fixture
def endpoint(
    keyring: Keyring,
    redis: aioredis.Redis,
    namespace: str,
    gateway_pool: asyncpg.Pool,
    clock: ManualClock,
) -> TokenEndpoint:
    clients = parse_clients(REGISTRY)
    return TokenEndpoint(keyring, clients, redis, namespace, gateway_pool, clock, SETTINGS)


@pytest.fixture
async def http(endpoint: TokenEndpoint) -> AsyncIterator[TestClient]:
    app = web.Application()
    app.router.add_post("/oauth/token", endpoint.handle)
    async with TestClient(TestServer(app)) as client:
        yield client


async def ask(http: TestClient, form: dict[str, str] | str) -> tuple[int, dict[str, Any]]:
    """POST a form to the token endpoint; every answer, good or bad, must be no-store."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await http.post("/oauth/token", data=form, headers=headers)
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await response.json()
    return response.status, body


def client_credentials(assertion: str, **extra: str) -> dict[str, str]:
    grant = {"grant_type": "client_credentials", "client_assertion_type": CLIENT_ASSERTION_TYPE}
    return {**grant, "client_assertion": assertion, **extra}


def rider_sign_in(assertion: str, **extra: str) -> dict[str, str]:
    return {"grant_type": JWT_BEARER, "assertion": assertion, **extra}


async def verified(keyring: Keyring, clock: ManualClock, token: str) -> Principal:
    """What a service would make of the token, given the gateway's published JWKS."""
    jwks = parse_jwks(json.dumps(keyring.jwks()))
    config = AuthConfig(issuer="cardless-gateway", audience="cardless", jwks=jwks)
    return await TokenVerifier(config, clock).verify(token)


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def refused(status: int, body: dict[str, Any], error: str, description: str | None = None) -> None:
    assert (status, body["error"]) == (401 if error == "invalid_client" else 400, error)
    assert set(body) == {"error", "error_description"}
    if description is not None:
        assert body["error_description"] == description


# Clients: client credentials with private_key_jwt


async def test_a_provider_gets_a_bearer_token_that_verifies_against_the_jwks(
    http: TestClient, keyring: Keyring, clock: ManualClock
) -> None:
    status, body = await ask(http, client_credentials(PROVIDER.assertion(clock)))
    assert status == 200
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 600)
    assert body["scope"] == "wallet:refunds wallet:settlement"
    principal = await verified(keyring, clock, body["access_token"])
    assert principal == Principal(
        "alipay-sandbox", frozenset({"wallet:refunds", "wallet:settlement"}), "alipay-sandbox"
    )
    claims = claims_of(body["access_token"])
    assert (claims["iss"], claims["aud"]) == ("cardless-gateway", "cardless")
    assert (claims["iat"], claims["exp"]) == (clock.unix(), clock.unix() + 600)
    assert claims["jti"]
    assert "cnf" not in claims
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"


async def test_an_agency_with_a_p256_key_gets_a_token(
    http: TestClient, keyring: Keyring, clock: ManualClock
) -> None:
    status, body = await ask(http, client_credentials(AGENCY.assertion(clock)))
    assert status == 200
    principal = await verified(keyring, clock, body["access_token"])
    assert (principal.subject, principal.scopes) == ("metro-agency", frozenset({"transit:fares"}))


async def test_an_assertion_for_the_gateways_issuer_name_is_accepted(
    http: TestClient, clock: ManualClock
) -> None:
    assertion = PROVIDER.assertion(clock, aud=["someone-else", "cardless-gateway"])
    status, _ = await ask(http, client_credentials(assertion))
    assert status == 200


async def test_a_client_may_ask_for_fewer_scopes(http: TestClient, clock: ManualClock) -> None:
    form = client_credentials(PROVIDER.assertion(clock), scope="wallet:settlement")
    status, body = await ask(http, form)
    assert (status, body["scope"]) == (200, "wallet:settlement")
    assert claims_of(body["access_token"])["scope"] == "wallet:settlement"


@pytest.mark.parametrize("scope", ["wallet:read", "wallet:settlement transit:fares"])
async def test_a_scope_the_client_was_not_registered_for_is_invalid_scope(
    http: TestClient, clock: ManualClock, scope: str
) -> None:
    status, body = await ask(http, client_credentials(PROVIDER.assertion(clock), scope=scope))
    refused(status, body, "invalid_scope")


async def test_a_replayed_assertion_is_refused(http: TestClient, clock: ManualClock) -> None:
    assertion = PROVIDER.assertion(clock)
    assert (await ask(http, client_credentials(assertion)))[0] == 200
    status, body = await ask(http, client_credentials(assertion))
    refused(status, body, "invalid_client", "assertion already used")


async def test_the_same_jti_from_two_clients_is_not_a_replay(
    http: TestClient, clock: ManualClock
) -> None:
    for client in (PROVIDER, AGENCY):
        status, _ = await ask(http, client_credentials(client.assertion(clock, jti="shared-jti")))
        assert status == 200


def none_alg(clock: ManualClock) -> str:
    header = {"alg": "none", "kid": PROVIDER.kid}
    return handmade(header, PROVIDER.claims(clock), lambda _: b"")


def hmac_with_public_key(clock: ManualClock) -> str:
    header = {"alg": "HS256", "kid": PROVIDER.kid}
    sign = lambda data: hmac.digest(PROVIDER.public_pem, data, "sha256")  # noqa: E731
    return handmade(header, PROVIDER.claims(clock), sign)


def signed_by_another_clients_key(clock: ManualClock) -> str:
    claims = PROVIDER.claims(clock)
    return jwt.encode(claims, AGENCY.key, "ES256", headers={"kid": AGENCY.kid})


def forged_under_the_providers_kid(clock: ManualClock) -> str:
    impostor = Provider(PROVIDER.client_id, PROVIDER.kid)
    return impostor.assertion(clock)


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda c: PROVIDER.assertion(c, aud="https://elsewhere.test/token"), "wrong audience"),
        (lambda c: PROVIDER.assertion(c, exp=c.unix() - 31), "assertion expired"),
        (lambda c: PROVIDER.assertion(c, exp=c.unix() + 3600), "assertion expires too far ahead"),
        (lambda c: PROVIDER.assertion(c, iat=c.unix() + 300), "assertion issued in the future"),
        (lambda c: PROVIDER.assertion(c, exp=None), "missing exp"),
        (lambda c: PROVIDER.assertion(c, jti=None), "missing jti"),
        (lambda c: PROVIDER.assertion(c, sub="metro-agency"), "sub must equal iss"),
        (lambda c: PROVIDER.assertion(c, iss="nobody", sub="nobody"), "unknown client"),
        (signed_by_another_clients_key, "unknown key for this client"),
        (forged_under_the_providers_kid, "bad signature"),
        (none_alg, "algorithm not allowed for this key"),
        (hmac_with_public_key, "algorithm not allowed for this key"),
        (lambda _: "not.a.jwt", "malformed token"),
    ],
    ids=[
        "wrong-aud",
        "expired",
        "too-long",
        "future-iat",
        "no-exp",
        "no-jti",
        "sub-not-iss",
        "unknown-client",
        "other-clients-key",
        "forged",
        "alg-none",
        "hs256-public-key",
        "garbage",
    ],
)
async def test_a_bad_client_assertion_is_invalid_client_without_echoing_it(
    http: TestClient,
    clock: ManualClock,
    make: Callable[[ManualClock], str],
    description: str,
) -> None:
    assertion = make(clock)
    status, body = await ask(http, client_credentials(assertion))
    refused(status, body, "invalid_client", description)
    assert assertion not in json.dumps(body)


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials"},
        {"grant_type": "client_credentials", "client_assertion": "x.y.z"},
    ],
    ids=["no-assertion", "no-assertion-type"],
)
async def test_client_credentials_without_a_client_assertion_is_invalid_client(
    http: TestClient, form: dict[str, str]
) -> None:
    status, body = await ask(http, form)
    refused(status, body, "invalid_client")


async def test_a_client_id_other_than_the_assertions_is_invalid_client(
    http: TestClient, clock: ManualClock
) -> None:
    form = client_credentials(PROVIDER.assertion(clock), client_id="metro-agency")
    status, body = await ask(http, form)
    refused(status, body, "invalid_client", "client_id does not match the assertion")


# The request itself


async def test_a_body_that_is_not_a_form_is_invalid_request(http: TestClient) -> None:
    response = await http.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert response.headers["Cache-Control"] == "no-store"
    refused(response.status, await response.json(), "invalid_request")


@pytest.mark.parametrize(
    "form",
    [
        "grant_type=client_credentials&grant_type=client_credentials",
        "scope=wallet%3Asettlement",
        f"grant_type={JWT_BEARER}",
        "grant_type=%ff",
    ],
    ids=["repeated", "no-grant-type", "no-assertion", "not-utf8"],
)
async def test_a_malformed_or_incomplete_request_is_invalid_request(
    http: TestClient, form: str
) -> None:
    status, body = await ask(http, form)
    refused(status, body, "invalid_request")


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "refresh_token"])
async def test_other_grants_are_unsupported(http: TestClient, grant_type: str) -> None:
    status, body = await ask(http, {"grant_type": grant_type})
    refused(status, body, "unsupported_grant_type")


# Riders: signing in with the phone's key


async def sign_in(http: TestClient, clock: ManualClock, phone: Phone) -> dict[str, Any]:
    status, body = await ask(http, rider_sign_in(phone.sign_in(clock)))
    assert status == 200, body
    return body


async def test_a_riders_first_sign_in_creates_a_pseudonymous_rider(
    http: TestClient, keyring: Keyring, clock: ManualClock, gateway_pool: asyncpg.Pool
) -> None:
    phone = Phone()
    body = await sign_in(http, clock, phone)
    assert (body["token_type"], body["expires_in"]) == ("DPoP", 600)
    assert body["scope"] == " ".join(sorted(RIDER_SCOPES))
    principal = await verified(keyring, clock, body["access_token"])
    assert principal.subject.startswith("rider_")
    assert (principal.scopes, principal.client_id) == (RIDER_SCOPES, "rider-app")
    row = await gateway_pool.fetchrow("SELECT rider_id, jkt FROM riders")
    assert row is not None
    assert (row["rider_id"], row["jkt"]) == (principal.subject, phone.jkt)


async def test_a_rider_token_is_bound_to_the_phones_key(
    http: TestClient, clock: ManualClock
) -> None:
    phone = Phone()
    body = await sign_in(http, clock, phone)
    assert claims_of(body["access_token"])["cnf"] == {"jkt": phone.jkt}


async def test_the_same_phone_key_signs_in_as_the_same_rider_and_another_as_another(
    http: TestClient, clock: ManualClock
) -> None:
    phone, other = Phone(), Phone("ES256")
    first = claims_of((await sign_in(http, clock, phone))["access_token"])["sub"]
    again = claims_of((await sign_in(http, clock, phone))["access_token"])["sub"]
    elsewhere = claims_of((await sign_in(http, clock, other))["access_token"])["sub"]
    assert first == again
    assert elsewhere != first


async def test_simultaneous_first_sign_ins_with_one_key_make_one_rider(
    http: TestClient, clock: ManualClock, gateway_pool: asyncpg.Pool
) -> None:
    phone = Phone()
    bodies = await asyncio.gather(*(sign_in(http, clock, phone) for _ in range(6)))
    assert len({claims_of(body["access_token"])["sub"] for body in bodies}) == 1
    assert await gateway_pool.fetchval("SELECT count(*) FROM riders") == 1


async def test_a_rider_may_ask_for_fewer_scopes_but_no_others(
    http: TestClient, clock: ManualClock
) -> None:
    phone = Phone()
    status, body = await ask(http, rider_sign_in(phone.sign_in(clock), scope="wallet:read"))
    assert (status, body["scope"]) == (200, "wallet:read")
    asked = rider_sign_in(phone.sign_in(clock), scope="wallet:settlement")
    status, body = await ask(http, asked)
    refused(status, body, "invalid_scope")


async def test_a_replayed_sign_in_is_refused(http: TestClient, clock: ManualClock) -> None:
    assertion = Phone().sign_in(clock)
    assert (await ask(http, rider_sign_in(assertion)))[0] == 200
    status, body = await ask(http, rider_sign_in(assertion))
    refused(status, body, "invalid_grant", "assertion already used")


PHONE = Phone()


def with_private_key(clock: ManualClock) -> str:
    private_jwk = OKPAlgorithm.to_jwk(PHONE.key, as_dict=True)
    claims = {"aud": TOKEN_URL, "iat": clock.unix(), "exp": clock.unix() + 60, "jti": "j"}
    return jwt.encode(claims, PHONE.key, "EdDSA", headers={"jwk": private_jwk})


def signed_by_another_key(clock: ManualClock) -> str:
    claims = {"aud": TOKEN_URL, "iat": clock.unix(), "exp": clock.unix() + 60, "jti": "j"}
    return jwt.encode(claims, Phone().key, "EdDSA", headers={"jwk": PHONE.jwk})


def sign_in_hmac(clock: ManualClock) -> str:
    claims = {"aud": TOKEN_URL, "iat": clock.unix(), "exp": clock.unix() + 60, "jti": "j"}
    header = {"alg": "HS256", "jwk": PHONE.jwk}
    return handmade(header, claims, lambda data: hmac.digest(PHONE.public_pem, data, "sha256"))


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda c: PHONE.sign_in(c, aud="https://elsewhere.test/token"), "wrong audience"),
        (lambda c: PHONE.sign_in(c, exp=c.unix() + 3600), "assertion expires too far ahead"),
        (lambda c: PHONE.sign_in(c, exp=c.unix() - 60), "assertion expired"),
        (lambda c: PHONE.sign_in(c, iat=None), "missing iat"),
        (lambda c: PHONE.sign_in(c, jti=None), "missing jti"),
        (with_private_key, "jwk holds private key material"),
        (signed_by_another_key, "bad signature"),
        (sign_in_hmac, "algorithm not allowed for this key"),
        (lambda c: PROVIDER.assertion(c), "missing jwk header"),
    ],
    ids=[
        "wrong-aud",
        "too-long",
        "expired",
        "no-iat",
        "no-jti",
        "private-jwk",
        "other-key",
        "hs256",
        "no-jwk",
    ],
)
async def test_a_bad_sign_in_is_invalid_grant(
    http: TestClient,
    clock: ManualClock,
    make: Callable[[ManualClock], str],
    description: str,
) -> None:
    status, body = await ask(http, rider_sign_in(make(clock)))
    refused(status, body, "invalid_grant", description)


# DPoP: every request with a rider token carries a fresh proof by the phone's key


@pytest.fixture
async def rider(http: TestClient, clock: ManualClock) -> tuple[Phone, str]:
    """A signed-in phone and its access token."""
    phone = Phone()
    return phone, (await sign_in(http, clock, phone))["access_token"]


async def check(
    endpoint: TokenEndpoint, rider: tuple[Phone, str], proof: str | None, **request: str
) -> None:
    phone, token = rider
    await endpoint.check_dpop(
        method=request.get("method", "GET"),
        url=request.get("url", API_URL),
        proof=proof,
        access_token=token,
        jkt=phone.jkt,
    )


async def test_a_fresh_proof_by_the_phone_passes(
    endpoint: TokenEndpoint, rider: tuple[Phone, str], clock: ManualClock
) -> None:
    phone, token = rider
    await check(endpoint, rider, phone.proof(clock, token))
    await check(endpoint, rider, phone.proof(clock, token), url=API_URL + "?currency=CNY")
    await check(endpoint, rider, phone.proof(clock, token, htm="POST"), method="POST")


async def test_a_p256_phone_proves_possession_too(
    http: TestClient, endpoint: TokenEndpoint, clock: ManualClock
) -> None:
    phone = Phone("ES256")
    token = (await sign_in(http, clock, phone))["access_token"]
    await check(endpoint, (phone, token), phone.proof(clock, token))


async def test_a_proof_a_few_minutes_old_still_passes_but_not_older(
    endpoint: TokenEndpoint, rider: tuple[Phone, str], clock: ManualClock
) -> None:
    phone, token = rider
    proofs = [phone.proof(clock, token), phone.proof(clock, token)]
    clock.at += timedelta(seconds=SETTINGS.dpop_max_age_s)
    await check(endpoint, rider, proofs[0])
    clock.at += timedelta(seconds=SETTINGS.leeway_s + 1)
    with pytest.raises(Unauthenticated, match="DPoP proof too old"):
        await check(endpoint, rider, proofs[1])


async def test_a_replayed_proof_is_refused(
    endpoint: TokenEndpoint, rider: tuple[Phone, str], clock: ManualClock
) -> None:
    proof = rider[0].proof(clock, rider[1])
    await check(endpoint, rider, proof)
    with pytest.raises(Unauthenticated, match="DPoP proof replayed"):
        await check(endpoint, rider, proof)


def proof_signed(
    phone: Phone, clock: ManualClock, token: str, key: Any, algorithm: str, **header: Any
) -> str:
    headers = {"typ": "dpop+jwt", "jwk": phone.jwk, **header}
    return jwt.encode(phone.proof_claims(clock, token), key, algorithm, headers=headers)


def proof_hmac(phone: Phone, clock: ManualClock, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": phone.jwk}
    sign = lambda data: hmac.digest(phone.public_pem, data, "sha256")  # noqa: E731
    return handmade(header, phone.proof_claims(clock, token), sign)


BadProof = Callable[[Phone, ManualClock, str], str | None]
BAD_PROOFS: list[tuple[str, BadProof, str]] = [
    ("missing", lambda p, c, t: None, "missing DPoP proof"),
    ("not-a-jwt", lambda p, c, t: "proof", "malformed token"),
    (
        "typ-jwt",
        lambda p, c, t: proof_signed(p, c, t, p.key, "EdDSA", typ="JWT"),
        "not a DPoP proof",
    ),
    ("alg-hs256", proof_hmac, "algorithm not allowed for this key"),
    (
        "alg-not-the-keys",
        lambda p, c, t: proof_signed(p, c, t, ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "algorithm not allowed for this key",
    ),
    (
        "private-jwk",
        lambda p, c, t: proof_signed(
            p, c, t, p.key, "EdDSA", jwk=OKPAlgorithm.to_jwk(p.key, as_dict=True)
        ),
        "jwk holds private key material",
    ),
    (
        "bad-signature",
        lambda p, c, t: proof_signed(p, c, t, Ed25519PrivateKey.generate(), "EdDSA"),
        "bad signature",
    ),
    ("another-phone", lambda p, c, t: Phone().proof(c, t), "DPoP key does not match the token"),
    ("wrong-method", lambda p, c, t: p.proof(c, t, htm="POST"), "DPoP method does not match"),
    (
        "wrong-url",
        lambda p, c, t: p.proof(c, t, htu="https://gateway.test/wallet/refunds"),
        "DPoP URL does not match",
    ),
    ("old", lambda p, c, t: p.proof(c, t, iat=c.unix() - 331), "DPoP proof too old"),
    ("future", lambda p, c, t: p.proof(c, t, iat=c.unix() + 31), "DPoP proof issued in the future"),
    ("other-token", lambda p, c, t: p.proof(c, t + "x"), "DPoP proof is for another token"),
    ("no-ath", lambda p, c, t: p.proof(c, t, ath=None), "missing ath"),
    ("no-jti", lambda p, c, t: p.proof(c, t, jti=None), "missing jti"),
    ("no-htu", lambda p, c, t: p.proof(c, t, htu=None), "missing htu"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [case[1:] for case in BAD_PROOFS], ids=[case[0] for case in BAD_PROOFS]
)
async def test_a_bad_proof_is_refused_with_its_reason(
    endpoint: TokenEndpoint,
    rider: tuple[Phone, str],
    clock: ManualClock,
    make: BadProof,
    reason: str,
) -> None:
    phone, token = rider
    with pytest.raises(Unauthenticated) as refusal:
        await check(endpoint, rider, make(phone, clock, token))
    assert refusal.value.reason == reason


async def test_a_refused_proof_does_not_use_up_its_jti(
    endpoint: TokenEndpoint, rider: tuple[Phone, str], clock: ManualClock
) -> None:
    phone, token = rider
    with pytest.raises(Unauthenticated):
        await check(endpoint, rider, phone.proof(clock, token, jti="j-1", htm="POST"))
    await check(endpoint, rider, phone.proof(clock, token, jti="j-1"))


async def test_tokens_may_not_outlive_their_keys_publication(
    keyring: Keyring,
    redis: aioredis.Redis,
    gateway_pool: asyncpg.Pool,
    clock: ManualClock,
) -> None:
    longer = dataclasses.replace(SETTINGS, ttl_s=POLICY.token_ttl_s + 1)
    with pytest.raises(ValueError, match="ttl_s"):
        TokenEndpoint(keyring, {}, redis, TokenKeys("t"), gateway_pool, clock, longer)
