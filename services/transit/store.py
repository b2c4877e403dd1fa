"""SQL for transit's own schema (asyncpg)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from services.transit.fares import Quote
from services.transit.journeys import Direction, Journey, Tap
from shared.db import Connection


async def pseudonym_of(conn: Connection, subject: str, now: datetime) -> bytes:
    """The rider's 16-byte pseudonym (made on first enrolment)."""
    found: bytes = await conn.fetchval(
        "INSERT INTO riders (pseudonym, subject, created_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject RETURNING pseudonym",
        secrets.token_bytes(16),
        subject,
        now,
    )
    return bytes(found)


async def add_credential(
    conn: Connection,
    credential_id: bytes,
    pseudonym: bytes,
    category: str,
    kid: str,
    not_before: datetime,
    not_after: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO ride_credentials (credential_id, pseudonym, category, kid, not_before,"
        " not_after, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $5)",
        credential_id,
        pseudonym,
        category,
        kid,
        not_before,
        not_after,
    )


async def add_taps(
    conn: Connection, taps: Sequence[tuple[Tap, bytes, str]], now: datetime
) -> set[bytes]:
    """Record taps not seen before; the pseudonyms of the riders who have new ones."""
    rows = await conn.fetch(
        "INSERT INTO taps (tap_id, pseudonym, credential_id, station, gate, direction, at,"
        " received_at) SELECT t.*, $8::timestamptz FROM unnest($1::uuid[], $2::bytea[],"
        " $3::bytea[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) AS t"
        " ON CONFLICT (tap_id) DO NOTHING RETURNING pseudonym",
        [tap.tap_id for tap, _, _ in taps],
        [bytes.fromhex(tap.rider) for tap, _, _ in taps],
        [credential for _, credential, _ in taps],
        [tap.station for tap, _, _ in taps],
        [gate for _, _, gate in taps],
        [tap.direction.value for tap, _, _ in taps],
        [tap.at for tap, _, _ in taps],
        now,
    )
    return {bytes(row["pseudonym"]) for row in rows}


class History(NamedTuple):
    """What re-deciding a rider's journeys needs: their taps, the category of the credential
    behind each tap, and their journeys as last decided (by id)."""

    pseudonym: bytes
    subject: str
    taps: list[Tap]
    categories: dict[uuid.UUID, str]
    before: dict[uuid.UUID, asyncpg.Record]


async def histories(
    conn: Connection, pseudonyms: Sequence[bytes], since: datetime, taps_since: datetime
) -> list[History]:
    """The riders' taps since ``taps_since`` and journeys started since ``since``, each rider
    locked until the transaction ends against a concurrent re-deciding (in one order, so two
    uploads never deadlock). Riders transit does not know are left out."""
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(encode(p, 'hex'), 0)))"
        " FROM (SELECT p FROM unnest($1::bytea[]) AS p ORDER BY p) AS riders",
        list(pseudonyms),
    )
    subjects = await conn.fetch(
        "SELECT pseudonym, subject FROM riders WHERE pseudonym = ANY($1::bytea[])",
        list(pseudonyms),
    )
    taps = await conn.fetch(
        "SELECT t.pseudonym, t.tap_id, t.station, t.direction, t.at, c.category FROM taps t"
        " LEFT JOIN ride_credentials c USING (credential_id)"
        " WHERE t.pseudonym = ANY($1::bytea[]) AND t.at >= $2",
        list(pseudonyms),
        taps_since,
    )
    journeys = await conn.fetch(
        "SELECT pseudonym, journey_id, kind, due_minor, version, currency, entry_tap, exit_tap,"
        " amount_minor, category FROM journeys"
        " WHERE pseudonym = ANY($1::bytea[]) AND started_at >= $2",
        list(pseudonyms),
        since,
    )
    found = {
        bytes(r["pseudonym"]): History(bytes(r["pseudonym"]), r["subject"], [], {}, {})
        for r in subjects
    }
    for r in taps:
        if (rider := found.get(bytes(r["pseudonym"]))) is not None:
            rider.taps.append(Tap(r["tap_id"], rider.pseudonym.hex(), r["station"],
                                  Direction(r["direction"]), r["at"]))  # fmt: skip
            if r["category"] is not None:
                rider.categories[r["tap_id"]] = r["category"]
    for r in journeys:
        if (rider := found.get(bytes(r["pseudonym"]))) is not None:
            rider.before[r["journey_id"]] = r
    return [found[p] for p in pseudonyms if p in found]


