"""The identity service: the issuer, its status lists, the agencies' verifier and the citizens'
audit log, wired onto the platform."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter

from services.identity import auditlog, checks, handlers, openapi, sdjwt, store
from services.identity.config import IdentityConfig
from services.identity.events import identity_events
from services.identity.handlers import CHECKS, KEYRING, SETTINGS, STATUS_LISTS, VERIFIER
from services.identity.status import StatusLists
from services.identity.verification import IssuerKeys, Verifier
from shared.clock import rounds
from shared.db import SERVER_FAILURES
from shared.http import METRICS
from shared.keyring import Keyring, RotationPolicy
from shared.service import CLOCK, POOL, Service

KEYRING_REFRESH_S = 3600.0
ERASE_EVERY_S = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ID = "/v1/identity"

# Identity's URL table; openapi.py describes the same routes for clients.
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", f"{ID}/openapi.json", openapi.document),
    # SD-JWT VC §5: the issuer's metadata at /.well-known/jwt-vc-issuer + the issuer's path.
    ("GET", f"/.well-known/jwt-vc-issuer{ID}", handlers.issuer_metadata),
    ("GET", f"{ID}/types/city-id", handlers.type_metadata),
    ("GET", f"{ID}/status-lists/{{list_id}}", handlers.status_list),
    ("POST", f"{ID}/credentials", handlers.issue),
    ("GET", f"{ID}/credentials/{{credential_id}}", handlers.credential_status),
    ("POST", f"{ID}/credentials/{{credential_id}}/status", handlers.change_status),
    ("POST", f"{ID}/requests", checks.create_request),
    ("GET", f"{ID}/requests/{{request_id}}", checks.request_result),
    ("POST", f"{ID}/presentations", checks.presentation),
    ("GET", f"{ID}/audit", checks.audit_log),
    ("GET", f"{ID}/audit/checkpoint", handlers.checkpoint),
]


def add_routes(app: web.Application) -> None:
    app[SETTINGS] = IdentityConfig.from_env(os.environ)
    app[CHECKS] = Counter(
        "identity_checks_total",
        "Presentations answered, by result and reason code.",
        ["result", "reason"],
        registry=app[METRICS].registry,
    )
    app.cleanup_ctx.append(_issuer)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


def policy(settings: IdentityConfig) -> RotationPolicy:
    """The issuer's keys: ES256 (SD-JWT VC), published a day ahead, kept until the last
    credential they signed expires."""
    return RotationPolicy(
        sign_for_s=settings.key_rotation_s,
        publish_ahead_s=86400,
        token_ttl_s=settings.credential_ttl_s,
        leeway_s=settings.leeway_s,
        algorithm="ES256",
    )


async def _issuer(app: web.Application) -> AsyncIterator[None]:
    """The keyring, the status lists and the verifier, kept fresh by background rounds."""
    settings, pool, clock = app[SETTINGS], app[POOL], app[CLOCK]
    keyring = Keyring(pool, clock, policy(settings))
    await keyring.refresh()
    issuer_keys = IssuerKeys(settings.issuer)
    for issuer, keys in settings.trusted_issuers.items():
        issuer_keys.update(issuer, keys)
    issuer_keys.update(settings.issuer, keyring.verification_keys())
    lists = StatusLists(settings, keyring, clock)
    await lists.refresh(pool)
    app[KEYRING], app[STATUS_LISTS] = keyring, lists
    app[VERIFIER] = Verifier(
        client_id=settings.client_id,
        issuer_keys=issuer_keys,
        status_of=lists.status_of,
        policy=sdjwt.Policy(leeway_s=settings.leeway_s, kb_max_age_s=settings.kb_max_age_s),
    )

    async def rotate() -> None:
        await keyring.refresh()
        issuer_keys.update(settings.issuer, keyring.verification_keys())

    async def sign_checkpoint() -> None:
        await auditlog.checkpoint(pool, keyring, settings.issuer, clock.now())

    async def erase() -> None:
        await store.erase_unread_claims(pool, clock.now())

    async with rounds(
        (KEYRING_REFRESH_S, rotate, "issuer key rotation"),
        (float(settings.status_refresh_s), lambda: lists.refresh(pool), "status list rebuild"),
        (float(settings.checkpoint_s), sign_checkpoint, "audit checkpoint"),
        (ERASE_EVERY_S, erase, "erasing unread claims"),
        retry_on=SERVER_FAILURES,
    ):
        yield


SERVICE = Service(
    name="identity",
    add_routes=add_routes,
    migrations=Path(__file__).parent / "migrations",
    components=["keyring"],  # its signing keys, rotated by shared.keyring
    produces=[identity_events],
)
