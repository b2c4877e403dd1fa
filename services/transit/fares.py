"""Pricing journeys from a loaded feed, as the adopted GTFS Fares v2 spec says (Fares v1 for a
feed without v2 files). Pure and fast: the engine indexes the feed once, and a journey is then
priced with dictionary lookups.

How a journey is priced, step by step, each the spec's rule:
1. Consecutive legs that match a ``fare_leg_join_rules`` row (same network on both sides, the
   same station unless the row names the stops) become one effective fare leg.
2. Each fare leg is matched against ``fare_leg_rules``: with the ``rule_priority`` column an
   empty field matches anything and only the highest priority matching rules are kept; without
   it an empty field matches only values no rule lists. Timeframes are checked on the local
   day and time of the leg's start (and end), start included, end excluded. A leg that matches
   no rule has an unknown fare, never a free one.
3. Of the products the kept rules name, the rider may use the rows for their medium (or, if
   none, the rows with no medium) and their category (or, if none, the rows with no category;
   a rider who names no category is in the feed's default one); the cheapest is charged.
4. Leg after leg, ``fare_transfer_rules`` (directional: from the previous fare leg's group to
   this one's) decide the total with ``fare_transfer_type``: A + AB, A + AB + B, or AB. The
   duration limit counts from the first leg of the transfer sub-journey; ``transfer_count``
   limits how many transfers one sub-journey spans. With no matching rule a new fare starts.

Daily and weekly caps are not in GTFS: a cap applies after ``price``, to the sum of a rider's
quotes over the day or week, in the service that keeps the rider's history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from services.transit.feed import (
    FareAttribute,
    FareProduct,
    FareRuleV1,
    Feed,
    LegRule,
    Route,
    Stop,
    TransferRule,
)

_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class Leg:
    """One ride: boarded at ``from_stop_id``, left at ``to_stop_id``, on one route."""

    route_id: str
    from_stop_id: str
    to_stop_id: str
    departure: datetime  # naive local time in the feed's agency time zone
    arrival: datetime


@dataclass(frozen=True)
class Journey:
    legs: tuple[Leg, ...]
    rider_category_id: str | None = None
    fare_media_id: str | None = None


@dataclass(frozen=True)
class Quote:
    """A journey's fare: ``amount_minor`` is None when it is unknown, and ``reason`` says why."""

    amount_minor: int | None
    currency: str | None
    products: tuple[str, ...]
    reason: str | None


class _Unknown(Exception):
    """The fare cannot be known; the message says why."""


class _Ride(NamedTuple):
    route: Route
    origin: Stop
    destination: Stop
    departure: datetime
    arrival: datetime


class _FareLeg(NamedTuple):
    """An effective fare leg: one ride, or consecutive rides joined into one."""

    network_id: str | None
    origin: Stop
    destination: Stop
    departure: datetime
    arrival: datetime


class _Rider(NamedTuple):
    category: str | None
    categories: frozenset[str]  # the one named, or the feed's default ones
    medium: str | None


class _Charge(NamedTuple):
    leg_group_id: str | None
    product: FareProduct