class Decided(NamedTuple):
    """A journey as priced and capped: ``due`` is what the rider owes for it, stated to the
    wallet under ``version``."""

    pseudonym: bytes
    journey: Journey
    category: str
    quote: Quote
    due: int
    version: int


async def save_journeys(conn: Connection, decided: Sequence[Decided], now: datetime) -> None:
    """Write the journeys decided, in one statement (products as JSON arrays: a column of
    arrays of different lengths is no SQL array)."""
    if not decided:
        return
    await conn.execute(
        "INSERT INTO journeys (journey_id, pseudonym, kind, entry_station, exit_station,"
        " started_at, amount_minor, currency, products, reason, due_minor, version, priced_at,"
        " entry_tap, exit_tap, category)"
        " SELECT j.id, j.pseudonym, j.kind, j.entry_station, j.exit_station, j.started_at,"
        " j.amount, j.currency, ARRAY(SELECT jsonb_array_elements_text(j.products::jsonb)),"
        " j.reason, j.due, j.version, $13, j.entry_tap, j.exit_tap, j.category"
        " FROM unnest($1::uuid[], $2::bytea[], $3::text[], $4::text[], $5::text[],"
        " $6::timestamptz[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::bigint[],"
        " $12::int[], $14::uuid[], $15::uuid[], $16::text[]) AS j(id, pseudonym, kind,"
        " entry_station, exit_station, started_at, amount, currency, products, reason, due,"
        " version, entry_tap, exit_tap, category)"
        " ON CONFLICT (journey_id) DO UPDATE SET kind = EXCLUDED.kind,"
        " entry_station = EXCLUDED.entry_station, exit_station = EXCLUDED.exit_station,"
        " amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency,"
        " products = EXCLUDED.products, reason = EXCLUDED.reason,"
        " due_minor = EXCLUDED.due_minor, version = EXCLUDED.version,"
        " priced_at = EXCLUDED.priced_at, entry_tap = EXCLUDED.entry_tap,"
        " exit_tap = EXCLUDED.exit_tap, category = EXCLUDED.category",
        [d.journey.journey_id for d in decided],
        [d.pseudonym for d in decided],
        [d.journey.kind.value for d in decided],
        [d.journey.entry and d.journey.entry.station for d in decided],
        [d.journey.exit and d.journey.exit.station for d in decided],
        [d.journey.started_at for d in decided],
        [d.quote.amount_minor for d in decided],
        [d.quote.currency for d in decided],
        [json.dumps(d.quote.products) for d in decided],
        [d.quote.reason for d in decided],
        [d.due for d in decided],
        [d.version for d in decided],
        now,
        [d.journey.entry and d.journey.entry.tap_id for d in decided],
        [d.journey.exit and d.journey.exit.tap_id for d in decided],
        [d.category for d in decided],
    )


async def supersede(
    conn: Connection, journeys: Sequence[tuple[uuid.UUID, int]], now: datetime
) -> None:
    """Journeys a re-pairing gave the taps of to others: kept, owing nothing, so that their
    versions go on counting up should the same taps ever open them again."""
    if not journeys:
        return
    await conn.execute(
        "UPDATE journeys SET kind = 'superseded', due_minor = 0, version = s.version,"
        " priced_at = $3 FROM unnest($1::uuid[], $2::int[]) AS s(id, version)"
        " WHERE journey_id = s.id",
        [journey_id for journey_id, _ in journeys],
        [version for _, version in journeys],
        now,
    )


async def rider_journeys(
    conn: Connection | asyncpg.Pool, subject: str, limit: int
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT j.journey_id, j.kind, j.entry_station, j.exit_station, j.started_at,"
            " j.amount_minor, j.currency, j.products, j.reason, j.due_minor, j.category"
            " FROM journeys j JOIN riders r USING (pseudonym) WHERE r.subject = $1"
            " AND j.kind <> 'superseded'"
            " ORDER BY j.started_at DESC LIMIT $2",
            subject,
            limit,
        )
    )


