"""SQL for identity's own schema (asyncpg)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.identity.audit import Entry, StoredEntry
from shared.db import Connection

# A random free index: collisions grow as a list fills, so a list is closed at three quarters.
FILL_LIMIT = 0.75
_ATTEMPTS = 32


async def citizen_for(conn: Connection, subject: str | None, now: datetime) -> str:
    """The pseudonymous citizen of a gateway subject (made on first issue); a fresh one for a
    credential that no phone sign-in claims yet."""
    citizen = "c_" + secrets.token_hex(12)
    if subject is None:
        await conn.execute(
            "INSERT INTO citizens (citizen_id, subject, created_at) VALUES ($1, NULL, $2)",
            citizen,
            now,
        )
        return citizen
    found: str = await conn.fetchval(
        "INSERT INTO citizens (citizen_id, subject, created_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject RETURNING citizen_id",
        citizen,
        subject,
        now,
    )
    return found


async def subject_of_citizen(conn: Connection, citizen: str) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT subject FROM citizens WHERE citizen_id = $1", citizen
    )
    return found


async def citizen_of_subject(conn: Connection | asyncpg.Pool, subject: str) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT citizen_id FROM citizens WHERE subject = $1", subject
    )
    return found


async def allocate_status(conn: Connection, size: int, now: datetime) -> tuple[int, int]:
    """A never-used random index of the newest list that is not too full: (list, index)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.lists'))")
    row = await conn.fetchrow(
        "SELECT l.list_id, l.size, count(c.*) AS used FROM status_lists l"
        " LEFT JOIN credentials c USING (list_id)"
        " GROUP BY l.list_id ORDER BY l.list_id DESC LIMIT 1"
    )
    if row is None or row["used"] >= row["size"] * FILL_LIMIT:
        list_id = 1 if row is None else row["list_id"] + 1
        await conn.execute(
            "INSERT INTO status_lists (list_id, size, created_at) VALUES ($1, $2, $3)",
            list_id,
            size,
            now,
        )
        list_size = size
    else:
        list_id, list_size = row["list_id"], row["size"]
    candidates = [secrets.randbelow(list_size) for _ in range(_ATTEMPTS)]
    rows = await conn.fetch(
        "SELECT status_index FROM credentials WHERE list_id = $1 AND status_index = ANY($2)",
        list_id,
        candidates,
    )
    taken = {row[0] for row in rows}
    free = next((i for i in candidates if i not in taken), None)
    if free is None:  # only a list nearly full can get here; FILL_LIMIT keeps it far away
        raise RuntimeError(f"status list {list_id}: no free index after {_ATTEMPTS} draws")
    return list_id, free


