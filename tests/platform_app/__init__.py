"""A small service that exercises the platform until the real services exist.

``POST /notes`` writes a note and a ``notes.written`` event in one transaction; its own
consumer applies each event by recording it in ``applied`` (the effect whose count proves
exactly-once). Events whose key is ``NOTES_POISON_KEY`` make the handler fail, always.

``POST /payments`` records a payment (a ``notes`` row keyed ``payment:<currency>``) once per
``Idempotency-Key``; the caller is named by ``X-Principal``, and a test may put a hook in
``PAYMENT_HOOK`` that runs inside the payment's transaction (to hold it in flight, or fail it).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from aiohttp import web

from shared.consumer import Subscription
from shared.db import Connection, in_transaction
from shared.events import Envelope, Event, EventCatalog
from shared.http import Problem, read_body
from shared.idempotency import ANONYMOUS, idempotent
from shared.service import BUS, CLOCK, POOL, Service

notes_events = EventCatalog("notes")


@notes_events.event("notes.written", version=1)
class NoteWritten(Event, frozen=True):
    note_id: int
    n: int


class NoteBody(msgspec.Struct, frozen=True):
    key: str
    n: int = 0


class PaymentBody(msgspec.Struct, frozen=True):
    amount: int
    currency: str


PaymentHook = Callable[[], Awaitable[None]]
PAYMENT_HOOK: web.AppKey[PaymentHook] = web.AppKey("payment_hook")


class PoisonedNote(Exception):
    """The handler refuses this key, every time."""


async def write_note(request: web.Request) -> web.Response:
    body = await read_body(request, NoteBody)
    key, n = body.key, body.n

    async def work(conn: Connection) -> int:
        note_id: int = await conn.fetchval(
            "INSERT INTO notes (key, n) VALUES ($1, $2) RETURNING id", key, n
        )
        await request.app[BUS].publish(conn, key, NoteWritten(note_id=note_id, n=n))
        return note_id

    note_id = await in_transaction(request.app[POOL], work)
    return web.json_response({"id": note_id}, status=201)


async def read_note(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        "SELECT id, key, n FROM notes WHERE id = $1", int(request.match_info["id"])
    )
    if row is None:
        raise Problem(404, "Not Found", "no such note")
    return web.json_response(dict(row))


async def create_payment(request: web.Request) -> web.Response:
    principal = request.headers.get("X-Principal", ANONYMOUS)
    return await idempotent(
        request,
        request.app[POOL],
        lambda conn: record_payment(request, conn),
        principal=principal,
        clock=request.app[CLOCK],
    )


async def record_payment(request: web.Request, conn: Connection) -> web.Response:
    body = await read_body(request, PaymentBody)
    if body.amount <= 0:
        raise Problem(422, "Unprocessable Content", "amount must be positive")
    payment_id: int = await conn.fetchval(
        "INSERT INTO notes (key, n) VALUES ($1, $2) RETURNING id",
        f"payment:{body.currency}",
        body.amount,
    )
    if (hook := request.app.get(PAYMENT_HOOK)) is not None:
        await hook()
    return web.json_response(
        {"id": payment_id, "amount": body.amount, "currency": body.currency},
        status=201,
        headers={"Location": f"/notes/{payment_id}"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/notes", write_note)
    app.router.add_post("/payments", create_payment)
    app.router.add_get("/notes/{id:\\d+}", read_note)


def _flake_once(notes: list[NoteWritten]) -> None:
    """The note numbered ``NOTES_FLAKY_N`` meets a lost connection the first time it is applied."""
    flaky = os.environ.get("NOTES_FLAKY_N")
    for note in notes:
        if flaky is not None and note.n == int(flaky) and note.n not in _FLAKED:
            _FLAKED.add(note.n)
            raise ConnectionError("the database connection was lost (a test's flaky note)")


_FLAKED: set[int] = set()


async def apply_note(conn: Connection, event: Event, envelope: Envelope) -> None:
    assert isinstance(event, NoteWritten)
    _flake_once([event])
    if envelope.key == os.environ.get("NOTES_POISON_KEY"):
        raise PoisonedNote(f"note {event.note_id} is poisoned")
    await conn.execute(
        "INSERT INTO applied (event_id, key, n) VALUES ($1, $2, $3)",
        envelope.id,
        envelope.key,
        event.n,
    )


async def apply_notes(conn: Connection, events: list[tuple[Event, Envelope]]) -> None:
    """The same effect for a run of events, in one statement (a batch handler)."""
    if any(envelope.key == os.environ.get("NOTES_POISON_KEY") for _, envelope in events):
        raise PoisonedNote("a run holds a poisoned note")
    notes = [(e, env) for e, env in events if isinstance(e, NoteWritten)]
    _flake_once([e for e, _ in notes])
    await conn.execute(
        "INSERT INTO applied (event_id, key, n)"
        " SELECT event_id, key, n FROM unnest($1::uuid[], $2::text[], $3::int[]) WITH ORDINALITY"
        " AS x(event_id, key, n, ord) ORDER BY ord",
        [env.id for _, env in notes],
        [env.key for _, env in notes],
        [e.n for e, _ in notes],
    )


def subscriptions(_: web.Application) -> Sequence[Subscription]:
    return [Subscription(notes_events, {NoteWritten: apply_note})]


def batched_subscriptions(_: web.Application) -> Sequence[Subscription]:
    return [Subscription(notes_events, batch_handlers={NoteWritten: apply_notes})]


def make_service(name: str, *, batched: bool = False) -> Service:
    return Service(
        name=name,
        add_routes=add_routes,
        produces=[notes_events],
        subscriptions=batched_subscriptions if batched else subscriptions,
        migrations=Path(__file__).parent / "migrations",
    )


SERVICE = make_service(os.environ.get("NOTES_SERVICE_NAME", "notes"))
