"""The citizens' audit log in the database: appending a check, signing checkpoints, a citizen's
entries with their inclusion proofs, and the full verification ``cardless audit verify`` runs.

``audit`` holds the hashing and the Merkle tree; this module moves them in and out of rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import asyncpg
from jwt.utils import base64url_encode

from services.identity import audit, store
from services.identity.audit import Checkpoint, Entry, Finding, StoredEntry
from shared import db
from shared.clock import SystemClock
from shared.db import Connection
from shared.keyring import Keyring, RotationPolicy


async def append(
    conn: Connection,
    *,
    at: datetime,
    citizen: str,
    agency: str,
    purpose: str,
    claims: tuple[str, ...],
    result: str,
    reason: str | None,
    request_id: str,
) -> Entry:
    """Add one check to the log, in the caller's transaction (which answers the request)."""
    size, previous = await store.audit_head(conn)
    entry = Entry(size, at, citizen, agency, purpose, claims, result, reason, request_id)
    leaf = entry.leaf_hash()
    # The left siblings a new leaf completes subtrees with are the roots of the tree so far.
    known = await store.nodes(conn, audit.root_nodes(size))
    new_nodes = audit.completed_nodes(size, leaf, lambda level, index: known[(level, index)])
    await store.append_entry(conn, entry, leaf, audit.chain_hash(previous, leaf), new_nodes)
    return entry


async def checkpoint(pool: asyncpg.Pool, keyring: Keyring, origin: str, now: datetime) -> int:
    """Sign the tree head if the log grew since the last checkpoint; the size signed."""
    async with pool.acquire() as conn, conn.transaction():
        size, chain = await store.audit_head(conn)
        latest = await store.latest_checkpoint(conn)
        if size == 0 or (latest is not None and latest[0] == size):
            return 0 if latest is None else latest[0]
        root = audit.tree_head(size, await store.nodes(conn, audit.root_nodes(size)))
        iat = int(now.timestamp())
        claims = audit.checkpoint_claims(
            origin=origin, size=size, root=root, chain_head=chain, iat=iat
        )
        # The signing key stays published this long: so long can the checkpoint be checked.
        claims["exp"] = iat + keyring.policy.token_ttl_s
        await store.add_checkpoint(conn, size, keyring.sign(claims, typ=audit.CHECKPOINT_TYP), now)
    return size


async def citizen_view(conn: Connection, citizen: str, limit: int) -> dict[str, Any]:
    """A citizen's latest entries, each with its inclusion proof against the latest checkpoint
    (entries newer than it come without one until the next checkpoint)."""
    latest = await store.latest_checkpoint(conn)
    size = 0 if latest is None else latest[0]
    entries = await store.entries_of(conn, citizen, limit)
    proven = [e for e in entries if e.seq < size]
    wanted = {key for e in proven for key in audit.proof_nodes(e.seq, size)}
    nodes = await store.nodes(conn, wanted)
    return {
        "checkpoint": None if latest is None else latest[1],
        "entries": [
            _shown(e, audit.inclusion_proof(e.seq, size, nodes) if e.seq < size else None)
            for e in entries
        ],
    }


def _shown(entry: Entry, proof: list[bytes] | None) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "agency": entry.agency,
        "purpose": entry.purpose,
        "claims": list(entry.claims),
        "result": entry.result,
        "reason": entry.reason,
        "request_id": entry.request_id,
        # What the citizen needs to check this entry against the checkpoint themselves.
        "leaf_hash": base64url_encode(entry.leaf_hash()).decode(),
        "inclusion_proof": None if proof is None else [base64url_encode(h).decode() for h in proof],
    }


async def verify(
    conn: Connection, keys: Callable[[Mapping[str, Any]], tuple[Any, str] | None]
) -> Finding | None:
    """Walk the whole log against its chain, its tree and every signed checkpoint; the first
    bad entry, or None. A checkpoint that does not verify is itself a finding."""
    signed: list[Checkpoint] = []
    for size, token in await store.checkpoints(conn):
        try:
            signed.append(audit.read_checkpoint(token, keys=keys))
        except audit.CheckpointError as error:
            return Finding(size - 1, "checkpoint", f"the checkpoint of size {size}: {error.reason}")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _walk(store.entry_batches(conn), signed)


async def _walk(
    batches: AsyncIterator[list[StoredEntry]], signed: list[Checkpoint]
) -> Finding | None:
    """``audit.verify_log`` in a worker thread, fed batch by batch as they are read: a log of
    millions of entries is checked in constant memory."""
    fed: queue.Queue[list[StoredEntry] | None] = queue.Queue(maxsize=2)

    def rows() -> Iterator[StoredEntry]:
        while (batch := fed.get()) is not None:
            yield from batch

    walking = asyncio.ensure_future(asyncio.to_thread(audit.verify_log, rows(), signed))
    # Once the walk stops early (a finding), nothing takes from the queue: drain it.
    walking.add_done_callback(lambda _: _drain(fed))
    async for batch in batches:
        if walking.done():
            break
        await asyncio.to_thread(fed.put, batch)
    else:
        await asyncio.to_thread(fed.put, None)
    return await walking


def _drain(fed: queue.Queue[list[StoredEntry] | None]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            fed.get_nowait()


async def verify_database(database_url: str, schema: str = "identity") -> Finding | None:
    """``verify`` on identity's schema at ``database_url``, with the keys published there."""
    pool = await db.create_pool(database_url, schema, max_size=1)
    try:
        keyring = Keyring(pool, SystemClock(), RotationPolicy(algorithm="ES256"))
        await keyring.load()
        by_kid = {k.kid: (k.key, k.algorithm) for k in keyring.verification_keys()}
        async with pool.acquire() as conn:
            return await verify(conn, lambda header: by_kid.get(str(header.get("kid"))))
    finally:
        await pool.close()
