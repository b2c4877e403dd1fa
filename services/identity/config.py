"""Identity's own settings, from the environment (``IDENTITY_*``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.auth import VerificationKey, parse_jwks
from shared.config import ConfigError, Env

DAY_S = 86400


@dataclass(frozen=True)
class Agency:
    """A registered agency: the claims and purposes it may ask a citizen for, nothing more."""

    client_id: str
    name: str
    claims: frozenset[tuple[str, ...]]  # paths: ("age_over_18",), ("address", "locality")
    purposes: frozenset[str]


@dataclass(frozen=True)
class IdentityConfig:
    """Where the issuer lives, how long things last, and who may ask for what."""

    # The city's public base URL (the gateway): the issuer, the status lists and the
    # verifier's client_id are all under it.
    public_url: str = "http://127.0.0.1:8080"
    credential_ttl_s: int = 365 * DAY_S
    key_rotation_s: int = 90 * DAY_S
    status_list_size: int = 1 << 20
    status_refresh_s: int = 60  # a status change is in the served list within this
    request_ttl_s: int = 300
    kb_max_age_s: int = 300
    leeway_s: int = 60
    checkpoint_s: int = 60
    agencies: Mapping[str, Agency] = field(default_factory=dict)
    # Other issuers we accept credentials from: iss -> their keys (a JWKS).
    trusted_issuers: Mapping[str, tuple[VerificationKey, ...]] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"{self.public_url}/v1/identity"

    @property
    def vct(self) -> str:
        """The city ID's type, a URL that serves its type metadata."""
        return f"{self.issuer}/types/city-id"

    @property
    def response_uri(self) -> str:
        return f"{self.issuer}/presentations"

    @property
    def client_id(self) -> str:
        """The verifier's OpenID4VP client_id, with its prefix: what a KB-JWT's aud must be."""
        return f"redirect_uri:{self.response_uri}"

    def status_list_uri(self, list_id: int) -> str:
        return f"{self.issuer}/status-lists/{list_id}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> IdentityConfig:
        env = Env(environ)
        gateway = f"http://127.0.0.1:{env.integer('GATEWAY_PORT', 8080)}"
        return cls(
            public_url=env.url("IDENTITY_PUBLIC_URL", ("http", "https"), gateway).rstrip("/"),
            credential_ttl_s=env.integer(
                "IDENTITY_CREDENTIAL_TTL_S", cls.credential_ttl_s, minimum=60
            ),
            key_rotation_s=env.integer("IDENTITY_KEY_ROTATION_S", cls.key_rotation_s, minimum=60),
            status_list_size=_whole_bytes(
                env.integer(
                    "IDENTITY_STATUS_LIST_SIZE", cls.status_list_size, minimum=4, maximum=1 << 24
                )
            ),
            status_refresh_s=env.integer(
                "IDENTITY_STATUS_REFRESH_S", cls.status_refresh_s, minimum=1
            ),
            request_ttl_s=env.integer("IDENTITY_REQUEST_TTL_S", cls.request_ttl_s, minimum=10),
            kb_max_age_s=env.integer("IDENTITY_KB_MAX_AGE_S", cls.kb_max_age_s, minimum=1),
            leeway_s=env.integer("IDENTITY_LEEWAY_S", cls.leeway_s, maximum=600),
            checkpoint_s=env.integer("IDENTITY_CHECKPOINT_S", cls.checkpoint_s, minimum=1),
            agencies=parse_agencies(env.document("IDENTITY_AGENCIES")),
            trusted_issuers=_trusted(env.document("IDENTITY_TRUSTED_ISSUERS")),
        )


def _whole_bytes(size: int) -> int:
    """Four two-bit statuses fill a byte: a list's size is rounded down to a multiple of 4."""
    return size - size % 4


def parse_agencies(text: str) -> dict[str, Agency]:
    """``{"<client id>": {"name": …, "claims": ["age_over_18", "address.locality"],
    "purposes": ["…"]}}``; claim paths are dotted."""
    document = _json_object("IDENTITY_AGENCIES", text)
    agencies = {}
    for client_id, entry in document.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"IDENTITY_AGENCIES: {client_id}: expected an object")
        claims, purposes = entry.get("claims"), entry.get("purposes")
        if not isinstance(claims, list) or not isinstance(purposes, list):
            raise ConfigError(f"IDENTITY_AGENCIES: {client_id}: claims and purposes: lists")
        if not _strings(claims) or not _strings(purposes):
            raise ConfigError(
                f"IDENTITY_AGENCIES: {client_id}: claims and purposes must be lists of strings"
            )
        agencies[client_id] = Agency(
            client_id=client_id,
            name=str(entry.get("name", client_id)),
            claims=frozenset(tuple(path.split(".")) for path in claims),
            purposes=frozenset(purposes),
        )
    return agencies


def _trusted(text: str) -> dict[str, tuple[VerificationKey, ...]]:
    document = _json_object("IDENTITY_TRUSTED_ISSUERS", text)
    try:
        return {iss: parse_jwks(json.dumps(jwks)) for iss, jwks in document.items()}
    except ValueError as error:
        raise ConfigError(f"IDENTITY_TRUSTED_ISSUERS: {error}") from None


def _json_object(name: str, text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        raise ConfigError(f"{name}: not valid JSON") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: expected a JSON object")
    return document


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
