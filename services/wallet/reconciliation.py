"""Provider reconciliation: read a provider's daily bill and compare it with what the ledger holds.

Pure: bytes and rows in, a report and proposed correcting transfers out; nothing is written,
and no amount is ever a float.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from typing import TypeVar

from services.wallet.ledger import LEDGERS, MAX_AMOUNT
from shared.money import Money

REPORT_FORMAT = "cardless.reconciliation.v1"
# uuid5(NAMESPACE_URL, "https://cardless.invalid/wallet/corrections"). Never change it: the ids
# of corrections already in the ledger were derived from it.
CORRECTION_NAMESPACE = uuid.UUID("2dcfd208-f75b-5a3d-9cc2-a1ec53e8eae7")

# ASCII digits, an optional minus and point only: Decimal alone would also take "1e3", "NaN",
# "1_000" and non-ASCII digits. The lengths keep every amount far inside _EXACT's precision.
_AMOUNT = re.compile(r"-?[0-9]{1,19}(?:\.[0-9]{1,18})?")
_EXACT = Context(prec=64, traps=[Inexact, Rounded, InvalidOperation])
_Row = TypeVar("_Row", "Expected", "BillLine")


def _check_currency(currency: str) -> None:
    if currency not in LEDGERS:
        raise ValueError(f"no ledger for currency {currency!r}")


class BillError(ValueError):
    """A bill that cannot be read as a whole; names the line (the header is line 1) and column."""

    def __init__(self, line: int, column: str | None, problem: str) -> None:
        where = f"line {line}" if column is None else f"line {line}, column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class BillFormat:
    """Which header names hold what in one provider's daily bill (CSV)."""

    reference: str  # our order id as the provider echoes it (Alipay: out_trade_no)
    provider_reference: str  # the provider's own id (Alipay: trade_no)
    amount: str  # decimal string in major units: "12.50"
    currency: str | None = None  # a column; without one, every line is in fixed_currency
    fixed_currency: str | None = None
    status: str | None = None  # a column; lines whose status is not successful are skipped
    success_statuses: frozenset[str] = frozenset()
    kind: str | None = None  # a column telling payments from refunds; refunds become negative
    payment_kinds: frozenset[str] = frozenset()
    refund_kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if (self.currency is None) == (self.fixed_currency is None):
            raise ValueError("name either a currency column or a fixed currency")
        if self.fixed_currency is not None:
            _check_currency(self.fixed_currency)
        if (self.status is None) != (not self.success_statuses):
            raise ValueError("a status column and its successful statuses go together")
        if (self.kind is None) != (not self.payment_kinds | self.refund_kinds):
            raise ValueError("a kind column and its payment and refund kinds go together")
        if self.payment_kinds & self.refund_kinds:
            raise ValueError("a kind cannot be both a payment and a refund")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("one column cannot hold two fields")

    @property
    def columns(self) -> tuple[str, ...]:
        """The header names a bill must have."""
        named = (self.reference, self.provider_reference, self.amount)
        return named + tuple(c for c in (self.currency, self.status, self.kind) if c is not None)


ALIPAY_BILL = BillFormat(
    reference="out_trade_no",
    provider_reference="trade_no",
    amount="total_amount",
    fixed_currency="CNY",
    status="trade_status",
    # TRADE_FINISHED is a paid trade past its refund window: still money received.
    success_statuses=frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"}),
)
GENERIC_BILL = BillFormat(
    reference="reference",
    provider_reference="provider_reference",
    amount="amount",
    currency="currency",
)


@dataclass(frozen=True, order=True, slots=True)
class BillLine:
    """One successful line of a provider's bill; refunds are negative."""

    reference: str
    amount: int
    currency: str
    provider_reference: str
    line: int


@dataclass(frozen=True, order=True, slots=True)
class Expected:
    """What the ledger recorded under one reference: signed minor units, as the bill shows it."""

    reference: str
    amount: int
    currency: str
    transfer_id: uuid.UUID

    def __post_init__(self) -> None:
        if not self.reference:
            raise ValueError("an expected entry needs the reference the provider echoes")
        if type(self.amount) is not int:
            raise TypeError(f"amounts are int minor units, got {type(self.amount).__name__}")
        _check_currency(self.currency)


