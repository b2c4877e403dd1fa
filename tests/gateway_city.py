"""A small city in one process for tests: the gateway in front of the wallet, over real sockets.

``running_city`` starts both on free ports, the wallet fetching the gateway's JWKS by URL as it
does in production, and yields a ``City``: the URLs, an HTTP session, the clock both apps read
(moved by the test) and helpers to get tokens. Clients and phones are outside parties, played
here with pyjwt and cryptography as their own software would.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from services.gateway.app import PARTS, add_routes
from services.gateway.clients import Client, parse_clients
from services.gateway.config import ExternalIssuer, GatewayConfig
from services.gateway.tokens import CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS, JWT_BEARER
from services.wallet import handlers as wallet_handlers
from services.wallet.config import WalletConfig
from shared.config import AuthConfig, PlatformConfig
from shared.keyring import jwk_thumbprint
from shared.service import Service, create_app
from tests.support import free_port

START = datetime(2030, 1, 1, 8, 30, tzinfo=UTC)


class ManualClock:
    """The time both apps read; the test moves it, so keys rotate and tokens expire at once."""

    def __init__(self, at: datetime = START) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)

    def unix(self) -> int:
        return int(self.at.timestamp())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RegisteredClient:
    """A client of the city (a provider, an operator's staff) with its own Ed25519 key."""

    def __init__(self, client_id: str, kind: str, *scopes: str) -> None:
        self.client_id, self.kind, self.scopes = client_id, kind, scopes
        self.kid = f"{client_id}-1"
        self.key = Ed25519PrivateKey.generate()

    def registration(self) -> dict[str, Any]:
        """Its row in the gateway's client registry: the public key only."""
        jwk = OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {
            "client_id": self.client_id,
            "kind": self.kind,
            "scopes": list(self.scopes),
            "jwks": {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]},
        }

    def registry_json(self) -> str:
        """A client registry naming only this client, as ``GATEWAY_CLIENTS`` holds it."""
        return json.dumps({"clients": [self.registration()]})

    def assertion(self, token_url: str, now: int | None = None) -> str:
        """A one-minute ``private_key_jwt`` assertion (RFC 7523 §2.2), issued at ``now`` (Unix
        seconds; the wall clock if not given)."""
        now = int(time.time()) if now is None else now
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url,
                  "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}  # fmt: skip
        return jwt.encode(claims, self.key, "EdDSA", headers={"kid": self.kid})

    def form(
        self, token_url: str, scope: str | None = None, now: int | None = None
    ) -> dict[str, str]:
        """The client-credentials request a client posts to the token endpoint."""
        return {
            "grant_type": CLIENT_CREDENTIALS,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.assertion(token_url, now),
            **({"scope": scope} if scope is not None else {}),
        }

    async def token(
        self, http: aiohttp.ClientSession, token_url: str, scope: str | None = None
    ) -> str:
        """An access token from ``token_url`` (client credentials, private_key_jwt, signed now);
        with ``scope``, asserting that exactly that scope was granted."""
        async with http.post(token_url, data=self.form(token_url, scope)) as answer:
            assert answer.status == 200, await answer.text()
            body = await answer.json()
        if scope is not None:
            assert set(body["scope"].split()) == set(scope.split()), body
        token: str = body["access_token"]
        return token


def registry(clients: Iterable[RegisteredClient]) -> dict[str, Client]:
    """The gateway's client registry for ``clients``, parsed as the gateway parses its file."""
    return parse_clients(json.dumps({"clients": [c.registration() for c in clients]}))


class Phone:
    """A rider's phone: its key signs the sign-in assertion and a DPoP proof per request."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.jwk: dict[str, Any] = OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jkt = jwk_thumbprint(self.jwk)

    def sign_in(self, token_url: str, now: int) -> str:
        """A JWT-bearer assertion (RFC 7523 §2.1) carrying the phone's public key."""
        claims = {"aud": token_url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, "EdDSA", headers={"jwk": self.jwk})

    async def signed_in(self, http: aiohttp.ClientSession, gateway_url: str) -> str:
        """The rider's access token from the gateway at ``gateway_url``, signed in now."""
        token_url = f"{gateway_url}/oauth/token"
        form = {"grant_type": JWT_BEARER, "assertion": self.sign_in(token_url, int(time.time()))}
        async with http.post(token_url, data=form) as answer:
            assert answer.status == 200, await answer.text()
            token: str = (await answer.json())["access_token"]
        return token

    def proof(self, method: str, url: str, token: str, now: int) -> str:
        """A DPoP proof (RFC 9449 §4.2) for one request with ``token``."""
        ath = b64url(hashlib.sha256(token.encode()).digest())
        claims = {"htm": method, "htu": url, "iat": now, "jti": str(uuid.uuid4()), "ath": ath}
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        return jwt.encode(claims, self.key, "EdDSA", headers=headers)


