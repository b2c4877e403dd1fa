"""HTTP handlers: a rider's phone enrols and reads its journeys (``transit:ride``); gates fetch
the issuer keys (public), upload taps and sync the deny list (``transit:taps``)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from jwt.utils import base64url_encode

from services.transit import concessions, ridecode, riding, store
from services.transit.config import TransitConfig
from services.transit.denylist import Delta, DenyList
from services.transit.journeys import Direction, Tap
from shared.auth import JwksError, authenticate, public_key
from shared.db import Connection, in_transaction
from shared.http import Problem, read_body
from shared.keyring import Keyring
from shared.service import BUS, CLOCK, POOL

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("transit_config", TransitConfig)
KEYRING = web.AppKey("transit_keyring", Keyring)
FARES = web.AppKey("transit_fares", riding.Fares)
IDENTITY_DESK = web.AppKey("transit_identity_desk", concessions.IdentityDesk)
PROBLEMS = concessions.PROBLEMS
MAX_TAPS = 2000
MAX_CREDENTIALS = 20
MAX_JOURNEYS = 100


def short_kid(kid: str) -> str:
    """The kid a ride code carries: the keyring's thumbprint, cut to the format's 16 bytes."""
    return kid[:16]


class EnrolBody(msgspec.Struct, forbid_unknown_fields=True):
    device_jwk: dict[str, Any]  # the phone's public key: OKP Ed25519 or EC P-256
    category: str = "adult"


async def enrol(request: web.Request) -> web.Response:
    """A ride credential for the phone's key, valid for ``TRANSIT_CREDENTIAL_TTL_S``."""
    rider = (await authenticate(request, "transit:ride")).subject
    body = await read_body(request, EnrolBody)
    device = _device_key(body.device_jwk)
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK].now()
    kid, issuer_key = app[KEYRING].signing_key()
    not_before, not_after = int(now.timestamp()), int(now.timestamp()) + settings.credential_ttl_s

    async def work(conn: Connection) -> bytes:
        pseudonym = await store.pseudonym_of(conn, rider, now)
        if body.category != "adult" and not await store.has_concession(
            conn, pseudonym, body.category
        ):
            raise Problem(403, "Forbidden", f"{body.category}: prove it with your city ID"
                          " (POST /v1/transit/concessions) before enrolling with it",
                          type_=f"{PROBLEMS}/category-needs-proof")  # fmt: skip
        credential = ridecode.issue_credential(
            issuer_key=issuer_key, kid=short_kid(kid), rider=pseudonym, category=body.category,
            not_before=not_before, not_after=not_after, device_key=device,
        )  # fmt: skip
        parsed = ridecode.parse_credential(credential)
        await store.add_credential(
            conn, parsed.credential_id, pseudonym, body.category, short_kid(kid),
            datetime.fromtimestamp(not_before, UTC), datetime.fromtimestamp(not_after, UTC),
        )  # fmt: skip
        return credential

    credential = await in_transaction(app[POOL], work)
    return web.json_response(
        {"credential": base64url_encode(credential).decode(), "category": body.category,
         "not_after": datetime.fromtimestamp(not_after, UTC).isoformat()},
        status=201,
    )  # fmt: skip


async def standing(request: web.Request) -> web.Response:
    """The rider's own ride credentials and whether gates let them through: a rider turned
    away learns why (a fare the wallet could not take) and what lifts it (a top-up)."""
    rider = (await authenticate(request, "transit:ride")).subject
    now = request.app[CLOCK].now()
    credentials, denial = await store.rider_standing(request.app[POOL], rider, MAX_CREDENTIALS)
    return web.json_response({
        "credentials": [
            {"credential_id": base64url_encode(bytes(c["credential_id"])).decode(),
             "category": c["category"], "not_before": c["not_before"].isoformat(),
             "not_after": c["not_after"].isoformat(),
             "state": ("expired" if c["not_after"] <= now
                       else "not_yet_valid" if c["not_before"] > now else "valid")}
            for c in credentials
        ],
        "denied": denial is not None,
        "denied_because": denial and _DENIALS.get(denial, denial),
    }, headers={"Cache-Control": "no-store"})  # fmt: skip


