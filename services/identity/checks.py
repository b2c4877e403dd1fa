"""HTTP handlers of an ID check: an agency asks (``identity:verify``), the citizen's phone
answers (public: the key-binding JWT its credential's key signs is its proof), the agency reads
the answer once, and the citizen reads who checked them (``identity:holder``).
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

from services.identity import auditlog, dcql, store
from services.identity.events import IdentityChecked
from services.identity.handlers import CHECKS, PROBLEMS, SETTINGS, STATUS_LISTS, VERIFIER
from services.identity.status import StatusLists
from services.identity.verification import Outcome, Request, refused
from shared.auth import FORBIDDEN, authenticate
from shared.db import Connection, in_transaction
from shared.http import Problem, read_body
from shared.ids import new_id
from shared.keyring import jwk_thumbprint
from shared.service import BUS, CLOCK, POOL

log = logging.getLogger(__name__)
MAX_AUDIT_ENTRIES = 200


# --- agencies -----------------------------------------------------------------------------------


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    purpose: str
    dcql_query: dict[str, Any]
    # Only the citizen signed in as this account may answer: for an agency granting that
    # account something (transit's concession fares), so that nobody lends theirs an ID.
    subject: str | None = None


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
        subject=body.subject,
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
        citizen = await _citizen(conn, app[STATUS_LISTS], outcome)
        if outcome.verified and not await _account_holder(conn, citizen, row["subject"]):
            # Refused, in the log of the citizen whose ID it was: they should know.
            outcome = refused("not_account_holder", "this ID is not the asking account's")
        await _record(conn, app, pending, outcome, now, citizen)
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
    conn: Connection,
    app: web.Application,
    pending: Request,
    outcome: Outcome,
    now: Any,
    citizen: str,
) -> None:
    """Answer the request, append the check to the citizen's log, tell the bus: one commit."""
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


async def _account_holder(conn: Connection, citizen: str, subject: str | None) -> bool:
    """Whether the citizen is signed in as ``subject`` (any citizen, when none is asked for)."""
    return subject is None or await store.subject_of_citizen(conn, citizen) == subject


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
