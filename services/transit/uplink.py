"""A station's way to transit: the durable buffer of taps waiting to go, the gate's access
token (``services.gateway.client``), the sync of issuer keys and deny list, and batched
uploads of taps.

The buffer is SQLite (stdlib) in WAL mode with ``synchronous=FULL``: each tap is its own
transaction, on disk (WAL fsynced) before the gate reports its decision, and an acknowledged
batch leaves in one transaction. An append-only file with fsync would be as durable, but it
needs its own framing, a check for a torn last record, an "acknowledged up to" mark and
compaction; SQLite is all of that, long tested, and its ``seq`` keeps the taps in order.
Tap ids are made at the gate and transit records a tap once per id: a crash after an upload
but before its taps leave the buffer sends them again, harmlessly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import NamedTuple

import aiohttp

from services.gateway import demo
from services.gateway.client import Answer, GatewayClient, GatewayError
from services.transit import ridecode
from services.transit.denylist import DELTA_MAGIC, Delta, DenyList, DenyListError, VersionGap
from services.transit.gate import GateVerifier

log = logging.getLogger(__name__)

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 60.0
# Refusals of a batch's content: the batch is halved until the tap transit will not take is
# alone, and that one is set aside. Any other 4xx (401 after a fresh token, 403, 404) is the
# gate's configuration, not its taps: they are kept and the upload retried after a backoff.
BAD_BATCH = frozenset({400, 413, 422})
ISSUER_KEY_TYPES = {"EdDSA": ridecode.ED25519, "ES256": ridecode.P256}
TAPS = "/v1/transit/taps"
ISSUER_KEYS = "/v1/transit/issuer-keys"
DENY_LIST = "/v1/transit/deny-list"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS taps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tap_id TEXT NOT NULL UNIQUE, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (
    tap_id TEXT PRIMARY KEY, body BLOB NOT NULL, status INTEGER NOT NULL, problem TEXT NOT NULL,
    at TEXT NOT NULL);
"""


class Waiting(NamedTuple):
    """A tap in the buffer: its place in line, its id, and the JSON transit will get."""

    seq: int
    tap_id: str
    body: bytes


