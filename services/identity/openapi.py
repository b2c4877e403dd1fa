"""Identity's OpenAPI 3.1 document: the routes of ``app.ROUTES``, for clients and the gateway.

Every answer a handler gives is described here with its exact shape, so a client (or a fuzzer
going through the gateway) can hold each response against the document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.openapi import (
    IDEMPOTENCY_HEADER,
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

_BASE = "/v1/identity"
_ID = {"type": "string", "format": "uuid"}
_STAMP = {"type": "string", "format": "date-time"}
_NULLABLE_STAMP = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_JWT = {"type": "string", "description": "a compact JWS"}
_STATUS = {"enum": ["valid", "revoked", "suspended"]}
_REASON = {"type": "string", "description": "a stable reason code, e.g. `revoked`",
           "example": "request_expired"}  # fmt: skip
_CLAIM_PATHS = {"type": "array", "items": TEXT, "description": "claim paths, dotted"}
_LOCATION = {"Location": {"description": "the created resource", "schema": TEXT}}


def _created(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A 201 JSON answer with its ``Location``."""
    return {"201": {**json_answer(description, schema)["200"], "headers": _LOCATION}}


def _token(media_type: str, description: str) -> dict[str, Any]:
    """A 200 answer whose body is a signed token of ``media_type``."""
    return {"200": {"description": description, "content": {media_type: {"schema": _JWT}}}}


# What the phone answers a request with (OpenID4VP `direct_post`): the form as posted, or JSON.
_PRESENTATION_FORM = obj(
    {
        "state": {**TEXT, "description": "the request's `request_id`"},
        "vp_token": {**TEXT, "description": "the VP token as JSON text"},
    }
)
_PRESENTATION_JSON = obj(
    {
        "state": {**TEXT, "description": "the request's `request_id`"},
        "vp_token": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": TEXT},
            "description": "presentations by credential query id",
        },
    }
)
_REJECTED = {"description": "the answer was refused (`reason` says why) or is malformed",
             "content": {"application/problem+json": {
                 "schema": ref("PresentationProblem")}}}  # fmt: skip

_SCHEMAS: dict[str, Any] = {
    "IssuerMetadata": obj({"issuer": TEXT, "jwks": obj({"keys": {"type": "array", "items": obj({
        "kty": TEXT, "crv": TEXT, "x": TEXT, "y": TEXT, "kid": TEXT, "alg": TEXT,
        "use": {"const": "sig"}})}})}),
    "TypeMetadata": obj({
        "vct": TEXT, "name": TEXT, "description": TEXT,
        "display": {"type": "array", "items": obj({"locale": TEXT, "name": TEXT})},
        "claims": {"type": "array", "items": obj({
            "path": {"type": "array", "items": TEXT, "minItems": 1},
            "display": {"type": "array", "items": obj({"locale": TEXT, "label": TEXT})},
            "sd": {"const": "always"}})}}),
    "Address": obj({"street_address": TEXT, "locality": TEXT, "postal_code": TEXT,
                    "country": {**TEXT, "description": "ISO 3166-1 alpha-2", "example": "CN"}},
                   additionalProperties=False),
    "Citizen": obj({
        "given_name": TEXT, "family_name": TEXT,
        "birthdate": {"type": "string", "format": "date", "example": "1990-05-17"},
        "resident": {"type": "boolean"}, "address": ref("Address"), "portrait_sha256": TEXT,
        "id_number": TEXT}, additionalProperties=False),
    "HolderJwk": {
        "type": "object", "required": ["kty", "crv", "x", "y"],
        "properties": {"kty": {"const": "EC"}, "crv": {"const": "P-256"}, "x": TEXT, "y": TEXT},
        "not": {"required": ["d"]}, "description": "the phone's public P-256 key"},
    "StatusReference": obj({"idx": {"type": "integer", "minimum": 0}, "uri": TEXT},
                           description="the credential's entry in a status list"),
    "IssuedCredential": obj({
        "credential_id": _ID, "credential": {**TEXT, "description": "the SD-JWT VC"},
        "status": _STATUS, "status_list": ref("StatusReference"), "expires_at": _STAMP}),
    "Credential": obj({
        "credential_id": _ID, "status": _STATUS, "status_list": ref("StatusReference"),
        "issued_at": _STAMP, "expires_at": _STAMP,
        "visible_within_s": {"type": "integer",
                             "description": "a change shows in the status list within this"}}),
    "CreatedRequest": obj({
        "request_id": _ID, "expires_at": _STAMP,
        "authorization_request": obj({
            "client_id": TEXT, "response_type": {"const": "vp_token"},
            "response_mode": {"const": "direct_post"}, "response_uri": TEXT, "nonce": TEXT,
            "state": {**TEXT, "description": "the `request_id`"},
            "dcql_query": {"type": "object"}},
            description="the OpenID4VP authorization request for the phone")}),
    "RequestResult": obj({
        "request_id": _ID, "purpose": TEXT,
        "state": {"enum": ["pending", "verified", "rejected"]},
        "reason": {**_NULLABLE_TEXT, "description": "why it was rejected"},
        "claims": {"type": ["object", "null"],
                   "description": "the disclosed claims, on the first read only"},
        "claims_read_at": {**_NULLABLE_STAMP,
                           "description": "when the claims were handed over, if they were"},
        "expires_at": _STAMP, "answered_at": _NULLABLE_STAMP}),
    "AuditLog": obj({
        "checkpoint": {"type": ["string", "null"], "description": "the latest signed head"},
        "entries": {"type": "array", "items": ref("AuditEntry")}}),
    "AuditEntry": obj({
        "seq": {"type": "integer", "minimum": 0}, "at": _STAMP, "agency": TEXT, "purpose": TEXT,
        "claims": _CLAIM_PATHS, "result": {"enum": ["verified", "rejected"]},
        "reason": _NULLABLE_TEXT, "request_id": _ID,
        "leaf_hash": {**TEXT, "description": "base64url, unpadded"},
        "inclusion_proof": {"type": ["array", "null"], "items": TEXT,
                            "description": "against the checkpoint; null until one covers it"}}),
    "PresentationProblem": {"allOf": [ref("Problem"), {"properties": {"reason": _REASON}}],
                            "description": "problem details with the check's `reason` code "
                                           "(absent when the answer is malformed)"},
}  # fmt: skip

