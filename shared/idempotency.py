"""``Idempotency-Key`` for POSTs that move money (draft-ietf-httpapi-idempotency-key-header-07).

Per principal and route, a key's first request runs its work and stores the answer with the
effect, in one transaction; a retry replays it (4xx too; ``Idempotent-Replayed: true``), another
request with the key is 422 and a duplicate in flight 409. A 5xx is rolled back and not stored;
a claim's lease lets a retry take over a dead request; ``prune`` forgets keys past retention.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from shared.clock import Clock, SystemClock
from shared.db import Connection, in_transaction
from shared.http import Problem
from shared.ids import new_id

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
ANONYMOUS = "anonymous"
"""The principal of callers that are not authenticated."""
LEASE = timedelta(seconds=60)
RETENTION = timedelta(hours=24)
STORED_HEADERS = ("Content-Type", "Content-Location", "Location", "ETag")

_PROBLEMS = "https://cardless.dev/problems/"
KEY_MISSING = _PROBLEMS + "idempotency-key-missing"
KEY_INVALID = _PROBLEMS + "idempotency-key-invalid"
KEY_IN_USE = _PROBLEMS + "idempotency-key-in-use"
KEY_REUSED = _PROBLEMS + "idempotency-key-reused"

# A Structured Field string ("...") or the same characters bare: visible ASCII without the
# quote and backslash (so no escapes to undo), at most 255 of them.
_KEY = re.compile(r'("?)([!#-\[\]-~]{1,255})\1')
_CLAIM_ROUNDS = 3  # a claim loses a race only when the row changes hands between two statements

Work = Callable[[Connection], Awaitable[web.Response]]
"""A handler's effect: runs in a transaction on the connection it is given, answers."""


async def idempotent(
    request: web.Request,
    pool: asyncpg.Pool,
    work: Work,
    *,
    principal: str = ANONYMOUS,
    lease: timedelta = LEASE,
    retention: timedelta = RETENTION,
    clock: Clock | None = None,
) -> web.Response:
    """Answer ``request`` once per ``Idempotency-Key``: run ``work`` the first time, replay after.

    Raise ``Problem`` in ``work`` for a 4xx to be stored; any other exception releases the key.
    """
    if not timedelta(0) < lease < retention:
        raise ValueError(f"need 0 < lease < retention, got lease={lease} retention={retention}")
    now = (clock or SystemClock()).now
    scope = _Scope(principal, _route(request), parse_key(request.headers.getall(HEADER, [])))
    found = fingerprint(request.method, request.raw_path, await request.read())
    claimed = await _claim(pool, scope, found, now(), lease, retention)
    if isinstance(claimed, web.Response):
        return claimed
    return await _run(request, pool, work, _Attempt(scope, claimed, lambda: now() + retention))


def parse_key(values: list[str]) -> str:
    """The key of the ``Idempotency-Key`` header values, quoted or bare; else a 400 problem."""
    if not values:
        raise Problem(
            400,
            "Idempotency Key Missing",
            f"this request needs an {HEADER} header",
            type_=KEY_MISSING,
        )
    match = _KEY.fullmatch(values[0].strip()) if len(values) == 1 else None
    if match is None:
        raise Problem(
            400,
            "Idempotency Key Invalid",
            f'{HEADER} is one string of 1 to 255 visible ASCII characters, e.g. "8e03978e"',
            type_=KEY_INVALID,
        )
    return match.group(2)


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 of the method, the path (with query) and the exact body bytes."""
    return hashlib.sha256(b"\n".join((method.encode(), path.encode(), body))).digest()


async def prune(pool: asyncpg.Pool, now: datetime, *, batch: int = 1000) -> int:
    """Forget up to ``batch`` keys whose retention ended before ``now``; how many were."""
    status = await pool.execute(_PRUNE, now, batch)
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class _Scope:
    principal: str
    route: str
    key: str

    def params(self) -> tuple[str, str, str]:
        return self.principal, self.route, self.key

    def log_fields(self, **more: Any) -> dict[str, Any]:
        # A digest names the key in logs without giving it away.
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:12]
        return {"route": self.route, "idempotency_key_sha256": digest, **more}


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One claim of a key: the row is ours while its ``attempt`` column is ``id``."""

    scope: _Scope
    id: uuid.UUID
    expires_at: Callable[[], datetime]


class _NotStored(Exception):
    """The work answered a 5xx: roll it back and release the key."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _LeaseLost(Exception):
    """The lease ended and a retry took the key over: roll this attempt back."""


async def _claim(
    pool: asyncpg.Pool,
    scope: _Scope,
    found: bytes,
    now: datetime,
    lease: timedelta,
    retention: timedelta,
) -> uuid.UUID | web.Response:
    """Our attempt's id when the key is ours to run; else the replay, or a 409/422 problem."""
    for _ in range(_CLAIM_ROUNDS):
        attempt = new_id()
        row = await pool.fetchrow(
            _CLAIM, *scope.params(), found, attempt, now + lease, now + retention, now
        )
        if row is not None:
            if not row["inserted"]:
                log.info("idempotency key taken over", extra=scope.log_fields())
            return attempt
        held = await pool.fetchrow(_HELD, *scope.params())
        if held is not None:
            return _answer_held(scope, found, held)
    raise _in_flight(scope, "its key kept changing hands")


