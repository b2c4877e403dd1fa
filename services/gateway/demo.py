"""The demo city's clients, a rider's phone and the demo riders' phones, so a newcomer can try
the city after ``up``.

Each demo client gets an Ed25519 key in the data directory (``clients/<id>.pem``, readable by
its owner only) and a row in ``clients/clients.json``, the registry the gateway reads
(``GATEWAY_CLIENTS=@...``). ``cardless token <client>`` signs a ``private_key_jwt`` assertion
with that key and trades it for an access token at the gateway, as a real client would.

``cardless rider ...`` plays a rider's phone the same way: its key (``rider/phone.pem``) signs
the sign-in, and every request carries a DPoP proof, as the phone app's would.

The demo riders (``up`` seeds a few thousand) have phone keys derived from one secret kept in
the data directory (``riders/seed``), so any tool rebuilds rider i's key without 2000 PEMs;
each is a gateway rider, as its first sign-in would have made it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from services.gateway.assertions import DPOP_TYP, access_token_hash
from services.gateway.client import private_key_jwt
from services.gateway.tokens import CLIENT_ASSERTION_TYPE, JWT_BEARER
from shared.config import OperatorError
from shared.db import Connection
from shared.ids import new_id
from shared.keyring import jwk_thumbprint

# Who the demo city lets in, and with what: one of each kind of client.
DEMO_CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "city-finance": ("operator", ("wallet:finance",)),
    "sandbox": ("provider", ("wallet:settlement",)),  # the provider of `cardless sandbox`
    "city-agency": ("agency", ("identity:verify",)),
    "metro-concessions": ("agency", ("identity:verify",)),  # transit, proving concessions
    "city-registry": ("operator", ("identity:issue", "identity:admin")),
    "station-0001": ("gate", ("transit:taps",)),
}


class DemoError(OperatorError):
    """The demo client cannot get a token; one line saying why."""


def registry(data_dir: Path) -> Path:
    """The demo clients' registry under ``data_dir``, created with their keys on first use."""
    folder = data_dir / "clients"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [client_entry(folder, client_id, *spec) for client_id, spec in DEMO_CLIENTS.items()]
    path = folder / "clients.json"
    path.write_text(json.dumps({"clients": entries}, indent=2))
    return path


def client_entry(
    folder: Path, client_id: str, kind: str, scopes: tuple[str, ...]
) -> dict[str, Any]:
    """A registry row for a client whose key is kept in ``folder`` (made on first use)."""
    key = _key(folder / f"{client_id}.pem")
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    public.update(kid=f"{client_id}-1", alg="EdDSA", use="sig")
    return {
        "client_id": client_id,
        "kind": kind,
        "scopes": list(scopes),
        "jwks": {"keys": [public]},
    }


def _key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise DemoError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return key


def client_key_path(data_dir: Path, client_id: str) -> Path:
    """Where a demo client's private key is kept (made by ``registry``)."""
    return (data_dir / "clients" / f"{client_id}.pem").resolve()


def client_assertion(data_dir: Path, client_id: str, token_url: str) -> str:
    """A short ``private_key_jwt`` assertion (RFC 7523 §2.2) signed with the client's key."""
    path = client_key_path(data_dir, client_id)
    if not path.exists():
        known = ", ".join(DEMO_CLIENTS)
        raise DemoError(f"no key for client {client_id!r} in {path.parent} (demo clients: {known})")
    return private_key_jwt(client_id, _key(path), f"{client_id}-1")(token_url)


def access_token(data_dir: Path, client_id: str, gateway_url: str, scope: str | None) -> str:
    """An access token for a demo client, from the gateway's token endpoint."""
    token_url = f"{gateway_url.rstrip('/')}/oauth/token"
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": client_assertion(data_dir, client_id, token_url),
    }
    if scope:
        form["scope"] = scope
    return _token(token_url, form)


