"""HTTP handlers: parse, call a use case, shape the answer.

Who calls what: the registry office issues and changes statuses (``identity:issue``,
``identity:admin``); an agency asks and reads its answer (``identity:verify``); the citizen's
phone answers a request (public: the key-binding JWT is its proof) and reads its audit log
(``identity:holder``); anyone reads the issuer's metadata, status lists and checkpoints.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web
from prometheus_client import Counter

from services.identity import auditlog, credentials, dcql, store
from services.identity.config import IdentityConfig
from services.identity.events import CredentialIssued, CredentialStatusChanged, IdentityChecked
from services.identity.status import CODES, NAMES, StatusLists
from services.identity.verification import Outcome, Request, Verifier
from shared.auth import FORBIDDEN, authenticate
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
MAX_AUDIT_ENTRIES = 200


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


# --- agencies -----------------------------------------------------------------------------------


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    purpose: str
    dcql_query: dict[str, Any]


async def create_request(request: web.Request) -> web.Response:
    """An agency asks for claims, for a purpose: checked against its registration."""
    principal = await authenticate(request, "identity:verify")
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK].now()
    agency = settings.agencies.get(principal.subject)
    if agency is None:
        raise Problem(403, "Forbidden", "this client is not a registered agency", type_=FORBIDDEN)
    body = await read_body(request, RequestBody)
    try:
        query = dcql.parse(body.dcql_query, default_vct=settings.vct)
    except dcql.QueryError as error:
        raise Problem(
            422, "Unprocessable Content", f"dcql_query: {error}", type_=f"{PROBLEMS}/dcql"
        ) from None
    refusal = dcql.refusal(agency, query, body.purpose)
    if refusal is not None:
        raise Problem(403, "Forbidden", refusal, type_=f"{PROBLEMS}/not-registered-for")
    request_id, nonce = str(new_id()), secrets.token_urlsafe(32)  # 256 bits
    expires_at = now + timedelta(seconds=settings.request_ttl_s)
    await store.add_request(
        app[POOL],
        request_id=request_id,
        agency=agency.client_id,
        purpose=body.purpose,
        query=query.to_json(),
        nonce=nonce,
        created_at=now,
        expires_at=expires_at,
    )
    # The OpenID4VP authorization request the phone receives (by QR code or link).
    authorization = {
        "client_id": settings.client_id,
        "response_type": "vp_token",
        "response_mode": "direct_post",
        "response_uri": settings.response_uri,
        "nonce": nonce,
        "state": request_id,
        "dcql_query": query.to_json(),
    }
    return web.json_response(
        {
            "request_id": request_id,
            "expires_at": expires_at.isoformat(),
            "authorization_request": authorization,
        },
        status=201,
        headers={"Location": f"/v1/identity/requests/{request_id}"},
    )


async def request_result(request: web.Request) -> web.Response:
    """The agency's answer: the claims it asked for, handed over once, then erased."""
    principal = await authenticate(request, "identity:verify")
    row = await store.read_request(
        request.app[POOL], request.match_info["request_id"], request.app[CLOCK].now()
    )
    if row is None or row["agency"] != principal.subject:
        raise Problem(404, "Not Found", "no such request", type_=f"{PROBLEMS}/no-request")
    claims = None if row["claims"] is None else json.loads(row["claims"])
    return web.json_response(
        {
            "request_id": row["request_id"],
            "purpose": row["purpose"],
            "state": row["state"],
            "reason": row["reason"],
            "claims": claims,
            # Claims already handed over are not handed over again.
            "claims_read_at": _iso(row["claims_read_at"]) if claims is None else None,
            "expires_at": row["expires_at"].isoformat(),
            "answered_at": _iso(row["answered_at"]),
        },
        headers={"Cache-Control": "no-store"},
    )


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


# --- the citizen's phone ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    state: str
    vp_token: Any


