"""Transit's OpenAPI 3.1 document: the routes of ``app.ROUTES``, for clients and the gateway."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.openapi import (
    TEXT,
    document_operation,
    json_answer,
    json_body,
    obj,
    operation,
    path_params,
    ref,
)
from shared.openapi import document as openapi_document

_BASE = "/v1/transit"
_STAMP = {"type": "string", "format": "date-time"}
_B64 = {"type": "string", "description": "base64 of 16 bytes, as the ride code carries them"}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_DIRECTION = {"enum": ["entry", "exit"]}

_SCHEMAS: dict[str, Any] = {
    "RideCredential": obj({
        "credential": {**TEXT, "description": "base64url of the credential (docs/ride-code.md)"},
        "category": TEXT, "not_after": _STAMP}),
    "Standing": obj({
        "credentials": {"type": "array", "items": obj({
            "credential_id": {**TEXT, "description": "base64url of its 16-byte id"},
            "category": TEXT, "not_before": _STAMP, "not_after": _STAMP,
            "state": {"enum": ["valid", "expired", "not_yet_valid"]}})},
        "denied": {"type": "boolean", "description": "whether gates turn the rider away"},
        "denied_because": _NULLABLE_TEXT}),
    "IssuerKeys": obj({"keys": {"type": "array", "items": obj({
        "kid": {**TEXT, "description": "the short kid codes carry"},
        "alg": {"enum": ["EdDSA", "ES256"]},
        "x": {**TEXT, "description": "base64url of the raw public key"}})}}),
    "Tap": obj(
        {"tap_id": {"type": "string", "format": "uuid"}, "rider": _B64, "credential_id": _B64,
         "station": TEXT, "direction": _DIRECTION,
         "at": {**_STAMP, "description": "when the gate opened, with its offset"}},
        optional={"gate": TEXT}, additionalProperties=False),
    "Journeys": obj({"journeys": {"type": "array", "items": obj({
        "journey_id": {"type": "string", "format": "uuid"},
        "kind": {"enum": ["complete", "incomplete", "exit_only", "open"]},
        "entry": _NULLABLE_TEXT, "exit": _NULLABLE_TEXT, "started_at": _STAMP,
        "amount_minor": _NULLABLE_INT, "currency": _NULLABLE_TEXT,
        "products": {"type": "array", "items": TEXT}, "reason": _NULLABLE_TEXT,
        "category": _NULLABLE_TEXT,
        "charged_minor": {"type": "integer", "description": "what the rider is charged for "
                          "it: the fare, less what the daily and weekly caps waive"}})}}),
}  # fmt: skip

DOCUMENT: dict[str, Any] = openapi_document(
    title="Cardless transit",
    version="1",
    description="Ride credentials for phones, issuer keys and deny lists for gates, taps into "
    "journeys priced from the city's GTFS Fares v2 feed.",
    paths={
        f"{_BASE}/openapi.json": {"get": document_operation("transitOpenapi")},
        f"{_BASE}/credentials": {"post": operation(
            "transitEnrol", "A ride credential for the phone's key", ["transit:ride"],
            json_answer("the credential", ref("RideCredential"), "201"),
            requestBody=json_body(
                {"device_jwk": {"type": "object",
                                "description": "the phone's public Ed25519 or P-256 JWK"}},
                optional={"category": {**TEXT, "description": "adult, or a concession "
                                       "granted (POST /v1/transit/concessions)"}}),
        ), "get": operation(
            "transitStanding", "The rider's own credentials, and whether gates let them through",
            ["transit:ride"], json_answer("the rider's standing", ref("Standing")),
        )},
        f"{_BASE}/concessions": {"post": operation(
            "transitAskConcession", "Ask for a concession category, proven with the city ID",
            ["transit:ride"],
            json_answer("identity's request for the phone to answer", obj({
                "concession_id": TEXT, "category": TEXT, "expires_at": _STAMP,
                "authorization_request": {"type": "object",
                                          "description": "OpenID4VP, for the phone"}}), "201"),
            requestBody=json_body({"category": {"enum": ["senior"]}}),
        )},
        f"{_BASE}/concessions/{{concession_id}}/claim": {"post": operation(
            "transitClaimConcession", "Claim a concession the phone proved to identity",
            ["transit:ride"],
            json_answer("granted", obj({"category": TEXT, "granted": {"type": "boolean"}})),
            parameters=path_params(concession_id=TEXT),
        )},
        f"{_BASE}/issuer-keys": {"get": operation(
            "transitIssuerKeys", "The keys gates check credentials with", None,
            json_answer("the keys", ref("IssuerKeys")),
        )},
        f"{_BASE}/taps": {"post": operation(
            "transitTaps", "A gate's batch of taps (idempotent by tap id)", ["transit:taps"],
            json_answer("accepted", obj({"accepted": {"type": "integer"}})),
            requestBody=json_body({"taps": {"type": "array", "items": ref("Tap"),
                                            "minItems": 1, "maxItems": 2000}}),
        )},
        f"{_BASE}/deny-list": {"get": operation(
            "transitDenyList", "The deny list: the delta since a version, or the whole list",
            ["transit:taps"],
            {"200": {"description": "a delta or a snapshot (docs/ride-code.md)",
                     "content": {"application/octet-stream": {
                         "schema": {"type": "string", "format": "binary"}}}},
             "204": {"description": "nothing new since that version"}},
            parameters=[{"name": "since", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}],
        )},
        f"{_BASE}/journeys": {"get": operation(
            "transitJourneys", "The rider's own journeys, newest first", ["transit:ride"],
            json_answer("the journeys", ref("Journeys")),
        )},
    },
    schemas=_SCHEMAS,
)  # fmt: skip


async def document(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
