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

from services.transit import ridecode, riding, store
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
PROBLEMS = "https://cardless.dev/problems/transit"
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
    if body.category != "adult":
        # A concession must be proven (an ID check through identity); not built yet.
        raise Problem(403, "Forbidden", "only the adult category can be enrolled for now",
                      type_=f"{PROBLEMS}/category-needs-proof")  # fmt: skip
    device = _device_key(body.device_jwk)
    app = request.app
    settings, now = app[SETTINGS], app[CLOCK].now()
    kid, issuer_key = app[KEYRING].signing_key()
    not_before, not_after = int(now.timestamp()), int(now.timestamp()) + settings.credential_ttl_s

    async def work(conn: Connection) -> bytes:
        pseudonym = await store.pseudonym_of(conn, rider, now)
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
