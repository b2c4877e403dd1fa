"""A GTFS feed (zip or folder) loaded for pricing: its Fares v2 files, or its Fares v1 files when
it has no v2 ones, and the agency, stops, routes and calendar those refer to. Trips, stop times
and shapes are not read: a journey arrives with its legs already known.

Validation sorts what it finds in two. An **error** is something pricing cannot read or could
only guess at (a bad amount or currency, a dangling id, a missing required value, an ambiguous
duplicate): the feed is refused with a ``FeedError`` naming every one, file, line and field.
A **warning** is a breach of the adopted specification that the specification's own rules
make inert (a ``transfer_count`` where it is forbidden, a join of two different networks, a
column that is not in the adopted spec): the value is ignored, never guessed at, and the
warning is kept on ``Feed.warnings`` for the operator.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

T = TypeVar("T")

# ISO 4217 minor-unit digits; every code not listed in _DIGITS has 2.
_DIGITS = {
    code: digits
    for digits, codes in (
        (0, "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"),
        (3, "BHD IQD JOD KWD LYD OMR TND"),
        (4, "CLF UYW"),
    )
    for code in codes.split()
}
_TWO_DIGITS = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD "
    "FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD "
    "KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD "
    "NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
    "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED "
    "VES WST XCD XCG YER ZAR ZMW ZWG"
)
CURRENCIES = frozenset(_DIGITS) | frozenset(_TWO_DIGITS.split())
DEMO_FEED = Path(__file__).parent / "data" / "demo-feed"  # the demo city's metro, in CNY
_AMOUNT = re.compile(r"^(-)?([0-9]+)(?:\.([0-9]+))?$")
_TIME = re.compile(r"^([0-9]{1,2}):([0-5][0-9]):([0-5][0-9])$")
DAY = 86400

_V2_FILES = ("fare_products.txt", "fare_leg_rules.txt", "fare_transfer_rules.txt")
_EXPERIMENTAL_FILES = (
    "area_sets.txt", "area_set_elements.txt", "network_sets.txt", "network_set_elements.txt",
)  # fmt: skip
# Every column the adopted spec defines for the fare files; any other is reported and ignored.
_FARE_COLUMNS = {
    "areas.txt": {"area_id", "area_name"},
    "stop_areas.txt": {"area_id", "stop_id"},
    "networks.txt": {"network_id", "network_name"},
    "route_networks.txt": {"network_id", "route_id"},
    "fare_media.txt": {"fare_media_id", "fare_media_name", "fare_media_type"},
    "rider_categories.txt": {
        "rider_category_id", "rider_category_name", "is_default_fare_category", "eligibility_url",
    },
    "fare_products.txt": {
        "fare_product_id", "fare_product_name", "rider_category_id", "fare_media_id", "amount",
        "currency",
    },
    "timeframes.txt": {"timeframe_group_id", "start_time", "end_time", "service_id"},
    "fare_leg_rules.txt": {
        "leg_group_id", "network_id", "from_area_id", "to_area_id", "from_timeframe_group_id",
        "to_timeframe_group_id", "fare_product_id", "rule_priority",
    },
    "fare_leg_join_rules.txt": {"from_network_id", "to_network_id", "from_stop_id", "to_stop_id"},
    "fare_transfer_rules.txt": {
        "from_leg_group_id", "to_leg_group_id", "transfer_count", "duration_limit",
        "duration_limit_type", "fare_transfer_type", "fare_product_id",
    },
    # Cardless's extension, not GTFS (which has no caps): see ``_caps``.
    "fare_caps.txt": {"rider_category_id", "cap_period", "amount", "currency"},
}  # fmt: skip
CAP_PERIODS = ("day", "week")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a feed; ``line`` counts from 1 (the header), 0 for a whole file."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.field}: {self.message}"


class FeedError(ValueError):
    """A feed pricing cannot use; ``problems`` lists each error, and the message names all."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{len(self.problems)} error(s) in the feed: {listed}")


@dataclass(frozen=True, slots=True)
class Stop:
    stop_id: str
    station: str  # its parent station, or itself: legs join at the same station
    areas: frozenset[str]
    zone_id: str | None  # Fares v1
    timezone: ZoneInfo | None  # set only where it differs from the agency's


@dataclass(frozen=True, slots=True)
class Route:
    route_id: str
    network_id: str | None
    agency_id: str | None


