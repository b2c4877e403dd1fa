"""Daily and weekly fare caps: what a rider owes for each journey once their caps are applied.

Pure. A capping day runs from ``day_start`` local time (e.g. 04:30, so a ride home after
midnight counts with the evening before) to the same time the next day; a capping week is the
seven capping days from Monday. Journeys count in the order they started: each owes its fare,
or what is left under the day's and the week's caps if that is less. Applied whenever a
rider's journeys are re-priced (every upload of their taps), so a cap takes effect as the day
goes; a late tap that changes an earlier journey changes what the later ones owe, and the
service posts the differences as new charges or refunds, never edits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.transit.feed import Cap


@dataclass(frozen=True, slots=True)
class Fare:
    """One priced journey as capping sees it; ``amount_minor`` None when the fare is unknown."""

    started_at: datetime  # aware
    category: str
    amount_minor: int | None
    currency: str | None


class Capping:
    """The caps of a feed, on capping days that start at ``day_start`` in ``timezone``."""

    def __init__(self, caps: Iterable[Cap], day_start: time, timezone: ZoneInfo) -> None:
        self._caps = {(c.rider_category_id, c.period): c for c in caps}
        self._shift = timedelta(hours=day_start.hour, minutes=day_start.minute)
        self._day_start, self._tz = day_start, timezone

    def day_of(self, at: datetime) -> date:
        """The capping day a moment belongs to."""
        return (at.astimezone(self._tz) - self._shift).date()

    def week_start(self, at: datetime) -> datetime:
        """When the capping week holding ``at`` began (aware): journeys before it cannot
        change what a journey at ``at`` owes."""
        day = self.day_of(at)
        monday = day - timedelta(days=day.weekday())
        return datetime.combine(monday, self._day_start, self._tz)

    def apply(self, fares: Sequence[Fare]) -> list[int]:
        """What each journey owes, in the order given (which must be the order they started):
        its fare, capped. An unknown fare owes nothing (the journey is kept for an operator to
        look at: a rider is never charged a guess) and does not count towards a cap."""
        spent: dict[tuple[str, str, date], int] = {}
        owed = []
        for fare in fares:
            if fare.amount_minor is None:
                owed.append(0)
                continue
            day = self.day_of(fare.started_at)
            periods = {"day": day, "week": day - timedelta(days=day.weekday())}
            due = fare.amount_minor
            for period, first_day in periods.items():
                cap = self._caps.get((fare.category, period))
                if cap is not None and cap.currency == fare.currency:
                    so_far = spent.get((fare.category, period, first_day), 0)
                    due = max(0, min(due, cap.amount_minor - so_far))
            for period, first_day in periods.items():
                key = (fare.category, period, first_day)
                spent[key] = spent.get(key, 0) + due
            owed.append(due)
        return owed
