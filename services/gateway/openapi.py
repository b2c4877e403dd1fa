"""The city's one OpenAPI 3.1 document: the gateway's routes and every service's.

Each service serves ``/v1/<name>/openapi.json`` with its paths already under ``/v1/<name>/``.
The gateway is the only public door, so the merged document speaks for it: the bearer schemes
services declare for the internal token fold into the gateway's own token schemes (clients
present the gateway's tokens), and services' ``servers`` (internal addresses) are dropped.
A service's components are *always* renamed ``<ServicePascal><Name>`` (the wallet's
``Problem`` becomes ``WalletProblem``), never only on a clash: a name then never changes when
another service is added or removed, so generated clients stay stable. The gateway's own
components keep their names.
Fetched and kept fresh by ``catalog``; its page (``GET /docs``) is rendered by ``docs``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import msgspec

log = logging.getLogger(__name__)

Document = dict[str, Any]
COMPONENT_KINDS = ("schemas", "responses", "parameters", "examples", "requestBodies",
                   "headers", "securitySchemes", "links", "callbacks", "pathItems")  # fmt: skip
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
UNAVAILABLE = "x-cardless-unavailable"  # info: services left out, and why
STALE = "x-cardless-stale"  # info: services shown from their last good document, and why
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
OPENAPI_PATH, DOCS_PATH, TOKEN_PATH = "/openapi.json", "/docs", "/oauth/token"
# The gateway's own answers on a forwarded route: body too large, rate limited, the service
# failing, unavailable (breaker open, shedding, limiter down) or past the route's deadline.
GATEWAY_PROBLEM = "GatewayProblem"
GATEWAY_ANSWERS = ("413", "429", "502", "503", "504")


class MergeError(ValueError):
    """Documents that cannot be one: a path or operationId twice, a $ref that does not resolve."""


def merge(
    documents: Mapping[str, Mapping[str, Any]],
    *,
    gateway: Mapping[str, Any],
    title: str = "Cardless API",
    version: str,
) -> Document:
    """One OpenAPI 3.1 document: ``gateway``'s own, plus each service's by name (inputs untouched).

    Raises ``MergeError`` on a path (up to its template names) or an operationId defined twice,
    a document that is not OpenAPI 3.1, a security requirement naming no scheme, or a $ref that
    is external or resolves nowhere in the result.
    """
    merged = _copy(gateway)
    merged["openapi"] = "3.1.0"
    merged["info"] = {**_dict(merged.get("info")), "title": title, "version": version}
    merged.setdefault("paths", {})
    merged.setdefault("components", {})
    merged["info"]["x-cardless-services"] = {}
    seen = _Seen.of(merged)
    for name in sorted(documents):
        _add_service(merged, name, _copy(documents[name]), seen)
    _check_refs(merged)
    return merged


class _Seen:
    """What the merged document already defines: path templates and operationIds."""

    def __init__(self, paths: dict[str, str], operation_ids: set[str]) -> None:
        self.paths, self.operation_ids = paths, operation_ids

    @classmethod
    def of(cls, document: Document) -> _Seen:
        ids = {op["operationId"] for _, _, op in _operations(document) if "operationId" in op}
        return cls({_template(path): path for path in document["paths"]}, ids)


def _add_service(merged: Document, name: str, doc: Document, seen: _Seen) -> None:
    if not str(doc.get("openapi", "")).startswith("3.1."):
        raise MergeError(f"{name}: not an OpenAPI 3.1 document")
    for key in ("info", "paths", "webhooks", "components"):
        if not isinstance(doc.get(key, {}), dict):
            raise MergeError(f"{name}: {key} is not an object")
    components = _dict(doc.get("components"))
    schemes = _dict(components.get("securitySchemes"))
    folded = {s for s, scheme in schemes.items() if _is_token_scheme(scheme)}
    renames = {kind: {old: _pascal(name) + old for old in _dict(components.get(kind))
                      if not (kind == "securitySchemes" and old in folded)}
               for kind in COMPONENT_KINDS}  # fmt: skip
    _rewrite_refs(doc, renames, name)
    scopes = _fold_security(merged, name, doc, folded, renames["securitySchemes"])
    _register_scopes(merged, name, scopes, [schemes[s] for s in folded])
    _add_paths(merged, name, doc, seen)
    for kind, names in renames.items():
        target = merged["components"].setdefault(kind, {})
        for old, new in names.items():
            if new in target:
                raise MergeError(f"{name}: component {kind}/{new} is already defined")
            target[new] = components[kind][old]
    _add_tags(merged, name, doc)
    merged["info"]["x-cardless-services"][name] = _dict(doc.get("info")).get("version")


def _add_paths(merged: Document, name: str, doc: Document, seen: _Seen) -> None:
    for path, item in _dict(doc.get("paths")).items():
        if (other := seen.paths.get(_template(path))) is not None:
            raise MergeError(f"{name}: path {path} is already defined as {other}")
        seen.paths[_template(path)] = path
        merged["paths"][path] = item
        for method in METHODS:
            if isinstance(op := _dict(item).get(method), dict):
                _add_gateway_answers(merged, op)
    for hook, item in _dict(doc.get("webhooks")).items():
        if hook in merged.setdefault("webhooks", {}):
            raise MergeError(f"{name}: webhook {hook} is already defined")
        merged["webhooks"][hook] = item
    for _, item, op in _operations(doc):
        item.pop("servers", None)  # internal addresses: clients only ever reach the gateway
        op.pop("servers", None)
        op["tags"] = [_tag(name, t) for t in _list(op.get("tags"))] or [name]
        if (op_id := op.get("operationId")) is not None:
            if op_id in seen.operation_ids:
                raise MergeError(f"{name}: operationId {op_id} is already defined")
            seen.operation_ids.add(op_id)


def _add_gateway_answers(merged: Document, op: dict[str, Any]) -> None:
    """What the gateway itself may answer before or instead of the service (rate limit, body
    limit, the service down or late), on every operation it forwards, unless the service says."""
    if GATEWAY_PROBLEM not in _dict(merged["components"].get("responses")):
        return
    responses = op.setdefault("responses", {})
    if isinstance(responses, dict):
        for status in GATEWAY_ANSWERS:
            responses.setdefault(status, {"$ref": f"#/components/responses/{GATEWAY_PROBLEM}"})


def _add_tags(merged: Document, name: str, doc: Document) -> None:
    """The service's own tag (described by its info), then its tags, qualified by it."""
    info = _dict(doc.get("info"))
    tags = merged.setdefault("tags", [])
    known = {t.get("name") for t in tags}
    own = {"name": name, "description": info.get("description") or info.get("title") or name}
    for tag in [own, *_list(doc.get("tags"))]:
        qualified = {**tag, "name": _tag(name, tag["name"]), "x-cardless-service": name}
        if qualified["name"] not in known:
            known.add(qualified["name"])
            tags.append(qualified)