class FareEngine:
    """Prices journeys on one feed; build it once per feed, it precomputes what it needs."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._tz = feed.timezone
        self._defaults = frozenset(c for c, default in feed.rider_categories.items() if default)
        self._leg_index = _LegRuleIndex(feed)
        self._transfers = _TransferIndex(feed.transfer_rules)
        self._joins: dict[str, set[tuple[str | None, str | None]]] = defaultdict(set)
        for join in feed.join_rules:
            self._joins[join.network_id].add((join.from_stop_id, join.to_stop_id))
        self._rows: dict[tuple[str, str | None, str | None], FareProduct | None] = {}
        self._static: dict[tuple[object, ...], _Charge] = {}
        self._v1 = _FaresV1(feed)

    def price(self, journey: Journey) -> Quote:
        """The journey's fare; an unknown one (never a free one) when the feed cannot tell."""
        try:
            rides = [self._ride(n, leg) for n, leg in enumerate(journey.legs, 1)]
            _check_order(rides)
            if self._feed.fares == "none":
                raise _Unknown("the feed has no fare data")
            if self._feed.fares == "v1":
                return self._v1.price(rides)
            rider = self._rider(journey)
            fare_legs = self._join(rides)
            charges = [self._leg_charge(leg, rider) for leg in fare_legs]
            return self._total(fare_legs, charges, rider)
        except _Unknown as unknown:
            return Quote(None, None, (), str(unknown))
        except OverflowError:  # a time zone conversion at the very ends of the calendar
            return Quote(None, None, (), "a leg's time is out of the calendar's range")

    # --- the journey as the feed sees it ---------------------------------------------------

    def _rider(self, journey: Journey) -> _Rider:
        category, medium = journey.rider_category_id, journey.fare_media_id
        if category is not None and category not in self._feed.rider_categories:
            raise _Unknown(f"unknown rider category {category!r}")
        if medium is not None and medium not in self._feed.fare_media:
            raise _Unknown(f"unknown fare media {medium!r}")
        categories = self._defaults if category is None else frozenset((category,))
        return _Rider(category, categories, medium)

    def _ride(self, n: int, leg: Leg) -> _Ride:
        route = self._feed.routes.get(leg.route_id)
        origin = self._feed.stops.get(leg.from_stop_id)
        destination = self._feed.stops.get(leg.to_stop_id)
        if route is None:
            raise _Unknown(f"leg {n}: unknown route {leg.route_id!r}")
        if origin is None or destination is None:
            unknown = leg.from_stop_id if origin is None else leg.to_stop_id
            raise _Unknown(f"leg {n}: unknown stop {unknown!r}")
        departure, arrival = self._local(leg.departure), self._local(leg.arrival)
        if arrival < departure:
            raise _Unknown(f"leg {n}: arrives before it departs")
        return _Ride(route, origin, destination, departure, arrival)

    def _local(self, moment: datetime) -> datetime:
        """Naive local time in the agency's zone (an aware time is converted to it)."""
        if moment.tzinfo is None:
            return moment
        return moment.astimezone(self._tz).replace(tzinfo=None)

    def _join(self, rides: Sequence[_Ride]) -> list[_FareLeg]:
        """Effective fare legs: runs of rides whose every transfer matches a join rule."""
        legs: list[_FareLeg] = []
        first = 0
        for n in range(1, len(rides) + 1):
            if n < len(rides) and self._joined(rides[n - 1], rides[n]):
                continue
            start, end = rides[first], rides[n - 1]
            legs.append(_FareLeg(start.route.network_id, start.origin, end.destination,
                                 start.departure, end.arrival))  # fmt: skip
            first = n
        return legs

    def _joined(self, before: _Ride, after: _Ride) -> bool:
        network = before.route.network_id
        if network is None or network != after.route.network_id:
            return False
        patterns = self._joins.get(network)
        if not patterns:
            return False
        if (None, None) in patterns and before.destination.station == after.origin.station:
            return True
        ends = {before.destination.stop_id, before.destination.station}
        starts = {after.origin.stop_id, after.origin.station}
        return any((end, start) in patterns for end in ends for start in starts)

    # --- one fare leg ----------------------------------------------------------------------

    def _leg_charge(self, leg: _FareLeg, rider: _Rider) -> _Charge:
        rules, timed = self._leg_index.candidates(leg.network_id, leg.origin, leg.destination)
        if not timed:
            key = (leg.network_id, leg.origin.stop_id, leg.destination.stop_id, *rider[::2])
            if (charge := self._static.get(key)) is None:
                if len(self._static) > 200_000:  # bounded: a big feed has many stop pairs
                    self._static.clear()
                charge = self._static[key] = self._cheapest(leg, rules, rider)
            return charge
        return self._cheapest(leg, self._in_time(leg, rules), rider)

    def _in_time(self, leg: _FareLeg, rules: Sequence[LegRule]) -> list[LegRule]:
        """The rules whose timeframes hold at the leg's start and end; the top priority only."""
        kept = [
            rule for rule in rules
            if self._leg_index.in_timeframe(rule.from_timeframe_group_id, leg.departure, leg.origin)
            and self._leg_index.in_timeframe(rule.to_timeframe_group_id, leg.arrival,
                                             leg.destination)
        ]  # fmt: skip
        if kept and self._feed.has_rule_priority:
            top = kept[0].rule_priority  # candidates come sorted by priority, highest first
            kept = [rule for rule in kept if rule.rule_priority == top]
        return kept

    def _cheapest(self, leg: _FareLeg, rules: Sequence[LegRule], rider: _Rider) -> _Charge:
        if not rules:
            raise _Unknown(
                f"no fare leg rule matches {leg.origin.stop_id} -> {leg.destination.stop_id}"
                f" on network {leg.network_id!r} at {leg.departure.isoformat()}"
            )
        charges = [
            _Charge(rule.leg_group_id, product)
            for rule in rules
            if (product := self._product(rule.fare_product_id, rider)) is not None
        ]
        if not charges:
            named = ", ".join(sorted({r.fare_product_id for r in rules}))
            raise _Unknown(f"no row of fare product {named} for {_who(rider)}")
        return min(charges, key=lambda c: c.product.amount_minor)

    def _product(self, fare_product_id: str, rider: _Rider) -> FareProduct | None:
        """The row of a product this rider pays: their medium's rows, else the rows with no
        medium; in those, their category's rows, else the rows for any category."""
        key = (fare_product_id, rider.category, rider.medium)
        if key not in self._rows:
            self._rows[key] = _product_row(self._feed.products.get(fare_product_id, ()), rider)
        return self._rows[key]

    # --- the journey's total ---------------------------------------------------------------

    def _total(self, legs: Sequence[_FareLeg], charges: Sequence[_Charge], rider: _Rider) -> Quote:
        """fare_transfer_type applied leg after leg: S + AB (0), S + AB + B (1), AB in place
        of A when A opened the sub-journey (2, else S + AB)."""
        paid: list[FareProduct] = [charges[0].product]
        seen = [charges[0].product]  # every product priced, paid or replaced: the currency
        first, transfers = 0, 0  # the sub-journey's first fare leg, and its transfers so far
        for n in range(1, len(legs)):
            seen.append(charges[n].product)
            found = self._transfer(legs, charges, first, n, transfers + 1, rider)
            if found is None:
                first, transfers = n, 0
                paid.append(charges[n].product)
                continue
            kind, product = found
            added = [product] if product is not None else []
            seen.extend(added)
            if kind == 2 and transfers == 0:
                paid.pop()
            if kind == 1:
                added.append(charges[n].product)
            paid.extend(added)
            transfers += 1
        return _quote(paid, seen)

    def _transfer(
        self, legs: Sequence[_FareLeg], charges: Sequence[_Charge], first: int, n: int,
        count: int, rider: _Rider,
    ) -> tuple[int, FareProduct | None] | None:  # fmt: skip
        """The transfer from fare leg ``n - 1`` to ``n`` as the ``count``-th of the sub-journey
        that began at ``first``: its fare_transfer_type and product; None starts a new fare.
        Of several rules, the smallest transfer_count that still covers ``count`` wins."""
        usable = []
        for rule in self._transfers.rules(charges[n - 1].leg_group_id, charges[n].leg_group_id):
            limit = _NO_LIMIT if rule.transfer_count in (None, -1) else rule.transfer_count
            if count > limit or not self._within(rule, legs[first], legs[n]):
                continue
            product = None
            if rule.fare_product_id is not None:
                product = self._product(rule.fare_product_id, rider)
                if product is None:
                    continue  # a transfer product this rider cannot have
            usable.append((limit, product.amount_minor if product else 0, rule.line,
                           rule.fare_transfer_type, product))  # fmt: skip
        if not usable:
            return None
        *_, kind, product = min(usable, key=lambda u: u[:3])
        return kind, product

    def _within(self, rule: TransferRule, first: _FareLeg, last: _FareLeg) -> bool:
        """Whether the sub-journey from ``first`` to ``last`` fits the rule's duration limit."""
        if rule.duration_limit is None or rule.duration_limit_type is None:
            return True
        kind = rule.duration_limit_type
        start = first.departure if kind in (0, 1) else first.arrival
        end = last.departure if kind in (1, 2) else last.arrival
        return _elapsed(self._tz, start, end) <= rule.duration_limit