def rider_call(
    data_dir: Path,
    gateway_url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request of the rider's phone through the gateway: sign in, then call with a DPoP
    proof; the answer's status and JSON body."""
    gateway_url = gateway_url.rstrip("/")
    token, key = _rider_token(data_dir, gateway_url)
    jwk = _rider_jwk(key)
    now = int(time.time())
    url = gateway_url + path
    proof_claims = {"htm": method, "htu": url, "iat": now, "jti": str(new_id())}
    proof_claims["ath"] = access_token_hash(token)
    proof_header = {"typ": DPOP_TYP, "jwk": jwk}
    proof = jwt.encode(proof_claims, key, algorithm="EdDSA", headers=proof_header)
    sent = {"Authorization": f"DPoP {token}", "DPoP": proof, **(headers or {})}
    data = None
    if body is not None:
        data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
    return call(urllib.request.Request(url, data=data, headers=sent, method=method))  # noqa: S310


def _rider_token(data_dir: Path, gateway_url: str) -> tuple[str, Ed25519PrivateKey]:
    """Sign in as the rider's phone: a JWT-bearer assertion signed by its key."""
    key = _key(_phone_key_path(data_dir))
    token_url = f"{gateway_url}/oauth/token"
    now = int(time.time())
    sign_in = {"aud": token_url, "iat": now, "exp": now + 60, "jti": str(new_id())}
    assertion = jwt.encode(sign_in, key, algorithm="EdDSA", headers={"jwk": _rider_jwk(key)})
    return _token(token_url, {"grant_type": JWT_BEARER, "assertion": assertion}), key


def _rider_jwk(key: Ed25519PrivateKey) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())), "alg": "EdDSA"}


def rider_subject(data_dir: Path, gateway_url: str) -> str:
    """The demo rider's pseudonymous id at the gateway (its sign-in's subject)."""
    token, _ = _rider_token(data_dir, gateway_url.rstrip("/"))
    subject: str = jwt.decode(token, options={"verify_signature": False})["sub"]
    return subject


def _phone_key_path(data_dir: Path) -> Path:
    folder = data_dir / "rider"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "phone.pem"


def _token(token_url: str, form: dict[str, str]) -> str:
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own gateway
        token_url, data=urllib.parse.urlencode(form).encode(), method="POST"
    )
    status, answer = call(request)
    if status != 200:
        raise DemoError(f"the gateway refused a token: {answer}")
    token: str = answer["access_token"]
    return token


def call(request: urllib.request.Request) -> tuple[int, Any]:
    """Send a request; its status and JSON body (text if not JSON); DemoError if unreachable."""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text
    except OSError as error:
        raise DemoError(f"cannot reach the gateway at {request.full_url}: {error}") from None


# -- the demo riders: phone keys derived from one secret --------------------------------------

SEED_BYTES = 32


def rider_seed(data_dir: Path, *, create: bool = True) -> bytes:
    """The secret the demo riders' phone keys derive from (``riders/seed``, owner only); made
    on first use, unless ``create`` is false (then DemoError if there is none)."""
    path = data_dir / "riders" / "seed"
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(secrets.token_bytes(SEED_BYTES))
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise DemoError(f"no demo riders in {path.parent}: run `cardless up` first") from None
    if len(seed) != SEED_BYTES:
        raise DemoError(f"{path} is not a demo riders' seed ({SEED_BYTES} bytes)")
    return seed


def phone_key(seed: bytes, index: int) -> Ed25519PrivateKey:
    """Demo rider ``index``'s phone key: the same in every tool that holds the seed."""
    raw = hmac.new(seed, f"cardless demo phone {index}".encode(), hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(raw)


def phone_thumbprint(key: Ed25519PrivateKey) -> str:
    """The ``jkt`` the token endpoint knows a phone by (RFC 7638, as its sign-in computes it)."""
    return jwk_thumbprint(_rider_jwk(key))


async def seed_riders(conn: Connection, jkts: Sequence[str], now: datetime) -> list[str]:
    """The gateway's riders of these phone keys, made where missing as a first sign-in makes
    them: their subjects, in order. A key that signed in before keeps its rider."""
    await conn.execute(
        "INSERT INTO riders (rider_id, jkt, created_at)"
        " SELECT r.*, $3::timestamptz FROM unnest($1::text[], $2::text[]) AS r"
        " ON CONFLICT (jkt) DO NOTHING",
        [f"rider_{new_id()}" for _ in jkts],
        list(jkts),
        now,
    )
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT jkt, rider_id FROM riders WHERE jkt = ANY($1::text[])", list(jkts)
    )
    subjects = {row["jkt"]: row["rider_id"] for row in rows}
    return [subjects[jkt] for jkt in jkts]