@dataclass(frozen=True, slots=True)
class Pair:
    """A ledger entry and a bill line with the same reference."""

    ours: Expected
    theirs: BillLine

    @property
    def reference(self) -> str:
        return self.ours.reference


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A reference seen more than once on a side; set aside for a person, never auto-corrected."""

    reference: str
    ours: tuple[Expected, ...]
    theirs: tuple[BillLine, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """Every reference in exactly one list, each list sorted by reference."""

    matched: tuple[Pair, ...]
    missing_in_bill: tuple[Expected, ...]
    missing_in_ledger: tuple[BillLine, ...]
    amount_mismatches: tuple[Pair, ...]
    duplicates: tuple[Duplicate, ...]

    @property
    def clean(self) -> bool:
        """Everything matched: nothing to correct or look at."""
        unsettled = self.missing_in_bill, self.missing_in_ledger, self.amount_mismatches
        return not any(unsettled) and not self.duplicates


@dataclass(frozen=True, slots=True)
class Correction:
    """A correcting transfer to make; ``amount`` > 0 credits more to the rider, < 0 takes back."""

    id: uuid.UUID
    reference: str
    amount: int
    currency: str
    reason: str  # "missing_in_bill", "missing_in_ledger" or "amount_mismatch"
    transfer_id: uuid.UUID | None  # the ledger's transfer it corrects, if there is one
    provider_reference: str | None


def parse_bill(data: bytes, fmt: BillFormat) -> list[BillLine]:
    """The bill's successful lines; any line that cannot be read fails the whole bill."""
    rows = _rows(_text(data))
    if not rows:
        raise BillError(1, None, "the bill is empty; it needs a header line")
    (_, header), body = rows[0], rows[1:]
    where = _where(header, fmt)
    lines = []
    for line, row in body:
        if not row:
            continue  # a blank line, typically the last one
        if len(row) != len(header):
            raise BillError(line, None, f"{len(row)} fields where the header has {len(header)}")
        bill_line = _bill_line({name: row[i].strip() for name, i in where.items()}, line, fmt)
        if bill_line is not None:
            lines.append(bill_line)
    return lines


def reconcile(ours: Sequence[Expected], bill: Sequence[BillLine]) -> Report:
    """Match the ledger's entries with the bill's lines by reference."""
    ledger, billed = _by_reference(ours), _by_reference(bill)
    matched, missing_in_bill, missing_in_ledger, mismatches, duplicates = [], [], [], [], []
    for reference in sorted(ledger.keys() | billed.keys()):
        mine, theirs = sorted(ledger.get(reference, [])), sorted(billed.get(reference, []))
        if len(mine) > 1 or len(theirs) > 1:
            duplicates.append(Duplicate(reference, tuple(mine), tuple(theirs)))
        elif not theirs:
            missing_in_bill.append(mine[0])
        elif not mine:
            missing_in_ledger.append(theirs[0])
        elif (mine[0].amount, mine[0].currency) == (theirs[0].amount, theirs[0].currency):
            matched.append(Pair(mine[0], theirs[0]))
        else:
            mismatches.append(Pair(mine[0], theirs[0]))
    return Report(
        tuple(matched),
        tuple(missing_in_bill),
        tuple(missing_in_ledger),
        tuple(mismatches),
        tuple(duplicates),
    )


def corrections(report: Report, provider: str, bill_date: date) -> list[Correction]:
    """The correcting transfers the bill calls for: bill minus ledger, per reference and currency.

    Ids are uuid5 over provider, bill date, reference and currency: importing the same bill
    twice proposes the same ids, and the ledger's idempotency makes applying them twice harmless.
    """
    if isinstance(bill_date, datetime):
        raise TypeError("the bill date is a date, not a datetime")
    scope = f"{provider}/{bill_date.isoformat()}"
    found = [_legs(scope, "missing_in_bill", ours, None) for ours in report.missing_in_bill]
    found += [
        _legs(scope, "missing_in_ledger", None, theirs) for theirs in report.missing_in_ledger
    ]
    found += [_legs(scope, "amount_mismatch", p.ours, p.theirs) for p in report.amount_mismatches]
    return sorted((leg for legs in found for leg in legs), key=lambda c: (c.reference, c.currency))


def report_json(report: Report) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces, one line ending in "\\n"."""
    doc = {
        "format": REPORT_FORMAT,
        "counts": {f.name: len(getattr(report, f.name)) for f in fields(report)},
        "matched": [_pair(p) for p in report.matched],
        "amount_mismatches": [_pair(p) for p in report.amount_mismatches],
        "missing_in_bill": [
            {"reference": e.reference, "ours": _ours(e)} for e in report.missing_in_bill
        ],
        "missing_in_ledger": [
            {"reference": b.reference, "theirs": _theirs(b)} for b in report.missing_in_ledger
        ],
        "duplicates": [
            {
                "reference": d.reference,
                "ours": [_ours(e) for e in d.ours],
                "theirs": [_theirs(b) for b in d.theirs],
            }
            for d in report.duplicates
        ],
    }
    text = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return (text + "\n").encode("utf-8")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # "-sig": spreadsheet exports often start with a BOM
    except UnicodeDecodeError as e:
        raise BillError(data[: e.start].count(b"\n") + 1, None, "not UTF-8") from e


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """Each record with the line it starts on: a quoted value may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, start = [], 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise BillError(start, None, f"not CSV: {e}") from None
    return rows