class TapBuffer:
    """Taps transit has not acknowledged yet, oldest first, on the gate's disk."""

    def __init__(self, path: Path) -> None:
        # Autocommit: each tap is its own transaction, durable when ``add`` returns.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def add(self, tap_id: str, body: bytes) -> None:
        """Keep a tap; on disk when this returns."""
        self._db.execute("INSERT INTO taps (tap_id, body) VALUES (?, ?)", (tap_id, body))

    def oldest(self, limit: int) -> list[Waiting]:
        rows = self._db.execute("SELECT seq, tap_id, body FROM taps ORDER BY seq LIMIT ?", (limit,))
        return [Waiting(*row) for row in rows]

    def remove(self, taps: list[Waiting]) -> None:
        """Forget taps transit acknowledged, all or none."""
        with self._transaction():
            self._db.executemany("DELETE FROM taps WHERE seq = ?", [(t.seq,) for t in taps])

    def set_aside(self, tap: Waiting, status: int, problem: str) -> None:
        """Move a tap transit refuses out of the line, kept for an operator to look at."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?, ?, ?)",
                (tap.tap_id, tap.body, status, problem, datetime.now(UTC).isoformat()),
            )
            self._db.execute("DELETE FROM taps WHERE seq = ?", (tap.seq,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM taps").fetchone()[0])

    def set_aside_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM set_aside").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


@dataclass(frozen=True)
class GateClient:
    """Who the station is at the gateway: its client id, whose key ``up`` keeps in the city's
    data directory (``clients/<id>.pem``)."""

    gateway_url: str
    data_dir: Path
    client_id: str = "station-0001"

    def url(self, path: str) -> str:
        return self.gateway_url.rstrip("/") + path

    def assertion(self, token_url: str) -> str:
        """A ``private_key_jwt`` assertion, as ``cardless token`` signs it; DemoError (one
        line for the operator) if the key is not there."""
        return demo.client_assertion(self.data_dir, self.client_id, token_url)


class UplinkError(GatewayError):
    """Transit answered what a gate cannot use (issuer keys, a deny list)."""


NETWORK_FAILURES = (aiohttp.ClientError, TimeoutError, GatewayError)


class Uplink:
    """The station's network side, through the gateway: its access token (``private_key_jwt``
    as the gate's client), the sync of issuer keys and deny list, and the tap uploads."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        client: GateClient,
        verifier: GateVerifier,
        buffer: TapBuffer,
        *,
        batch: int,
        synced: Callable[[], None],
    ) -> None:
        """``synced`` runs after every sync, even a failed one: the station saves its state."""
        self._http, self._client, self._verifier, self._buffer = http, client, verifier, buffer
        self._gateway = GatewayClient(http, client.gateway_url, client.assertion)
        self._batch, self._synced = batch, synced
        self._delay = BACKOFF_FIRST_S

    # -- sync ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Learn transit's issuer keys and the deny list's changes; the state to disk."""
        try:
            await self._sync_issuer_keys()
            await self._sync_deny_list()
        finally:
            self._synced()

    async def try_sync(self) -> bool:
        """:meth:`sync`, logging a failure: offline, the gate goes on with what it has."""
        try:
            await self.sync()
        except NETWORK_FAILURES as error:
            log.warning("gate sync failed; deciding offline", extra={"error": repr(error)})
            return False
        return True

    async def _sync_issuer_keys(self) -> None:
        async with self._http.get(self._client.url(ISSUER_KEYS)) as answer:
            if answer.status != 200:
                raise UplinkError(f"issuer keys: {answer.status}")
            keys = issuer_keys(await answer.read())
        verifier = self._verifier
        for kid, key in keys.items():
            verifier.add_issuer_key(kid, key)
        retired = verifier.issuer_kids - keys.keys() if keys else frozenset()
        for kid in retired:  # transit stops publishing a key after its last credential expired
            verifier.remove_issuer_key(kid)

    async def _sync_deny_list(self) -> None:
        verifier = self._verifier
        since = {"since": str(verifier.deny.version)}
        answer = await self._gateway.request("GET", DENY_LIST, query=since)
        try:
            if answer.status == 200 and answer.body.startswith(DELTA_MAGIC):
                verifier.apply_delta(Delta.decode(answer.body))
            elif answer.status == 200:
                verifier.replace_deny_list(DenyList.load(answer.body))
            elif answer.status != 204:
                raise UplinkError(f"deny list: {answer.status}")
        except VersionGap:  # a delta from another version than ours: take the whole list
            whole = await self._gateway.request("GET", DENY_LIST)
            if whole.status != 200:
                raise UplinkError(f"deny list: {whole.status}") from None
            verifier.replace_deny_list(_deny_list(whole.body))
        except DenyListError as error:
            raise UplinkError(f"deny list: {error.reason}") from None

    # -- uploads ---------------------------------------------------------------------------

    async def upload_once(self) -> float | None:
        """Send the oldest waiting taps (a batch): None when transit took them or none wait,
        else the seconds to wait before trying again."""
        waiting = self._buffer.oldest(self._batch)
        return await self.upload(waiting) if waiting else None

    async def upload(self, taps: list[Waiting]) -> float | None:
        """Send ``taps``; they leave the buffer only once transit acknowledged them."""
        body = b'{"taps":[' + b",".join(tap.body for tap in taps) + b"]}"
        try:
            answer = await self._gateway.request("POST", TAPS, body)
        except NETWORK_FAILURES as error:
            log.warning("tap upload failed", extra={"taps": len(taps), "error": repr(error)})
            return self._back_off()
        if 200 <= answer.status < 300:
            self._buffer.remove(taps)
            self._delay = BACKOFF_FIRST_S
            log.info("taps uploaded", extra={"taps": len(taps)})
            return None
        if answer.status == 429 or answer.status >= 500:
            log.warning("tap upload deferred", extra={"status": answer.status, "taps": len(taps)})
            return retry_after(answer.headers) or self._back_off()
        if answer.status in BAD_BATCH:
            return await self._isolate(taps, answer)
        log.error("tap upload refused; taps kept", extra={"status": answer.status,
                  "problem": _problem_type(answer.body), "taps": len(taps)})  # fmt: skip
        return self._back_off()

    async def _isolate(self, taps: list[Waiting], refused: Answer) -> float | None:
        """Halve a refused batch until the refused tap is alone, and set that one aside:
        one bad tap must not hold the others back forever (nor be dropped unseen)."""
        if len(taps) == 1:
            problem = _problem_type(refused.body)
            self._buffer.set_aside(taps[0], refused.status, problem)
            log.error("tap refused by transit; set aside", extra={"tap_id": taps[0].tap_id,
                      "status": refused.status, "problem": problem})  # fmt: skip
            return None
        half = len(taps) // 2
        for part in (taps[:half], taps[half:]):
            if (wait := await self.upload(part)) is not None:
                return wait
        return None

    def _back_off(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX_S)
        return delay * random.uniform(0.5, 1.0)  # jitter: a station's gates do not retry in step

    async def flush(self, within: float) -> int:
        """Upload what waits for at most ``within`` seconds; how many taps are left."""
        buffer = self._buffer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while len(buffer):
                    if (wait := await self.upload_once()) is not None:
                        await asyncio.sleep(wait)
        return len(buffer)


def issuer_keys(document: bytes) -> dict[str, ridecode.PublicKey]:
    """The keys of ``GET /v1/transit/issuer-keys`` by kid; UplinkError if it is not one."""
    try:
        published = json.loads(document)["keys"]
        keys = {}
        for entry in published:
            raw = base64.urlsafe_b64decode(entry["x"] + "==")
            keys[entry["kid"]] = ridecode.load_public_key(ISSUER_KEY_TYPES[entry["alg"]], raw)
    except (TypeError, KeyError, ValueError, ridecode.CodeError):
        raise UplinkError("issuer keys: not a key set this gate can use") from None
    return keys


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (delay or HTTP date), at most the longest backoff."""
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return min(float(value), BACKOFF_MAX_S)
    try:
        delay = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None
    return min(max(delay, 0.0), BACKOFF_MAX_S)


def _deny_list(body: bytes) -> DenyList:
    try:
        return DenyList.load(body)
    except DenyListError as error:
        raise UplinkError(f"deny list: {error.reason}") from None


def _problem_type(body: bytes) -> str:
    """A problem+json's type: stable, and never the rider's data."""
    try:
        found = json.loads(body).get("type", "about:blank")
    except (ValueError, AttributeError):
        return "not problem+json"
    return str(found)
