"""SQL for transit's own schema (asyncpg)."""

from __future__ import annotations

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


async def subject_of(conn: Connection, pseudonym: bytes) -> str | None:
    found: str | None = await conn.fetchval(
        "SELECT subject FROM riders WHERE pseudonym = $1", pseudonym
    )
    return found


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


async def taps_of(
    conn: Connection, pseudonym: bytes, since: datetime
) -> tuple[list[Tap], dict[uuid.UUID, str]]:
    """A rider's taps since ``since``, and the category of the credential of each, locked
    against a concurrent re-pricing of the rider."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", pseudonym.hex()
    )
    rows = await conn.fetch(
        "SELECT t.tap_id, t.station, t.direction, t.at, c.category FROM taps t"
        " LEFT JOIN ride_credentials c USING (credential_id)"
        " WHERE t.pseudonym = $1 AND t.at >= $2",
        pseudonym,
        since,
    )
    rider = pseudonym.hex()
    taps = [Tap(r["tap_id"], rider, r["station"], Direction(r["direction"]), r["at"]) for r in rows]
    return taps, {r["tap_id"]: r["category"] for r in rows if r["category"] is not None}


async def journeys_of(
    conn: Connection, pseudonym: bytes, since: datetime
) -> dict[uuid.UUID, asyncpg.Record]:
    """A rider's journeys that started since ``since``, as last decided."""
    rows = await conn.fetch(
        "SELECT journey_id, kind, due_minor, version, currency FROM journeys"
        " WHERE pseudonym = $1 AND started_at >= $2",
        pseudonym,
        since,
    )
    return {row["journey_id"]: row for row in rows}


class Decided(NamedTuple):
    """A journey as priced and capped: ``due`` is what the rider owes for it, stated to the
    wallet under ``version``."""

    journey: Journey
    category: str
    quote: Quote
    due: int
    version: int


async def save_journeys(
    conn: Connection, pseudonym: bytes, decided: Sequence[Decided], now: datetime
) -> None:
    await conn.executemany(
        "INSERT INTO journeys (journey_id, pseudonym, kind, entry_station, exit_station,"
        " started_at, amount_minor, currency, products, reason, due_minor, version, priced_at,"
        " entry_tap, exit_tap, category)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        " ON CONFLICT (journey_id) DO UPDATE SET kind = $3, entry_station = $4,"
        " exit_station = $5, amount_minor = $7, currency = $8, products = $9, reason = $10,"
        " due_minor = $11, version = $12, priced_at = $13, entry_tap = $14, exit_tap = $15,"
        " category = $16",
        [
            (
                d.journey.journey_id, pseudonym, d.journey.kind.value,
                d.journey.entry and d.journey.entry.station,
                d.journey.exit and d.journey.exit.station, d.journey.started_at,
                d.quote.amount_minor, d.quote.currency, list(d.quote.products), d.quote.reason,
                d.due, d.version, now, d.journey.entry and d.journey.entry.tap_id,
                d.journey.exit and d.journey.exit.tap_id, d.category,
            )
            for d in decided
        ],
    )  # fmt: skip


async def supersede(
    conn: Connection, journeys: Sequence[tuple[uuid.UUID, int]], now: datetime
) -> None:
    """Journeys a re-pairing gave the taps of to others: kept, owing nothing, so that their
    versions go on counting up should the same taps ever open them again."""
    await conn.executemany(
        "UPDATE journeys SET kind = 'superseded', due_minor = 0, version = $2, priced_at = $3"
        " WHERE journey_id = $1",
        [(journey_id, version, now) for journey_id, version in journeys],
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
