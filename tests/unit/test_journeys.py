"""Taps pair into journeys by time, whatever order and however often the gates uploaded them."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.transit.journeys import Direction, Kind, Tap, pair

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
HOURS_4 = timedelta(hours=4)


def tap(minute: int, station: str, direction: Direction) -> Tap:
    return Tap(uuid.uuid4(), "rider-1", station, direction, T0 + timedelta(minutes=minute))


def entry(minute: int, station: str = "A") -> Tap:
    return tap(minute, station, Direction.ENTRY)


def exit_(minute: int, station: str = "B") -> Tap:
    return tap(minute, station, Direction.EXIT)


def kinds(taps: list[Tap], now_minute: int = 24 * 60) -> list[tuple[Kind, str | None, str | None]]:
    now = T0 + timedelta(minutes=now_minute)
    return [
        (j.kind, j.entry and j.entry.station, j.exit and j.exit.station)
        for j in pair(taps, now=now, max_journey=HOURS_4)
    ]


def test_an_entry_and_its_exit_make_a_journey() -> None:
    assert kinds([entry(0), exit_(25)]) == [(Kind.COMPLETE, "A", "B")]


def test_an_entry_and_an_exit_at_the_same_station_make_a_journey() -> None:
    assert kinds([entry(0, "A"), exit_(3, "A")]) == [(Kind.COMPLETE, "A", "A")]


def test_an_exit_alone_waits_for_a_late_entry_before_standing_alone() -> None:
    assert kinds([exit_(10)], now_minute=60) == [(Kind.OPEN, None, "B")]
    assert kinds([exit_(10)], now_minute=5 * 60) == [(Kind.EXIT_ONLY, None, "B")]


def test_an_exit_without_an_entry_stands_alone() -> None:
    assert kinds([exit_(10), entry(20), exit_(40, "C")]) == [
        (Kind.EXIT_ONLY, None, "B"),
        (Kind.COMPLETE, "A", "C"),
    ]


def test_an_entry_left_open_is_incomplete_after_the_longest_journey() -> None:
    taps = [entry(0)]
    assert kinds(taps, now_minute=60) == [(Kind.OPEN, "A", None)]
    assert kinds(taps, now_minute=5 * 60) == [(Kind.INCOMPLETE, "A", None)]


def test_a_late_exit_completes_the_journey_and_keeps_its_id() -> None:
    first = entry(0)
    before = pair([first], now=T0 + timedelta(hours=5), max_journey=HOURS_4)
    after = pair([first, exit_(50)], now=T0 + timedelta(hours=6), max_journey=HOURS_4)
    assert [j.kind for j in before] == [Kind.INCOMPLETE]
    assert [j.kind for j in after] == [Kind.COMPLETE]
    assert before[0].journey_id == after[0].journey_id


def test_a_second_entry_closes_the_open_journey_as_incomplete() -> None:
    assert kinds([entry(0, "A"), entry(30, "C"), exit_(50, "D")]) == [
        (Kind.INCOMPLETE, "A", None),
        (Kind.COMPLETE, "C", "D"),
    ]


def test_an_exit_too_long_after_the_entry_does_not_close_it() -> None:
    assert kinds([entry(0), exit_(5 * 60)]) == [
        (Kind.INCOMPLETE, "A", None),
        (Kind.EXIT_ONLY, None, "B"),
    ]


DAY = [entry(0, "A"), exit_(20, "B"), entry(300, "B"), exit_(330, "C"), exit_(600, "D")]


def test_out_of_order_and_repeated_uploads_pair_the_same() -> None:
    expected = pair(DAY, now=T0 + timedelta(days=1), max_journey=HOURS_4)
    for order in itertools.islice(itertools.permutations(DAY + DAY[:2]), 200):
        assert pair(order, now=T0 + timedelta(days=1), max_journey=HOURS_4) == expected


@given(st.permutations(DAY), st.lists(st.sampled_from(DAY), max_size=5))
def test_pairing_is_a_function_of_the_set_of_taps(order: list[Tap], repeats: list[Tap]) -> None:
    now = T0 + timedelta(days=1)
    assert pair([*order, *repeats], now=now, max_journey=HOURS_4) == pair(
        DAY, now=now, max_journey=HOURS_4
    )
