"""What transit does with the wallet's events: a rider whose fare could not be charged is
denied at the gates until a top-up; the change reaches gates as the deny list's next version."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from services.transit import store
from services.wallet.events import FareDebitFailed, TopUpCompleted, wallet_events
from shared.consumer import Subscription
from shared.db import Connection
from shared.events import Envelope, Event

log = logging.getLogger(__name__)


async def deny_in_debt(conn: Connection, event: Event, envelope: Envelope) -> None:
    assert isinstance(event, FareDebitFailed)
    await _set(conn, event.rider, True, "fare_debit_failed", envelope)


async def allow_after_top_up(conn: Connection, event: Event, envelope: Envelope) -> None:
    assert isinstance(event, TopUpCompleted)
    await _set(conn, event.rider, False, "topped_up", envelope)


async def _set(conn: Connection, rider: str, denied: bool, reason: str, envelope: Envelope) -> None:
    # A rider in debt who never enrolled still gets a pseudonym: it is the one they enrol with.
    pseudonym = await store.pseudonym_of(conn, rider, envelope.occurred_at)
    version = await store.set_denied(conn, pseudonym, denied, reason, envelope.occurred_at)
    if version is not None:
        log.info("deny list changed", extra={"version": version, "reason": reason})


def subscriptions(_: web.Application) -> Sequence[Subscription]:
    return [
        Subscription(
            wallet_events,
            handlers={FareDebitFailed: deny_in_debt, TopUpCompleted: allow_after_top_up},
        )
    ]
