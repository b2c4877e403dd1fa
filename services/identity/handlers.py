"""HTTP handlers of the issuer: what anyone may read (its metadata, the credential type, the
status lists, the audit log's checkpoint), and the registry office, which issues IDs
(``identity:issue``) and revokes, suspends or reinstates them (``identity:admin``).

``checks.py`` holds the ID checks themselves: agencies, the citizen's phone, the citizen's log.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import Counter

from services.identity import credentials, store
from services.identity.config import IdentityConfig
from services.identity.events import CredentialIssued, CredentialStatusChanged
from services.identity.status import CODES, NAMES, StatusLists
from services.identity.verification import Verifier
from shared.auth import authenticate
from shared.db import Connection, in_transaction
from shared.http import Problem, read_body
from shared.idempotency import idempotent
from shared.ids import new_id
from shared.keyring import Keyring, jwk_thumbprint
from shared.service import BUS, CLOCK, POOL

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("identity_config", IdentityConfig)
KEYRING = web.AppKey("identity_keyring", Keyring)
STATUS_LISTS = web.AppKey("status_lists", StatusLists)
VERIFIER = web.AppKey("presentation_verifier", Verifier)
CHECKS = web.AppKey("identity_checks", Counter)  # by result and reason (a fixed set)
PROBLEMS = "https://cardless.dev/problems/identity"
# Issuance answers hold personal data: a retry may replay one for minutes, not a day.
ISSUE_REPLAY = timedelta(minutes=10)


# --- what anyone may read ---------------------------------------------------------------------


async def issuer_metadata(request: web.Request) -> web.Response:
    """JWT VC Issuer Metadata, where SD-JWT VC puts it: the issuer and its keys."""
    settings, keyring = request.app[SETTINGS], request.app[KEYRING]
    body = credentials.issuer_metadata(settings.issuer, keyring.jwks())
    return web.json_response(body, headers={"Cache-Control": "public, max-age=300"})


async def type_metadata(request: web.Request) -> web.Response:
    body = credentials.type_metadata(request.app[SETTINGS].vct)
    return web.json_response(body, headers={"Cache-Control": "public, max-age=86400"})


async def status_list(request: web.Request) -> web.Response:
    """A Status List Token, cacheable until the next rebuild."""
    served = request.app[STATUS_LISTS].token(_int(request.match_info["list_id"]))
    if served is None:
        raise Problem(404, "Not Found", "no such status list", type_=f"{PROBLEMS}/no-status-list")
    max_age = request.app[SETTINGS].status_refresh_s
    return web.Response(
        body=served.token.encode(),
        content_type="application/statuslist+jwt",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


async def checkpoint(request: web.Request) -> web.Response:
    """The latest signed head of the audit log, for citizens and anyone keeping watch."""
    latest = await store.latest_checkpoint(request.app[POOL])
    if latest is None:
        raise Problem(404, "Not Found", "no checkpoint yet", type_=f"{PROBLEMS}/no-checkpoint")
    return web.Response(body=latest[1].encode(), content_type="application/jwt")


# --- the registry office ----------------------------------------------------------------------


class IssueBody(msgspec.Struct, forbid_unknown_fields=True):
    citizen: credentials.Citizen
    holder_jwk: dict[str, Any]
    # The gateway subject of the citizen's phone sign-in: it may read the audit log.
    holder_subject: str | None = None


async def issue(request: web.Request) -> web.Response:
    """Issue a citizen their ID, bound to their phone's key."""
    principal = await authenticate(request, "identity:issue")
    body = await read_body(request, IssueBody)
    try:
        holder = credentials.holder_key(body.holder_jwk)
    except credentials.HolderKeyError as error:
        raise Problem(
            422, "Unprocessable Content", str(error), type_=f"{PROBLEMS}/holder-key"
        ) from None
    app = request.app
    settings, keyring, now = app[SETTINGS], app[KEYRING], app[CLOCK].now()

    async def work(conn: Connection) -> web.Response:
        citizen = await store.citizen_for(conn, body.holder_subject, now)
        list_id, index = await store.allocate_status(conn, settings.status_list_size, now)
        status = {"status_list": {"idx": index, "uri": settings.status_list_uri(list_id)}}
        iat = int(now.timestamp())
        exp = iat + settings.credential_ttl_s
        claims = credentials.credential_claims(
            body.citizen,
            issuer=settings.issuer,
            vct=settings.vct,
            holder=holder,
            status=status,
            issued_on=now.date(),
            iat=iat,
            exp=exp,
        )
        credential_id = str(new_id())
        await store.add_credential(
            conn,
            credential_id=credential_id,
            citizen=citizen,
            list_id=list_id,
            index=index,
            holder_jkt=jwk_thumbprint(credentials.public_jwk(holder)),
            issued_at=now,
            expires_at=now + timedelta(seconds=settings.credential_ttl_s),
        )
        issued = CredentialIssued(credential_id=credential_id, citizen=citizen, expires_at=exp)
        await app[BUS].publish(conn, citizen, issued)
        credential = credentials.issue(
            claims, lambda payload: keyring.sign(payload, typ="dc+sd-jwt")
        )
        log.info("credential issued", extra={"credential_id": credential_id})
        return web.json_response(
            {
                "credential_id": credential_id,
                "credential": credential,
                "status": "valid",
                "status_list": status["status_list"],
                "expires_at": (now + timedelta(seconds=settings.credential_ttl_s)).isoformat(),
            },
            status=201,
            headers={"Location": f"/v1/identity/credentials/{credential_id}"},
        )

    return await idempotent(
        request,
        app[POOL],
        work,
        principal=principal.subject,
        retention=ISSUE_REPLAY,
        clock=app[CLOCK],
    )


class StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    status: str


async def credential_status(request: web.Request) -> web.Response:
    await authenticate(request, "identity:admin")
    row = await store.credential(request.app[POOL], request.match_info["credential_id"])
    if row is None:
        raise _no_credential()
    return web.json_response(_credential(row, request.app[SETTINGS]))


async def change_status(request: web.Request) -> web.Response:
    """Revoke (for good), suspend, or reinstate a suspended credential."""
    await authenticate(request, "identity:admin")
    body = await read_body(request, StatusBody)
    if body.status not in CODES:
        raise Problem(
            422,
            "Unprocessable Content",
            "status: valid, revoked or suspended",
            type_=f"{PROBLEMS}/status",
        )
    credential_id, app = request.match_info["credential_id"], request.app
    now = app[CLOCK].now()

    async def change(conn: Connection) -> Any:
        before = await store.set_status(conn, credential_id, CODES[body.status], now)
        if before is None:
            row = await store.credential(conn, credential_id)
            if row is None:
                raise _no_credential()
            raise Problem(
                409,
                "Conflict",
                "a revoked credential stays revoked",
                type_=f"{PROBLEMS}/revoked-for-good",
            )
        if before["was"] != CODES[body.status]:
            changed = CredentialStatusChanged(
                credential_id=credential_id, citizen=before["citizen_id"], status=body.status
            )
            await app[BUS].publish(conn, before["citizen_id"], changed)
        return await store.credential(conn, credential_id)

    row = await in_transaction(app[POOL], change)
    log.info("credential status", extra={"credential_id": credential_id, "status": body.status})
    return web.json_response(_credential(row, app[SETTINGS]))


def _credential(row: Any, settings: IdentityConfig) -> dict[str, Any]:
    return {
        "credential_id": row["credential_id"],
        "status": NAMES[row["status"]],
        "status_list": {
            "idx": row["status_index"],
            "uri": settings.status_list_uri(row["list_id"]),
        },
        "issued_at": row["issued_at"].isoformat(),
        "expires_at": row["expires_at"].isoformat(),
        # A change reaches the served list, and our own checks, within this.
        "visible_within_s": settings.status_refresh_s,
    }


def _no_credential() -> Problem:
    return Problem(404, "Not Found", "no such credential", type_=f"{PROBLEMS}/no-credential")


def _int(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise Problem(404, "Not Found", "no such status list", type_=f"{PROBLEMS}/no-status-list")
    return int(text)
