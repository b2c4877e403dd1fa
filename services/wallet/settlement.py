"""Daily settlement statements per provider and operator account: opening, movements, closing.

Pure: the caller reads the rows and passes them in; one business day always renders the same
bytes, whatever order the rows came in.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.wallet.ledger import LEDGERS, TransferCode
from shared.money import Money

# Stamped into every statement: a later layout gets a new name, so stored bytes stay readable.
STATEMENT_FORMAT = "cardless.statement.v1"
# RFC 4180 line ends, what spreadsheets and providers' importers expect; JSON ends with "\n".
CSV_LINE_END = "\r\n"
_TOTAL_COLUMNS = ("type", "count", "amount", "amount_minor")
_ENTRY_COLUMNS = ("at", "transfer_id", "type", "amount", "amount_minor", "reference")


@dataclass(frozen=True, slots=True)
class BusinessDay:
    """From ``cutoff`` local time on ``date`` to ``cutoff`` the next day, in zone ``tz``."""

    date: date
    tz: str
    cutoff: time = time(0)

    def __post_init__(self) -> None:
        if isinstance(self.date, datetime):
            raise TypeError("a business day's date must be a date, not a datetime")
        if self.cutoff.tzinfo is not None:
            raise ValueError("the cut-off is a wall-clock time in tz, without a zone of its own")
        _zone(self.tz)

    def bounds(self) -> tuple[datetime, datetime]:
        """[start, end) in UTC; 23 or 25 hours long across a daylight-saving change."""
        next_day = self.date + timedelta(days=1)
        return _start(self.date, self), _start(next_day, self)

    def is_closed(self, now: datetime) -> bool:
        """The day has ended, so its statement is final."""
        return _utc(now) >= self.bounds()[1]

    @classmethod
    def of(cls, instant: datetime, tz: str, cutoff: time = time(0)) -> BusinessDay:
        """The business day an instant belongs to; before the cut-off is still the previous day."""
        local = _utc(instant).astimezone(_zone(tz))
        before_cutoff = local.time() < cutoff
        day = cls(local.date() - timedelta(days=1 if before_cutoff else 0), tz, cutoff)
        # Only differs from the wall-clock guess when the cut-off itself is skipped or repeated.
        start, end = day.bounds()
        if instant < start:
            return cls(day.date - timedelta(days=1), tz, cutoff)
        if instant >= end:
            return cls(day.date + timedelta(days=1), tz, cutoff)
        return day


@dataclass(frozen=True, slots=True)
class Movement:
    """One posted transfer as one account saw it: credits positive, debits negative."""

    transfer_id: uuid.UUID
    at: datetime
    amount: int
    currency: str
    code: int
    reference: str | None = None

    def __post_init__(self) -> None:
        _utc(self.at)
        _check_amount(self.amount)
        TransferCode(self.code)  # an unknown code fails here, not later as a nameless total
        if self.reference == "":
            raise ValueError("a reference is None or non-empty, so CSV can tell them apart")

    @property
    def kind(self) -> str:
        """The transfer code's name, rendered as the movement's ``type``: 'top_up', 'fare'."""
        return TransferCode(self.code).name.lower()


@dataclass(frozen=True, slots=True)
class TypeTotal:
    """How many movements of one type, and their signed sum."""

    kind: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class Statement:
    """One account's business day: opening balance, totals per type, every entry in order."""

    account_id: uuid.UUID
    owner: str
    currency: str
    day: BusinessDay
    opening: int
    totals: tuple[TypeTotal, ...]
    entries: tuple[Movement, ...]

    @property
    def closing(self) -> int:
        return self.opening + sum(total.amount for total in self.totals)


def build_statement(
    account_id: uuid.UUID,
    owner: str,
    currency: str,
    day: BusinessDay,
    opening: int,
    movements: Sequence[Movement],
) -> Statement:
    """The statement of one account for one day; refuses movements from another day or currency."""
    _check_currency(currency)
    _check_amount(opening)
    start, end = day.bounds()
    for movement in movements:
        if not start <= movement.at < end:
            raise ValueError(
                f"transfer {movement.transfer_id} at {_stamp(movement.at)} is outside business day"
                f" {day.date} [{_stamp(start)}, {_stamp(end)})"
            )
        if movement.currency != currency:
            raise ValueError(
                f"transfer {movement.transfer_id} is in {movement.currency}, not {currency}"
            )
    entries = tuple(sorted(movements, key=lambda m: (_utc(m.at), m.transfer_id)))
    if len({m.transfer_id for m in entries}) != len(entries):
        raise ValueError("a transfer appears twice in the movements; it would count twice")
    return Statement(account_id, owner, currency, day, opening, _totals(entries), entries)


