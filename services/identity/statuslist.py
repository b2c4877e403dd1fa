"""Token Status List (draft-ietf-oauth-status-list-20), JWT form: revocation by index.

A credential names a list (``uri``) and its place in it (``idx``); the list is a byte array
of 1, 2, 4 or 8-bit statuses, zlib-compressed and signed by the issuer as a
``statuslist+jwt``. Everything here is pure: the caller fetches the token and gives the time.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import jwt.types

VALID, INVALID, SUSPENDED = 0, 1, 2
TYP = "statuslist+jwt"
BITS = (1, 2, 4, 8)
# The algorithms a resolver may pin a key to: the same two the platform's JWKS accepts.
ALGORITHMS = ("ES256", "EdDSA")
# An 8-bit list of 16 Mi tokens. A compressed list that inflates past this is a zlib bomb,
# not a status list: stop before it takes the verifier's memory.
MAX_LIST_BYTES = 16 * 1024 * 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# pyjwt would check the times against the wall clock: read_token checks them against ``now``.
_DECODE_OPTIONS: jwt.types.Options = {
    "require": ["sub", "iat", "status_list"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
}
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "signature"),
    # A token signed with another algorithm than the key's pinned one is not signed by it.
    (jwt.InvalidAlgorithmError, "signature"),
)


class StatusListError(Exception):
    """A status list or reference that cannot be used; ``reason`` is a stable code:
    "malformed", "signature", "unknown_key", "wrong_list" (sub != the referenced uri),
    "expired", "not_yet_valid" (iat or nbf after ``now``), "out_of_range"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StatusList:
    """Statuses of ``size`` tokens at ``bits`` (1, 2, 4 or 8) each, LSB first, as the draft says.

    Entry *i* lives in byte ``i * bits // 8``, shifted left by ``(i % (8 // bits)) * bits``.
    """

    def __init__(self, size: int, bits: int = 2, data: bytes | None = None) -> None:
        if isinstance(bits, bool) or bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, not {bits}")
        if size < 0:
            raise ValueError("a status list cannot have a negative size")
        length = _byte_length(size, bits)
        if data is not None and len(data) != length:
            raise ValueError(f"{size} statuses of {bits} bits take {length} bytes, not {len(data)}")
        self.size, self.bits = size, bits
        self._data = bytearray(length) if data is None else bytearray(data)

    def __getitem__(self, index: int) -> int:
        byte, shift = self._position(index)
        return (self._data[byte] >> shift) & ((1 << self.bits) - 1)

    def __setitem__(self, index: int, status: int) -> None:
        if isinstance(status, bool) or not isinstance(status, int):
            raise ValueError(f"status {status!r} does not fit in {self.bits} bits")
        if not 0 <= status < 1 << self.bits:
            raise ValueError(f"status {status!r} does not fit in {self.bits} bits")
        byte, shift = self._position(index)
        mask = ((1 << self.bits) - 1) << shift
        self._data[byte] = (self._data[byte] & ~mask) | (status << shift)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return (self[index] for index in range(self.size))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusList):
            return NotImplemented
        return (self.size, self.bits, self._data) == (other.size, other.bits, other._data)

    __hash__ = None  # type: ignore[assignment]  # mutable: a list's statuses change

    def __repr__(self) -> str:
        return f"StatusList(size={self.size}, bits={self.bits})"

    def _position(self, index: int) -> tuple[int, int]:
        """The byte holding entry ``index`` and its shift; out_of_range past either end."""
        if isinstance(index, bool) or not 0 <= index < self.size:
            raise StatusListError("out_of_range")
        per_byte = 8 // self.bits
        return index // per_byte, (index % per_byte) * self.bits

    def encode(self) -> dict[str, Any]:
        """The ``status_list`` claim: ``bits`` and ``lst``, the zlib stream in base64url."""
        return {"bits": self.bits, "lst": _b64url(zlib.compress(bytes(self._data), 9))}

    @classmethod
    def decode(cls, status_list: Mapping[str, Any]) -> StatusList:
        """The list a ``status_list`` claim holds; ``StatusListError("malformed")`` otherwise.

        The size is what the bytes hold (the draft carries no count), so a list encoded from
        a size that fills no whole byte decodes with its last byte's spare entries, all VALID.
        """
        if not isinstance(status_list, Mapping):
            raise StatusListError("malformed")
        bits, lst = status_list.get("bits"), status_list.get("lst")
        if isinstance(bits, bool) or bits not in BITS or not isinstance(lst, str):
            raise StatusListError("malformed")
        data = _inflate(_b64url_decode(lst))
        return cls(len(data) * 8 // bits, bits, data)

    def to_bytes(self) -> bytes:
        """The uncompressed byte array, as the draft lays it out."""
        return bytes(self._data)


def _byte_length(size: int, bits: int) -> int:
    return (size * bits + 7) // 8


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Base64url without padding, strictly: any other character is a malformed list."""
    if not _BASE64URL.fullmatch(text):
        raise StatusListError("malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise StatusListError("malformed") from None


def _inflate(compressed: bytes) -> bytes:
    """One whole zlib stream, no trailing bytes, at most ``MAX_LIST_BYTES`` inflated."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, MAX_LIST_BYTES)
    except zlib.error:
        raise StatusListError("malformed") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise StatusListError("malformed")
    return data


def token_claims(
    status_list: StatusList, *, uri: str, issuer: str, iat: int, exp: int, ttl: int
) -> dict[str, Any]:
    """The Status List Token payload the issuer signs (``typ`` statuslist+jwt) for ``uri``."""
    return {
        "sub": uri,
        "iss": issuer,
        "iat": iat,
        "exp": exp,
        "ttl": ttl,
        "status_list": status_list.encode(),
    }


@dataclass(frozen=True)
class Reference:
    """Where a referenced token's status lives: list ``uri``, entry ``index``."""

    uri: str
    index: int

    @classmethod
    def from_claim(cls, claim: Any) -> Reference:
        """The reference in a token's ``status`` claim; ``StatusListError("malformed")`` else."""
        # JSON gives dicts: naming dict first spares them the slower check against the ABC.
        inner = claim.get("status_list") if isinstance(claim, (dict, Mapping)) else None
        if not isinstance(inner, (dict, Mapping)):
            raise StatusListError("malformed")
        index, uri = inner.get("idx"), inner.get("uri")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise StatusListError("malformed")
        if not isinstance(uri, str) or not uri:
            raise StatusListError("malformed")
        return cls(uri, index)


@dataclass(frozen=True)
class ListToken:
    """A verified Status List Token: its list, the ``uri`` it is for, and its time claims."""

    status_list: StatusList
    uri: str
    iat: int
    exp: int | None
    ttl: int | None


def read_token(
    token: str,
    *,
    keys: Callable[[Mapping[str, Any]], tuple[Any, str] | None],
    uri: str,
    now: int,
    leeway_s: int = 60,
) -> ListToken:
    """The Status List Token ``token``, verified as the list at ``uri`` valid at ``now``.

    ``keys(header)`` gives the issuer's public key and the one algorithm it is pinned to, or
    None. Raises only ``StatusListError``, except what ``keys`` itself raises.
    """
    header = _header(token)
    key, algorithm = _key(keys, header)
    claims = _verified_claims(token, key, algorithm)
    listed = _list_token(claims)
    if listed.uri != uri:
        raise StatusListError("wrong_list")
    _check_times(claims, listed, now, leeway_s)
    return listed


def _header(token: str) -> dict[str, Any]:
    # A header that is not ASCII can only be malformed (and may not even encode as UTF-8).
    if not isinstance(token, str) or not token.isascii():
        raise StatusListError("malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise StatusListError("malformed") from None
    if header.get("typ") != TYP:
        raise StatusListError("malformed")
    return header


def _key(
    keys: Callable[[Mapping[str, Any]], tuple[Any, str] | None], header: Mapping[str, Any]
) -> tuple[Any, str]:
    found = keys(header)
    if found is None or found[1] not in ALGORITHMS:
        raise StatusListError("unknown_key")
    return found


def _verified_claims(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], options=_DECODE_OPTIONS
        )
    except jwt.PyJWTError as error:
        raise StatusListError(
            next((reason for kind, reason in _REASONS if isinstance(error, kind)), "malformed")
        ) from None
    except (ValueError, TypeError, RecursionError):
        # A key of the wrong kind for its algorithm, or JSON too deep to read.
        raise StatusListError("malformed") from None
    return claims


def _list_token(claims: Mapping[str, Any]) -> ListToken:
    sub, ttl = claims["sub"], claims.get("ttl")
    if not isinstance(sub, str):
        raise StatusListError("malformed")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise StatusListError("malformed")
    exp = _numeric_date(claims["exp"]) if "exp" in claims else None
    status_list = StatusList.decode(claims["status_list"])
    return ListToken(status_list, sub, _numeric_date(claims["iat"]), exp, ttl)


def _check_times(claims: Mapping[str, Any], listed: ListToken, now: int, leeway_s: int) -> None:
    if listed.exp is not None and listed.exp <= now - leeway_s:
        raise StatusListError("expired")
    not_before = _numeric_date(claims["nbf"]) if "nbf" in claims else listed.iat
    if max(listed.iat, not_before) > now + leeway_s:
        raise StatusListError("not_yet_valid")


def _numeric_date(value: object) -> int:
    """A JWT NumericDate as whole seconds (floored); NaN, infinities and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusListError("malformed")
    if isinstance(value, float) and not math.isfinite(value):
        raise StatusListError("malformed")
    return math.floor(value)


def status_of(token: ListToken, reference: Reference) -> int:
    """The status of ``reference`` in ``token``'s list.

    ``wrong_list`` if the token is another list's; ``out_of_range`` past the end, where the
    draft says to reject the referenced token.
    """
    if reference.uri != token.uri:
        raise StatusListError("wrong_list")
    return token.status_list[reference.index]