@dataclass(frozen=True, slots=True)
class FareProduct:
    """One row of fare_products.txt: a product's price for one rider category and medium."""

    fare_product_id: str
    rider_category_id: str | None
    fare_media_id: str | None
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class LegRule:
    line: int
    leg_group_id: str | None
    network_id: str | None
    from_area_id: str | None
    to_area_id: str | None
    from_timeframe_group_id: str | None
    to_timeframe_group_id: str | None
    fare_product_id: str
    rule_priority: int


@dataclass(frozen=True, slots=True)
class TransferRule:
    line: int
    from_leg_group_id: str | None
    to_leg_group_id: str | None
    transfer_count: int | None  # -1: no limit; None where the spec forbids it
    duration_limit: int | None
    duration_limit_type: int | None
    fare_transfer_type: int
    fare_product_id: str | None


@dataclass(frozen=True, slots=True)
class JoinRule:
    line: int
    network_id: str  # both sides: the adopted spec joins legs of one network only
    from_stop_id: str | None
    to_stop_id: str | None


@dataclass(frozen=True, slots=True)
class Timeframe:
    group: str
    start: int  # seconds after midnight, included
    end: int  # excluded
    service_id: str


@dataclass(frozen=True, slots=True)
class Service:
    """The days a service_id runs: calendar.txt's weekly pattern with calendar_dates' changes."""

    weekdays: int  # bit 0 is Monday
    start: date | None
    end: date | None
    added: frozenset[date]
    removed: frozenset[date]

    def runs_on(self, day: date) -> bool:
        """Whether the service runs on ``day`` (a calendar_dates change beats the pattern)."""
        if day in self.removed:
            return False
        if day in self.added:
            return True
        if self.start is None or self.end is None:
            return False
        return self.start <= day <= self.end and bool(self.weekdays >> day.weekday() & 1)


@dataclass(frozen=True, slots=True)
class Cap:
    """Cardless's extension: the most a rider of a category pays over a capping day or week."""

    rider_category_id: str
    period: str  # "day" or "week"
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class FareAttribute:
    """Fares v1: one fare class."""

    fare_id: str
    amount_minor: int
    currency: str
    transfers: int | None  # None: unlimited
    transfer_duration: int | None
    agency_id: str | None


@dataclass(frozen=True, slots=True)
class FareRuleV1:
    fare_id: str
    route_id: str | None
    origin_id: str | None
    destination_id: str | None
    contains_id: str | None


@dataclass(frozen=True)
class Feed:
    """A loaded, validated feed; ``fares`` says which fare files price it."""

    timezone: ZoneInfo
    stops: Mapping[str, Stop]
    routes: Mapping[str, Route]
    rider_categories: Mapping[str, bool]  # id -> is the default category
    fare_media: frozenset[str]
    products: Mapping[str, tuple[FareProduct, ...]]
    leg_rules: tuple[LegRule, ...]
    has_rule_priority: bool  # the column exists: empty fields then match anything
    transfer_rules: tuple[TransferRule, ...]
    join_rules: tuple[JoinRule, ...]
    timeframes: Mapping[str, tuple[Timeframe, ...]]
    services: Mapping[str, Service]
    fare_attributes: Mapping[str, FareAttribute]
    fare_rules: tuple[FareRuleV1, ...]
    warnings: tuple[Problem, ...]
    caps: tuple[Cap, ...] = ()

    @property
    def fares(self) -> Literal["v2", "v1", "none"]:
        if self.leg_rules:
            return "v2"
        return "v1" if self.fare_attributes else "none"


def minor_digits(currency: str) -> int:
    """ISO 4217 minor-unit digits of a currency (2 for the cent, 0 for the yen)."""
    return _DIGITS.get(currency, 2)


def parse_amount(text: str, currency: str) -> int:
    """'4.65' CAD -> 465, exactly (no float); more decimals than the currency has is an error."""
    if currency not in CURRENCIES:
        raise ValueError(f"{currency!r} is not an ISO 4217 currency code")
    match = _AMOUNT.match(text)
    digits = minor_digits(currency)
    if not match or len(match.group(3) or "") > digits:
        raise ValueError(f"{text!r} is not an amount in {currency} with at most {digits} decimals")
    sign, whole, fraction = match.groups()
    minor: int = int(whole) * 10**digits + int((fraction or "").ljust(digits, "0") or "0")
    return -minor if sign else minor


def load(path: Path) -> Feed:
    """Read and validate the feed at ``path`` (a folder or a zip); FeedError lists every error."""
    with _Source.open(path) as source:
        reader = _Reader(source)
        feed = _build(reader)
    if reader.errors:
        raise FeedError(reader.errors)
    return feed


# --- reading ------------------------------------------------------------------------------


