"""The wallet's OpenAPI 3.1 document: the routes of ``app.ROUTES``, for clients and the gateway.

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

_MINOR = {"type": "integer", "minimum": 1, "description": "minor units: 12.50 CNY is 1250"}
_SIGNED_MINOR = {"type": "integer", "description": "minor units, negative for money out"}
_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "example": "12.50"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "example": "CNY"}
_ID = {"type": "string", "format": "uuid"}
_DAY = {"type": "string", "format": "date", "example": "2030-01-01"}
_STAMP = {"type": "string", "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_CURRENCY_QUERY = {"name": "currency", "in": "query", "schema": _CURRENCY,
                   "description": "the wallet's currency (default CNY)"}  # fmt: skip
_FORMAT = {"enum": ["csv", "json"], "description": "`csv` or `json`"}
_STATEMENT_PATH = path_params(day=_DAY, format=_FORMAT)
_STATEMENT = {"description": "the statement (its format follows the path's extension)",
              "content": {"text/csv": {"schema": TEXT},
                          "application/json": {"schema": ref("DailyStatement")}}}  # fmt: skip
_MONEY_FIELDS = {"amount": _DECIMAL, "amount_minor": _SIGNED_MINOR}

_SCHEMAS: dict[str, Any] = {
    "Balance": obj({"currency": _CURRENCY, "available": {"type": "integer"},
                        "held": {"type": "integer", "description": "on hold (refunds asked)"}}),
    "Transfer": obj({
        "id": _ID, "at": {"type": ["string", "null"], "format": "date-time"},
        "kind": {"enum": ["posted", "held", "released"]}, "amount": _SIGNED_MINOR,
        "currency": _CURRENCY, "type": TEXT, "reference": _NULLABLE_TEXT}),
    "StatementPage": obj({
        "items": {"type": "array", "items": ref("Transfer")},
        "next": {"type": ["string", "null"], "description": "the next page's `cursor`"}}),
    "Order": obj({
        "id": _ID, "provider": TEXT, "amount": _MINOR, "currency": _CURRENCY,
        "status": {"enum": ["awaiting_payment", "paid"]},
        "pay": obj({"provider": TEXT, "reference": TEXT, "amount": _DECIMAL,
                        "currency": _CURRENCY}, description="what the app hands the provider")}),
    "Refund": obj({"id": _ID, "order_id": _ID, "status": {"enum": ["requested"]},
                       "amount": _MINOR, "currency": _CURRENCY}),
    "DailyStatement": obj({
        "format": {"const": "cardless.statement.v1"}, "account_id": _ID, "owner": TEXT,
        "currency": _CURRENCY, "business_day": _DAY, "tz": TEXT, "cutoff": TEXT,
        "start": _STAMP, "end": _STAMP, "opening": _DECIMAL, "opening_minor": _SIGNED_MINOR,
        "closing": _DECIMAL, "closing_minor": _SIGNED_MINOR,
        "totals": {"type": "array", "items": obj(
            {"type": TEXT, "count": {"type": "integer", "minimum": 1}, **_MONEY_FIELDS})},
        "entries": {"type": "array", "items": obj({
            "at": _STAMP, "transfer_id": _ID, "type": TEXT, **_MONEY_FIELDS,
            "reference": _NULLABLE_TEXT})}}),
    "BillReport": obj({
        "report": {"type": "object", "required": ["format", "counts"], "properties": {
            "format": {"const": "cardless.reconciliation.v1"}, "counts": {
                "type": "object", "additionalProperties": {"type": "integer"}}}},
        "corrections": {"type": "array", "items": obj({
            "id": _ID, "reference": TEXT, "amount": _SIGNED_MINOR, "currency": _CURRENCY,
            "reason": {"enum": ["missing_in_bill", "missing_in_ledger", "amount_mismatch"]},
            "booked": {**_NULLABLE_TEXT, "description": "the ledger's result, once applied"}})}}),
}  # fmt: skip

DOCUMENT: dict[str, Any] = openapi_document(
    "Cardless wallet", "1", "Riders' wallets, providers' top-ups and refunds, daily settlement.",
    paths={
        "/v1/wallet/openapi.json": {"get": document_operation("walletOpenapi")},
        "/v1/wallet/balance": {"get": operation(
            "walletBalance", "The rider's balance", ["wallet:read"],
            json_answer("balance", ref("Balance")), parameters=[_CURRENCY_QUERY],
        )},
        "/v1/wallet/statement": {"get": operation(
            "walletStatement", "The rider's transfers, newest first (cursor pagination)",
            ["wallet:read"], json_answer("a page", ref("StatementPage")),
            parameters=[{"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        _CURRENCY_QUERY],
        )},
        "/v1/wallet/topups": {"post": operation(
            "walletCreateTopUp", "Create a top-up order", ["wallet:topup"],
            {"201": {**json_answer("the order", ref("Order"))["200"], "headers": {
                "Location": {"description": "the order", "schema": {"type": "string"}}}}},
            parameters=[IDEMPOTENCY_HEADER],
            requestBody=json_body({"provider": TEXT, "amount": _MINOR, "currency": _CURRENCY}),
        )},
        "/v1/wallet/topups/{order_id}": {"get": operation(
            "walletTopUp", "One of the rider's top-ups", ["wallet:read"],
            json_answer("the order", ref("Order")), parameters=path_params(order_id=TEXT),
        )},
        "/v1/wallet/topups/{order_id}/refunds": {"post": operation(
            "walletCreateRefund", "Refund part or all of a paid top-up", ["wallet:refund"],
            json_answer("the refund", ref("Refund"), "201"),
            parameters=[*path_params(order_id=TEXT), IDEMPOTENCY_HEADER],
            requestBody=json_body({"amount": _MINOR, "currency": _CURRENCY}),
        )},
        "/v1/wallet/providers/{provider}/notifications": {"post": operation(
            "walletProviderNotification",
            "A provider's signed notification (Standard Webhooks, or Alipay RSA2 form)", None,
            {"200": {"description": "Alipay: the text `success`",
                     "content": {"text/plain": {"schema": {"const": "success"}}}},
             "204": {"description": "accepted (also when replayed)"}},
            parameters=path_params(provider=TEXT),
            requestBody={"required": True, "description": "the exact bytes the provider signed",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     "application/x-www-form-urlencoded": {
                                         "schema": {"type": "object"}}}},
        )},
        "/v1/wallet/providers/{provider}/statements/{day}.{format}": {"get": operation(
            "walletProviderStatement",
            "A provider's daily statement (CSV or JSON; final days only)", ["wallet:settlement"],
            {"200": _STATEMENT},
            description=("The provider itself (`wallet:settlement`, as the token's subject), "
                         "or the city's finance office (`wallet:finance`)."),
            parameters=[*path_params(provider=TEXT), *_STATEMENT_PATH],
        )},
        "/v1/wallet/providers/{provider}/bills/{day}": {"post": operation(
            "walletImportBill",
            "Reconcile a provider's daily bill (CSV); `apply=true` books corrections",
            ["wallet:finance"], json_answer("the report", ref("BillReport")),
            parameters=[*path_params(provider=TEXT, day=_DAY), IDEMPOTENCY_HEADER,
                        {"name": "apply", "in": "query", "schema": {"enum": ["true", "false"]}}],
            requestBody={"required": True, "content": {"text/csv": {"schema": TEXT}}},
        )},
        "/v1/wallet/operators/{operator}/statements/{day}.{format}": {"get": operation(
            "walletOperatorStatement", "An operator's daily revenue statement (final days only)",
            ["wallet:finance"], {"200": _STATEMENT},
            parameters=[*path_params(operator=TEXT), *_STATEMENT_PATH, _CURRENCY_QUERY],
        )},
    },
    schemas=_SCHEMAS,
)  # fmt: skip


async def document(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
