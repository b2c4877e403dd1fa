"""The wallet's OpenAPI 3.1 document: the routes of ``app.ROUTES``, for clients and the gateway.

Every answer a handler gives is described here with its exact shape, so a client (or a fuzzer
going through the gateway) can hold each response against the document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_MINOR = {"type": "integer", "minimum": 1, "description": "minor units: 12.50 CNY is 1250"}
_SIGNED_MINOR = {"type": "integer", "description": "minor units, negative for money out"}
_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "example": "12.50"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "example": "CNY"}
_ID = {"type": "string", "format": "uuid"}
_DAY = {"type": "string", "format": "date", "example": "2030-01-01"}
_STAMP = {"type": "string", "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "draft-ietf-httpapi-idempotency-key-header-07; quoted or bare",
    # One to 255 visible ASCII characters other than `"` and `\`, bare or in quotes.
    "schema": {"type": "string", "pattern": r'^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$'},
}
_CURRENCY_QUERY = {"name": "currency", "in": "query", "schema": _CURRENCY,
                   "description": "the wallet's currency (default CNY)"}  # fmt: skip


def _op(
    operation_id: str, summary: str, scopes: list[str] | None, ok: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """One operation: its id, summary, security, the success answer and problem answers."""
    security = [] if scopes is None else [{"gateway": scopes}]
    errors = {code: _PROBLEM for code in ("400", "401", "403", "404", "409", "422")}
    return {"operationId": operation_id, "summary": summary, "security": security,
            "responses": {**ok, **errors}, **more}  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description,
                     "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def _object(properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An object with exactly these properties, each always present."""
    return {"type": "object", "required": list(properties), "properties": properties, **more}