async def presentation(request: web.Request) -> web.Response:
    """The phone's answer to a request (OpenID4VP ``direct_post``): checked, recorded in the
    citizen's audit log, and its asked-for claims kept for the agency."""
    answer = await _answer(request)
    app = request.app
    now = app[CLOCK].now()

    async def check(conn: Connection) -> Outcome:
        row = await store.pending_request(conn, answer.state)
        if row is None:
            raise Problem(404, "Not Found", "no such request", type_=f"{PROBLEMS}/no-request")
        if row["state"] != "pending":
            raise Problem(
                409,
                "Conflict",
                "the request has been answered already",
                type_=f"{PROBLEMS}/answered",
                reason="request_answered",
            )
        pending = Request(
            row["request_id"],
            row["agency"],
            row["purpose"],
            dcql.parse(json.loads(row["query"]), default_vct=app[SETTINGS].vct),
            row["nonce"],
            int(row["expires_at"].timestamp()),
        )
        outcome = app[VERIFIER].check(answer.vp_token, pending, int(now.timestamp()))
        await _record(conn, app, pending, outcome, now)
        return outcome

    outcome = await in_transaction(app[POOL], check)
    _count(app, outcome)
    if not outcome.verified:
        raise Problem(
            400,
            "Presentation rejected",
            outcome.detail,
            type_=f"{PROBLEMS}/presentation-rejected",
            reason=outcome.reason,
        )
    return web.json_response({})


async def _answer(request: web.Request) -> _Answer:
    """The form OpenID4VP posts (``vp_token`` as JSON text), or the same as a JSON object."""
    raw = await request.read()
    try:
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=True))
            body = {"state": form.get("state"), "vp_token": json.loads(form.get("vp_token", ""))}
        else:
            body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(
            400,
            "Bad Request",
            "expected state and vp_token, as a form or JSON",
            type_=f"{PROBLEMS}/malformed-answer",
            reason="malformed_answer",
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("state"), str):
        raise Problem(
            400,
            "Bad Request",
            "state: the request id is required",
            type_=f"{PROBLEMS}/malformed-answer",
            reason="malformed_answer",
        )
    return _Answer(body["state"], body.get("vp_token"))


async def _record(
    conn: Connection, app: web.Application, pending: Request, outcome: Outcome, now: Any
) -> None:
    """Answer the request, append the check to the citizen's log, tell the bus: one commit."""
    citizen = await _citizen(conn, app[STATUS_LISTS], outcome)
    result = "verified" if outcome.verified else "rejected"
    await store.answer_request(
        conn,
        pending.request_id,
        state=result,
        reason=outcome.reason,
        claims=outcome.claims,
        now=now,
    )
    names = tuple(".".join(path) for path in sorted(pending.query.paths))
    await auditlog.append(
        conn,
        at=now,
        citizen=citizen,
        agency=pending.agency,
        purpose=pending.purpose,
        claims=names,
        result=result,
        reason=outcome.reason,
        request_id=pending.request_id,
    )
    checked = IdentityChecked(
        request_id=pending.request_id,
        agency=pending.agency,
        citizen=citizen,
        claims=list(names),
        result=result,
        reason=outcome.reason,
    )
    await app[BUS].publish(conn, citizen, checked)


async def _citizen(conn: Connection, lists: StatusLists, outcome: Outcome) -> str:
    """Whose log the check goes in. Only a verified presentation names a citizen: an unverified
    one could name anyone, so a refusal is logged under "unknown"."""
    if not outcome.verified:
        return "unknown"
    if outcome.status is not None:
        list_id = lists.list_id(outcome.status.uri)
        if list_id is not None:
            found = await store.citizen_of_status(conn, list_id, outcome.status.index)
            if found is not None:
                return found
    if outcome.holder_jwk is not None:  # another issuer's credential: its holder key's thumbprint
        return "jkt:" + jwk_thumbprint(outcome.holder_jwk)
    return "unknown"


def _count(app: web.Application, outcome: Outcome) -> None:
    result = "verified" if outcome.verified else "rejected"
    app[CHECKS].labels(result, outcome.reason or "").inc()
    if not outcome.verified:
        log.warning("presentation rejected", extra={"reason": outcome.reason})


async def audit_log(request: web.Request) -> web.Response:
    """The citizen's own entries: who checked them, when and why, with inclusion proofs."""
    principal = await authenticate(request, "identity:holder")
    pool = request.app[POOL]
    citizen = await store.citizen_of_subject(pool, principal.subject)
    if citizen is None:
        return web.json_response(
            {"checkpoint": None, "entries": []}, headers={"Cache-Control": "no-store"}
        )
    async with pool.acquire() as conn:
        view = await auditlog.citizen_view(conn, citizen, MAX_AUDIT_ENTRIES)
    return web.json_response(view, headers={"Cache-Control": "no-store"})


def _int(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise Problem(404, "Not Found", "no such status list", type_=f"{PROBLEMS}/no-status-list")
    return int(text)
