"""``cardless fares quote``: journeys in as JSON lines, one fare out per journey, in order.

Each input line is ``{"legs": [{"route_id", "from_stop_id", "to_stop_id", "departure",
"arrival"}, ...], "rider_category_id": ... or null, "fare_media_id": ... or null}`` with times in
ISO 8601 local time of the feed's agency zone, without offset. Each output line is
``{"amount_minor", "currency", "products", "reason"}``; a line that is not such a journey gets
its own output line with the reason, and the lines after it are still priced. Blank lines are
skipped.

Exit code: 0 when every line was a journey (whether its fare is known or not), 1 when at least
one line was not, 2 when the feed cannot be loaded (its problems go to standard error, and no
line is read).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TextIO

import msgspec

from services.transit.fares import FareEngine, Journey, Leg, Quote
from services.transit.feed import FeedError, load

log = logging.getLogger(__name__)


class _LegLine(msgspec.Struct, forbid_unknown_fields=True):
    route_id: str
    from_stop_id: str
    to_stop_id: str
    departure: str
    arrival: str


class _JourneyLine(msgspec.Struct, forbid_unknown_fields=True):
    legs: list[_LegLine]
    rider_category_id: str | None = None
    fare_media_id: str | None = None


_decoder = msgspec.json.Decoder(_JourneyLine)
_encoder = msgspec.json.Encoder()


def quote(feed_path: Path, lines: Iterable[str], out: TextIO) -> int:
    """Price every journey line on the feed at ``feed_path``; the exit code rule is above."""
    try:
        feed = load(feed_path)
    except FeedError as error:
        for problem in error.problems:
            print(f"{feed_path}: {problem}", file=sys.stderr)
        return 2
    for warning in feed.warnings:
        log.warning("feed %s: %s", feed_path, warning)
    engine, code = FareEngine(feed), 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            answer = engine.price(parse_journey(line))
        except ValueError as bad:
            answer, code = Quote(None, None, (), f"line {number}: {bad}"), 1
        out.write(_encoder.encode(_shape(answer)).decode() + "\n")
    return code


def parse_journey(line: str) -> Journey:
    """One input line as a Journey; ValueError says what is wrong with it."""
    try:
        data = _decoder.decode(line)
    except msgspec.DecodeError as bad:
        raise ValueError(str(bad)) from None
    legs = tuple(
        Leg(leg.route_id, leg.from_stop_id, leg.to_stop_id,
            _local_time(leg.departure, f"legs[{n}].departure"),
            _local_time(leg.arrival, f"legs[{n}].arrival"))
        for n, leg in enumerate(data.legs)
    )  # fmt: skip
    return Journey(legs, data.rider_category_id, data.fare_media_id)


def _local_time(text: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or len(text) <= len("2025-01-01"):
        raise ValueError(f"{where}: {text!r} is not an ISO 8601 date and time")
    if moment.tzinfo is not None:
        raise ValueError(f"{where}: {text!r} has an offset; give the agency's local time")
    return moment


def _shape(answer: Quote) -> dict[str, object]:
    return {
        "amount_minor": answer.amount_minor,
        "currency": answer.currency,
        "products": list(answer.products),
        "reason": answer.reason,
    }