def _body(properties: dict[str, Any]) -> dict[str, Any]:
    schema = _object(properties, additionalProperties=False)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_params(**schemas: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": s} for n, s in schemas.items()]


_TEXT = {"type": "string"}
_FORMAT = {"enum": ["csv", "json"], "description": "`csv` or `json`"}
_STATEMENT_PATH = _path_params(day=_DAY, format=_FORMAT)
_STATEMENT = {"description": "the statement (its format follows the path's extension)",
              "content": {"text/csv": {"schema": _TEXT},
                          "application/json": {"schema": _ref("DailyStatement")}}}  # fmt: skip
_MONEY_FIELDS = {"amount": _DECIMAL, "amount_minor": _SIGNED_MINOR}

_SCHEMAS: dict[str, Any] = {
    "Balance": _object({"currency": _CURRENCY, "available": {"type": "integer"},
                        "held": {"type": "integer", "description": "on hold (refunds asked)"}}),
    "Transfer": _object({
        "id": _ID, "at": {"type": ["string", "null"], "format": "date-time"},
        "kind": {"enum": ["posted", "held", "released"]}, "amount": _SIGNED_MINOR,
        "currency": _CURRENCY, "type": _TEXT, "reference": _NULLABLE_TEXT}),
    "StatementPage": _object({
        "items": {"type": "array", "items": _ref("Transfer")},
        "next": {"type": ["string", "null"], "description": "the next page's `cursor`"}}),
    "Order": _object({
        "id": _ID, "provider": _TEXT, "amount": _MINOR, "currency": _CURRENCY,
        "status": {"enum": ["awaiting_payment", "paid"]},
        "pay": _object({"provider": _TEXT, "reference": _TEXT, "amount": _DECIMAL,
                        "currency": _CURRENCY}, description="what the app hands the provider")}),
    "Refund": _object({"id": _ID, "order_id": _ID, "status": {"enum": ["requested"]},
                       "amount": _MINOR, "currency": _CURRENCY}),
    "DailyStatement": _object({
        "format": {"const": "cardless.statement.v1"}, "account_id": _ID, "owner": _TEXT,
        "currency": _CURRENCY, "business_day": _DAY, "tz": _TEXT, "cutoff": _TEXT,
        "start": _STAMP, "end": _STAMP, "opening": _DECIMAL, "opening_minor": _SIGNED_MINOR,
        "closing": _DECIMAL, "closing_minor": _SIGNED_MINOR,
        "totals": {"type": "array", "items": _object(
            {"type": _TEXT, "count": {"type": "integer", "minimum": 1}, **_MONEY_FIELDS})},
        "entries": {"type": "array", "items": _object({
            "at": _STAMP, "transfer_id": _ID, "type": _TEXT, **_MONEY_FIELDS,
            "reference": _NULLABLE_TEXT})}}),
    "BillReport": _object({
        "report": {"type": "object", "required": ["format", "counts"], "properties": {
            "format": {"const": "cardless.reconciliation.v1"}, "counts": {
                "type": "object", "additionalProperties": {"type": "integer"}}}},
        "corrections": {"type": "array", "items": _object({
            "id": _ID, "reference": _TEXT, "amount": _SIGNED_MINOR, "currency": _CURRENCY,
            "reason": {"enum": ["missing_in_bill", "missing_in_ledger", "amount_mismatch"]},
            "booked": {**_NULLABLE_TEXT, "description": "the ledger's result, once applied"}})}}),
    "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
        "type": _TEXT, "title": _TEXT, "status": {"type": "integer"}, "detail": _TEXT,
        "instance": _TEXT}},
}  # fmt: skip

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Cardless wallet", "version": "1",
             "description": "Riders' wallets, providers' top-ups and refunds, daily settlement."},
    "paths": {
        "/v1/wallet/openapi.json": {"get": {
            "operationId": "walletOpenapi", "summary": "This service's document", "security": [],
            "responses": {"200": {"description": "the document"}},
        }},
        "/v1/wallet/balance": {"get": _op(
            "walletBalance", "The rider's balance", ["wallet:read"],
            _json("balance", _ref("Balance")), parameters=[_CURRENCY_QUERY],
        )},
        "/v1/wallet/statement": {"get": _op(
            "walletStatement", "The rider's transfers, newest first (cursor pagination)",
            ["wallet:read"], _json("a page", _ref("StatementPage")),
            parameters=[{"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        _CURRENCY_QUERY],
        )},
        "/v1/wallet/topups": {"post": _op(
            "walletCreateTopUp", "Create a top-up order", ["wallet:topup"],
            {"201": {**_json("the order", _ref("Order"))["200"], "headers": {
                "Location": {"description": "the order", "schema": {"type": "string"}}}}},
            parameters=[_IDEMPOTENCY],
            requestBody=_body({"provider": _TEXT, "amount": _MINOR, "currency": _CURRENCY}),
        )},
        "/v1/wallet/topups/{order_id}": {"get": _op(
            "walletTopUp", "One of the rider's top-ups", ["wallet:read"],
            _json("the order", _ref("Order")), parameters=_path_params(order_id=_TEXT),
        )},
        "/v1/wallet/topups/{order_id}/refunds": {"post": _op(
            "walletCreateRefund", "Refund part or all of a paid top-up", ["wallet:refund"],
            _json("the refund", _ref("Refund"), "201"),
            parameters=[*_path_params(order_id=_TEXT), _IDEMPOTENCY],
            requestBody=_body({"amount": _MINOR, "currency": _CURRENCY}),
        )},
        "/v1/wallet/providers/{provider}/notifications": {"post": _op(
            "walletProviderNotification",
            "A provider's signed notification (Standard Webhooks, or Alipay RSA2 form)", None,
            {"200": {"description": "Alipay: the text `success`",
                     "content": {"text/plain": {"schema": {"const": "success"}}}},
             "204": {"description": "accepted (also when replayed)"}},
            parameters=_path_params(provider=_TEXT),
            requestBody={"required": True, "description": "the exact bytes the provider signed",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     "application/x-www-form-urlencoded": {
                                         "schema": {"type": "object"}}}},
        )},
        "/v1/wallet/providers/{provider}/statements/{day}.{format}": {"get": _op(
            "walletProviderStatement",
            "A provider's daily statement (CSV or JSON; final days only)", ["wallet:settlement"],
            {"200": _STATEMENT},
            description=("The provider itself (`wallet:settlement`, as the token's subject), "
                         "or the city's finance office (`wallet:finance`)."),
            parameters=[*_path_params(provider=_TEXT), *_STATEMENT_PATH],
        )},
        "/v1/wallet/providers/{provider}/bills/{day}": {"post": _op(
            "walletImportBill",
            "Reconcile a provider's daily bill (CSV); `apply=true` books corrections",
            ["wallet:finance"], _json("the report", _ref("BillReport")),
            parameters=[*_path_params(provider=_TEXT, day=_DAY), _IDEMPOTENCY,
                        {"name": "apply", "in": "query", "schema": {"enum": ["true", "false"]}}],
            requestBody={"required": True, "content": {"text/csv": {"schema": _TEXT}}},
        )},
        "/v1/wallet/operators/{operator}/statements/{day}.{format}": {"get": _op(
            "walletOperatorStatement", "An operator's daily revenue statement (final days only)",
            ["wallet:finance"], {"200": _STATEMENT},
            parameters=[*_path_params(operator=_TEXT), *_STATEMENT_PATH, _CURRENCY_QUERY],
        )},
    },
    "components": {
        "securitySchemes": {"gateway": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token from the gateway (EdDSA/ES256, keys by kid).",
        }},
        "schemas": _SCHEMAS,
        "responses": {"Problem": {
            "description": "RFC 9457 problem details with a stable `type`",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }},
    },
}  # fmt: skip


async def document(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
