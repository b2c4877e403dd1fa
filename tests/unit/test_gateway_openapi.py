"""The gateway's one OpenAPI document: every service in it, valid, always served.

The upstream services here are toy aiohttp apps (stand-ins for the real services' processes);
the wallet's document is the real one, taken from its handler.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from openapi_spec_validator import validate

from services.gateway.catalog import Catalog
from services.gateway.openapi import (
    GATEWAY_DOCUMENT,
    MAX_DOCUMENT_BYTES,
    STALE,
    UNAVAILABLE,
    MergeError,
    merge,
)
from services.wallet import openapi as wallet_openapi
from tests.support import free_port

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def toy(name: str) -> dict[str, Any]:
    """A small service document whose component names clash with the wallet's and each other's."""
    problem = {"$ref": "#/components/responses/Problem"}
    journey = {"$ref": "#/components/schemas/Journey"}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Cardless {name}", "version": "3", "description": f"{name} journeys"},
        "security": [{"internal": [f"{name}:tap"]}],
        "tags": [{"name": "taps", "description": "What the gates upload."}],
        "paths": {
            f"/v1/{name}/taps": {"post": {
                "tags": ["taps"], "operationId": f"{name}UploadTaps", "summary": "Upload taps",
                "requestBody": {"$ref": "#/components/requestBodies/Taps"},
                "responses": {"202": {"description": "accepted"}, "400": problem},
            }},
            f"/v1/{name}/journeys/{{journey_id}}": {
                "parameters": [{"$ref": "#/components/parameters/JourneyId"}],
                "get": {
                    "summary": "One journey", "security": [{"internal": [f"{name}:read"]}],
                    "responses": {"200": {"description": "the journey", "content": {
                        "application/json": {"schema": journey}}}, "404": problem},
                },
            },
        },
        "components": {
            "securitySchemes": {"internal": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}}},
                "Tap": {"type": "object", "properties": {"gate": {"type": "string"}}},
                "Journey": {"type": "object", "description": f"a {name} journey", "properties": {
                    "taps": {"type": "array", "items": {"$ref": "#/components/schemas/Tap"}}}},
            },
            "responses": {"Problem": {
                "description": f"a {name} problem", "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "parameters": {"JourneyId": {"name": "journey_id", "in": "path", "required": True,
                                         "schema": {"type": "string"}}},
            "requestBodies": {"Taps": {"required": True, "content": {"application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Tap"}}}}}},
        },
    }  # fmt: skip


async def served_wallet_document() -> dict[str, Any]:
    """The wallet's document as its own handler answers it."""
    request = make_mocked_request("GET", "/v1/wallet/openapi.json")
    response = await wallet_openapi.document(request)
    assert isinstance(response.body, bytes)
    document: dict[str, Any] = json.loads(response.body)
    return document


@pytest.fixture
async def wallet() -> dict[str, Any]:
    return await served_wallet_document()


@pytest.fixture
def merged(wallet: dict[str, Any]) -> dict[str, Any]:
    services = {"wallet": wallet, "transit": toy("transit"), "buses": toy("buses")}
    return merge(services, gateway=GATEWAY_DOCUMENT, version="2030.1")


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from refs(item)
    elif isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)


def follow(document: dict[str, Any], ref: str) -> Any:
    """A local JSON-pointer $ref, followed; KeyError if it leads nowhere."""
    assert ref.startswith("#/"), f"not a local ref: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def test_the_merged_document_is_valid_openapi_3_1(merged: dict[str, Any]) -> None:
    validate(merged)
    assert merged["openapi"] == "3.1.0"
    assert merged["info"]["title"] == "Cardless API"
    assert merged["info"]["version"] == "2030.1"


def test_every_ref_resolves_inside_the_merged_document(merged: dict[str, Any]) -> None:
    found = list(refs(merged))
    assert "#/components/responses/WalletProblem" in found
    for ref in found:
        follow(merged, ref)


def test_clashing_component_names_each_lead_to_their_own_service(merged: dict[str, Any]) -> None:
    def answer(path: str, status: str) -> Any:
        response = merged["paths"][path]["get"]["responses"][status]
        return follow(merged, response["$ref"]) if "$ref" in response else response

    for name in ("transit", "buses"):
        ok = answer(f"/v1/{name}/journeys/{{journey_id}}", "200")
        journey = follow(merged, ok["content"]["application/json"]["schema"]["$ref"])
        assert journey["description"] == f"a {name} journey"
        problem = answer(f"/v1/{name}/journeys/{{journey_id}}", "404")
        assert problem["description"] == f"a {name} problem"
    wallet_problem = answer("/v1/wallet/balance", "404")
    assert wallet_problem["description"].startswith("RFC 9457")


