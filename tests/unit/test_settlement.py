"""Daily statements: business days across cut-offs and DST, balances, byte-identical output."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.wallet.ledger import TransferCode
from services.wallet.settlement import (
    BusinessDay,
    Movement,
    Statement,
    TypeTotal,
    build_statement,
    statement_csv,
    statement_json,
)

SHANGHAI_DAY = BusinessDay(date(2026, 11, 25), "Asia/Shanghai", time(4))
START, END = datetime(2026, 11, 24, 20, tzinfo=UTC), datetime(2026, 11, 25, 20, tzinfo=UTC)
ACCOUNT = uuid.UUID("0193a5b0-0000-7000-8000-000000000001")
US = timedelta(microseconds=1)
# Zones with 30-minute DST (Lord Howe), midnight changes (Santiago) and a skipped date (Apia).
ZONES = (
    "Asia/Shanghai",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Apia",
    "UTC",
)


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=0x0193A5B0_0000_7000_8000_000000000000 + n)


def _movement(
    n: int, at: datetime, amount: int, code: TransferCode, reference: str | None = None
) -> Movement:
    return Movement(_id(n), at, amount, "CNY", code, reference)


# Four movements of one Shanghai day, including both edges; two share an instant.
EXAMPLE = (
    _movement(0xB, datetime(2026, 11, 25, 1, 30, tzinfo=UTC), 5000, TransferCode.TOP_UP, "topup-1"),
    _movement(0xA, datetime(2026, 11, 25, 1, 30, tzinfo=UTC), -300, TransferCode.FARE, "j, 7"),
    _movement(0xC, START, -450, TransferCode.FARE),
    _movement(0xD, END - US, 150, TransferCode.REFUND, "退款-1"),
)


# Business day


def test_shanghai_business_day_runs_from_four_in_the_morning_to_four_the_next_morning() -> None:
    assert SHANGHAI_DAY.bounds() == (START, END)


@pytest.mark.parametrize(
    ("local", "business_date"),
    [
        (datetime(2026, 11, 25, 3, 59, 59, 999999), date(2026, 11, 24)),
        (datetime(2026, 11, 25, 4, 0), date(2026, 11, 25)),
        (datetime(2026, 11, 25, 23, 59), date(2026, 11, 25)),
        (datetime(2026, 11, 26, 0, 30), date(2026, 11, 25)),
        (datetime(2026, 11, 26, 4, 0), date(2026, 11, 26)),
    ],
)
def test_an_instant_before_the_cutoff_belongs_to_the_previous_business_day(
    local: datetime, business_date: date
) -> None:
    instant = local.replace(tzinfo=timezone(timedelta(hours=8)))
    assert BusinessDay.of(instant, "Asia/Shanghai", time(4)).date == business_date


@pytest.mark.parametrize(
    ("cutoff", "day", "hours"),
    [
        (time(4), date(2026, 3, 28), 23),  # Berlin springs forward on Sunday 29 March 2026
        (time(0), date(2026, 3, 29), 23),
        (time(4), date(2026, 10, 24), 25),  # and falls back on Sunday 25 October 2026
        (time(0), date(2026, 10, 25), 25),
        (time(4), date(2026, 3, 29), 24),
    ],
)
def test_business_day_is_23_or_25_hours_long_when_the_clocks_change(
    cutoff: time, day: date, hours: int
) -> None:
    start, end = BusinessDay(day, "Europe/Berlin", cutoff).bounds()
    assert end - start == timedelta(hours=hours)


def test_berlin_business_day_starts_at_the_cutoff_in_summer_and_winter_time() -> None:
    winter = BusinessDay(date(2026, 3, 28), "Europe/Berlin", time(4)).bounds()
    assert winter == (datetime(2026, 3, 28, 3, tzinfo=UTC), datetime(2026, 3, 29, 2, tzinfo=UTC))


def test_a_cutoff_in_the_skipped_hour_is_read_with_winter_time() -> None:
    # 02:30 does not exist on 29 March in Berlin; it is taken as 02:30 CET, i.e. 03:30 CEST.
    start, _ = BusinessDay(date(2026, 3, 29), "Europe/Berlin", time(2, 30)).bounds()
    assert start == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert BusinessDay.of(start - US, "Europe/Berlin", time(2, 30)).date == date(2026, 3, 28)
    assert BusinessDay.of(start, "Europe/Berlin", time(2, 30)).date == date(2026, 3, 29)


def test_a_cutoff_in_the_repeated_hour_starts_the_day_at_its_first_occurrence() -> None:
    start, _ = BusinessDay(date(2026, 10, 25), "Europe/Berlin", time(2, 30)).bounds()
    assert start == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, not 02:30 CET
    second_0215 = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)  # 02:15 CET, after the first 02:30
    assert BusinessDay.of(second_0215, "Europe/Berlin", time(2, 30)).date == date(2026, 10, 25)


@given(
    instant=st.datetimes(datetime(1990, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    tz=st.sampled_from(ZONES),
    cutoff=st.times(),
)
def test_every_instant_falls_in_exactly_one_business_day(
    instant: datetime, tz: str, cutoff: time
) -> None:
    day = BusinessDay.of(instant, tz, cutoff)
    start, end = day.bounds()
    assert start <= instant < end
    following = BusinessDay(day.date + timedelta(days=1), tz, cutoff)
    assert following.bounds()[0] == end  # days tile: no gap and no overlap


def test_a_day_is_closed_once_its_end_has_passed() -> None:
    assert not SHANGHAI_DAY.is_closed(END - US)
    assert SHANGHAI_DAY.is_closed(END)


@pytest.mark.parametrize(
    "bad",
    [
        {"date": datetime(2026, 11, 25, tzinfo=UTC), "tz": "Asia/Shanghai"},
        {"date": date(2026, 11, 25), "tz": "Asia/Atlantis"},
        {"date": date(2026, 11, 25), "tz": "../etc/passwd"},
        {"date": date(2026, 11, 25), "tz": "UTC", "cutoff": time(4, tzinfo=UTC)},
    ],
)
def test_business_day_refuses_datetimes_unknown_zones_and_zoned_cutoffs(
    bad: dict[str, object],
) -> None:
    with pytest.raises((TypeError, ValueError)):
        BusinessDay(**bad)  # type: ignore[arg-type]


def test_business_day_of_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        BusinessDay.of(datetime(2026, 11, 25, 12), "Asia/Shanghai", time(4))


# Statement


def test_closing_balance_is_opening_plus_every_movement() -> None:
    statement = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 12345, EXAMPLE)
    assert statement.closing == 12345 + 5000 - 300 - 450 + 150


def test_totals_count_and_sum_each_movement_type_sorted_by_name() -> None:
    statement = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 0, EXAMPLE)
    assert statement.totals == (
        TypeTotal("fare", 2, -750),
        TypeTotal("refund", 1, 150),
        TypeTotal("top_up", 1, 5000),
    )


def test_entries_are_in_time_order_then_transfer_id() -> None:
    statement = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 0, EXAMPLE)
    assert [m.transfer_id for m in statement.entries] == [_id(0xC), _id(0xA), _id(0xB), _id(0xD)]


def test_a_day_without_movements_closes_at_its_opening_balance() -> None:
    statement = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 777, ())
    assert (statement.closing, statement.totals, statement.entries) == (777, (), ())


@pytest.mark.parametrize("at", [START - US, END, END + timedelta(days=1)])
def test_statement_refuses_a_movement_from_another_business_day(at: datetime) -> None:
    with pytest.raises(ValueError, match="outside business day 2026-11-25"):
        build_statement(
            ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 0, (_movement(1, at, 100, TransferCode.FARE),)
        )


def test_statement_refuses_a_movement_in_another_currency() -> None:
    hkd = Movement(_id(1), START, 100, "HKD", TransferCode.TOP_UP)
    with pytest.raises(ValueError, match="in HKD, not CNY"):
        build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 0, (hkd,))


def test_statement_refuses_the_same_transfer_twice() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, 0, (EXAMPLE[0], EXAMPLE[0]))


@pytest.mark.parametrize(
    "fields",
    [
        {"at": datetime(2026, 11, 25, 12)},  # naive
        {"amount": 12.5},
        {"amount": True},
        {"code": 99},
        {"reference": ""},
    ],
)
def test_a_movement_needs_an_aware_time_int_amount_known_code_and_real_reference(
    fields: dict[str, object],
) -> None:
    base: dict[str, object] = {
        "transfer_id": _id(1),
        "at": START,
        "amount": 100,
        "currency": "CNY",
        "code": TransferCode.FARE,
    }
    with pytest.raises((TypeError, ValueError)):
        Movement(**(base | fields))  # type: ignore[arg-type]


GOLDEN_CSV = (
    b"format,cardless.statement.v1\r\n"
    b"account_id,0193a5b0-0000-7000-8000-000000000001\r\n"
    b'owner,"Metro Line 1 ""Ops"""\r\n'
    b"currency,CNY\r\n"
    b"business_day,2026-11-25\r\n"
    b"tz,Asia/Shanghai\r\n"
    b"cutoff,04:00:00\r\n"
    b"start,2026-11-24T20:00:00.000000Z\r\n"
    b"end,2026-11-25T20:00:00.000000Z\r\n"
    b"opening,123.45\r\n"
    b"opening_minor,12345\r\n"
    b"closing,167.45\r\n"
    b"closing_minor,16745\r\n"
    b"\r\n"
    b"type,count,amount,amount_minor\r\n"
    b"fare,2,-7.50,-750\r\n"
    b"refund,1,1.50,150\r\n"
    b"top_up,1,50.00,5000\r\n"
    b"\r\n"
    b"at,transfer_id,type,amount,amount_minor,reference\r\n"
    b"2026-11-24T20:00:00.000000Z,0193a5b0-0000-7000-8000-00000000000c,fare,-4.50,-450,\r\n"
    b'2026-11-25T01:30:00.000000Z,0193a5b0-0000-7000-8000-00000000000a,fare,-3.00,-300,"j, 7"\r\n'
    b"2026-11-25T01:30:00.000000Z,0193a5b0-0000-7000-8000-00000000000b,top_up,50.00,5000,topup-1\r\n"
    b"2026-11-25T19:59:59.999999Z,0193a5b0-0000-7000-8000-00000000000d,refund,1.50,150,"
    + "退款-1\r\n".encode()
)

