"""The transit service: ride credentials, the issuer keys gates check them with, taps into
priced journeys, wired onto the platform."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from prometheus_client import Counter

from services.gateway.client import GatewayClient, private_key_jwt
from services.transit import consumers, handlers, openapi
from services.transit.concessions import IdentityDesk
from services.transit.config import TransitConfig
from services.transit.events import transit_events
from services.transit.handlers import FARES, IDENTITY_DESK, KEYRING, SETTINGS
from services.transit.riding import Fares
from shared.clock import rounds
from shared.config import ConfigError
from shared.db import SERVER_FAILURES
from shared.http import METRICS
from shared.keyring import Keyring, RotationPolicy
from shared.service import CLOCK, POOL, Service

KEYRING_REFRESH_S = 3600.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = "/v1/transit"

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", f"{T}/openapi.json", openapi.document),
    ("POST", f"{T}/credentials", handlers.enrol),
    ("GET", f"{T}/credentials", handlers.standing),
    ("POST", f"{T}/concessions", handlers.ask_concession),
    ("POST", f"{T}/concessions/{{concession_id}}/claim", handlers.claim_concession),
    ("GET", f"{T}/issuer-keys", handlers.issuer_keys),
    ("POST", f"{T}/taps", handlers.upload_taps),
    ("GET", f"{T}/journeys", handlers.journeys),
    ("GET", f"{T}/deny-list", handlers.deny_list),
]


def add_routes(app: web.Application) -> None:
    settings = TransitConfig.from_env(os.environ)
    app[SETTINGS] = settings
    reloads = Counter(
        "transit_feed_reloads_total",
        "Fare feeds found changed on disk, by outcome: loaded, or refused (the last good kept).",
        ["outcome"],
        registry=app[METRICS].registry,
    )
    app[FARES] = Fares(settings, lambda outcome: reloads.labels(outcome).inc())
    app.cleanup_ctx.append(_issuer)
    if settings.identity_key:
        app.cleanup_ctx.append(_identity_desk)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


def policy(settings: TransitConfig) -> RotationPolicy:
    """Ride credentials: Ed25519 (fast at the gate), a key a day, published a day ahead so
    gates that sync daily know it before it signs."""
    return RotationPolicy(sign_for_s=86400, publish_ahead_s=86400,
                          token_ttl_s=settings.credential_ttl_s, algorithm="EdDSA")  # fmt: skip


async def _issuer(app: web.Application) -> AsyncIterator[None]:
    keyring = Keyring(app[POOL], app[CLOCK], policy(app[SETTINGS]))
    await keyring.refresh()
    app[KEYRING] = keyring
    async with rounds(
        (KEYRING_REFRESH_S, keyring.refresh, "key rotation"),
        (app[SETTINGS].feed_check_s, app[FARES].check, "fare feed check"),
        retry_on=SERVER_FAILURES,
    ):
        yield


async def _identity_desk(app: web.Application) -> AsyncIterator[None]:
    """Transit's client of the gateway, as the agency that checks concessions with identity."""
    settings = app[SETTINGS]
    key = load_pem_private_key(settings.identity_key.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey | EllipticCurvePrivateKey):
        raise ConfigError("TRANSIT_IDENTITY_KEY: expected an Ed25519 or P-256 private key (PEM)")
    client = settings.identity_client
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        sign = private_key_jwt(client, key, f"{client}-1")
        app[IDENTITY_DESK] = IdentityDesk(GatewayClient(http, settings.gateway_url, sign))
        yield


SERVICE = Service(
    name="transit",
    add_routes=add_routes,
    migrations=Path(__file__).parent / "migrations",
    components=["keyring"],  # its signing keys, rotated by shared.keyring
    produces=[transit_events],
    subscriptions=consumers.subscriptions,
)