async def add_credential(
    conn: Connection,
    *,
    credential_id: str,
    citizen: str,
    list_id: int,
    index: int,
    holder_jkt: str,
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO credentials (credential_id, citizen_id, list_id, status_index, holder_jkt,"
        " issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        credential_id,
        citizen,
        list_id,
        index,
        holder_jkt,
        issued_at,
        expires_at,
    )


async def set_status(
    conn: Connection, credential_id: str, status: int, now: datetime
) -> asyncpg.Record | None:
    """Change a credential's status, except out of revoked (final); the row as it was before."""
    return await conn.fetchrow(
        "UPDATE credentials new SET status = $2, status_changed_at = $3"
        " FROM credentials old WHERE new.credential_id = $1 AND old.credential_id = $1"
        " AND old.status <> 1"
        " RETURNING old.status AS was, new.citizen_id, new.list_id, new.status_index",
        credential_id,
        status,
        now,
    )


async def credential(conn: Connection | asyncpg.Pool, credential_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT credential_id, citizen_id, list_id, status_index, status, issued_at, expires_at"
        " FROM credentials WHERE credential_id = $1",
        credential_id,
    )


async def status_lists(conn: Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT list_id, size FROM status_lists ORDER BY list_id"))


async def statuses(conn: Connection, list_id: int) -> list[tuple[int, int]]:
    """The (index, status) of every credential of a list that is not valid."""
    rows = await conn.fetch(
        "SELECT status_index, status FROM credentials WHERE list_id = $1 AND status <> 0", list_id
    )
    return [(row[0], row[1]) for row in rows]


async def citizen_of_status(conn: Connection, list_id: int, index: int) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT citizen_id FROM credentials WHERE list_id = $1 AND status_index = $2",
        list_id,
        index,
    )
    return found


# -- verification requests ------------------------------------------------------------------


async def add_request(
    conn: Connection | asyncpg.Pool,
    *,
    request_id: str,
    agency: str,
    purpose: str,
    query: Mapping[str, Any],
    nonce: str,
    created_at: datetime,
    expires_at: datetime,
    subject: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO verification_requests"
        " (request_id, agency, purpose, query, nonce, created_at, expires_at, subject)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)",
        request_id,
        agency,
        purpose,
        json.dumps(query),
        nonce,
        created_at,
        expires_at,
        subject,
    )


async def pending_request(conn: Connection, request_id: str) -> asyncpg.Record | None:
    """The request, locked until the answer commits, so a nonce is spent exactly once."""
    return await conn.fetchrow(
        "SELECT request_id, agency, purpose, query, nonce, expires_at, state, subject"
        " FROM verification_requests WHERE request_id = $1 FOR UPDATE",
        request_id,
    )


async def answer_request(
    conn: Connection,
    request_id: str,
    *,
    state: str,
    reason: str | None,
    claims: Mapping[str, Any] | None,
    now: datetime,
) -> None:
    await conn.execute(
        "UPDATE verification_requests SET state = $2, reason = $3, claims = $4::jsonb,"
        " answered_at = $5 WHERE request_id = $1",
        request_id,
        state,
        reason,
        None if claims is None else json.dumps(claims),
        now,
    )


async def read_request(
    conn: Connection | asyncpg.Pool, request_id: str, now: datetime
) -> asyncpg.Record | None:
    """The request as its agency sees it; disclosed claims are handed over once, then erased."""
    return await conn.fetchrow(
        "WITH before AS (SELECT request_id, claims FROM verification_requests"
        "  WHERE request_id = $1 FOR UPDATE)"
        " UPDATE verification_requests r SET claims = NULL,"
        "  claims_read_at = CASE WHEN before.claims IS NULL THEN r.claims_read_at ELSE $2 END"
        " FROM before WHERE r.request_id = before.request_id"
        " RETURNING r.request_id, r.agency, r.purpose, r.query, r.state, r.reason,"
        "  r.created_at, r.expires_at, r.answered_at, r.claims_read_at, before.claims",
        request_id,
        now,
    )


async def erase_unread_claims(conn: Connection | asyncpg.Pool, now: datetime) -> int:
    """Disclosed claims an agency never came for are erased when the request expires."""
    done: str = await conn.execute(
        "UPDATE verification_requests SET claims = NULL WHERE claims IS NOT NULL"
        " AND expires_at < $1",
        now,
    )
    return int(done.split()[-1])


# -- the audit log ----------------------------------------------------------------------------


async def audit_head(conn: Connection) -> tuple[int, bytes]:
    """The log's size and chain head, locked: appends queue here, one at a time."""
    row = await conn.fetchrow("SELECT size, chain FROM audit_head FOR UPDATE")
    assert row is not None, "the migration inserts the head row"
    return int(row["size"]), bytes(row["chain"])


async def nodes(
    conn: Connection, wanted: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    keys = list(wanted)
    rows = await conn.fetch(
        "SELECT level, idx, hash FROM audit_nodes"
        " WHERE (level, idx) IN (SELECT * FROM unnest($1::smallint[], $2::bigint[]))",
        [level for level, _ in keys],
        [index for _, index in keys],
    )
    return {(row["level"], row["idx"]): bytes(row["hash"]) for row in rows}


async def append_entry(
    conn: Connection,
    entry: Entry,
    leaf: bytes,
    chain: bytes,
    new_nodes: Sequence[tuple[int, int, bytes]],
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (seq, at, citizen, agency, purpose, claims, result, reason,"
        " request_id, leaf, chain) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        entry.seq,
        entry.at,
        entry.citizen,
        entry.agency,
        entry.purpose,
        list(entry.claims),
        entry.result,
        entry.reason,
        entry.request_id,
        leaf,
        chain,
    )
    await conn.executemany(
        "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)", new_nodes
    )
    await conn.execute("UPDATE audit_head SET size = $1, chain = $2", entry.seq + 1, chain)


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        seq=row["seq"],
        at=row["at"],
        citizen=row["citizen"],
        agency=row["agency"],
        purpose=row["purpose"],
        claims=tuple(row["claims"]),
        result=row["result"],
        reason=row["reason"],
        request_id=row["request_id"],
    )


_ENTRY_COLUMNS = "seq, at, citizen, agency, purpose, claims, result, reason, request_id"


async def entries_of(conn: Connection, citizen: str, limit: int) -> list[Entry]:
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM audit_log WHERE citizen = $1"  # noqa: S608 - constant
        " ORDER BY seq DESC LIMIT $2",
        citizen,
        limit,
    )
    return [_entry(row) for row in rows]


async def entry_batches(conn: Connection, batch: int = 5000) -> AsyncIterator[list[StoredEntry]]:
    """Every entry as stored, in seq order, a batch at a time (the log may be long)."""
    after = -1
    while True:
        rows = await conn.fetch(
            f"SELECT {_ENTRY_COLUMNS}, leaf, chain FROM audit_log"  # noqa: S608 - constant
            " WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            batch,
        )
        if rows:
            yield [StoredEntry(_entry(r), bytes(r["leaf"]), bytes(r["chain"])) for r in rows]
        if len(rows) < batch:
            return
        after = rows[-1]["seq"]


async def add_checkpoint(conn: Connection, size: int, token: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO audit_checkpoints (size, token, created_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (size) DO NOTHING",
        size,
        token,
        now,
    )


async def latest_checkpoint(conn: Connection | asyncpg.Pool) -> tuple[int, str] | None:
    row = await conn.fetchrow(
        "SELECT size, token FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
    )
    return None if row is None else (int(row["size"]), str(row["token"]))


async def checkpoints(conn: Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT size, token FROM audit_checkpoints ORDER BY size")
    return [(int(row["size"]), str(row["token"])) for row in rows]