def _where(header: list[str], fmt: BillFormat) -> dict[str, int]:
    names = [name.strip() for name in header]
    for column in fmt.columns:
        if names.count(column) != 1:
            problem = "missing from the header" if column not in names else "appears twice"
            raise BillError(1, column, problem)
    return {column: names.index(column) for column in fmt.columns}


def _bill_line(cells: dict[str, str], line: int, fmt: BillFormat) -> BillLine | None:
    if fmt.status is not None and cells[fmt.status] not in fmt.success_statuses:
        return None
    for column in (fmt.reference, fmt.provider_reference):
        if not cells[column]:
            raise BillError(line, column, "empty")
    currency = cells[fmt.currency] if fmt.currency else str(fmt.fixed_currency)
    if currency not in LEDGERS:
        raise BillError(line, fmt.currency, f"no ledger for currency {_show(currency)}")
    try:
        amount = _minor_units(cells[fmt.amount], currency)
    except ValueError as e:
        raise BillError(line, fmt.amount, str(e)) from None
    if fmt.kind is not None:
        amount = _signed(amount, cells[fmt.kind], line, fmt)
    return BillLine(cells[fmt.reference], amount, currency, cells[fmt.provider_reference], line)


def _minor_units(text: str, currency: str) -> int:
    """'12.50' CNY -> 1250, exactly; digits past the currency's minor unit must be zeros."""
    if not _AMOUNT.fullmatch(text):
        raise ValueError(f"{_show(text)} is not a plain decimal amount like 12.50")
    scaled = Decimal(text).scaleb(Money(0, currency).exponent, context=_EXACT)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{_show(text)} has more decimals than {currency} has minor units")
    if abs(scaled) > MAX_AMOUNT:
        raise ValueError(f"{_show(text)} is larger than the ledger can hold")
    return int(scaled)


def _signed(amount: int, kind: str, line: int, fmt: BillFormat) -> int:
    if kind in fmt.refund_kinds:
        return -abs(amount)  # providers differ on printing refunds negative; they are, here
    if kind not in fmt.payment_kinds:
        raise BillError(line, fmt.kind, f"unknown kind {_show(kind)}")
    if amount < 0:
        raise BillError(line, fmt.amount, "a payment with a negative amount")
    return amount


def _by_reference(items: Sequence[_Row]) -> dict[str, list[_Row]]:
    grouped: dict[str, list[_Row]] = {}
    for item in items:
        grouped.setdefault(item.reference, []).append(item)
    return grouped


def _legs(
    scope: str, reason: str, ours: Expected | None, theirs: BillLine | None
) -> list[Correction]:
    # A currency mismatch takes two legs: take back ours in its currency, credit theirs in theirs.
    owed: dict[str, int] = {}
    if theirs is not None:
        owed[theirs.currency] = owed.get(theirs.currency, 0) + theirs.amount
    if ours is not None:
        owed[ours.currency] = owed.get(ours.currency, 0) - ours.amount
    reference = next(side.reference for side in (ours, theirs) if side is not None)
    return [
        Correction(
            id=uuid.uuid5(CORRECTION_NAMESPACE, f"{scope}/{reference}/{currency}"),
            reference=reference,
            amount=amount,
            currency=currency,
            reason=reason,
            transfer_id=ours.transfer_id if ours is not None else None,
            provider_reference=theirs.provider_reference if theirs is not None else None,
        )
        for currency, amount in sorted(owed.items())
        if amount
    ]


def _pair(p: Pair) -> dict[str, object]:
    return {"reference": p.reference, "ours": _ours(p.ours), "theirs": _theirs(p.theirs)}


def _ours(e: Expected) -> dict[str, object]:
    return {"transfer_id": str(e.transfer_id), **_money(e.amount, e.currency)}


def _theirs(b: BillLine) -> dict[str, object]:
    return {
        "line": b.line,
        "provider_reference": b.provider_reference,
        **_money(b.amount, b.currency),
    }


def _money(minor: int, currency: str) -> dict[str, object]:
    return {
        "amount": Money(minor, currency).to_decimal_string(),
        "amount_minor": minor,
        "currency": currency,
    }


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")