def _tag(service: str, tag: str) -> str:
    return tag if tag == service else f"{service}/{tag}"


def _fold_security(
    merged: Document, name: str, doc: Document, folded: set[str], kept: Mapping[str, str]
) -> set[str]:
    """Point the service's operations at the gateway's token schemes; the scopes they need.

    A document-wide ``security`` moves onto each operation, since the merged document's own
    would also cover the gateway's and other services' routes.
    """
    gateway_schemes = [s for s, scheme in merged["components"].get("securitySchemes", {}).items()
                       if _is_token_scheme(scheme)]  # fmt: skip
    default = doc.get("security")
    scopes: set[str] = set()
    for _, _, op in _operations(doc):
        requirements = op.get("security", default)
        if requirements is None:
            continue
        op["security"] = []
        for requirement in _list(requirements):
            undeclared = set(requirement) - folded - set(kept)
            if undeclared:
                raise MergeError(f"{name}: security names no scheme {sorted(undeclared)}")
            others = {kept[s]: v for s, v in requirement.items() if s not in folded}
            if not folded & set(requirement):
                op["security"].append(others)
                continue
            if not gateway_schemes:
                raise MergeError(f"{name}: the gateway document has no token scheme to fold into")
            needed = sorted({scope for s in folded & set(requirement) for scope in requirement[s]})
            scopes.update(needed)
            op["security"].extend({g: needed, **others} for g in gateway_schemes)
    return scopes


def _register_scopes(
    merged: Document, name: str, scopes: set[str], service_schemes: list[Any]
) -> None:
    """Every scope an operation needs is listed in the gateway's OAuth2 flows."""
    described: dict[str, str] = {}
    for scheme in service_schemes:
        for flow in _dict(scheme.get("flows")).values():
            described.update(_dict(flow.get("scopes")))
    for scheme in merged["components"].get("securitySchemes", {}).values():
        for flow in _dict(scheme.get("flows")).values():
            listed = flow.setdefault("scopes", {})
            for scope in sorted(scopes):
                listed.setdefault(scope, described.get(scope, f"used by the {name} API"))