def _product_row(rows: Iterable[FareProduct], rider: _Rider) -> FareProduct | None:
    rows = tuple(rows)
    media = ([rider.medium] if rider.medium is not None else []) + [None]
    for medium in media:
        usable = [row for row in rows if row.fare_media_id == medium]
        named = [row for row in usable if row.rider_category_id in rider.categories]
        pool = named or [row for row in usable if row.rider_category_id is None]
        if pool:
            return min(pool, key=lambda row: row.amount_minor)
    return None


def _who(rider: _Rider) -> str:
    category = "the default" if rider.category is None else repr(rider.category)
    medium = "no fare media" if rider.medium is None else f"fare media {rider.medium!r}"
    return f"{category} rider category with {medium}"


def _quote(paid: Sequence[FareProduct], seen: Sequence[FareProduct]) -> Quote:
    currencies = {product.currency for product in seen}
    if len(currencies) > 1:
        raise _Unknown(f"the journey's fare products are in several currencies: {currencies}")
    return Quote(
        sum(p.amount_minor for p in paid), currencies.pop(), tuple(p.fare_product_id for p in paid),
        None,
    )  # fmt: skip


def _check_order(rides: Sequence[_Ride]) -> None:
    if not rides:
        raise _Unknown("a journey needs at least one leg")
    for n in range(1, len(rides)):
        if rides[n].departure < rides[n - 1].arrival:
            raise _Unknown(f"leg {n + 1} departs before leg {n} arrives")


