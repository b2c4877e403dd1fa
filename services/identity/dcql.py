"""The part of DCQL (OpenID for Verifiable Presentations 1.0, §6) an agency's request uses:
one SD-JWT VC credential query with claim paths, and optionally the values a claim must have.

An agency asks only for what its registration allows, and gets back only what it asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.identity.config import Agency

FORMAT = "dc+sd-jwt"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class QueryError(ValueError):
    """A DCQL query we cannot take: the message says which member and why."""


class Unmet(Exception):
    """A presentation that does not answer the query; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ClaimQuery:
    path: tuple[str, ...]
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Query:
    id: str
    vct_values: tuple[str, ...]
    claims: tuple[ClaimQuery, ...]

    @property
    def paths(self) -> frozenset[tuple[str, ...]]:
        return frozenset(claim.path for claim in self.claims)

    def to_json(self) -> dict[str, Any]:
        """The query as DCQL, the way the phone receives it."""
        claims = [
            {"path": list(c.path), **({} if c.values is None else {"values": list(c.values)})}
            for c in self.claims
        ]
        credential = {
            "id": self.id,
            "format": FORMAT,
            "meta": {"vct_values": list(self.vct_values)},
            "claims": claims,
        }
        return {"credentials": [credential]}


def parse(document: Any, *, default_vct: str) -> Query:
    """One credential query of format ``dc+sd-jwt``; anything we do not support is refused
    by name rather than ignored (an agency must not believe it asked for what we dropped)."""
    credentials = _member(document, "credentials", list, "the query")
    unsupported = set(_object(document, "the query")) - {"credentials"}
    if unsupported:
        raise QueryError(f"unsupported members: {', '.join(sorted(unsupported))}")
    if len(credentials) != 1:
        raise QueryError("credentials: expected exactly one credential query")
    credential = _object(credentials[0], "credentials[0]")
    extra = set(credential) - {"id", "format", "meta", "claims"}
    if extra:
        raise QueryError(f"credentials[0]: unsupported members: {', '.join(sorted(extra))}")
    query_id = _member(credential, "id", str, "credentials[0]")
    if not query_id or not set(query_id) <= _ID_CHARS:
        raise QueryError("credentials[0].id: expected letters, digits, '_' or '-'")
    if credential.get("format") != FORMAT:
        raise QueryError(f"credentials[0].format: expected {FORMAT!r}")
    claims = _member(credential, "claims", list, "credentials[0]")
    if not claims:
        raise QueryError("credentials[0].claims: ask for at least one claim")
    return Query(query_id, _vct_values(credential, default_vct), _claims(claims))


def _vct_values(credential: Mapping[str, Any], default: str) -> tuple[str, ...]:
    meta = credential.get("meta", {"vct_values": [default]})
    values = _member(meta, "vct_values", list, "credentials[0].meta")
    if not values or not all(isinstance(v, str) for v in values):
        raise QueryError("credentials[0].meta.vct_values: expected a list of strings")
    return tuple(values)


def _claims(claims: list[Any]) -> tuple[ClaimQuery, ...]:
    parsed = []
    for n, claim in enumerate(claims):
        where = f"credentials[0].claims[{n}]"
        extra = set(_object(claim, where)) - {"id", "path", "values"}
        if extra:
            raise QueryError(f"{where}: unsupported members: {', '.join(sorted(extra))}")
        path = _member(claim, "path", list, where)
        if not path or not all(isinstance(p, str) and p for p in path):
            raise QueryError(f"{where}.path: expected a list of claim names")
        values = claim.get("values")
        if values is not None and (not isinstance(values, list) or not values):
            raise QueryError(f"{where}.values: expected a non-empty list")
        parsed.append(ClaimQuery(tuple(path), None if values is None else tuple(values)))
    if len({c.path for c in parsed}) != len(parsed):
        raise QueryError("credentials[0].claims: the same path twice")
    return tuple(parsed)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise QueryError(f"{where}: expected an object")
    return value


def _member(value: Any, name: str, kind: type, where: str) -> Any:
    member = _object(value, where).get(name)
    if not isinstance(member, kind):
        raise QueryError(f"{where}.{name}: expected {'a list' if kind is list else 'a string'}")
    return member


def refusal(agency: Agency, query: Query, purpose: str) -> str | None:
    """Why this agency may not ask this, or None: every claim and the purpose must be among
    those it is registered for (a birth date where ``age_over_18`` would do is refused)."""
    if purpose not in agency.purposes:
        return "the purpose is not one the agency is registered for"
    beyond = sorted(".".join(path) for path in query.paths - agency.claims)
    if beyond:
        return f"the agency is not registered to ask for: {', '.join(beyond)}"
    return None


def answer(claims: Mapping[str, Any], query: Query) -> dict[str, Any]:
    """Only the asked-for claims of a verified presentation, in their nested shape; ``Unmet``
    if one is missing or has a value the query does not allow."""
    if claims.get("vct") not in query.vct_values:
        raise Unmet("credential_type", "the credential is not of a type the query asks for")
    selected: dict[str, Any] = {}
    for claim in query.claims:
        value = _at(claims, claim.path)
        if value is _MISSING:
            raise Unmet("claims_missing", f"not disclosed: {'.'.join(claim.path)}")
        if claim.values is not None and value not in claim.values:
            raise Unmet("claim_value", f"not an accepted value: {'.'.join(claim.path)}")
        _put(selected, claim.path, value)
    return selected


_MISSING = object()


def _at(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = claims
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value