async def rider_standing(
    pool: asyncpg.Pool, subject: str, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """A rider's newest credentials, and why gates deny them (None: they do not)."""
    credentials = await pool.fetch(
        "SELECT c.credential_id, c.category, c.not_before, c.not_after FROM ride_credentials c"
        " JOIN riders r USING (pseudonym) WHERE r.subject = $1 ORDER BY c.issued_at DESC"
        " LIMIT $2",
        subject,
        limit,
    )
    reason: str | None = await pool.fetchval(
        "SELECT c.reason FROM denied d JOIN riders r USING (pseudonym)"
        " JOIN deny_changes c ON c.version = d.since_version WHERE r.subject = $1",
        subject,
    )
    return list(credentials), reason


# -- concessions ------------------------------------------------------------------------------


async def add_concession_request(
    conn: Connection, request_id: str, pseudonym: bytes, category: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO concession_requests (request_id, pseudonym, category, created_at)"
        " VALUES ($1, $2, $3, $4)",
        request_id,
        pseudonym,
        category,
        now,
    )


async def concession_request(
    conn: Connection | asyncpg.Pool, request_id: str, subject: str
) -> asyncpg.Record | None:
    """The rider's own request (None for another's), and whether it was granted."""
    return await conn.fetchrow(
        "SELECT q.request_id, q.pseudonym, q.category, c.granted_at"
        " FROM concession_requests q JOIN riders r USING (pseudonym)"
        " LEFT JOIN concessions c ON c.request_id = q.request_id"
        " WHERE q.request_id = $1 AND r.subject = $2",
        request_id,
        subject,
    )


async def grant_concession(
    conn: Connection, pseudonym: bytes, category: str, request_id: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO concessions (pseudonym, category, granted_at, request_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (pseudonym, category) DO UPDATE"
        " SET granted_at = EXCLUDED.granted_at, request_id = EXCLUDED.request_id",
        pseudonym,
        category,
        now,
        request_id,
    )


async def has_concession(conn: Connection, pseudonym: bytes, category: str) -> bool:
    found = await conn.fetchval(
        "SELECT true FROM concessions WHERE pseudonym = $1 AND category = $2", pseudonym, category
    )
    return bool(found)


# -- the deny list --------------------------------------------------------------------------


async def set_denied(
    conn: Connection, pseudonym: bytes, denied: bool, reason: str, now: datetime
) -> int | None:
    """Deny a rider at the gates, or let them through again; the list's new version, or None
    when nothing changed. Changes are numbered one at a time (an advisory lock)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.deny'))")
    is_denied = await conn.fetchval("SELECT true FROM denied WHERE pseudonym = $1", pseudonym)
    if bool(is_denied) == denied:
        return None
    version: int = await conn.fetchval(
        "INSERT INTO deny_changes (version, pseudonym, denied, reason, at)"
        " SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4 FROM deny_changes"
        " RETURNING version",
        pseudonym,
        denied,
        reason,
        now,
    )
    if denied:
        await conn.execute(
            "INSERT INTO denied (pseudonym, since_version) VALUES ($1, $2)", pseudonym, version
        )
    else:
        await conn.execute("DELETE FROM denied WHERE pseudonym = $1", pseudonym)
    return version


async def deny_version(conn: Connection | asyncpg.Pool) -> int:
    found: int | None = await conn.fetchval("SELECT max(version) FROM deny_changes")
    return found or 0


async def denied_now(conn: Connection | asyncpg.Pool) -> list[bytes]:
    return [bytes(r[0]) for r in await conn.fetch("SELECT pseudonym FROM denied")]


async def deny_changes_after(
    conn: Connection | asyncpg.Pool, version: int
) -> tuple[list[bytes], list[bytes]]:
    """The net change since ``version``: who is denied now and was not, and the reverse."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (pseudonym) pseudonym, denied FROM deny_changes"
        " WHERE version > $1 ORDER BY pseudonym, version DESC",
        version,
    )
    added = [bytes(r["pseudonym"]) for r in rows if r["denied"]]
    removed = [bytes(r["pseudonym"]) for r in rows if not r["denied"]]
    return added, removed