@dataclass
class City:
    """The running gateway and wallet, as a test reaches them."""

    gateway_url: str
    wallet_url: str
    http: aiohttp.ClientSession
    clock: ManualClock
    gateway: web.Application

    @property
    def token_url(self) -> str:
        return f"{self.gateway_url}/oauth/token"

    def url(self, path: str) -> str:
        """A path on the gateway, the city's public door."""
        return f"{self.gateway_url}{path}"

    async def client_token(self, client: RegisteredClient, scope: str | None = None) -> str:
        """An access token for a registered client (client credentials, private_key_jwt)."""
        form = client.form(self.token_url, scope, self.clock.unix())
        return await self._token(form, "Bearer")

    async def rider_token(self, phone: Phone) -> str:
        """A rider's access token, bound to the phone's key (sign-in with a JWT bearer grant)."""
        form = {
            "grant_type": JWT_BEARER,
            "assertion": phone.sign_in(self.token_url, self.clock.unix()),
        }
        return await self._token(form, "DPoP")

    def as_rider(self, phone: Phone, token: str, method: str, path: str) -> dict[str, str]:
        """The headers of a rider's request: the token and a fresh proof for this one request."""
        proof = phone.proof(method, self.url(path), token, self.clock.unix())
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    async def jwks_kids(self) -> set[str]:
        """The key ids the gateway publishes now."""
        async with self.http.get(self.url("/.well-known/jwks.json")) as answer:
            assert answer.status == 200
            return {key["kid"] for key in (await answer.json())["keys"]}

    async def rotate(self) -> None:
        """What the gateway's rotation task does on its schedule, now."""
        await self.gateway[PARTS].rotate()

    async def _token(self, form: Mapping[str, str], token_type: str) -> str:
        async with self.http.post(self.token_url, data=form) as answer:
            body = await answer.json()
            assert answer.status == 200, body
        assert body["token_type"] == token_type
        token: str = body["access_token"]
        return token


@contextlib.asynccontextmanager
async def running_city(
    gateway_service: Service,
    wallet_service: Service,
    config: PlatformConfig,
    *,
    clients: Iterable[RegisteredClient] = (),
    issuers: Iterable[ExternalIssuer] = (),
    wallet: WalletConfig | None = None,
    clock: ManualClock | None = None,
    **gateway_settings: Any,
) -> AsyncIterator[City]:
    """The gateway (its settings from the keywords) in front of the wallet (``wallet`` as its
    settings); both services migrated under the test's schemas (the conftest fixtures)."""
    clock = clock or ManualClock()
    gateway_port = free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    # The wallet trusts only the gateway, by the JWKS it publishes (AUTH_JWKS_URL).
    wallet_auth = AuthConfig(jwks_url=f"{gateway_url}/.well-known/jwks.json")
    wallet_app = create_app(
        dataclasses.replace(wallet_service, add_routes=_wallet_routes(wallet_service, wallet)),
        dataclasses.replace(config, auth=wallet_auth),
        clock=clock,
    )
    async with contextlib.AsyncExitStack() as stack:
        wallet_server = await stack.enter_async_context(TestServer(wallet_app))
        wallet_url = str(wallet_server.make_url("")).rstrip("/")
        settings = GatewayConfig(
            public_url=gateway_url,
            upstreams={"wallet": wallet_url},
            clients=registry(clients),
            issuers=tuple(issuers),
            **gateway_settings,
        )
        gateway = create_app(
            dataclasses.replace(
                gateway_service, add_routes=functools.partial(add_routes, settings=settings)
            ),
            dataclasses.replace(config, port=gateway_port),
            clock=clock,
        )
        # The port is fixed before the gateway starts: its public URL is in what clients sign.
        await stack.enter_async_context(TestServer(gateway, port=gateway_port))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield City(gateway_url, wallet_url, http, clock, gateway)


def _wallet_routes(
    wallet: Service, settings: WalletConfig | None
) -> Callable[[web.Application], None]:
    """The wallet's routes, with ``settings`` in place of those it reads from the environment."""

    def add(app: web.Application) -> None:
        wallet.add_routes(app)
        if settings is not None:
            app[wallet_handlers.SETTINGS] = settings

    return add


async def behind_a_gateway(
    stack: contextlib.AsyncExitStack,
    config: PlatformConfig,
    gateway: Service,
    services: Mapping[str, Service],
    clients: Mapping[str, Client],
    *,
    port: int | None = None,
    **settings: Any,
) -> tuple[str, dict[str, web.Application]]:
    """Services on free ports, trusting the gateway's keys (by JWKS URL, as in production),
    and the gateway in front of them: its URL, and each service's app. Stopped with ``stack``."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    behind = dataclasses.replace(config, auth=AuthConfig(jwks_url=f"{url}/.well-known/jwks.json"))
    apps, upstreams = {}, {}
    for name, service in services.items():
        apps[name] = create_app(service, behind)
        server = await stack.enter_async_context(TestServer(apps[name]))
        upstreams[name] = str(server.make_url("")).rstrip("/")
    gateway_settings = GatewayConfig(public_url=url, clients=dict(clients), upstreams=upstreams,
                                     **settings)  # fmt: skip
    gateway_app = create_app(
        dataclasses.replace(gateway, add_routes=functools.partial(
            add_routes, settings=gateway_settings)),
        dataclasses.replace(config, port=port),
    )  # fmt: skip
    await stack.enter_async_context(TestServer(gateway_app, port=port))
    return url, apps
