"""Building blocks for the services' OpenAPI 3.1 documents: operations, schemas, bodies and the
components every service shares (the gateway's bearer scheme and RFC 9457 problem details).

Each service describes its own routes with these; the gateway merges the documents into one.
"""

from __future__ import annotations

from typing import Any

PROBLEM: dict[str, Any] = {"$ref": "#/components/responses/Problem"}
# The problem answers every operation lists unless it answers that status otherwise.
PROBLEM_STATUSES = ("400", "401", "403", "404", "409", "422")
TEXT: dict[str, Any] = {"type": "string"}
IDEMPOTENCY_HEADER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "draft-ietf-httpapi-idempotency-key-header-07; quoted or bare",
    # One to 255 visible ASCII characters other than `"` and `\`, bare or in quotes.
    "schema": {"type": "string", "pattern": r'^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$'},
}
GATEWAY_SCHEME: dict[str, Any] = {
    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
    "description": "An access token from the gateway (EdDSA/ES256, keys by kid).",
}  # fmt: skip
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status"], "properties": {
        "type": TEXT, "title": TEXT, "status": {"type": "integer"}, "detail": TEXT,
        "instance": TEXT},
}  # fmt: skip


def operation(
    operation_id: str, summary: str, scopes: list[str] | None, ok: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """One operation: its id, summary, the gateway scopes it needs (None: public), its answers
    ``ok`` and the shared problem answers for every status ``ok`` does not answer itself."""
    security = [] if scopes is None else [{"gateway": scopes}]
    errors = {code: PROBLEM for code in PROBLEM_STATUSES if code not in ok}
    return {"operationId": operation_id, "summary": summary, "security": security,
            "responses": {**ok, **errors}, **more}  # fmt: skip


def document_operation(operation_id: str) -> dict[str, Any]:
    """The public operation that serves the service's own document."""
    return {"operationId": operation_id, "summary": "This service's document", "security": [],
            "responses": {"200": {"description": "the document"}}}  # fmt: skip


def ref(name: str) -> dict[str, str]:
    """A reference to the schema ``name`` in the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_answer(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    """A JSON answer with ``status``, as a one-entry ``responses`` mapping."""
    return {status: {"description": description,
                     "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def obj(
    properties: dict[str, Any], *, optional: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    """An object whose ``properties`` are always present, and ``optional`` ones may be."""
    every = properties if optional is None else {**properties, **optional}
    return {"type": "object", "required": list(properties), "properties": every, **more}


def json_body(
    properties: dict[str, Any], *, optional: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A required JSON request body: an object of these members and no others."""
    schema = obj(properties, optional=optional, additionalProperties=False)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def path_params(**schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """The path's template parameters, each required, by name."""
    return [{"name": n, "in": "path", "required": True, "schema": s} for n, s in schemas.items()]


def document(
    title: str, version: str, description: str, paths: dict[str, Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    """A service's whole document: its paths and schemas, with the shared components."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "securitySchemes": {"gateway": GATEWAY_SCHEME},
            "schemas": {**schemas, "Problem": PROBLEM_SCHEMA},
            "responses": {"Problem": {
                "description": "RFC 9457 problem details with a stable `type`",
                "content": {"application/problem+json": {"schema": ref("Problem")}},
            }},
        },
    }  # fmt: skip