GOLDEN_JSON = (
    b'{"account_id":"0193a5b0-0000-7000-8000-000000000001","business_day":"2026-11-25",'
    b'"closing":"167.45","closing_minor":16745,"currency":"CNY","cutoff":"04:00:00",'
    b'"end":"2026-11-25T20:00:00.000000Z","entries":['
    b'{"amount":"-4.50","amount_minor":-450,"at":"2026-11-24T20:00:00.000000Z","reference":null,'
    b'"transfer_id":"0193a5b0-0000-7000-8000-00000000000c","type":"fare"},'
    b'{"amount":"-3.00","amount_minor":-300,"at":"2026-11-25T01:30:00.000000Z","reference":"j, 7",'
    b'"transfer_id":"0193a5b0-0000-7000-8000-00000000000a","type":"fare"},'
    b'{"amount":"50.00","amount_minor":5000,"at":"2026-11-25T01:30:00.000000Z",'
    b'"reference":"topup-1","transfer_id":"0193a5b0-0000-7000-8000-00000000000b","type":"top_up"},'
    b'{"amount":"1.50","amount_minor":150,"at":"2026-11-25T19:59:59.999999Z","reference":"'
    + "退款-1".encode()
    + b'","transfer_id":"0193a5b0-0000-7000-8000-00000000000d","type":"refund"}],'
    b'"format":"cardless.statement.v1","opening":"123.45","opening_minor":12345,'
    b'"owner":"Metro Line 1 \\"Ops\\"","start":"2026-11-24T20:00:00.000000Z","totals":['
    b'{"amount":"-7.50","amount_minor":-750,"count":2,"type":"fare"},'
    b'{"amount":"1.50","amount_minor":150,"count":1,"type":"refund"},'
    b'{"amount":"50.00","amount_minor":5000,"count":1,"type":"top_up"}],"tz":"Asia/Shanghai"}\n'
)