class _Source:
    """The feed's files by name, from a folder or a zip (at its root or in one folder)."""

    def __init__(
        self, names: Mapping[str, Callable[[], bytes]], archive: zipfile.ZipFile | None = None
    ) -> None:
        self.names, self._archive = names, archive

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *_: object) -> None:
        if self._archive is not None:
            self._archive.close()

    @classmethod
    def open(cls, path: Path) -> _Source:
        if path.is_dir():
            return cls({p.name: p.read_bytes for p in path.iterdir() if p.is_file()})
        if zipfile.is_zipfile(path):
            return cls._zip(zipfile.ZipFile(path))
        raise FeedError([Problem(str(path), 0, "", "neither a folder nor a zip file")])

    @classmethod
    def _zip(cls, archive: zipfile.ZipFile) -> _Source:
        members = [m for m in archive.namelist() if not m.endswith("/")]
        agency = next((m for m in members if PurePosixPath(m).name == "agency.txt"), "agency.txt")
        folder = PurePosixPath(agency).parent
        inside = [m for m in members if PurePosixPath(m).parent == folder]
        return cls({PurePosixPath(m).name: partial(archive.read, m) for m in inside}, archive)


@dataclass(frozen=True)
class _Table:
    file: str
    header: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]  # (line, field -> stripped value)


