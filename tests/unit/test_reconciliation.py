"""Provider reconciliation: reading bills exactly, finding every discrepancy, stable corrections."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.wallet.ledger import LEDGERS, MAX_AMOUNT
from services.wallet.reconciliation import (
    ALIPAY_BILL,
    CORRECTION_NAMESPACE,
    GENERIC_BILL,
    BillError,
    BillFormat,
    BillLine,
    Correction,
    Expected,
    corrections,
    parse_bill,
    reconcile,
    report_json,
)
from shared.money import Money

BILL_DATE = date(2026, 11, 25)
ALIPAY_HEADER = "out_trade_no,trade_no,total_amount,trade_status,subject\r\n"


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=0x0193A5B0_0000_7000_8000_000000000000 + n)


def _alipay(*lines: str) -> bytes:
    return (ALIPAY_HEADER + "".join(line + "\r\n" for line in lines)).encode()


# Reading a bill


def test_bill_columns_are_found_by_header_name_in_any_order_with_extra_columns_ignored() -> None:
    shuffled = (
        "subject,trade_status,gmt_payment,total_amount,trade_no,out_trade_no\n"
        "Top-up,TRADE_SUCCESS,2026-11-25 09:00:00,12.50,2026112522001,order-1\n"
    )
    assert parse_bill(shuffled.encode(), ALIPAY_BILL) == [
        BillLine("order-1", 1250, "CNY", "2026112522001", 2)
    ]


def test_a_bill_starting_with_a_utf8_bom_reads_like_one_without() -> None:
    plain = _alipay("order-1,T1,12.50,TRADE_SUCCESS,充值")
    assert parse_bill(b"\xef\xbb\xbf" + plain, ALIPAY_BILL) == parse_bill(plain, ALIPAY_BILL)


def test_spaces_around_header_names_and_values_are_ignored() -> None:
    bill = (
        b" out_trade_no , trade_no ,total_amount , trade_status\n"
        b" order-1 , T1 , 12.50 ,TRADE_SUCCESS \n"
    )
    assert parse_bill(bill, ALIPAY_BILL) == [BillLine("order-1", 1250, "CNY", "T1", 2)]


def test_blank_lines_and_lf_or_crlf_line_ends_read_the_same() -> None:
    crlf = _alipay("order-1,T1,1.00,TRADE_SUCCESS,x", "order-2,T2,2.00,TRADE_SUCCESS,y")
    lf = crlf.replace(b"\r\n", b"\n") + b"\n\n"
    assert parse_bill(lf, ALIPAY_BILL) == parse_bill(crlf, ALIPAY_BILL)


def test_a_quoted_value_may_hold_commas_and_line_breaks() -> None:
    bill = _alipay(
        'order-1,T1,1.00,TRADE_SUCCESS,"Top-up, metro\r\ncard"', "order-2,T2,2.00,TRADE_SUCCESS,x"
    )
    assert [(b.reference, b.line) for b in parse_bill(bill, ALIPAY_BILL)] == [
        ("order-1", 2),
        ("order-2", 4),  # the line number counts physical lines, so it points into the file
    ]


def test_only_successful_trades_count() -> None:
    bill = _alipay(
        "order-1,T1,1.00,TRADE_SUCCESS,x",
        "order-2,T2,2.00,WAIT_BUYER_PAY,x",
        "order-3,T3,3.00,TRADE_CLOSED,x",
        "order-4,T4,4.00,TRADE_FINISHED,x",
        "order-5,T5,not-even-an-amount,TRADE_CLOSED,x",
    )
    assert [b.reference for b in parse_bill(bill, ALIPAY_BILL)] == ["order-1", "order-4"]


def test_amounts_are_exact_decimals_never_floats() -> None:
    bill = _alipay("a,T1,0.10,TRADE_SUCCESS,x", "b,T2,0.20,TRADE_SUCCESS,x")
    assert sum(b.amount for b in parse_bill(bill, ALIPAY_BILL)) == 30  # 0.1 + 0.2 != 0.3 in float
    largest = _alipay("c,T3,92233720368547758.07,TRADE_SUCCESS,x")
    assert parse_bill(largest, ALIPAY_BILL)[0].amount == MAX_AMOUNT  # beyond a float's 53 bits


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.5", "CNY", 1250),
        ("12.500", "CNY", 1250),  # zeros past the minor unit lose nothing
        ("-3.00", "EUR", -300),
        ("0", "USD", 0),
        ("210", "JPY", 210),
        ("210.0", "JPY", 210),
    ],
)
def test_amounts_become_minor_units_of_their_currency(
    amount: str, currency: str, minor: int
) -> None:
    bill = f"reference,provider_reference,amount,currency\nr-1,p-1,{amount},{currency}\n".encode()
    assert parse_bill(bill, GENERIC_BILL)[0].amount == minor


@pytest.mark.parametrize(
    "amount",
    [
        "",
        " ",
        "12.345",  # more decimals than CNY has
        "0.001",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "1,000.00",
        "1 000",
        "1_000",
        "+12.50",
        ".50",
        "12.",
        "--1",
        "12.5.0",
        "0x10",
        "١٢",  # Arabic-Indic digits, which Decimal and int() accept
        "\uff11\uff12",  # fullwidth digits
        "¥12.50",
        "92233720368547758.08",  # one fen more than the ledger's bigint holds
        "1" * 25,
    ],
)
def test_every_malformed_amount_fails_the_bill_naming_its_line_and_column(amount: str) -> None:
    bill = _alipay("order-1,T1,1.00,TRADE_SUCCESS,x", f'order-2,T2,"{amount}",TRADE_SUCCESS,x')
    with pytest.raises(BillError) as caught:
        parse_bill(bill, ALIPAY_BILL)
    assert (caught.value.line, caught.value.column) == (3, "total_amount")
    assert str(caught.value).startswith("line 3, column 'total_amount': ")


@pytest.mark.parametrize(
    ("bill", "line", "column"),
    [
        (b"", 1, None),
        (b"out_trade_no,trade_no,trade_status\nr,T,TRADE_SUCCESS\n", 1, "total_amount"),
        (b"out_trade_no,trade_no,total_amount,total_amount,trade_status\n", 1, "total_amount"),
        (_alipay("order-1,T1,1.00,TRADE_SUCCESS"), 2, None),  # a field short
        (_alipay("order-1,T1,1.00,TRADE_SUCCESS,x,y"), 2, None),  # a field too many
        (_alipay("order-1,T1,1.00,TRADE_SUCCESS,x", ",T2,2.00,TRADE_SUCCESS,x"), 3, "out_trade_no"),
        (_alipay("order-1,,1.00,TRADE_SUCCESS,x"), 2, "trade_no"),
        (_alipay("order-1,T1,1.00,TRADE_SUCCESS,x", 'order-2,"T2"x,2.00,TRADE_SUCCESS,x'), 3, None),
        (
            _alipay("order-1,T1,1.00,TRADE_SUCCESS,x") + b"order-2,T2,2.00,TRADE_SUCCESS,\xff\r\n",
            3,
            None,
        ),
    ],
    ids=[
        "empty",
        "missing column",
        "column twice",
        "short line",
        "long line",
        "empty reference",
        "empty provider reference",
        "bad quoting",
        "not utf-8",
    ],
)
def test_an_unreadable_bill_names_the_line_and_column(
    bill: bytes, line: int, column: str | None
) -> None:
    with pytest.raises(BillError) as caught:
        parse_bill(bill, ALIPAY_BILL)
    assert (caught.value.line, caught.value.column) == (line, column)


def test_a_currency_without_a_ledger_fails_the_bill() -> None:
    bill = b"reference,provider_reference,amount,currency\nr-1,p-1,1.00,CNY\nr-2,p-2,1.00,XAU\n"
    with pytest.raises(BillError, match="line 3, column 'currency': no ledger for currency 'XAU'"):
        parse_bill(bill, GENERIC_BILL)


WITH_KINDS = BillFormat(
    reference="merchant_order",
    provider_reference="txn",
    amount="amount",
    fixed_currency="HKD",
    kind="type",
    payment_kinds=frozenset({"PAYMENT"}),
    refund_kinds=frozenset({"REFUND"}),
)


def test_refund_lines_are_negative_whichever_way_the_provider_prints_them() -> None:
    bill = (
        b"merchant_order,txn,amount,type\n"
        b"o-1,t-1,50.00,PAYMENT\n"
        b"r-1,t-2,5.00,REFUND\n"
        b"r-2,t-3,-7.00,REFUND\n"
    )
    assert [b.amount for b in parse_bill(bill, WITH_KINDS)] == [5000, -500, -700]


@pytest.mark.parametrize("line", ["o-1,t-1,50.00,CHARGEBACK", "o-1,t-1,-50.00,PAYMENT"])
def test_an_unknown_kind_or_a_negative_payment_fails_the_bill(line: str) -> None:
    with pytest.raises(BillError, match="line 2"):
        parse_bill(f"merchant_order,txn,amount,type\n{line}\n".encode(), WITH_KINDS)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "either a currency column or a fixed currency"),
        ({"currency": "ccy", "fixed_currency": "CNY"}, "either a currency column"),
        ({"fixed_currency": "XAU"}, "no ledger for currency 'XAU'"),
        ({"fixed_currency": "CNY", "status": "state"}, "status column and its successful"),
        ({"fixed_currency": "CNY", "kind": "type"}, "kind column and its payment and refund"),
        ({"fixed_currency": "CNY", "provider_reference": "ref"}, "one column cannot hold two"),
    ],
)
def test_a_bill_format_must_be_unambiguous(fields: dict[str, str], problem: str) -> None:
    named: dict[str, Any] = {"reference": "ref", "provider_reference": "p", "amount": "amt"}
    with pytest.raises(ValueError, match=problem):
        BillFormat(**(named | fields))


# Reconciling


def _expected(reference: str, amount: int, n: int, currency: str = "CNY") -> Expected:
    return Expected(reference, amount, currency, _id(n))


def _line(reference: str, amount: int, line: int, currency: str = "CNY") -> BillLine:
    return BillLine(reference, amount, currency, f"T-{reference}", line)


OURS = (
    _expected("order-1", 1250, 1),
    _expected("order-2", 500, 2),  # the provider has no such payment
    _expected("order-4", 990, 4),  # the provider collected 9.00, not 9.90
    _expected("order-5", 100, 5),  # collected in HKD
    _expected("order-6", 300, 6),
    _expected("order-6", 300, 7),  # we credited twice
)
THEIRS = (
    _line("order-1", 1250, 2),
    _line("order-3", 2000, 3),  # paid, and we never credited it
    _line("order-4", 900, 4),
    _line("order-5", 100, 5, "HKD"),
    _line("order-6", 300, 6),
)


def test_report_sorts_every_reference_into_exactly_one_list() -> None:
    report = reconcile(OURS, THEIRS)
    assert [p.reference for p in report.matched] == ["order-1"]
    assert report.missing_in_bill == (OURS[1],)
    assert report.missing_in_ledger == (THEIRS[1],)
    assert [(p.ours.amount, p.theirs.amount) for p in report.amount_mismatches] == [
        (990, 900),
        (100, 100),  # same digits, different currency
    ]
    assert [(d.reference, len(d.ours), len(d.theirs)) for d in report.duplicates] == [
        ("order-6", 2, 1)
    ]
    assert not report.clean


def test_a_bill_that_matches_the_ledger_is_clean() -> None:
    report = reconcile(OURS[:1], THEIRS[:1])
    assert report.clean
    assert corrections(report, "alipay", BILL_DATE) == []


def test_corrections_move_the_bill_minus_the_ledger_and_leave_duplicates_to_a_person() -> None:
    proposed = corrections(reconcile(OURS, THEIRS), "alipay", BILL_DATE)
    assert [(c.reference, c.amount, c.currency, c.reason) for c in proposed] == [
        ("order-2", -500, "CNY", "missing_in_bill"),  # take back what was never paid
        ("order-3", 2000, "CNY", "missing_in_ledger"),  # credit what was paid
        ("order-4", -90, "CNY", "amount_mismatch"),
        ("order-5", -100, "CNY", "amount_mismatch"),  # a currency mismatch takes two legs
        ("order-5", 100, "HKD", "amount_mismatch"),
    ]
    assert (proposed[0].transfer_id, proposed[0].provider_reference) == (_id(2), None)
    assert (proposed[1].transfer_id, proposed[1].provider_reference) == (None, "T-order-3")


def test_correction_ids_are_stable_so_a_bill_imported_twice_applies_once() -> None:
    first = corrections(reconcile(OURS, THEIRS), "alipay", BILL_DATE)
    again = corrections(reconcile(OURS[::-1], THEIRS[::-1]), "alipay", BILL_DATE)
    assert first == again
    assert first[0].id == uuid.uuid5(CORRECTION_NAMESPACE, "alipay/2026-11-25/order-2/CNY")
    assert first[0].id == uuid.UUID("a4f4325d-df74-532a-baea-e4be75864f6c")
    assert len({c.id for c in first}) == len(first)


def test_correction_namespace_never_changes() -> None:
    derived = uuid.uuid5(uuid.NAMESPACE_URL, "https://cardless.invalid/wallet/corrections")
    assert derived == CORRECTION_NAMESPACE


def test_another_day_or_provider_proposes_other_correction_ids() -> None:
    report = reconcile(OURS, THEIRS)
    ids = {c.id for c in corrections(report, "alipay", BILL_DATE)}
    assert ids.isdisjoint(c.id for c in corrections(report, "alipay", date(2026, 11, 26)))
    assert ids.isdisjoint(c.id for c in corrections(report, "stripe", BILL_DATE))


def test_corrections_refuse_a_datetime_as_the_bill_date() -> None:
    with pytest.raises(TypeError):
        corrections(reconcile(OURS, THEIRS), "alipay", datetime(2026, 11, 25))


@pytest.mark.parametrize(
    ("reference", "amount", "currency"),
    [("", 1, "CNY"), ("r", 1.5, "CNY"), ("r", True, "CNY"), ("r", 1, "XAU")],
)
def test_an_expected_entry_needs_a_reference_int_amount_and_known_currency(
    reference: str, amount: int, currency: str
) -> None:
    with pytest.raises((TypeError, ValueError)):
        Expected(reference, amount, currency, _id(1))


GOLDEN_REPORT = (
    b'{"amount_mismatches":[{"ours":{"amount":"9.90","amount_minor":990,"currency":"CNY",'
    b'"transfer_id":"0193a5b0-0000-7000-8000-000000000004"},"reference":"order-4",'
    b'"theirs":{"amount":"9.00","amount_minor":900,"currency":"CNY","line":4,'
    b'"provider_reference":"T-order-4"}}],'
    b'"counts":{"amount_mismatches":1,"duplicates":0,"matched":1,"missing_in_bill":1,'
    b'"missing_in_ledger":1},'
    b'"duplicates":[],"format":"cardless.reconciliation.v1",'
    b'"matched":[{"ours":{"amount":"12.50","amount_minor":1250,"currency":"CNY",'
    b'"transfer_id":"0193a5b0-0000-7000-8000-000000000001"},"reference":"order-1",'
    b'"theirs":{"amount":"12.50","amount_minor":1250,"currency":"CNY","line":2,'
    b'"provider_reference":"T-order-1"}}],'
    b'"missing_in_bill":[{"ours":{"amount":"5.00","amount_minor":500,"currency":"CNY",'
    b'"transfer_id":"0193a5b0-0000-7000-8000-000000000002"},"reference":"order-2"}],'
    b'"missing_in_ledger":[{"reference":"order-3","theirs":{"amount":"20.00",'
    b'"amount_minor":2000,"currency":"CNY","line":3,"provider_reference":"T-order-3"}}]}\n'
)


def test_report_json_is_compact_sorted_and_exact() -> None:
    rendered = report_json(reconcile(OURS[:3], THEIRS[:3]))
    assert rendered == GOLDEN_REPORT
    assert json.loads(rendered)["counts"]["matched"] == 1


# Planted discrepancies: derive a bill from a ledger, break it in known ways, find exactly those.

FATES = (
    "match",
    "missing_in_bill",
    "missing_in_ledger",
    "amount",
    "currency",
    "twice_in_bill",
    "twice_in_ledger",
)
# Printable, no separators or controls: values are stripped, so edge spaces would not survive.
REFERENCES = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=12
)


@dataclass(frozen=True)
class Planted:
    """A ledger side, a bill derived from it, and what was done to each reference on the way."""

    fates: dict[str, str]
    ours: list[Expected]
    bill: bytes


@st.composite
def _planted(draw: st.DrawFn) -> Planted:
    references = draw(st.lists(REFERENCES, max_size=25, unique=True))
    fates: dict[str, str] = {}
    ours: list[Expected] = []
    rows: list[tuple[str, str, int, str]] = []
    for n, reference in enumerate(references):
        fate = fates[reference] = draw(st.sampled_from(FATES))
        currency = draw(st.sampled_from(sorted(LEDGERS)))
        amount = draw(st.integers(-(10**12), 10**12))
        billed_amount, billed_currency = amount, currency
        if fate == "amount":
            billed_amount += draw(st.integers(-(10**6), 10**6).filter(bool))
        if fate == "currency":
            billed_currency = draw(st.sampled_from(sorted(set(LEDGERS) - {currency})))
        if fate != "missing_in_ledger":
            ours.append(Expected(reference, amount, currency, _id(n)))
        if fate == "twice_in_ledger":
            ours.append(Expected(reference, amount, currency, _id(n + 1000)))
        if fate != "missing_in_bill":
            rows.append((reference, f"P{n}", billed_amount, billed_currency))
        if fate == "twice_in_bill":
            rows.append((reference, f"P{n}-again", amount, currency))
    return Planted(fates, draw(st.permutations(ours)), _bill_csv(draw(st.permutations(rows))))


def _bill_csv(rows: Sequence[tuple[str, str, int, str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(("note", "currency", "amount", "provider_reference", "reference"))
    for reference, provider_reference, amount, currency in rows:
        decimal = Money(amount, currency).to_decimal_string()
        writer.writerow(("x", currency, decimal, provider_reference, reference))
    return out.getvalue().encode()


def _with_fate(planted: Planted, *fates: str) -> list[str]:
    return sorted(reference for reference, fate in planted.fates.items() if fate in fates)


@given(planted=_planted())
def test_reconciliation_finds_exactly_the_planted_discrepancies(planted: Planted) -> None:
    report = reconcile(planted.ours, parse_bill(planted.bill, GENERIC_BILL))
    assert [p.reference for p in report.matched] == _with_fate(planted, "match")
    assert [e.reference for e in report.missing_in_bill] == _with_fate(planted, "missing_in_bill")
    assert [b.reference for b in report.missing_in_ledger] == _with_fate(
        planted, "missing_in_ledger"
    )
    assert [p.reference for p in report.amount_mismatches] == _with_fate(
        planted, "amount", "currency"
    )
    assert [d.reference for d in report.duplicates] == _with_fate(
        planted, "twice_in_bill", "twice_in_ledger"
    )
    for pair in report.matched:
        assert (pair.ours.amount, pair.ours.currency) == (pair.theirs.amount, pair.theirs.currency)


@given(planted=_planted(), data=st.data())
def test_corrections_settle_every_difference_and_do_not_depend_on_row_order(
    planted: Planted, data: st.DataObject
) -> None:
    bill = parse_bill(planted.bill, GENERIC_BILL)
    report = reconcile(planted.ours, bill)
    proposed = corrections(report, "generic", BILL_DATE)
    again = reconcile(data.draw(st.permutations(planted.ours)), data.draw(st.permutations(bill)))
    assert report_json(again) == report_json(report)
    assert corrections(again, "generic", BILL_DATE) == proposed
    duplicated = {d.reference for d in report.duplicates}
    assert _sums([*planted.ours, *proposed], duplicated) == _sums(bill, duplicated)


def _sums(
    rows: Sequence[Expected | BillLine | Correction], skip: set[str]
) -> dict[tuple[str, str], int]:
    """Non-zero sums per reference and currency: the ledger plus corrections must equal the bill."""
    sums: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.reference not in skip:
            key = (row.reference, row.currency)
            sums[key] = sums.get(key, 0) + row.amount
    return {key: total for key, total in sums.items() if total}