def test_every_path_of_the_gateway_and_each_service_is_there(
    merged: dict[str, Any], wallet: dict[str, Any]
) -> None:
    expected = {*GATEWAY_DOCUMENT["paths"], *wallet["paths"]}
    expected |= {*toy("transit")["paths"], *toy("buses")["paths"]}
    assert set(merged["paths"]) == expected
    assert merged["paths"]["/v1/wallet/topups"]["post"]["requestBody"]["required"] is True


@pytest.mark.parametrize(
    ("second", "path"),
    [
        ("/v1/transit/taps", "/v1/transit/taps"),
        ("/v1/transit/journeys/{id}", "/v1/transit/journeys/{journey_id}"),
        ("/oauth/token", "/oauth/token"),
    ],
    ids=["same path", "same template, other names", "a gateway path"],
)
def test_a_path_two_documents_define_is_a_merge_error(second: str, path: str) -> None:
    other = toy("buses")
    other["paths"] = {second: {"get": {"responses": {"200": {"description": "ok"}}}}}
    with pytest.raises(MergeError, match="already defined") as raised:
        merge({"transit": toy("transit"), "buses": other}, gateway=GATEWAY_DOCUMENT, version="1")
    assert second in str(raised.value)
    assert path in str(raised.value)


def test_an_operation_id_two_services_use_is_a_merge_error() -> None:
    other = toy("buses")
    other["paths"]["/v1/buses/taps"]["post"]["operationId"] = "transitUploadTaps"
    with pytest.raises(MergeError, match="transitUploadTaps"):
        merge({"transit": toy("transit"), "buses": other}, gateway=GATEWAY_DOCUMENT, version="1")


@pytest.mark.parametrize(
    "ref", ["#/components/schemas/Nowhere", "https://example.com/schemas.json#/Tap"]
)
def test_a_ref_that_does_not_resolve_in_the_result_is_a_merge_error(ref: str) -> None:
    broken = toy("transit")
    broken["components"]["schemas"]["Journey"]["properties"]["taps"]["items"] = {"$ref": ref}
    with pytest.raises(MergeError, match=re.escape(ref)):
        merge({"transit": broken}, gateway=GATEWAY_DOCUMENT, version="1")


