"""The wallet's OpenAPI 3.1 document: the routes of ``app.ROUTES``, for clients and the gateway."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_MINOR = {"type": "integer", "minimum": 1, "description": "minor units: 12.50 CNY is 1250"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "example": "CNY"}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "draft-ietf-httpapi-idempotency-key-header-07; quoted or bare",
    "schema": {"type": "string", "maxLength": 255},
}


def _op(summary: str, scopes: list[str] | None, ok: dict[str, Any], **more: Any) -> dict[str, Any]:
    """One operation: its summary, security, the success answer and problem answers."""
    security = [] if scopes is None else [{"gateway": scopes}]
    errors = {code: _PROBLEM for code in ("400", "401", "403", "404", "409", "422")}
    return {"summary": summary, "security": security, "responses": {**ok, **errors}, **more}


def _json(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description,
                     "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def _body(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False,
              "required": list(properties), "properties": properties}  # fmt: skip
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in names]  # fmt: skip


_STATEMENT = {"description": "the statement", "content": {
    "text/csv": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}},
}}  # fmt: skip
_ORDER = {"type": "object", "properties": {
    "id": {"type": "string", "format": "uuid"}, "provider": {"type": "string"},
    "amount": _MINOR, "currency": _CURRENCY,
    "status": {"enum": ["awaiting_payment", "paid"]}, "pay": {"type": "object"},
}}  # fmt: skip

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Cardless wallet", "version": "1",
             "description": "Riders' wallets, providers' top-ups and refunds, daily settlement."},
    "paths": {
        "/v1/wallet/balance": {"get": _op(
            "The rider's balance", ["wallet:read"],
            _json("balance", {"type": "object"}),
            parameters=[{"name": "currency", "in": "query", "schema": _CURRENCY}],
        )},
        "/v1/wallet/statement": {"get": _op(
            "The rider's transfers, newest first (cursor pagination)", ["wallet:read"],
            _json("a page", {"type": "object"}),
            parameters=[{"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "currency", "in": "query", "schema": _CURRENCY}],
        )},
        "/v1/wallet/topups": {"post": _op(
            "Create a top-up order", ["wallet:topup"], _json("the order", _ORDER, "201"),
            parameters=[_IDEMPOTENCY],
            requestBody=_body({"provider": {"type": "string"}, "amount": _MINOR,
                               "currency": _CURRENCY}),
        )},
        "/v1/wallet/topups/{order_id}": {"get": _op(
            "One of the rider's top-ups", ["wallet:read"], _json("the order", _ORDER),
            parameters=_path_params("order_id"),
        )},
        "/v1/wallet/topups/{order_id}/refunds": {"post": _op(
            "Refund part or all of a paid top-up", ["wallet:refund"],
            _json("the refund", {"type": "object"}, "201"),
            parameters=[*_path_params("order_id"), _IDEMPOTENCY],
            requestBody=_body({"amount": _MINOR, "currency": _CURRENCY}),
        )},
        "/v1/wallet/providers/{provider}/notifications": {"post": _op(
            "A provider's signed notification (Standard Webhooks, or Alipay RSA2 form)", None,
            {"200": {"description": "Alipay: the text `success`"},
             "204": {"description": "accepted (also when replayed)"}},
            parameters=_path_params("provider"),
        )},
        "/v1/wallet/providers/{provider}/statements/{day}.{format}": {"get": _op(
            "A provider's daily statement (CSV or JSON; final days only)",
            ["wallet:settlement"], {"200": _STATEMENT},
            parameters=_path_params("provider", "day", "format"),
        )},
        "/v1/wallet/providers/{provider}/bills/{day}": {"post": _op(
            "Reconcile a provider's daily bill (CSV); `apply=true` books corrections",
            ["wallet:finance"], _json("the report", {"type": "object"}),
            parameters=[*_path_params("provider", "day"), _IDEMPOTENCY,
                        {"name": "apply", "in": "query", "schema": {"enum": ["true", "false"]}}],
            requestBody={"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
        )},
        "/v1/wallet/operators/{operator}/statements/{day}.{format}": {"get": _op(
            "An operator's daily revenue statement", ["wallet:finance"], {"200": _STATEMENT},
            parameters=_path_params("operator", "day", "format"),
        )},
    },
    "components": {
        "securitySchemes": {"gateway": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token from the gateway (EdDSA/ES256, keys by kid).",
        }},
        "responses": {"Problem": {
            "description": "RFC 9457 problem details with a stable `type`",
            "content": {"application/problem+json": {"schema": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
            }}}},
        }},
    },
}  # fmt: skip


async def document(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