DOCUMENT: dict[str, Any] = openapi_document(
    "Cardless identity", "1",
    "The city's ID as an SD-JWT VC: issuance, status lists, agencies' checks over OpenID4VP "
    "and the citizens' audit log.",
    paths={
        f"{_BASE}/openapi.json": {"get": document_operation("identityOpenapi")},
        f"/.well-known/jwt-vc-issuer{_BASE}": {"get": operation(
            "identityIssuerMetadata", "The issuer and its keys (JWT VC Issuer Metadata)", None,
            json_answer("the issuer's metadata", ref("IssuerMetadata")),
        )},
        f"{_BASE}/types/city-id": {"get": operation(
            "identityTypeMetadata", "The city ID's type metadata (SD-JWT VC)", None,
            json_answer("the type metadata", ref("TypeMetadata")),
        )},
        f"{_BASE}/status-lists/{{list_id}}": {"get": operation(
            "identityStatusList", "A Status List Token", None,
            _token("application/statuslist+jwt", "the signed status list"),
            parameters=path_params(list_id={"type": "string", "pattern": "^[0-9]{1,9}$"}),
        )},
        f"{_BASE}/credentials": {"post": operation(
            "identityIssueCredential", "Issue a citizen their ID, bound to their phone's key",
            ["identity:issue"], _created("the credential", ref("IssuedCredential")),
            parameters=[IDEMPOTENCY_HEADER],
            requestBody=json_body(
                {"citizen": ref("Citizen"), "holder_jwk": ref("HolderJwk")},
                optional={"holder_subject": {
                    **_NULLABLE_TEXT,
                    "description": "the phone's gateway subject: it may read the audit log"}}),
        )},
        f"{_BASE}/credentials/{{credential_id}}": {"get": operation(
            "identityCredential", "A credential's status", ["identity:admin"],
            json_answer("the credential", ref("Credential")),
            parameters=path_params(credential_id=TEXT),
        )},
        f"{_BASE}/credentials/{{credential_id}}/status": {"post": operation(
            "identityChangeCredentialStatus",
            "Revoke (for good), suspend, or reinstate a suspended credential", ["identity:admin"],
            json_answer("the credential", ref("Credential")),
            parameters=path_params(credential_id=TEXT), requestBody=json_body({"status": _STATUS}),
        )},
        f"{_BASE}/requests": {"post": operation(
            "identityCreateRequest", "An agency asks for claims, for a purpose",
            ["identity:verify"], _created("the request", ref("CreatedRequest")),
            requestBody=json_body({"purpose": TEXT, "dcql_query": {
                "type": "object", "description": "a DCQL query (OpenID4VP §6)"}},
                optional={"subject": {**TEXT, "description": "only the citizen signed in as "
                                      "this account may answer (refused: not_account_holder)"}}),
        )},
        f"{_BASE}/requests/{{request_id}}": {"get": operation(
            "identityRequestResult", "The agency's answer; claims are handed over once",
            ["identity:verify"], json_answer("the request", ref("RequestResult")),
            parameters=path_params(request_id=TEXT),
        )},
        f"{_BASE}/presentations": {"post": operation(
            "identityPresentation", "The phone's answer to a request (OpenID4VP direct_post)",
            None,
            {**json_answer("verified", {"type": "object", "maxProperties": 0}),
             "400": _REJECTED, "409": _REJECTED},
            requestBody={"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": _PRESENTATION_FORM},
                "application/json": {"schema": _PRESENTATION_JSON}}},
        )},
        f"{_BASE}/audit": {"get": operation(
            "identityAuditLog", "The citizen's own entries, with inclusion proofs",
            ["identity:holder"], json_answer("the citizen's log", ref("AuditLog")),
        )},
        f"{_BASE}/audit/checkpoint": {"get": operation(
            "identityAuditCheckpoint", "The latest signed head of the audit log", None,
            _token("application/jwt", "the checkpoint"),
        )},
    },
    schemas=_SCHEMAS,
)  # fmt: skip


async def document(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