def statement_json(statement: Statement) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces, one line ending in "\\n"."""
    currency = statement.currency
    doc = {
        **dict(_summary(statement)),
        "totals": [_total(t, currency) for t in statement.totals],
        "entries": [_entry(m) for m in statement.entries],
    }
    text = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return (text + "\n").encode("utf-8")


def statement_csv(statement: Statement) -> bytes:
    """UTF-8 CSV in three blocks split by an empty line: summary (key,value), totals, entries."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=CSV_LINE_END, quoting=csv.QUOTE_MINIMAL)
    writer.writerows((key, _cell(value)) for key, value in _summary(statement))
    writer.writerow(())
    writer.writerow(_TOTAL_COLUMNS)
    for t in statement.totals:
        total = _total(t, statement.currency)
        writer.writerow(_cell(total[key]) for key in _TOTAL_COLUMNS)
    writer.writerow(())
    writer.writerow(_ENTRY_COLUMNS)
    for m in statement.entries:
        entry = _entry(m)
        writer.writerow(_cell(entry[key]) for key in _ENTRY_COLUMNS)
    return out.getvalue().encode("utf-8")


def _summary(s: Statement) -> list[tuple[str, str | int]]:
    start, end = s.day.bounds()
    return [
        ("format", STATEMENT_FORMAT),
        ("account_id", str(s.account_id)),
        ("owner", s.owner),
        ("currency", s.currency),
        ("business_day", s.day.date.isoformat()),
        ("tz", s.day.tz),
        ("cutoff", s.day.cutoff.isoformat()),
        ("start", _stamp(start)),
        ("end", _stamp(end)),
        *_money("opening", s.opening, s.currency).items(),
        *_money("closing", s.closing, s.currency).items(),
    ]


def _total(t: TypeTotal, currency: str) -> dict[str, str | int | None]:
    return {"type": t.kind, "count": t.count, **_money("amount", t.amount, currency)}


def _entry(m: Movement) -> dict[str, str | int | None]:
    return {
        "at": _stamp(m.at),
        "transfer_id": str(m.transfer_id),
        "type": m.kind,
        **_money("amount", m.amount, m.currency),
        "reference": m.reference,
    }


def _totals(entries: Sequence[Movement]) -> tuple[TypeTotal, ...]:
    by_kind: dict[str, list[int]] = {}
    for m in entries:
        by_kind.setdefault(m.kind, []).append(m.amount)
    return tuple(TypeTotal(kind, len(a), sum(a)) for kind, a in sorted(by_kind.items()))


def _money(name: str, minor: int, currency: str) -> dict[str, str | int]:
    # Both forms: the decimal string for people, the integer for programs that must not parse.
    return {name: Money(minor, currency).to_decimal_string(), f"{name}_minor": minor}


def _cell(value: str | int | None) -> str:
    return "" if value is None else str(value)


def _start(day: date, of: BusinessDay) -> datetime:
    # fold=0: a repeated cut-off means its first occurrence, a skipped one is read with the
    # offset before the gap (02:30 becomes 03:30 summer time), as RFC 5545 and Temporal do.
    return datetime.combine(day, of.cutoff, tzinfo=_zone(of.tz)).astimezone(UTC)


def _stamp(instant: datetime) -> str:
    """Fixed-width UTC ISO 8601 with microseconds and a trailing Z."""
    return _utc(instant).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant!r} has no time zone; times must be aware")
    return instant.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {name!r}") from e


def _check_amount(amount: int) -> None:
    if type(amount) is not int:
        raise TypeError(f"amounts are int minor units, got {type(amount).__name__}")


def _check_currency(currency: str) -> None:
    if currency not in LEDGERS:
        raise ValueError(f"no ledger for currency {currency!r}")
