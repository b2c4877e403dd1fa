"""Transit's use cases after the gates: taps become journeys, and journeys what a rider owes.

Every upload re-decides the riders it touched from their taps since the start of the capping
week that a late tap could still reach (``repricing_days`` back): pair them into journeys
(``journeys.pair``), price each settled one in the rider's fare category, apply the daily and
weekly caps in the order the journeys started (``caps``), and state to the wallet every
journey whose amount owed changed (``transit.fare.due``: the whole amount, under the journey's
next version). The wallet moves the difference from what it took, as a charge or a refund:
a late exit that completes an incomplete journey, a journey a late tap superseded, a cap
reached earlier in the day than was known, all become new ledger transfers, never edits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import asyncpg

from services.transit import fares, store
from services.transit.caps import Capping, Fare
from services.transit.config import TransitConfig
from services.transit.events import FareDue
from services.transit.fares import Quote
from services.transit.feed import Feed, FeedError, load
from services.transit.journeys import Journey, Kind, Tap, pair
from shared.bus import Bus
from shared.db import Connection

log = logging.getLogger(__name__)

OPEN = Quote(None, None, (), "open: the journey has not ended yet")


class Pricer:
    """Prices a journey between stations, one leg on the fare route (see ``TransitConfig``),
    and caps a rider's journeys; built once per feed."""

    def __init__(self, feed: Feed, config: TransitConfig) -> None:
        self.engine, self.config = fares.FareEngine(feed), config
        self.stops, self.zone = tuple(feed.stops), feed.timezone
        self.categories = frozenset(feed.rider_categories)
        self.default_category = next(
            (c for c, default in feed.rider_categories.items() if default), ""
        )
        self.capping = Capping(feed.caps, config.capping_day_start, feed.timezone)
        # The farthest fare from a station changes with the timeframe, so by the hour.
        self._farthest = lru_cache(maxsize=4096)(self._farthest_uncached)
        # A rider's week is re-priced at each upload: the same rides, the same quotes.
        self._quote = lru_cache(maxsize=65536)(self._quote_uncached)

    def category(self, credential_category: str | None) -> str:
        """The fare category a credential's category prices as (the feed's default for one
        the feed does not know)."""
        if credential_category in self.categories:
            return credential_category or ""
        return self.default_category

    def price(self, journey: Journey, category: str) -> Quote:
        if not journey.priced:
            return OPEN
        started = journey.started_at.astimezone(self.zone).replace(tzinfo=None)
        if journey.kind is Kind.COMPLETE:
            assert journey.entry is not None
            assert journey.exit is not None
            return self._quote(journey.entry.station, journey.exit.station, started, category)
        # Incomplete (no exit) or exit-only (no entry): the most the known end could cost.
        known = journey.entry or journey.exit
        assert known is not None
        hour = started.replace(minute=0, second=0, microsecond=0)
        return self._farthest(known.station, journey.entry is not None, hour, category)

    def _farthest_uncached(self, station: str, from_it: bool, at: datetime, category: str) -> Quote:
        quotes = [
            self._quote(station, other, at, category)
            if from_it
            else self._quote(other, station, at, category)
            for other in self.stops
        ]
        known = [q for q in quotes if q.amount_minor is not None]
        if not known:
            return Quote(None, None, (), f"no fare from or to {station}")
        return max(known, key=lambda q: q.amount_minor or 0)

    def _quote_uncached(self, origin: str, destination: str, at: datetime, category: str) -> Quote:
        leg = fares.Leg(self.config.fare_route, origin, destination, at, at)
        return self.engine.price(fares.Journey((leg,), category or None, self.config.fare_media))


class Fares:
    """The feed fares come from, and its pricer; reloaded when the feed's files change. A
    feed that does not load is reported (each problem's file, line and field) and the last
    good one goes on pricing: a bad publish never stops the metro."""

    def __init__(self, config: TransitConfig, on_reload: Callable[[str], None]) -> None:
        self.config, self._on_reload = config, on_reload
        self._stamp = _stamp(config.feed)
        self.pricer = Pricer(load(config.feed), config)  # a broken feed stops start-up

    async def check(self) -> None:
        """Reload the feed if its files changed since the last look."""
        stamp = _stamp(self.config.feed)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            feed = await asyncio.to_thread(load, self.config.feed)
        except FeedError as error:
            log.error(
                "fare feed refused; the last good one stays",
                extra={"problems": [str(p) for p in error.problems[:50]]},
            )
            self._on_reload("refused")
            return
        self.pricer = Pricer(feed, self.config)
        log.info("fare feed reloaded", extra={"warnings": len(feed.warnings)})
        self._on_reload("loaded")


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a feed is republished: each file's name, size and modification time."""
    try:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        stats = [(f.name, f.stat()) for f in files]
        return tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)
    except OSError:
        return ()