_DENIALS = {"fare_debit_failed": "a fare could not be taken from the wallet: a top-up pays it"}


class ConcessionBody(msgspec.Struct, forbid_unknown_fields=True):
    category: str


async def ask_concession(request: web.Request) -> web.Response:
    """The rider asks for a concession category: identity's request for the one claim that
    proves it, for their phone to answer (OpenID4VP), answerable from their account only."""
    rider = (await authenticate(request, "transit:ride")).subject
    body = await read_body(request, ConcessionBody)
    concessions.claim(body.category)  # a 422 for a category that is no concession
    app, now = request.app, request.app[CLOCK].now()
    created = await _desk(app).ask(body.category, rider)

    async def work(conn: Connection) -> None:
        pseudonym = await store.pseudonym_of(conn, rider, now)
        await store.add_concession_request(
            conn, created["request_id"], pseudonym, body.category, now
        )

    await in_transaction(app[POOL], work)
    return web.json_response(
        {"concession_id": created["request_id"], "category": body.category,
         "expires_at": created["expires_at"],
         "authorization_request": created["authorization_request"]},
        status=201,
    )  # fmt: skip


async def claim_concession(request: web.Request) -> web.Response:
    """The rider claims the concession once their phone has answered identity: granted if
    their city ID proved it; their next ride credential carries the category."""
    rider = (await authenticate(request, "transit:ride")).subject
    app, now = request.app, request.app[CLOCK].now()
    asked = await store.concession_request(app[POOL], request.match_info["concession_id"], rider)
    if asked is None:
        raise Problem(404, "Not Found", "no such concession request",
                      type_=f"{PROBLEMS}/no-concession-request")  # fmt: skip
    category = asked["category"]
    if asked["granted_at"] is None:
        verdict = await _desk(app).verdict(asked["request_id"], category)
        if verdict is None:
            raise Problem(409, "Conflict", "your phone has not answered identity's request yet",
                          type_=f"{PROBLEMS}/concession-pending")  # fmt: skip
        if not verdict.granted:
            raise Problem(403, "Forbidden", f"{category}: not granted ({verdict.reason})",
                          type_=f"{PROBLEMS}/concession-refused",
                          reason=verdict.reason)  # fmt: skip

        async def work(conn: Connection) -> None:
            pseudonym = bytes(asked["pseudonym"])
            await store.grant_concession(conn, pseudonym, category, asked["request_id"], now)

        await in_transaction(app[POOL], work)
        log.info("concession granted", extra={"category": category})
    return web.json_response({"category": category, "granted": True})


def _desk(app: web.Application) -> concessions.IdentityDesk:
    desk = app.get(IDENTITY_DESK)
    if desk is None:
        raise Problem(  # a setting missing: no Retry-After, unlike identity being down
            503,
            "Service Unavailable",
            "concessions need transit's identity client (TRANSIT_IDENTITY_KEY)",
            type_=f"{PROBLEMS}/identity-unavailable",
        )
    return desk


def _device_key(jwk: dict[str, Any]) -> ridecode.PublicKey:
    try:
        return public_key(jwk, "device_jwk")[1]
    except JwksError as error:
        raise Problem(422, "Unprocessable Content", str(error),
                      type_=f"{PROBLEMS}/device-key") from None  # fmt: skip


async def issuer_keys(request: web.Request) -> web.Response:
    """The keys gates check credentials with, by the short kid codes carry; published a day
    before they sign, so a gate that syncs daily always knows the next one."""
    keys = request.app[KEYRING].verification_keys()
    body = {"keys": [_issuer_key(k.kid, k.algorithm, k.key) for k in keys]}
    return web.json_response(body, headers={"Cache-Control": "public, max-age=300"})


