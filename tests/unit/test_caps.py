"""Daily and weekly caps: capping days start at 04:30 local time, weeks on Monday, and each
journey owes its fare or what is left under the caps, in the order the journeys started."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.transit.caps import Capping, Fare
from services.transit.feed import DEMO_FEED, Cap, load

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAPS = (
    Cap("adult", "day", 1500, "CNY"),
    Cap("adult", "week", 6000, "CNY"),
    Cap("student", "day", 750, "CNY"),
)
CAPPING = Capping(CAPS, time(4, 30), SHANGHAI)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A local time in November 2026 (the 23rd is a Monday)."""
    return datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI)


def owed(*fares: tuple[datetime, int | None], category: str = "adult") -> list[int]:
    return CAPPING.apply([Fare(when, category, amount, "CNY") for when, amount in fares])


def test_fares_under_the_cap_are_owed_whole_and_the_one_that_crosses_it_owes_the_rest() -> None:
    assert owed((at(24, 8), 500), (at(24, 9), 500), (at(24, 10), 400), (at(24, 11), 500)) == [
        500,
        500,
        400,
        100,
    ]


def test_a_ride_after_midnight_counts_with_the_evening_before_until_04_30() -> None:
    evening = [(at(24, 20), 500), (at(24, 21), 500), (at(24, 22), 500)]
    assert owed(*evening, (at(25, 4, 29), 500)) == [500, 500, 500, 0]
    assert owed(*evening, (at(25, 4, 30), 500)) == [500, 500, 500, 500]


def test_the_week_runs_monday_to_sunday_and_caps_across_its_days() -> None:
    # Four capped days (Mon to Thu) reach the weekly 60.00: Friday rides free, next Monday not.
    week = [(at(day, hour), 500) for day in (23, 24, 25, 26) for hour in (8, 9, 10)]
    assert owed(*week, (at(27, 8), 500), (at(30, 8), 500))[-2:] == [0, 500]
    assert CAPPING.day_of(at(30, 4, 29)).isoformat() == "2026-11-29"  # still Sunday's
    assert CAPPING.week_start(at(29, 23)) == at(23, 4, 30)


def test_each_category_has_its_own_caps_and_one_without_caps_pays_every_fare() -> None:
    assert owed((at(24, 8), 500), (at(24, 9), 500), category="student") == [500, 250]
    assert owed(*[(at(24, h), 500) for h in range(8, 12)], category="senior") == [500] * 4


def test_an_unknown_fare_owes_nothing_and_counts_for_nothing() -> None:
    assert owed((at(24, 8), None), (at(24, 9), 1000), (at(24, 10), 500)) == [0, 1000, 500]


def test_a_cap_in_another_currency_does_not_apply() -> None:
    fares = [Fare(at(24, h), "adult", 1000, "HKD") for h in (8, 9)]
    assert CAPPING.apply(fares) == [1000, 1000]


@given(st.lists(st.tuples(st.integers(0, 6 * 24 * 60), st.integers(0, 900)), max_size=40))
def test_owed_never_exceeds_the_fare_nor_the_caps(rides: list[tuple[int, int]]) -> None:
    starts = sorted(rides)
    fares = [
        Fare(datetime.fromtimestamp(1795392000 + minute * 60, SHANGHAI), "adult", amount, "CNY")
        for minute, amount in starts
    ]
    dues = CAPPING.apply(fares)
    assert all(0 <= due <= fare.amount_minor for due, fare in zip(dues, fares, strict=True))
    per_day: dict[object, int] = {}
    for due, fare in zip(dues, fares, strict=True):
        day = CAPPING.day_of(fare.started_at)
        per_day[day] = per_day.get(day, 0) + due
    assert all(total <= 1500 for total in per_day.values())
    assert sum(dues) <= 6000 * 2  # six days span at most two capping weeks


@pytest.mark.parametrize("category", ["adult", "student"])
def test_the_demo_feed_caps_adults_and_students(category: str) -> None:
    caps = {(c.rider_category_id, c.period) for c in load(DEMO_FEED).caps}
    assert {(category, "day"), (category, "week")} <= caps