async def record_taps(
    conn: Connection,
    taps: Sequence[tuple[Tap, bytes, str]],
    *,
    pricer: Pricer,
    bus: Bus,
    config: TransitConfig,
    now: datetime,
) -> int:
    """Keep the new taps and re-decide the riders they belong to; how many riders that was.
    A few statements an upload, whatever its size: the deciding is pure, per rider."""
    riders = sorted(await store.add_taps(conn, taps, now))
    if not riders:
        return 0
    # Journeys are re-decided from the start of a capping week, so that the week's caps see
    # all of it; taps from a journey's length before that pair with the ones after it.
    since = pricer.capping.week_start(now - timedelta(days=config.repricing_days))
    history = await store.histories(conn, riders, since, since - config.max_journey)
    if unknown := len(riders) - len(history):  # a gate vouched for riders transit never had
        log.error("taps of unknown riders: kept, not priced", extra={"riders": unknown})
    decisions = [_decide(rider, pricer=pricer, config=config, since=since, now=now)
                 for rider in history]  # fmt: skip
    await _state(conn, bus, [c for d in decisions for c in d.changes], config)
    await store.save_journeys(conn, [j for d in decisions for j in d.journeys], now)
    await store.supersede(conn, [j for d in decisions for j in d.superseded], now)
    return len(riders)


class _Change(NamedTuple):
    subject: str
    journey_id: uuid.UUID
    version: int
    was: int
    due: int
    currency: str | None


class _Decision(NamedTuple):
    journeys: list[store.Decided]
    superseded: list[tuple[uuid.UUID, int]]  # (journey, its version)
    changes: list[_Change]


def _decide(
    rider: store.History, *, pricer: Pricer, config: TransitConfig, since: datetime, now: datetime
) -> _Decision:
    """A rider's journeys since ``since`` from their taps: paired, priced in the category of
    the credential that opened each, capped in the order they started; and what changed from
    what was decided before."""
    journeys = sorted(
        (j for j in pair(rider.taps, now=now, max_journey=config.max_journey)
         if j.started_at >= since),
        key=lambda j: j.started_at,
    )  # fmt: skip
    categories = [pricer.category(_credential_category(j, rider.categories)) for j in journeys]
    quotes = [pricer.price(j, category) for j, category in zip(journeys, categories, strict=True)]
    owed = pricer.capping.apply([
        Fare(j.started_at, category, quote.amount_minor, quote.currency)
        for j, category, quote in zip(journeys, categories, quotes, strict=True)
    ])  # fmt: skip
    decided, changes = [], []
    for journey, category, quote, due in zip(journeys, categories, quotes, owed, strict=True):
        row = rider.before.get(journey.journey_id)
        was, version = (row["due_minor"], row["version"]) if row is not None else (0, 0)
        if due != was:
            version += 1
            currency = quote.currency or (row["currency"] if row is not None else None)
            changes.append(_Change(rider.subject, journey.journey_id, version, was, due, currency))
        if _changed(row, journey, category, quote, version):
            decided.append(store.Decided(rider.pseudonym, journey, category, quote, due, version))
            if journey.priced and quote.amount_minor is None:  # once, not at each re-pricing
                log.warning("journey fare unknown: not charged", extra={"reason": quote.reason})
    kept, superseded = {journey.journey_id for journey in journeys}, []
    for row in rider.before.values():
        if row["journey_id"] in kept or row["kind"] == Kind.SUPERSEDED:
            continue
        version = row["version"] + (1 if row["due_minor"] else 0)
        if row["due_minor"]:
            changes.append(_Change(
                rider.subject, row["journey_id"], version, row["due_minor"], 0, row["currency"]
            ))  # fmt: skip
        superseded.append((row["journey_id"], version))
    return _Decision(decided, superseded, changes)


async def _state(
    conn: Connection, bus: Bus, changes: Sequence[_Change], config: TransitConfig
) -> None:
    """Tell the wallet what each changed journey is owed now, a rider's refunds first: a
    refund for a superseded journey pays for the journey that took its taps."""
    events = [
        (c.subject, FareDue(
            journey_id=c.journey_id, version=c.version, rider=c.subject,
            operator=config.operator, amount=c.due, currency=c.currency,
        ))
        for c in sorted(changes, key=lambda c: (c.subject, c.due - c.was))
        if c.currency is not None
    ]  # fmt: skip
    if events:
        await bus.publish_many(conn, events)


def _changed(
    row: asyncpg.Record | None, journey: Journey, category: str, quote: Quote, version: int
) -> bool:
    """Whether a journey differs from how it was saved (most of a rider's week does not)."""
    if row is None:
        return True
    entry, exit_ = journey.entry, journey.exit
    return (row["kind"], row["entry_tap"], row["exit_tap"], row["amount_minor"],
            row["category"], row["version"]) != (
        journey.kind.value, entry and entry.tap_id, exit_ and exit_.tap_id, quote.amount_minor,
        category, version,
    )  # fmt: skip


def _credential_category(journey: Journey, categories: Mapping[uuid.UUID, str]) -> str | None:
    opening = journey.entry or journey.exit
    return categories.get(opening.tap_id) if opening is not None else None
