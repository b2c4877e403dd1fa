"""Transit's use cases: enrolling a phone (a ride credential), and taps becoming charged
journeys.

Every upload re-pairs the riders it touched from all their recent taps (``journeys.pair``),
prices each settled journey, and charges what its fare exceeds what was charged for it so far
(a ``transit.fare.charged`` event with a charge id derived from the journey and the charge's
number, which the wallet applies once). A journey priced lower on re-pairing (an incomplete
journey whose exit arrived late) owes the rider the difference: recorded on the journey, and
not yet paid back (the wallet takes no fare refunds yet).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import lru_cache

import asyncpg

from services.transit import fares, store
from services.transit.config import TransitConfig
from services.transit.events import FareCharged
from services.transit.fares import Quote
from services.transit.feed import Feed
from services.transit.journeys import Journey, Kind, Tap, pair
from shared.bus import Bus
from shared.db import Connection

log = logging.getLogger(__name__)

# Charge ids are UUIDv5 in this namespace over "<journey id>/<n>": the n-th charge of a journey.
_CHARGES = uuid.UUID("0b4f3c52-8f7e-4d2a-b1c6-9e5d7a3f2c18")


class Pricer:
    """Prices a journey between stations; one leg on the fare route (see ``TransitConfig``)."""

    def __init__(self, feed: Feed, config: TransitConfig) -> None:
        self.engine, self.config = fares.FareEngine(feed), config
        self.stops, self.zone = tuple(feed.stops), feed.timezone
        # The farthest fare from a station changes with the timeframe, so by the hour.
        self._farthest = lru_cache(maxsize=4096)(self._farthest_uncached)

    def price(self, journey: Journey) -> Quote:
        started = journey.started_at.astimezone(self.zone).replace(tzinfo=None)
        if journey.kind is Kind.COMPLETE:
            assert journey.entry is not None
            assert journey.exit is not None
            return self._quote(journey.entry.station, journey.exit.station, started)
        # Incomplete (no exit) or exit-only (no entry): the most the known end could cost.
        known = journey.entry or journey.exit
        assert known is not None
        hour = started.replace(minute=0, second=0, microsecond=0)
        return self._farthest(known.station, journey.entry is not None, hour)

    def _farthest_uncached(self, station: str, from_it: bool, at: datetime) -> Quote:
        quotes = [
            self._quote(station, other, at) if from_it else self._quote(other, station, at)
            for other in self.stops
        ]
        known = [q for q in quotes if q.amount_minor is not None]
        if not known:
            return Quote(None, None, (), f"no fare from or to {station}")
        return max(known, key=lambda q: q.amount_minor or 0)

    def _quote(self, origin: str, destination: str, at: datetime) -> Quote:
        leg = fares.Leg(self.config.fare_route, origin, destination, at, at)
        return self.engine.price(fares.Journey((leg,), None, self.config.fare_media))


async def record_taps(
    conn: Connection,
    taps: Sequence[tuple[Tap, bytes, str]],
    *,
    pricer: Pricer,
    bus: Bus,
    config: TransitConfig,
    now: datetime,
) -> int:
    """Keep the new taps and re-price the riders they belong to; how many taps were new."""
    riders = await store.add_taps(conn, taps, now)
    for pseudonym in sorted(riders):
        await _reprice(conn, pseudonym, pricer=pricer, bus=bus, config=config, now=now)
    return len(riders)


async def _reprice(
    conn: Connection,
    pseudonym: bytes,
    *,
    pricer: Pricer,
    bus: Bus,
    config: TransitConfig,
    now: datetime,
) -> None:
    since = now - timedelta(days=config.repricing_days)
    taps = await store.taps_of(conn, pseudonym, since)
    before = await store.journeys_of(conn, pseudonym, since)
    subject = await store.subject_of(conn, pseudonym)
    paired = pair(taps, now=now, max_journey=config.max_journey)
    carried = _carry_charges(before.values(), paired)
    for journey in paired:
        if not journey.priced:
            continue
        price = pricer.price(journey)
        charged, charges = carried.get(journey.journey_id, (0, 0))
        owed = (price.amount_minor or 0) - charged
        if owed > 0 and subject is not None and price.currency is not None:
            charges += 1
            await bus.publish(conn, subject, FareCharged(
                charge_id=uuid.uuid5(_CHARGES, f"{journey.journey_id}/{charges}"),
                journey_id=journey.journey_id, rider=subject, operator=config.operator,
                amount=owed, currency=price.currency,
            ))  # fmt: skip
            charged += owed
        elif owed < 0:
            log.warning("journey re-priced lower: refund owed", extra={"owed_minor": -owed})
        await store.save_journey(
            conn, journey, pseudonym, price, (charged, charges), now,
        )  # fmt: skip
    kept = {journey.journey_id for journey in paired}
    await store.drop_journeys(conn, [j for j in before if j not in kept])


def _carry_charges(
    before: Iterable[asyncpg.Record], paired: Sequence[Journey]
) -> dict[uuid.UUID, tuple[int, int]]:
    """What each journey has been charged, including what was charged for the journeys whose
    taps it took over (an exit charged alone, then joined by its late entry): a rider is never
    charged twice for one tap. The charge count stays the journey's own, for fresh ids."""
    owner = {
        tap.tap_id: journey.journey_id
        for journey in paired
        for tap in (journey.entry, journey.exit)
        if tap is not None
    }
    carried: dict[uuid.UUID, tuple[int, int]] = {}
    for row in before:
        taken_by = next((owner[t] for t in (row["entry_tap"], row["exit_tap"]) if t in owner), None)
        if taken_by is None:
            continue
        charged, charges = carried.get(taken_by, (0, 0))
        own = row["charges"] if row["journey_id"] == taken_by else 0
        carried[taken_by] = (charged + row["charged_minor"], charges + own)
    return carried