def _answer_held(scope: _Scope, found: bytes, held: asyncpg.Record) -> web.Response:
    if held["fingerprint"] != found:
        log.info("idempotency key reused for another request", extra=scope.log_fields())
        raise Problem(
            422,
            "Idempotency Key Reused",
            f"this {HEADER} was used for a different request; use a new key",
            type_=KEY_REUSED,
        )
    if held["status"] is None:
        raise _in_flight(scope)
    log.info("idempotent request replayed", extra=scope.log_fields(status=held["status"]))
    headers = msgspec.json.decode(held["headers"], type=dict[str, str])
    return web.Response(
        status=held["status"], body=held["body"], headers={**headers, REPLAYED: "true"}
    )


def _in_flight(scope: _Scope, why: str = "it is still being processed") -> Problem:
    log.info("idempotent request already in flight", extra=scope.log_fields())
    return Problem(
        409,
        "Request In Flight",
        f"a request with this {HEADER} has no answer yet: {why}; retry later",
        type_=KEY_IN_USE,
    )


async def _run(
    request: web.Request, pool: asyncpg.Pool, work: Work, attempt: _Attempt
) -> web.Response:
    try:
        return await in_transaction(pool, lambda conn: _work_and_store(conn, work, attempt))
    except Problem as problem:
        if problem.status >= 500:
            await _release(pool, attempt)
            raise
        response = problem.response(request.path)  # as the error middleware would answer
        await _store(pool, attempt, response)  # if a retry took the key over, it answers it
        return response
    except _NotStored as unstored:
        await _release(pool, attempt)
        return unstored.response
    except _LeaseLost:
        log.warning("idempotency lease ended before the work did", extra=attempt.scope.log_fields())
        raise _in_flight(attempt.scope, "a retry took it over after its lease ended") from None
    except Exception:
        await _release(pool, attempt)
        raise


async def _work_and_store(conn: Connection, work: Work, attempt: _Attempt) -> web.Response:
    response = await work(conn)
    if response.status >= 500:
        raise _NotStored(response)
    if not await _store(conn, attempt, response):
        raise _LeaseLost
    return response


async def _store(
    conn: Connection | asyncpg.Pool, attempt: _Attempt, response: web.Response
) -> bool:
    """Keep the answer, if the key is still ours; whether it was."""
    body = response.body if response.body is not None else b""
    if not isinstance(body, bytes | bytearray):
        raise TypeError("an idempotent handler answers with a bytes body, not a stream")
    headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
    status = await conn.execute(
        _STORE,
        *attempt.scope.params(),
        attempt.id,
        response.status,
        msgspec.json.encode(headers).decode(),
        bytes(body),
        attempt.expires_at(),
    )
    return bool(status == "UPDATE 1")


async def _release(pool: asyncpg.Pool, attempt: _Attempt) -> None:
    try:
        await pool.execute(_RELEASE, *attempt.scope.params(), attempt.id)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        # The lease still frees the key in time; the caller's own error is the one to raise.
        log.warning(
            "idempotency key not released; its lease will end",
            extra=attempt.scope.log_fields(),
            exc_info=True,
        )


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else request.path}"


# A new key is inserted; an existing one is taken over only when its retention ended, or when it
# is in flight for the same request with its lease ended (the first attempt died or hung).
_CLAIM = """
INSERT INTO idempotency_keys AS k
    (principal, route, key, fingerprint, attempt, lease_until, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (principal, route, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, attempt = EXCLUDED.attempt,
    lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at,
    status = NULL, headers = NULL, body = NULL
WHERE k.expires_at <= $8
   OR (k.status IS NULL AND k.lease_until <= $8 AND k.fingerprint = EXCLUDED.fingerprint)
RETURNING xmax = 0 AS inserted
"""

_HELD = """
SELECT fingerprint, status, headers, body FROM idempotency_keys
WHERE principal = $1 AND route = $2 AND key = $3
"""

_STORE = """
UPDATE idempotency_keys
SET status = $5, headers = $6::jsonb, body = $7, lease_until = NULL, expires_at = $8
WHERE principal = $1 AND route = $2 AND key = $3 AND attempt = $4 AND status IS NULL
"""

_RELEASE = """
DELETE FROM idempotency_keys
WHERE principal = $1 AND route = $2 AND key = $3 AND attempt = $4 AND status IS NULL
"""

_PRUNE = """
DELETE FROM idempotency_keys WHERE (principal, route, key) IN (
    SELECT principal, route, key FROM idempotency_keys
    WHERE expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""