def _issuer_key(kid: str, algorithm: str, key: ridecode.PublicKey) -> dict[str, str]:
    raw = ridecode.raw_public_key(key)[1]
    return {"kid": short_kid(kid), "alg": algorithm, "x": base64url_encode(raw).decode()}


class TapLine(msgspec.Struct, forbid_unknown_fields=True):
    tap_id: uuid.UUID
    rider: bytes  # the 16-byte pseudonym the code carried (base64 in JSON)
    credential_id: bytes
    station: str
    direction: Direction
    at: datetime
    gate: str = ""


class TapsBody(msgspec.Struct, forbid_unknown_fields=True):
    taps: list[TapLine]


async def upload_taps(request: web.Request) -> web.Response:
    """A gate's batch of taps; idempotent by tap id, however often and late it is sent."""
    gate = (await authenticate(request, "transit:taps")).subject
    body = await read_body(request, TapsBody)
    if not 0 < len(body.taps) <= MAX_TAPS:
        raise Problem(422, "Unprocessable Content", f"taps: 1 to {MAX_TAPS} a batch",
                      type_=f"{PROBLEMS}/taps")  # fmt: skip
    taps = [_tap(line, gate) for line in body.taps]
    app = request.app
    now = app[CLOCK].now()

    async def work(conn: Connection) -> int:
        return await riding.record_taps(
            conn, taps, pricer=app[FARES].pricer, bus=app[BUS], config=app[SETTINGS], now=now
        )

    riders = await in_transaction(app[POOL], work)
    log.info("taps uploaded", extra={"taps": len(taps), "riders": riders})
    return web.json_response({"accepted": len(taps)})


def _tap(line: TapLine, gate: str) -> tuple[Tap, bytes, str]:
    if len(line.rider) != 16 or len(line.credential_id) != 16 or line.at.tzinfo is None:
        raise Problem(422, "Unprocessable Content",
                      "a tap has a 16-byte rider and credential_id, and a time with its offset",
                      type_=f"{PROBLEMS}/taps")  # fmt: skip
    tap = Tap(line.tap_id, line.rider.hex(), line.station, line.direction, line.at)
    return tap, line.credential_id, line.gate or gate


async def deny_list(request: web.Request) -> web.Response:
    """The deny list for gates: the changes since ``?since=<version>`` (a delta), or the whole
    list without it (or when the gate's version is unknown here); 204 when it has nothing new."""
    await authenticate(request, "transit:taps")
    pool = request.app[POOL]
    version = await store.deny_version(pool)
    since = request.query.get("since", "")
    base = int(since) if since.isdigit() and len(since) < 19 else None
    if base is not None and base == version:
        return web.Response(status=204, headers={"Deny-List-Version": str(version)})
    if base is not None and 0 < base < version:
        added, removed = await store.deny_changes_after(pool, base)
        body = Delta(base, version, tuple(added), tuple(removed)).encode()
    else:
        body = DenyList(version, await store.denied_now(pool)).snapshot()
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"Deny-List-Version": str(version), "Cache-Control": "no-store"},
    )


async def journeys(request: web.Request) -> web.Response:
    """The rider's own journeys, newest first, with their fares."""
    rider = (await authenticate(request, "transit:ride")).subject
    rows = await store.rider_journeys(request.app[POOL], rider, MAX_JOURNEYS)
    return web.json_response({"journeys": [
        {"journey_id": str(r["journey_id"]), "kind": r["kind"], "entry": r["entry_station"],
         "exit": r["exit_station"], "started_at": r["started_at"].isoformat(),
         "amount_minor": r["amount_minor"], "currency": r["currency"],
         "products": list(r["products"]), "reason": r["reason"],
         "category": r["category"], "charged_minor": r["due_minor"]}
        for r in rows
    ]})  # fmt: skip