def test_services_ask_for_the_gateways_tokens_with_their_own_scopes(
    merged: dict[str, Any], wallet: dict[str, Any]
) -> None:
    for method, path, op in operations(wallet):
        security = merged["paths"][path][method]["security"]
        if op["security"] == []:
            assert security == [], f"{path} stays open"
        else:
            scopes = op["security"][0]["gateway"]
            assert security == [{"oauth2": scopes}, {"bearer": scopes}]
    # The toy's document-wide requirement lands on its operations, not on the gateway's.
    assert merged["paths"]["/v1/transit/taps"]["post"]["security"] == [
        {"oauth2": ["transit:tap"]},
        {"bearer": ["transit:tap"]},
    ]
    assert "security" not in merged
    assert set(merged["components"]["securitySchemes"]) == {"oauth2", "bearer"}
    flow = merged["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth/token"
    assert {"wallet:topup", "wallet:refund", "transit:read", "buses:tap"} <= set(flow["scopes"])


def test_operations_stay_grouped_under_their_service(merged: dict[str, Any]) -> None:
    assert merged["paths"]["/v1/wallet/balance"]["get"]["tags"] == ["wallet"]
    assert merged["paths"]["/v1/transit/taps"]["post"]["tags"] == ["transit/taps"]
    tags = {tag["name"]: tag for tag in merged["tags"]}
    assert tags["wallet"]["description"].startswith("Riders' wallets")
    assert tags["transit/taps"]["x-cardless-service"] == "transit"
    assert tags["buses/taps"]["description"] == "What the gates upload."


async def test_merging_leaves_every_input_as_it_was(wallet: dict[str, Any]) -> None:
    before = copy.deepcopy((wallet, GATEWAY_DOCUMENT, wallet_openapi.DOCUMENT))
    merge({"wallet": wallet_openapi.DOCUMENT}, gateway=GATEWAY_DOCUMENT, version="1")
    merge({"wallet": wallet}, gateway=GATEWAY_DOCUMENT, version="1")
    assert (wallet, GATEWAY_DOCUMENT, wallet_openapi.DOCUMENT) == before
    assert wallet == await served_wallet_document()


class Upstream:
    """A toy service serving its OpenAPI document, counting how often it is asked."""

    def __init__(self, name: str, document: Any, *, status: int = 200) -> None:
        self.name, self.document, self.status, self.hits = name, document, status, 0
        self.release = asyncio.Event()
        self.hang = False
        app = web.Application()
        app.router.add_get(f"/v1/{name}/openapi.json", self.serve)
        self.server = TestServer(app)

    async def serve(self, _: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self.release.wait()
        if isinstance(self.document, str):
            return web.Response(text=self.document, status=self.status)
        return web.json_response(self.document, status=self.status)

    @property
    def base(self) -> str:
        return str(self.server.make_url("/"))


class Monotonic:
    """Time for the catalog's refresh window, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstreams(wallet: dict[str, Any]) -> AsyncIterator[dict[str, Upstream]]:
    running = {"wallet": Upstream("wallet", wallet), "transit": Upstream("transit", toy("transit"))}
    for upstream in running.values():
        await upstream.server.start_server()
    yield running
    for upstream in running.values():
        upstream.release.set()
        await upstream.server.close()


def catalog_of(
    upstreams: dict[str, Upstream],
    session: aiohttp.ClientSession,
    clock: Monotonic,
    **more_bases: str,
) -> Catalog:
    bases = {name: upstream.base for name, upstream in upstreams.items()} | more_bases
    return Catalog(
        bases, session, GATEWAY_DOCUMENT, "2030.1", refresh_s=60, timeout_s=0.5, monotonic=clock
    )


async def test_the_catalog_serves_every_upstream_merged(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    document = await catalog_of(upstreams, session, Monotonic()).document()
    validate(document)
    assert {"/oauth/token", "/v1/wallet/balance", "/v1/transit/taps"} <= set(document["paths"])
    assert UNAVAILABLE not in document["info"]
    assert STALE not in document["info"]


async def test_a_service_that_goes_down_is_still_shown_from_its_last_good_document(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    clock = Monotonic()
    catalog = catalog_of(upstreams, session, clock)
    before = await catalog.document()
    await upstreams["transit"].server.close()
    clock.now += 61
    after = await catalog.document()
    assert after is not before
    assert set(after["paths"]) == set(before["paths"])
    assert after["info"][STALE] == {"transit": "unreachable"}


async def test_a_service_never_reached_is_left_out_and_named(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    document = await catalog_of(upstreams, session, Monotonic(), buses=nowhere).document()
    assert document["info"][UNAVAILABLE] == {"buses": "unreachable"}
    assert not any(path.startswith("/v1/buses/") for path in document["paths"])
    assert "/v1/wallet/balance" in document["paths"]


@pytest.mark.parametrize(
    ("document", "status", "reason"),
    [
        (toy("buses"), 503, "answered HTTP 503"),
        ("<html>oops</html>", 200, "not JSON"),
        ("x" * (MAX_DOCUMENT_BYTES + 1), 200, "too large"),
        ([1, 2], 200, "not an OpenAPI document"),
        ({**toy("buses"), "openapi": "3.0.3"}, 200, "does not merge: buses: not an OpenAPI 3.1"),
        (
            {**toy("buses"), "paths": {"/oauth/token": {}}},
            200,
            "does not merge: buses: path /oauth/token is already defined",
        ),
        ({**toy("buses"), "paths": ["/v1/buses/x"]}, 200, "does not merge: buses: paths is not"),
        ({**toy("buses"), "tags": [{"description": "no name"}]}, 200, "not a usable OpenAPI"),
    ],
    ids=[
        "error status",
        "not json",
        "too large",
        "not an object",
        "3.0",
        "clash",
        "paths",
        "malformed",
    ],
)
async def test_an_unusable_answer_leaves_only_that_service_out(
    upstreams: dict[str, Upstream],
    session: aiohttp.ClientSession,
    document: Any,
    status: int,
    reason: str,
) -> None:
    buses = Upstream("buses", document, status=status)
    await buses.server.start_server()
    try:
        got = await catalog_of(upstreams, session, Monotonic(), buses=buses.base).document()
    finally:
        await buses.server.close()
    assert got["info"][UNAVAILABLE]["buses"].startswith(reason)
    assert {"/v1/wallet/balance", "/v1/transit/taps"} <= set(got["paths"])


async def test_a_hung_upstream_does_not_hold_the_document_back(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    upstreams["transit"].hang = True
    document = await catalog_of(upstreams, session, Monotonic()).document()
    assert document["info"][UNAVAILABLE] == {"transit": "timed out"}
    assert "/v1/wallet/balance" in document["paths"]


async def test_upstreams_are_asked_at_most_once_per_refresh_window(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    clock = Monotonic()
    catalog = catalog_of(upstreams, session, clock)
    first = await asyncio.gather(*(catalog.document() for _ in range(5)))
    clock.now += 59.9
    await catalog.document()
    assert [u.hits for u in upstreams.values()] == [1, 1]
    assert all(document is first[0] for document in first)
    clock.now += 0.1
    await catalog.document()
    await catalog.document()
    assert [u.hits for u in upstreams.values()] == [2, 2]