class _Reader:
    """Reads tables and collects errors and warnings as it goes."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def has(self, name: str) -> bool:
        return name in self.source.names

    def error(self, file: str, line: int, field: str, message: str) -> None:
        self.errors.append(Problem(file, line, field, message))

    def warn(self, file: str, line: int, field: str, message: str) -> None:
        self.warnings.append(Problem(file, line, field, message))

    def table(self, name: str, required: Iterable[str] = (), *, needed: bool = False) -> _Table:
        """The rows of ``name`` (none if it is absent); ``required`` columns must exist."""
        if name not in self.source.names:
            if needed:
                self.error(name, 0, "", "required file is missing")
            return _Table(name, (), ())
        try:
            text = self.source.names[name]().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.error(name, 0, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            return _Table(name, (), ())
        table = self._parse(name, text)
        for column in required:
            if column not in table.header:
                self.error(name, 1, column, "required column is missing")
        self._unknown_columns(table)
        return table

    def _parse(self, name: str, text: str) -> _Table:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = tuple(h.strip() for h in next(reader, []))
        rows, line = [], reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if not any(v.strip() for v in record):
                continue
            if len(record) > len(header):
                self.error(name, start, "", f"{len(record)} values for {len(header)} columns")
            values = [v.strip() for v in record] + [""] * (len(header) - len(record))
            rows.append((start, dict(zip(header, values, strict=False))))
        return _Table(name, header, tuple(rows))

    def _unknown_columns(self, table: _Table) -> None:
        known = _FARE_COLUMNS.get(table.file)
        for column in table.header:
            if known is not None and column not in known:
                self.warn(table.file, 1, column, "not in the adopted GTFS spec; ignored")

    def value(
        self, table: _Table, line: int, row: Mapping[str, str], field: str,
        parse: Callable[[str], T], *, required: bool = False,
    ) -> T | None:  # fmt: skip
        """The field parsed, or None when it is empty or wrong (a wrong one is an error)."""
        text = row.get(field, "")
        if not text:
            if required:
                self.error(table.file, line, field, "required value is empty")
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.error(table.file, line, field, str(exc))
            return None

    def id(self, table: _Table, line: int, row: Mapping[str, str], field: str) -> str:
        """A required id ('' when missing, after reporting it)."""
        return self.value(table, line, row, field, str, required=True) or ""


def _integer(low: int | None = None, allowed: frozenset[int] | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValueError(f"{text!r} is not an integer")
        number = int(text)
        if (low is not None and number < low) or (allowed is not None and number not in allowed):
            wanted = f"one of {sorted(allowed)}" if allowed else f"at least {low}"
            raise ValueError(f"{number} is not {wanted}")
        return number

    return parse


def _time(text: str) -> int:
    match = _TIME.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a time HH:MM:SS")
    hours, minutes, seconds = (int(g) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > DAY:
        raise ValueError(f"{text!r} is after 24:00:00")
    return total


def _date(text: str) -> date:
    if not re.fullmatch(r"[0-9]{8}", text):
        raise ValueError(f"{text!r} is not a date YYYYMMDD")
    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _timezone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is not an IANA time zone") from None


def _currency(text: str) -> str:
    if text not in CURRENCIES:
        raise ValueError(f"{text!r} is not an ISO 4217 currency code")
    return text


def _amount_in(currency: str) -> Callable[[str], int]:
    return lambda text: parse_amount(text, currency)


_FLAG = _integer(allowed=frozenset({0, 1}))


# --- building -----------------------------------------------------------------------------


def _build(r: _Reader) -> Feed:
    timezone, agencies = _agency(r)
    services = _services(r)
    networks, routes = _routes(r, agencies)
    areas, stops = _stops(r)
    categories, media = _categories(r), _media(r)
    products = _products(r, categories, media)
    timeframes = _timeframes(r, services)
    leg_rules, has_priority = _leg_rules(r, networks, areas, timeframes, products)
    v2 = any(r.has(name) for name in _V2_FILES)
    attributes, fare_rules = _fares_v1(r, routes, stops, agencies) if not v2 else ({}, ())
    if v2 and r.has("fare_attributes.txt"):
        r.warn("fare_attributes.txt", 0, "", "ignored: the feed has Fares v2 files")
    for name in _EXPERIMENTAL_FILES:
        if r.has(name):
            r.warn(name, 0, "", "experimental, not in the adopted GTFS spec; ignored")
    _check_defaults(r, products, categories)
    return Feed(
        timezone=timezone,
        stops={s.stop_id: _localise(s, timezone) for s in stops.values()},
        routes=routes,
        rider_categories=categories,
        fare_media=frozenset(media),
        products=products,
        leg_rules=leg_rules,
        has_rule_priority=has_priority,
        transfer_rules=_transfer_rules(r, leg_rules, products),
        join_rules=_join_rules(r, networks, stops),
        timeframes=timeframes,
        services=services,
        fare_attributes=attributes,
        fare_rules=fare_rules,
        caps=_caps(r, categories),
        warnings=tuple(r.warnings),
    )


def _localise(stop: Stop, agency: ZoneInfo) -> Stop:
    """Keep a stop's own time zone only where it differs from the agency's (the rare case)."""
    if stop.timezone is None or stop.timezone.key == agency.key:
        return Stop(stop.stop_id, stop.station, stop.areas, stop.zone_id, None)
    return stop


def _agency(r: _Reader) -> tuple[ZoneInfo, set[str]]:
    table = r.table("agency.txt", ["agency_timezone"], needed=True)
    zones: dict[str, int] = {}
    ids: set[str] = set()
    for line, row in table.rows:
        zone = r.value(table, line, row, "agency_timezone", _timezone, required=True)
        if zone is not None:
            zones.setdefault(zone.key, line)
        if agency_id := row.get("agency_id"):
            ids.add(agency_id)
    if len(zones) > 1:
        r.error("agency.txt", max(zones.values()), "agency_timezone", "agencies differ in zone")
    if table.header and not table.rows:
        r.error("agency.txt", 0, "", "no agency")
    return ZoneInfo(next(iter(zones), "UTC")), ids


def _services(r: _Reader) -> dict[str, Service]:
    weekly: dict[str, tuple[int, date | None, date | None]] = {}
    table = r.table("calendar.txt", ["service_id", "start_date", "end_date"])
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    for line, row in table.rows:
        bits = sum((r.value(table, line, row, d, _FLAG, required=True) or 0) << i
                   for i, d in enumerate(days))  # fmt: skip
        start = r.value(table, line, row, "start_date", _date, required=True)
        end = r.value(table, line, row, "end_date", _date, required=True)
        weekly[r.id(table, line, row, "service_id")] = (bits, start, end)
    changes: dict[str, tuple[set[date], set[date]]] = defaultdict(lambda: (set(), set()))
    table = r.table("calendar_dates.txt", ["service_id", "date", "exception_type"])
    for line, row in table.rows:
        day = r.value(table, line, row, "date", _date, required=True)
        kind = r.value(table, line, row, "exception_type", _integer(allowed=frozenset({1, 2})),
                       required=True)  # fmt: skip
        if day is not None and kind is not None:
            changes[r.id(table, line, row, "service_id")][kind - 1].add(day)
    return {
        sid: Service(*weekly.get(sid, (0, None, None)), frozenset(changes[sid][0]),
                     frozenset(changes[sid][1]))
        for sid in weekly.keys() | changes.keys()
    }  # fmt: skip


def _routes(r: _Reader, agencies: set[str]) -> tuple[set[str], dict[str, Route]]:
    table = r.table("routes.txt", ["route_id"], needed=True)
    inline = "network_id" in table.header
    routes: dict[str, Route] = {}
    for line, row in table.rows:
        route_id, agency_id = r.id(table, line, row, "route_id"), row.get("agency_id") or None
        if route_id in routes:
            r.error(table.file, line, "route_id", f"{route_id!r} is defined twice")
        if agency_id and agency_id not in agencies:
            r.error(table.file, line, "agency_id", f"no agency {agency_id!r}")
        routes[route_id] = Route(route_id, row.get("network_id") or None, agency_id)
    if inline:
        for name in ("networks.txt", "route_networks.txt"):
            if r.has(name):
                r.error(name, 0, "", "forbidden when routes.txt has a network_id column")
        return {n.network_id for n in routes.values() if n.network_id}, routes
    networks = _ids(r, "networks.txt", "network_id")
    table = r.table("route_networks.txt", ["network_id", "route_id"])
    for line, row in table.rows:
        network, route_id = r.id(table, line, row, "network_id"), r.id(table, line, row, "route_id")
        route = routes.get(route_id)
        if network and network not in networks:
            r.error(table.file, line, "network_id", f"no network {network!r} in networks.txt")
        if route is None:
            r.error(table.file, line, "route_id", f"no route {route_id!r} in routes.txt")
        elif route.network_id is not None:
            r.error(table.file, line, "route_id", f"route {route_id!r} is in two networks")
        else:
            routes[route_id] = Route(route_id, network, route.agency_id)
    return networks, routes


def _ids(r: _Reader, name: str, field: str) -> set[str]:
    """The unique ids a file defines (a repeated one is an error)."""
    table = r.table(name, [field])
    ids: set[str] = set()
    for line, row in table.rows:
        value = r.id(table, line, row, field)
        if value in ids:
            r.error(name, line, field, f"{value!r} is defined twice")
        ids.add(value)
    return ids


def _stops(r: _Reader) -> tuple[set[str], dict[str, Stop]]:
    table = r.table("stops.txt", ["stop_id"], needed=True)
    parents: dict[str, tuple[int, str | None]] = {}
    zones: dict[str, tuple[str | None, ZoneInfo | None]] = {}
    for line, row in table.rows:
        stop_id = r.id(table, line, row, "stop_id")
        if stop_id in parents:
            r.error(table.file, line, "stop_id", f"{stop_id!r} is defined twice")
        parents[stop_id] = (line, row.get("parent_station") or None)
        zone = r.value(table, line, row, "stop_timezone", _timezone)
        zones[stop_id] = (row.get("zone_id") or None, zone)
    for line, parent in parents.values():
        if parent is not None and parent not in parents:
            r.error(table.file, line, "parent_station", f"no stop {parent!r}")
    areas = _ids(r, "areas.txt", "area_id")
    own = _stop_areas(r, areas, parents)
    stops = {}
    for stop_id, (_, parent) in parents.items():
        station = parent if parent in parents else stop_id
        zone_id, tz = zones[stop_id]
        # A station's areas hold for its platforms unless a platform has areas of its own.
        stop_areas = own.get(stop_id) or own.get(station) or ()
        stops[stop_id] = Stop(stop_id, station, frozenset(stop_areas), zone_id,
                              tz or zones[station][1])  # fmt: skip
    return areas, stops


def _stop_areas(r: _Reader, areas: set[str], stops: Mapping[str, object]) -> dict[str, set[str]]:
    table = r.table("stop_areas.txt", ["area_id", "stop_id"])
    own: dict[str, set[str]] = defaultdict(set)
    for line, row in table.rows:
        area, stop_id = r.id(table, line, row, "area_id"), r.id(table, line, row, "stop_id")
        if area and area not in areas:
            r.error(table.file, line, "area_id", f"no area {area!r} in areas.txt")
        if stop_id and stop_id not in stops:
            r.error(table.file, line, "stop_id", f"no stop {stop_id!r} in stops.txt")
        own[stop_id].add(area)
    return own


def _categories(r: _Reader) -> dict[str, bool]:
    table = r.table("rider_categories.txt", ["rider_category_id", "is_default_fare_category"])
    categories: dict[str, bool] = {}
    for line, row in table.rows:
        category = r.id(table, line, row, "rider_category_id")
        if category in categories:
            r.error(table.file, line, "rider_category_id", f"{category!r} is defined twice")
        if not row.get("rider_category_name"):
            r.error(table.file, line, "rider_category_name", "required value is empty")
        categories[category] = r.value(table, line, row, "is_default_fare_category", _FLAG) == 1
    return categories


def _caps(r: _Reader, categories: Mapping[str, bool]) -> tuple[Cap, ...]:
    """``fare_caps.txt``, Cardless's extension (GTFS has no caps; other consumers ignore the
    file): a row caps what riders of a category pay in a day or a Monday-to-Sunday week."""
    table = r.table("fare_caps.txt", ["rider_category_id", "cap_period", "amount", "currency"])
    caps: dict[tuple[str, str], Cap] = {}
    for line, row in table.rows:
        category = r.id(table, line, row, "rider_category_id")
        if category and category not in categories:
            r.error(table.file, line, "rider_category_id", f"no rider category {category!r}")
        period = r.value(table, line, row, "cap_period", _one_of(CAP_PERIODS), required=True)
        currency = r.value(table, line, row, "currency", _currency, required=True)
        if period is None or currency is None:
            continue
        if (category, period) in caps:
            r.error(table.file, line, "cap_period", f"a second {period} cap for {category!r}")
        amount = r.value(table, line, row, "amount", _amount_in(currency), required=True)
        if amount is not None and amount < 0:
            r.error(table.file, line, "amount", "a cap cannot be negative")
        elif amount is not None:
            caps[category, period] = Cap(category, period, amount, currency)
    return tuple(caps.values())


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def _media(r: _Reader) -> set[str]:
    table = r.table("fare_media.txt", ["fare_media_id", "fare_media_type"])
    media: set[str] = set()
    for line, row in table.rows:
        medium = r.id(table, line, row, "fare_media_id")
        if medium in media:
            r.error(table.file, line, "fare_media_id", f"{medium!r} is defined twice")
        r.value(table, line, row, "fare_media_type", _integer(allowed=frozenset(range(5))),
                required=True)  # fmt: skip
        media.add(medium)
    return media


def _products(
    r: _Reader, categories: Mapping[str, bool], media: set[str]
) -> dict[str, tuple[FareProduct, ...]]:
    table = r.table("fare_products.txt", ["fare_product_id", "amount", "currency"])
    products: dict[str, list[FareProduct]] = defaultdict(list)
    seen: dict[tuple[str, str | None, str | None], int] = {}
    for line, row in table.rows:
        product_id = r.id(table, line, row, "fare_product_id")
        category, medium = row.get("rider_category_id") or None, row.get("fare_media_id") or None
        if category is not None and category not in categories:
            r.error(table.file, line, "rider_category_id", f"no rider category {category!r}")
        if medium is not None and medium not in media:
            r.error(table.file, line, "fare_media_id", f"no fare medium {medium!r}")
        if (key := (product_id, category, medium)) in seen:
            r.error(table.file, line, "fare_product_id", f"repeats line {seen[key]}")
        seen[key] = line
        currency = r.value(table, line, row, "currency", _currency, required=True)
        if currency is None:  # its amount cannot be read
            continue
        amount = r.value(table, line, row, "amount", _amount_in(currency), required=True)
        if amount is not None:
            products[product_id].append(FareProduct(product_id, category, medium, amount, currency))
    return {k: tuple(v) for k, v in products.items()}


def _check_defaults(
    r: _Reader, products: Mapping[str, tuple[FareProduct, ...]], categories: Mapping[str, bool]
) -> None:
    """A product several categories may use needs exactly one default among them (a warning:
    a rider who names no category then just finds no row for that product)."""
    defaults = {c for c, default in categories.items() if default}
    for product_id, rows in products.items():
        named = {p.rider_category_id for p in rows}
        eligible = set(categories) if None in named else named
        if len(eligible) > 1 and len(eligible & defaults) != 1:
            r.warn("fare_products.txt", 0, "rider_category_id",
                   f"{product_id!r}: {len(eligible & defaults)} default categories among "
                   f"{sorted(c for c in eligible if c)}, the spec wants exactly one")  # fmt: skip


def _timeframes(r: _Reader, services: Mapping[str, Service]) -> dict[str, tuple[Timeframe, ...]]:
    table = r.table("timeframes.txt", ["timeframe_group_id", "service_id"])
    groups: dict[str, list[Timeframe]] = defaultdict(list)
    for line, row in table.rows:
        group = r.id(table, line, row, "timeframe_group_id")
        service = r.id(table, line, row, "service_id")
        start = r.value(table, line, row, "start_time", _time)
        end = r.value(table, line, row, "end_time", _time)
        for field, value, other in (("start_time", start, end), ("end_time", end, start)):
            if value is None and other is not None and not row.get(field):
                r.error(table.file, line, field, "required when the other time is given")
        if service and service not in services:
            r.error(table.file, line, "service_id", f"no service {service!r} in the calendar")
        frame = Timeframe(group, start or 0, DAY if end is None else end, service)
        if frame.start >= frame.end:
            r.error(table.file, line, "end_time", "must be after start_time")
        elif any(f.service_id == service and f.start < frame.end and frame.start < f.end
                 for f in groups[group]):  # fmt: skip
            r.warn(table.file, line, "start_time", f"overlaps another {group!r} interval")
        groups[group].append(frame)
    return {k: tuple(v) for k, v in groups.items()}


def _leg_rules(
    r: _Reader, networks: set[str], areas: set[str], timeframes: Mapping[str, object],
    products: Mapping[str, object],
) -> tuple[tuple[LegRule, ...], bool]:  # fmt: skip
    table = r.table("fare_leg_rules.txt", ["fare_product_id"])
    rules: list[LegRule] = []
    keys: dict[tuple[str | None, ...], int] = {}
    for line, row in table.rows:
        rule = _leg_rule(r, table, line, row)
        refs = ((rule.network_id, networks, "network_id", "network"),
                (rule.from_area_id, areas, "from_area_id", "area"),
                (rule.to_area_id, areas, "to_area_id", "area"),
                (rule.from_timeframe_group_id, timeframes, "from_timeframe_group_id", "timeframe"),
                (rule.to_timeframe_group_id, timeframes, "to_timeframe_group_id", "timeframe"),
                (rule.fare_product_id, products, "fare_product_id", "fare product"))  # fmt: skip
        for value, known, field, what in refs:
            if value and value not in known:
                r.error(table.file, line, field, f"no {what} {value!r}")
        key = (rule.network_id, rule.from_area_id, rule.to_area_id, rule.from_timeframe_group_id,
               rule.to_timeframe_group_id, rule.fare_product_id)  # fmt: skip
        if key in keys:
            r.error(table.file, line, "fare_product_id",
                    f"repeats the rule of line {keys[key]} (leg_group_id, rule_priority and "
                    "columns not in the adopted spec do not tell rules apart)")  # fmt: skip
        keys[key] = line
        rules.append(rule)
    return tuple(rules), "rule_priority" in table.header


def _leg_rule(r: _Reader, table: _Table, line: int, row: Mapping[str, str]) -> LegRule:
    def get(field: str) -> str | None:
        return row.get(field) or None

    priority = r.value(table, line, row, "rule_priority", _integer(low=0)) or 0
    return LegRule(line, get("leg_group_id"), get("network_id"), get("from_area_id"),
                   get("to_area_id"), get("from_timeframe_group_id"),
                   get("to_timeframe_group_id"), r.id(table, line, row, "fare_product_id"),
                   priority)  # fmt: skip


def _transfer_rules(
    r: _Reader, leg_rules: tuple[LegRule, ...], products: Mapping[str, object]
) -> tuple[TransferRule, ...]:
    table = r.table("fare_transfer_rules.txt", ["fare_transfer_type"])
    groups = {rule.leg_group_id for rule in leg_rules if rule.leg_group_id}
    rules = []
    for line, row in table.rows:
        ends = (row.get("from_leg_group_id") or None, row.get("to_leg_group_id") or None)
        for field, group in zip(("from_leg_group_id", "to_leg_group_id"), ends, strict=True):
            if group and group not in groups:
                r.error(table.file, line, field, f"no leg group {group!r} in fare_leg_rules.txt")
        product = row.get("fare_product_id") or None
        if product and product not in products:
            r.error(table.file, line, "fare_product_id", f"no fare product {product!r}")
        kind = r.value(table, line, row, "fare_transfer_type",
                       _integer(allowed=frozenset({0, 1, 2})), required=True)  # fmt: skip
        rules.append(TransferRule(line, *ends, _transfer_count(r, table, line, row, ends),
                                  *_duration(r, table, line, row), kind or 0, product))  # fmt: skip
    return tuple(rules)


def _transfer_count(
    r: _Reader, table: _Table, line: int, row: Mapping[str, str], ends: tuple[str | None, ...]
) -> int | None:
    count = r.value(table, line, row, "transfer_count", _integer(low=-1))
    if count == 0:
        r.error(table.file, line, "transfer_count", "must be -1 or at least 1")
    same = ends[0] is not None and ends[0] == ends[1]
    if same and count is None and not row.get("transfer_count"):
        r.error(table.file, line, "transfer_count", "required when the two leg groups are equal")
    if not same and count is not None:
        r.warn(table.file, line, "transfer_count",
               "forbidden when the two leg groups differ; ignored")  # fmt: skip
        return None
    return count


def _duration(
    r: _Reader, table: _Table, line: int, row: Mapping[str, str]
) -> tuple[int | None, int | None]:
    limit = r.value(table, line, row, "duration_limit", _integer(low=1))
    kind = r.value(table, line, row, "duration_limit_type", _integer(allowed=frozenset(range(4))))
    if limit is not None and kind is None and not row.get("duration_limit_type"):
        r.error(table.file, line, "duration_limit_type", "required with a duration_limit")
    if limit is None and kind is not None:
        r.warn(table.file, line, "duration_limit_type", "forbidden without duration_limit; ignored")
        kind = None
    return limit, kind


def _join_rules(r: _Reader, networks: set[str], stops: Mapping[str, Stop]) -> tuple[JoinRule, ...]:
    table = r.table("fare_leg_join_rules.txt", ["from_network_id", "to_network_id"])
    rules = []
    for line, row in table.rows:
        ends = [r.id(table, line, row, f) for f in ("from_network_id", "to_network_id")]
        at = [row.get(f) or None for f in ("from_stop_id", "to_stop_id")]
        for field, value, known, what in (("from_network_id", ends[0], networks, "network"),
                                          ("to_network_id", ends[1], networks, "network"),
                                          ("from_stop_id", at[0], stops, "stop"),
                                          ("to_stop_id", at[1], stops, "stop")):  # fmt: skip
            if value and value not in known:
                r.error(table.file, line, field, f"no {what} {value!r}")
        if (at[0] is None) != (at[1] is None):
            r.error(table.file, line, "to_stop_id" if at[1] is None else "from_stop_id",
                    "from_stop_id and to_stop_id go together")  # fmt: skip
        if ends[0] != ends[1]:
            # The adopted spec asks for the same network on both sides, and an effective fare
            # leg is matched by its one network: such a row can never join legs.
            r.warn(table.file, line, "to_network_id",
                   f"differs from from_network_id {ends[0]!r}; ignored (the spec joins legs of "
                   "one network only)")  # fmt: skip
            continue
        rules.append(JoinRule(line, ends[0], at[0], at[1]))
    return tuple(rules)


# --- Fares v1 -----------------------------------------------------------------------------


def _fares_v1(
    r: _Reader, routes: Mapping[str, Route], stops: Mapping[str, Stop], agencies: set[str]
) -> tuple[dict[str, FareAttribute], tuple[FareRuleV1, ...]]:
    table = r.table("fare_attributes.txt", ["fare_id", "price", "currency_type"])
    fares: dict[str, FareAttribute] = {}
    for line, row in table.rows:
        fare = _fare_attribute(r, table, line, row, agencies)
        if fare.fare_id in fares:
            r.error(table.file, line, "fare_id", f"{fare.fare_id!r} is defined twice")
        fares[fare.fare_id] = fare
    zones = {s.zone_id for s in stops.values() if s.zone_id}
    table = r.table("fare_rules.txt", ["fare_id"])
    rules = []
    for line, row in table.rows:
        fields = ("route_id", "origin_id", "destination_id", "contains_id")
        rule = FareRuleV1(r.id(table, line, row, "fare_id"), *(row.get(f) or None for f in fields))
        if rule.fare_id and rule.fare_id not in fares:
            r.error(table.file, line, "fare_id", f"no fare {rule.fare_id!r} in fare_attributes.txt")
        if rule.route_id and rule.route_id not in routes:
            r.error(table.file, line, "route_id", f"no route {rule.route_id!r}")
        for field in ("origin_id", "destination_id", "contains_id"):
            if (zone := row.get(field)) and zone not in zones:
                r.error(table.file, line, field, f"no stop has zone_id {zone!r}")
        rules.append(rule)
    return {k: v for k, v in fares.items() if k}, tuple(rules)


def _fare_attribute(
    r: _Reader, table: _Table, line: int, row: Mapping[str, str], agencies: set[str]
) -> FareAttribute:
    currency = r.value(table, line, row, "currency_type", _currency, required=True)
    price = None
    if currency is not None:
        price = r.value(table, line, row, "price", _amount_in(currency), required=True)
    if price is not None and price < 0:
        r.error(table.file, line, "price", "must not be negative")
    r.value(table, line, row, "payment_method", _FLAG, required=True)
    if "transfers" not in table.header:
        r.error(table.file, 1, "transfers", "required column is missing (empty means unlimited)")
    agency = row.get("agency_id") or None
    if agency and agency not in agencies:
        r.error(table.file, line, "agency_id", f"no agency {agency!r}")
    return FareAttribute(
        r.id(table, line, row, "fare_id"), price or 0, currency or "XXX",
        r.value(table, line, row, "transfers", _integer(allowed=frozenset({0, 1, 2}))),
        r.value(table, line, row, "transfer_duration", _integer(low=0)), agency,
    )  # fmt: skip
