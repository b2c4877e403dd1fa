"""A service's signing keys (the gateway's for access tokens, identity's for credentials):
kept in its schema's ``signing_keys`` table (``shared/migrations/keyring``; a service lists
``keyring`` in its ``components``), so every replica signs with the same key and
publishes the same JWKS, rotated on a schedule.

Each key is published ``publish_ahead_s`` before it starts signing (so services caching the
JWKS already know it), signs for ``sign_for_s``, and stays published until every token it
signed has expired: during the overlap tokens of the old and the new key both verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from shared.auth import VerificationKey
from shared.clock import Clock
from shared.db import Connection, in_transaction

ALGORITHMS = ("EdDSA", "ES256")
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
Period = tuple[datetime, datetime]
# RFC 7638 §3.2: the members that make a key's thumbprint, by key type.
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}
# Two-key advisory locks live apart from the one-key lock the migration runner takes.
_LOCK_CLASS = 0x6B657973  # "keys"


_SELECT = (
    "SELECT kid, algorithm, private_pkcs8, signs_from, signs_until, published_until"
    " FROM signing_keys ORDER BY signs_from"
)


class NoSigningKey(RuntimeError):
    """No key signs at this instant: ``Keyring.refresh()`` never ran, or is long overdue."""


@dataclass(frozen=True)
class RotationPolicy:
    """How long a key signs, how early it is published, and how long tokens live after it."""

    sign_for_s: int = 86400
    publish_ahead_s: int = 3600
    token_ttl_s: int = 600
    leeway_s: int = 30
    algorithm: str = "EdDSA"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}")
        if self.sign_for_s < 1 or self.token_ttl_s < 1:
            raise ValueError("sign_for_s and token_ttl_s: expected at least 1 second")
        if self.publish_ahead_s < 0 or self.leeway_s < 0:
            raise ValueError("publish_ahead_s and leeway_s: expected 0 or more seconds")

    def published_until(self, signs_until: datetime) -> datetime:
        """When a key that signs until ``signs_until`` may leave the JWKS."""
        return signs_until + timedelta(seconds=self.token_ttl_s + self.leeway_s)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an OKP or EC public JWK."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise ValueError("expected an OKP or EC JWK with string members")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def plan_signing_periods(
    existing: Sequence[Period], now: datetime, policy: RotationPolicy
) -> list[Period]:
    """The signing periods to add so that exactly one key signs at every instant from ``now``
    until a whole period past the next publication: gaps are filled, overlaps never made."""
    step = timedelta(seconds=policy.sign_for_s)
    horizon = now + timedelta(seconds=policy.publish_ahead_s) + step
    cursor, added = now.replace(microsecond=0), []
    for start, end in sorted(existing):
        if end <= cursor:
            continue
        while cursor < min(start, horizon):  # a gap, e.g. keys made by a replica clock ahead
            added.append((cursor, min(cursor + step, start)))
            cursor = added[-1][1]
        cursor = max(cursor, end)
    while cursor < horizon:
        added.append((cursor, cursor + step))
        cursor += step
    return added


@dataclass(frozen=True)
class _Key:
    kid: str
    algorithm: str
    private: PrivateKey = field(repr=False)
    signs_from: datetime
    signs_until: datetime
    published_until: datetime
    jwk: dict[str, Any]


class Keyring:
    """The signing keys of the pool's schema, as of the last ``refresh()``."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock, policy: RotationPolicy) -> None:
        self._pool, self._clock, self.policy = pool, clock, policy
        self._keys: tuple[_Key, ...] = ()

    async def refresh(self) -> None:
        """Load the keys, first creating any missing from now to past the next rotation.

        Replicas refreshing at once queue on one lock per schema, so each period gets one key.
        """
        now = self._clock.now()
        rows = await in_transaction(self._pool, lambda conn: self._ensure(conn, now))
        self._keys = tuple(_key(row) for row in rows)

    async def load(self) -> None:
        """Load the keys as they are, creating none: for readers, such as an audit."""
        async with self._pool.acquire() as conn:
            self._keys = tuple(_key(row) for row in await conn.fetch(_SELECT))

    def sign(self, claims: dict[str, Any], *, typ: str = "at+jwt") -> str:
        """``claims`` as a JWS by the key signing now; its ``exp`` may not outlive the key's
        publication (``ValueError``); ``NoSigningKey`` if no key signs now."""
        now = self._clock.now()
        kid, private = self.signing_key()
        exp = claims.get("exp")
        latest = now.timestamp() + self.policy.token_ttl_s
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not exp <= latest:
            raise ValueError("exp is required and at most token_ttl_s ahead")
        algorithm = "EdDSA" if isinstance(private, Ed25519PrivateKey) else "ES256"
        return jwt.encode(claims, private, algorithm=algorithm, headers={"kid": kid, "typ": typ})

    def signing_key(self) -> tuple[str, PrivateKey]:
        """The key signing now, with its kid: for formats that are not JWS (a ride credential)."""
        now = self._clock.now()
        key = next((k for k in self._keys if k.signs_from <= now < k.signs_until), None)
        if key is None:
            raise NoSigningKey("no signing key covers now: has Keyring.refresh() run?")
        return key.kid, key.private

    def jwks(self) -> dict[str, Any]:
        """The JWKS to publish: the public key of every key published now."""
        return {"keys": [dict(key.jwk) for key in self._published()]}

    def verification_keys(self) -> tuple[VerificationKey, ...]:
        """The published keys, for the gateway to verify its own tokens without HTTP."""
        return tuple(
            VerificationKey(k.kid, k.algorithm, k.private.public_key()) for k in self._published()
        )

    def _published(self) -> list[_Key]:
        now, ahead = self._clock.now(), timedelta(seconds=self.policy.publish_ahead_s)
        return [k for k in self._keys if k.signs_from - ahead <= now < k.published_until]

    async def _ensure(self, conn: Connection, now: datetime) -> list[asyncpg.Record]:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", _LOCK_CLASS
        )
        await conn.execute("DELETE FROM signing_keys WHERE published_until <= $1", now)
        existing = await conn.fetch("SELECT signs_from, signs_until FROM signing_keys")
        periods = [(row["signs_from"], row["signs_until"]) for row in existing]
        for signs_from, signs_until in plan_signing_periods(periods, now, self.policy):
            await _create(conn, self.policy, signs_from, signs_until)
        return await conn.fetch(_SELECT)


async def _create(
    conn: Connection, policy: RotationPolicy, signs_from: datetime, signs_until: datetime
) -> None:
    private: PrivateKey = (
        Ed25519PrivateKey.generate()
        if policy.algorithm == "EdDSA"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    await conn.execute(
        "INSERT INTO signing_keys"
        " (kid, algorithm, private_pkcs8, signs_from, signs_until, published_until)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        jwk_thumbprint(_public_jwk(private)),
        policy.algorithm,
        pkcs8,
        signs_from,
        signs_until,
        policy.published_until(signs_until),
    )


def _key(row: asyncpg.Record) -> _Key:
    private = serialization.load_der_private_key(row["private_pkcs8"], password=None)
    if not isinstance(private, PrivateKey):
        raise TypeError(f"signing key {row['kid']} is neither Ed25519 nor P-256")
    jwk = {**_public_jwk(private), "kid": row["kid"], "alg": row["algorithm"], "use": "sig"}
    return _Key(
        row["kid"],
        row["algorithm"],
        private,
        row["signs_from"],
        row["signs_until"],
        row["published_until"],
        jwk,
    )


def _public_jwk(private: PrivateKey) -> dict[str, Any]:
    if isinstance(private, Ed25519PrivateKey):
        return OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