class _LegRuleIndex:
    """fare_leg_rules by (network, from area, to area), and the values each column lists: with
    no rule_priority column an empty field matches only values that no rule lists."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._by_key: dict[tuple[str | None, str | None, str | None], list[LegRule]]
        self._by_key = defaultdict(list)
        for rule in feed.leg_rules:
            self._by_key[(rule.network_id, rule.from_area_id, rule.to_area_id)].append(rule)
        rules = feed.leg_rules
        self._networks = frozenset(r.network_id for r in rules if r.network_id)
        self._from_areas = frozenset(r.from_area_id for r in rules if r.from_area_id)
        self._to_areas = frozenset(r.to_area_id for r in rules if r.to_area_id)
        self._candidates: dict[tuple[str | None, str, str], tuple[list[LegRule], bool]] = {}
        self._frames: dict[tuple[str, date], tuple[tuple[int, int], ...]] = {}

    def candidates(
        self, network: str | None, origin: Stop, destination: Stop
    ) -> tuple[list[LegRule], bool]:
        """The rules matching the leg's network and areas, highest priority first, and whether
        any of them depends on time (if not, they are the final answer)."""
        key = (network, origin.stop_id, destination.stop_id)
        if (found := self._candidates.get(key)) is None:
            rules = self._match(network, origin.areas, destination.areas)
            timed = any(r.from_timeframe_group_id or r.to_timeframe_group_id for r in rules)
            if not timed and self._feed.has_rule_priority and rules:
                rules = [r for r in rules if r.rule_priority == rules[0].rule_priority]
            found = self._candidates[key] = (rules, timed)
            if len(self._candidates) > 100_000:  # bounded: stop pairs are finite, but be safe
                self._candidates.clear()
        return found

    def _match(
        self, network: str | None, origins: frozenset[str], destinations: frozenset[str]
    ) -> list[LegRule]:
        if self._feed.has_rule_priority:
            networks: tuple[str | None, ...] = (network, None) if network else (None,)
            froms: tuple[str | None, ...] = (*origins, None)
            tos: tuple[str | None, ...] = (*destinations, None)
        else:
            networks = (network,) if network in self._networks else (None,)
            froms = tuple(origins & self._from_areas) or (None,)
            tos = tuple(destinations & self._to_areas) or (None,)
        keys = [(n, f, t) for n in networks for f in froms for t in tos]
        found = {rule.line: rule for key in keys for rule in self._by_key.get(key, ())}
        return sorted(found.values(), key=lambda r: (-r.rule_priority, r.line))

    def in_timeframe(self, group: str | None, moment: datetime, stop: Stop) -> bool:
        """Whether the local time at ``stop`` falls in the group on that day (end excluded)."""
        if group is None:
            return True
        if stop.timezone is not None:
            moment = moment.replace(tzinfo=self._feed.timezone).astimezone(stop.timezone)
        day = moment.date()
        if (frames := self._frames.get((group, day))) is None:
            frames = self._frames[(group, day)] = tuple(
                (f.start, f.end) for f in self._feed.timeframes.get(group, ())
                if (service := self._feed.services.get(f.service_id)) and service.runs_on(day)
            )  # fmt: skip
            if len(self._frames) > 100_000:
                self._frames.clear()
        seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
        return any(start <= seconds < end for start, end in frames)


class _TransferIndex:
    """fare_transfer_rules by (from group, to group); an empty group matches the groups no
    rule lists on that side. Rules are directional: from the earlier leg's group to the later's."""

    def __init__(self, rules: Sequence[TransferRule]) -> None:
        self._by_pair: dict[tuple[str | None, str | None], list[TransferRule]] = defaultdict(list)
        for rule in rules:
            self._by_pair[(rule.from_leg_group_id, rule.to_leg_group_id)].append(rule)
        self._froms = frozenset(r.from_leg_group_id for r in rules if r.from_leg_group_id)
        self._tos = frozenset(r.to_leg_group_id for r in rules if r.to_leg_group_id)

    def rules(self, from_group: str | None, to_group: str | None) -> list[TransferRule]:
        if from_group is None or to_group is None:
            return []  # a leg in no leg group has no transfer arrangement
        froms = [from_group] + ([None] if from_group not in self._froms else [])
        tos = [to_group] + ([None] if to_group not in self._tos else [])
        return [rule for f in froms for t in tos for rule in self._by_pair.get((f, t), ())]


def _elapsed(tz: ZoneInfo, start: datetime, end: datetime) -> float:
    """Seconds between two local times, across a daylight-saving change too."""
    return end.replace(tzinfo=tz).timestamp() - start.replace(tzinfo=tz).timestamp()


class _FaresV1:
    """Fares v1, for a feed with no v2 files: the cheapest cover of the rides by fare classes,
    each spanning consecutive rides within its ``transfers`` and ``transfer_duration`` (from the
    first boarding). A fare's fare_rules rows are read together: its routes, its origin and
    destination zone pairs, and the exact set of zones it contains; a fare with no rows fits
    any ride."""

    def __init__(self, feed: Feed) -> None:
        self._fares = sorted(feed.fare_attributes.values(), key=lambda f: f.amount_minor)
        self._tz = feed.timezone
        rows: dict[str, list[FareRuleV1]] = defaultdict(list)
        for rule in feed.fare_rules:
            rows[rule.fare_id].append(rule)
        self._rules = {
            fare_id: (
                frozenset(r.route_id for r in rules if r.route_id),
                frozenset((r.origin_id, r.destination_id) for r in rules
                          if r.origin_id or r.destination_id),
                frozenset(r.contains_id for r in rules if r.contains_id),
            )
            for fare_id, rules in rows.items()
        }  # fmt: skip

    def price(self, rides: Sequence[_Ride]) -> Quote:
        best: list[tuple[int, tuple[FareAttribute, ...]] | None] = [None] * len(rides)
        best.append((0, ()))
        for i in reversed(range(len(rides))):
            for j in range(i + 1, len(rides) + 1):
                rest, fare = best[j], self._cheapest(rides[i:j])
                if rest is None or fare is None:
                    continue
                cover = (fare.amount_minor + rest[0], (fare, *rest[1]))
                if (known := best[i]) is None or cover[0] < known[0]:
                    best[i] = cover
        if (found := best[0]) is None:
            raise _Unknown("no fare in fare_attributes.txt covers the journey's legs")
        currencies = {fare.currency for fare in found[1]}
        if len(currencies) > 1:
            raise _Unknown(f"the journey's fares are in several currencies: {currencies}")
        return Quote(found[0], currencies.pop(), tuple(f.fare_id for f in found[1]), None)

    def _cheapest(self, span: Sequence[_Ride]) -> FareAttribute | None:
        for fare in self._fares:  # cheapest first
            if fare.transfers is not None and len(span) - 1 > fare.transfers:
                continue
            limit = fare.transfer_duration
            if (
                len(span) > 1
                and limit is not None
                and limit < _elapsed(self._tz, span[0].departure, span[-1].departure)
            ):
                continue
            agencies = {r.route.agency_id for r in span} - {None}
            if fare.agency_id and agencies - {fare.agency_id}:
                continue
            if self._fits(fare.fare_id, span):
                return fare
        return None

    def _fits(self, fare_id: str, span: Sequence[_Ride]) -> bool:
        if (rules := self._rules.get(fare_id)) is None:
            return True
        routes, pairs, contains = rules
        if routes and any(r.route.route_id not in routes for r in span):
            return False
        start, end = span[0].origin.zone_id, span[-1].destination.zone_id
        if pairs and not any(o in (None, start) and d in (None, end) for o, d in pairs):
            return False
        zones = {z for r in span for z in (r.origin.zone_id, r.destination.zone_id) if z}
        return not contains or zones == contains