def _is_token_scheme(scheme: Any) -> bool:
    """A scheme that carries an access token: the gateway's own replaces a service's."""
    scheme = _dict(scheme)
    if scheme.get("type") in ("oauth2", "openIdConnect"):
        return True
    return scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer"


def _rewrite_refs(node: Any, renames: Mapping[str, Mapping[str, str]], service: str) -> None:
    """Rename every local component $ref (and discriminator mapping) in the tree, in place."""
    if isinstance(node, list):
        for item in node:
            _rewrite_refs(item, renames, service)
    elif isinstance(node, dict):
        if isinstance(ref := node.get("$ref"), str):
            node["$ref"] = _renamed_ref(ref, renames, service)
        mapping = _dict(_dict(node.get("discriminator")).get("mapping"))
        for key, target in mapping.items():
            if isinstance(target, str) and not target.startswith("#"):
                mapping[key] = renames["schemas"].get(target, target)  # a bare schema name
        for value in node.values():
            _rewrite_refs(value, renames, service)


def _renamed_ref(ref: str, renames: Mapping[str, Mapping[str, str]], service: str) -> str:
    if not ref.startswith("#"):
        raise MergeError(f"{service}: external $ref {ref!r}; documents must be self-contained")
    parts = ref.split("/")
    if len(parts) >= 4 and parts[1] == "components" and parts[2] in renames:
        new = renames[parts[2]].get(_unescape(parts[3]))
        if new is not None:
            parts[3] = new.replace("~", "~0").replace("/", "~1")
    return "/".join(parts)


def _check_refs(document: Document) -> None:
    for ref in _refs(document):
        try:
            resolve(document, ref)
        except LookupError:
            raise MergeError(f"$ref {ref!r} does not resolve in the merged document") from None


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _refs(item)
    elif isinstance(node, dict):
        if isinstance(ref := node.get("$ref"), str):
            yield ref
        for value in node.values():
            yield from _refs(value)


def resolve(document: Mapping[str, Any], ref: str) -> Any:
    """What a local ``$ref`` (``#/components/schemas/X``) points at; ``LookupError`` if nothing."""
    if not ref.startswith("#"):
        raise LookupError(ref)
    node: Any = document
    for part in unquote(ref[1:]).split("/")[1:]:
        key = _unescape(part)
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise LookupError(ref)
    return node


