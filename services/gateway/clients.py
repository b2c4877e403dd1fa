"""The registered clients: who may ask the token endpoint for a token, with which public keys,
for which scopes.

Clients authenticate with ``private_key_jwt`` (RFC 7523 §2.2): they register public keys, never
share a secret. The registry is JSON, ``{"clients": [{"client_id", "kind", "scopes", "jwks"}]}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from shared.auth import JwksError, VerificationKey, parse_jwks

KINDS = frozenset({"provider", "agency", "gate", "operator"})
RIDER_APP = "rider-app"
"""The ``client_id`` of tokens riders get by signing in; no registered client may take it."""

_FIELDS = frozenset({"client_id", "kind", "scopes", "jwks"})
# Ids are safe to name in logs and error messages; scopes are RFC 6749 §3.3 scope-tokens.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")


class ClientsError(ValueError):
    """A registry we cannot use; one line naming the client, never its key material."""


@dataclass(frozen=True)
class Client:
    """A registered client: what it is, what it may ask for, and the keys it signs with."""

    client_id: str
    kind: str
    scopes: frozenset[str]
    keys: tuple[VerificationKey, ...]

    def key(self, kid: str) -> VerificationKey | None:
        """The client's key with this ``kid``, if it registered one."""
        return next((key for key in self.keys if key.kid == kid), None)


def parse_clients(text: str) -> dict[str, Client]:
    """The clients of a registry document, by ``client_id``; ``ClientsError`` on anything off."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    entries = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ClientsError('expected JSON like {"clients": [...]}')
    clients: dict[str, Client] = {}
    for position, entry in enumerate(entries):
        client = _client(f"clients[{position}]", entry)
        if client.client_id in clients:
            raise ClientsError(f"clients[{position}] ({client.client_id}): duplicate client_id")
        clients[client.client_id] = client
    return clients


def _client(where: str, entry: object) -> Client:
    if not isinstance(entry, dict):
        raise ClientsError(f"{where}: expected a JSON object")
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ClientsError(f"{where}: client_id must be 1-128 of A-Z a-z 0-9 . _ : -")
    where = f"{where} ({client_id})"
    if client_id == RIDER_APP:
        raise ClientsError(f"{where}: this client_id is reserved for riders")
    unknown = sorted(name for name in entry if name not in _FIELDS)
    if unknown:
        raise ClientsError(f"{where}: unknown field {unknown[0][:40]!r}")
    if entry.get("kind") not in KINDS:
        raise ClientsError(f"{where}: kind must be one of {', '.join(sorted(KINDS))}")
    return Client(
        client_id, entry["kind"], _scopes(where, entry.get("scopes")), _keys(where, entry)
    )


def _scopes(where: str, scopes: object) -> frozenset[str]:
    if not isinstance(scopes, list) or not scopes:
        raise ClientsError(f"{where}: scopes must be a non-empty list")
    if not all(isinstance(scope, str) and _SCOPE.fullmatch(scope) for scope in scopes):
        raise ClientsError(f"{where}: each scope is a non-empty string without spaces or quotes")
    return frozenset(scopes)


def _keys(where: str, entry: dict[str, object]) -> tuple[VerificationKey, ...]:
    # parse_jwks names a bad key by position only, never echoing its material.
    try:
        keys = parse_jwks(json.dumps(entry.get("jwks")))
    except JwksError as error:
        raise ClientsError(f"{where}: jwks: {error}") from None
    if not keys:
        raise ClientsError(f"{where}: jwks has no keys; the client could never authenticate")
    return keys
