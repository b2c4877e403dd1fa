"""Money as integer minor units with an ISO 4217 currency; there is no float anywhere here."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Minor-unit exponent per ISO 4217 for the currencies the city deals in; others default to 2.
_EXPONENTS = {"CNY": 2, "HKD": 2, "EUR": 2, "USD": 2, "GBP": 2, "JPY": 0, "KRW": 0, "BHD": 3}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DECIMAL = re.compile(r"^(-)?([0-9]+)(?:\.([0-9]+))?$")


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


@dataclass(frozen=True, order=True, slots=True)
class Money:
    """An amount in minor units (fen, cents) of one currency."""

    minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.minor) is not int:
            raise TypeError(f"minor units must be an int, got {type(self.minor).__name__}")
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")

    @property
    def exponent(self) -> int:
        return _EXPONENTS.get(self.currency, 2)

    def __add__(self, other: Money) -> Money:
        return Money(self.minor + self._same(other).minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.minor - self._same(other).minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def _same(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency} cannot be combined")
        return other

    def to_decimal_string(self) -> str:
        """'12.50' for Money(1250, 'CNY'): exact, for display and for providers' APIs."""
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**self.exponent)
        return f"{sign}{whole}.{frac:0{self.exponent}d}" if self.exponent else f"{sign}{whole}"

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Exact parse of a decimal string ('12.5' CNY -> 1250); rejects excess precision."""
        match = _DECIMAL.match(text.strip())
        exponent = _EXPONENTS.get(currency, 2)
        if not match or len(match.group(3) or "") > exponent:
            raise ValueError(f"{text!r} is not an amount in {currency} with <= {exponent} decimals")
        sign, whole, frac = match.groups()
        minor = int(whole) * 10**exponent + int((frac or "").ljust(exponent, "0") or 0)
        return cls(-minor if sign else minor, currency)