def _operations(doc: Document) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, path item, operation) for each operation in paths, webhooks and pathItems."""
    items = [*_dict(doc.get("paths")).items(), *_dict(doc.get("webhooks")).items(),
             *_dict(_dict(doc.get("components")).get("pathItems")).items()]  # fmt: skip
    for path, item in items:
        for method in METHODS:
            if isinstance(op := _dict(item).get(method), dict):
                yield path, item, op


def _template(path: str) -> str:
    """Paths equal up to their template names are one path (OpenAPI 3.1 §4.8.8)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _pascal(service: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", service))


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _copy(document: Mapping[str, Any]) -> Document:
    """A deep copy as a plain JSON tree: no sub-dict is shared, so rewriting one is safe."""
    copied: Document = msgspec.json.decode(msgspec.json.encode(document))
    return copied


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json_answer(description: str, ref: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": ref}}}}  # fmt: skip


_OAUTH_ERROR = _json_answer("RFC 6749 §5.2 error", "#/components/schemas/OAuthError")
_GATEWAY_ANSWER = {"$ref": f"#/components/responses/{GATEWAY_PROBLEM}"}
_GATEWAY_HEADERS = {name: {"schema": {"type": "string"}, "description": what} for name, what in (
    ("Retry-After", "seconds to wait (429, 503)"),
    ("RateLimit", "draft-ietf-httpapi-ratelimit-headers: what is left (429)"),
    ("RateLimit-Policy", "the limit of this route's class (429)"))}  # fmt: skip
_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PUBLIC = {"tags": ["gateway"], "security": []}

# The gateway's own part of the merged document: its routes and the schemes clients use.
GATEWAY_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Cardless API", "version": "1", "description": (
        "The city's payment backbone behind one door: every request goes through the gateway, "
        "with an access token from `POST /oauth/token`.")},
    "tags": [{"name": "gateway", "description": "Tokens, signing keys, this document, health."}],
    "paths": {
        TOKEN_PATH: {"post": {**_PUBLIC,
            "summary": "Get an access token",
            "description": (
                "Clients (providers, agencies, gates, operators' staff): `grant_type="
                "client_credentials` with `client_assertion_type=" + _ASSERTION + "` and a "
                "`client_assertion` JWT signed by your registered key (RFC 7523 §2.2).\n\n"
                "Riders: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an "
                "`assertion` signed by the phone's key, and a `DPoP` proof header (RFC 9449). "
                "The token is bound to that key: send it as `Authorization: DPoP <token>` with "
                "a fresh proof on every request."),
            "parameters": [{"name": "DPoP", "in": "header", "schema": {"type": "string"},
                            "description": "a DPoP proof JWT (rider sign-in)"}],
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                "schema": {"$ref": "#/components/schemas/TokenRequest"}}}},
            "responses": {
                "200": _json_answer("the token", "#/components/schemas/TokenResponse"),
                "400": _OAUTH_ERROR, "401": _OAUTH_ERROR,
                "429": _GATEWAY_ANSWER, "503": _GATEWAY_ANSWER},
        }},
        "/.well-known/jwks.json": {"get": {**_PUBLIC,
            "summary": "The public keys that sign access tokens (RFC 7517), by `kid`",
            "responses": {"200": _json_answer("the key set", "#/components/schemas/JwkSet")},
        }},
        OPENAPI_PATH: {"get": {**_PUBLIC, "summary": "This document, as OpenAPI 3.1 JSON",
                               "responses": {"200": {"description": "the document"}}}},
        DOCS_PATH: {"get": {**_PUBLIC, "summary": "This document, as a page",
                            "responses": {"200": {"description": "the page (text/html)"}}}},
        "/healthz": {"get": {**_PUBLIC, "summary": "The gateway is alive",
                             "responses": {"200": {"description": "alive"}}}},
    },
    "components": {
        "securitySchemes": {
            "oauth2": {"type": "oauth2", "description": (
                "Client credentials with `private_key_jwt` client authentication: register a "
                "public key, never a shared secret. Tokens are JWTs (`at+jwt`) of a few "
                "minutes; ask again when one expires."),
                "flows": {"clientCredentials": {"tokenUrl": TOKEN_PATH, "scopes": {}}}},
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": (
                "An access token from `POST /oauth/token`, or from the city's identity provider. "
                "Riders' tokens are bound to the phone's key and are sent as "
                "`Authorization: DPoP <token>` with a `DPoP` proof header (RFC 9449).")},
        },
        "responses": {GATEWAY_PROBLEM: {
            "description": (
                "RFC 9457 problem details from the gateway itself: 413 a body over the route's "
                "limit; 429 a rate limit reached (`Retry-After`, `RateLimit` and "
                "`RateLimit-Policy` say when to come back); 502, 503 or 504 when the service "
                "failed, is unavailable or did not answer in time (`Retry-After` when known)."),
            "headers": _GATEWAY_HEADERS,
            "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/GatewayProblemDetails"}}}}},
        "schemas": {
            "GatewayProblemDetails": {"type": "object", "required": ["type", "title", "status"],
                "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"},
                    "instance": {"type": "string"},
                    "violated-policies": {"type": "array", "items": {"type": "string"},
                                          "description": "the rate-limit classes reached (429)"}}},
            "TokenRequest": {"type": "object", "required": ["grant_type"], "properties": {
                "grant_type": {"enum": ["client_credentials",
                                        "urn:ietf:params:oauth:grant-type:jwt-bearer"]},
                "client_assertion_type": {"const": _ASSERTION},
                "client_assertion": {"type": "string", "description": "client credentials"},
                "assertion": {"type": "string", "description": "rider sign-in"},
                "scope": {"type": "string", "description": "space-separated scopes"}}},
            "TokenResponse": {"type": "object", "properties": {
                "access_token": {"type": "string"},
                "token_type": {"enum": ["Bearer", "DPoP"]},
                "expires_in": {"type": "integer", "description": "seconds"},
                "scope": {"type": "string"}}},
            "OAuthError": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string", "example": "invalid_client"},
                "error_description": {"type": "string"}}},
            "JwkSet": {"type": "object", "required": ["keys"], "properties": {
                "keys": {"type": "array", "items": {"type": "object"}}}},
        },
    },
}  # fmt: skip


def gateway_document() -> Document:
    """A fresh copy of ``GATEWAY_DOCUMENT``, the gateway's own part of the merged document."""
    return _copy(GATEWAY_DOCUMENT)