def _example() -> Statement:
    return build_statement(ACCOUNT, 'Metro Line 1 "Ops"', "CNY", SHANGHAI_DAY, 12345, EXAMPLE)


def test_statement_csv_has_summary_totals_and_entries_blocks() -> None:
    assert statement_csv(_example()) == GOLDEN_CSV


def test_statement_json_is_compact_sorted_utf8_with_exact_amounts() -> None:
    rendered = statement_json(_example())
    assert rendered == GOLDEN_JSON
    assert json.loads(rendered)["closing_minor"] == 16745


def test_rendering_does_not_depend_on_the_zone_the_times_came_in() -> None:
    shanghai = timezone(timedelta(hours=8))
    moved = tuple(
        Movement(
            m.transfer_id, m.at.astimezone(shanghai), m.amount, m.currency, m.code, m.reference
        )
        for m in EXAMPLE
    )
    statement = build_statement(ACCOUNT, 'Metro Line 1 "Ops"', "CNY", SHANGHAI_DAY, 12345, moved)
    assert statement_csv(statement) == GOLDEN_CSV
    assert statement_json(statement) == GOLDEN_JSON


def test_yen_amounts_have_no_decimal_point() -> None:
    day = BusinessDay(date(2026, 11, 25), "Asia/Tokyo", time(4))
    fare = Movement(_id(1), day.bounds()[0], -210, "JPY", TransferCode.FARE)
    rendered = statement_csv(build_statement(ACCOUNT, "ops", "JPY", day, 1000, (fare,)))
    assert b"\r\nopening,1000\r\n" in rendered
    assert b",fare,-210,-210,\r\n" in rendered


@st.composite
def _movements_of_the_day(draw: st.DrawFn) -> list[Movement]:
    length_us = (END - START) // US
    ids = draw(st.lists(st.uuids(), max_size=40, unique=True))
    return [
        Movement(
            transfer_id,
            # Few distinct instants, so ties are common and the transfer id must break them.
            START + US * draw(st.sampled_from((0, 1, length_us // 2, length_us - 1))),
            draw(st.integers(-(10**12), 10**12)),
            "CNY",
            draw(st.sampled_from(TransferCode)),
            draw(st.none() | st.text(min_size=1, max_size=10)),
        )
        for transfer_id in ids
    ]


@given(movements=_movements_of_the_day(), opening=st.integers(-(10**12), 10**12), data=st.data())
def test_the_same_day_renders_the_same_bytes_whatever_order_the_rows_came_in(
    movements: list[Movement], opening: int, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(movements))
    first = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, opening, movements)
    second = build_statement(ACCOUNT, "ops", "CNY", SHANGHAI_DAY, opening, shuffled)
    assert statement_csv(first) == statement_csv(second)
    assert statement_json(first) == statement_json(second)
    assert first.closing == opening + sum(m.amount for m in movements)
    assert sum(t.count for t in first.totals) == len(movements)
