"""The gates' deny list: 16-byte ids (riders in debt, revoked credentials), versioned, by deltas.

A million entries must fit a gate controller in well under 64 MB, so the list is two sorted
``array('Q')`` columns (the ids' high and low 64 bits, 16 MB together; a set of a million
``bytes`` takes over 80 MB) searched with ``bisect``, plus a small overlay of recent changes
merged in once it grows. Transit numbers every change; a gate applies a delta only on top of
the version it holds, and asks for a full list otherwise (docs/ride-code.md).
"""

from __future__ import annotations

import operator
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress, count, islice

ID_BYTES = 16
FORMAT = 1
SNAPSHOT_MAGIC = b"CLDS"
DELTA_MAGIC = b"CLDD"
# Changes kept beside the sorted columns before they are merged in: a merge copies the
# columns (tens of ms for a million ids), an overlay lookup is one set probe.
COMPACT_AT = 4096
MAX_VERSION = (1 << 63) - 1

_SNAPSHOT_HEAD = struct.Struct(">4sBQI")  # magic, format, version, count
_DELTA_HEAD = struct.Struct(">4sBQQII")  # magic, format, base, version, added, removed
_CRC = struct.Struct(">I")
_ID = struct.Struct(">QQ")


class DenyListError(Exception):
    """A list or delta that cannot be used; ``reason`` is stable: "format" (bytes that are
    not one), "older" (a full list older than the one held)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VersionGap(DenyListError):
    """A delta that does not start at the version held: fetch the full list instead."""

    def __init__(self, *, held: int, base: int) -> None:
        super().__init__("version_gap")
        self.held, self.base = held, base


@dataclass(frozen=True)
class Delta:
    """The changes that take a list from version ``base`` to ``version``."""

    base: int
    version: int
    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.base < self.version <= MAX_VERSION:
            raise ValueError("a delta goes from a version to a later one")
        _check_ids(self.added)
        _check_ids(self.removed)
        if set(self.added) & set(self.removed):
            raise ValueError("a delta cannot both add and remove an id")

    def encode(self) -> bytes:
        """The delta as transit sends it (docs/ride-code.md), CRC-32 last."""
        head = _DELTA_HEAD.pack(
            DELTA_MAGIC, FORMAT, self.base, self.version, len(self.added), len(self.removed)
        )
        return _with_crc(head, *self.added, *self.removed)

    @classmethod
    def decode(cls, data: bytes) -> Delta:
        """The delta in ``data``; DenyListError("format") for anything else."""
        body = _without_crc(data, _DELTA_HEAD.size)
        magic, form, base, version, added, removed = _DELTA_HEAD.unpack_from(body)
        if magic != DELTA_MAGIC or form != FORMAT:
            raise DenyListError("format")
        if len(body) != _DELTA_HEAD.size + ID_BYTES * (added + removed):
            raise DenyListError("format")
        ids = _split_ids(body[_DELTA_HEAD.size :])
        try:
            return cls(base, version, tuple(ids[:added]), tuple(ids[added:]))
        except ValueError:
            raise DenyListError("format") from None


class DenyList:
    """Ids a gate refuses, at a version. Membership is ``id in deny_list``."""

    def __init__(self, version: int = 0, ids: Iterable[bytes] = ()) -> None:
        if not 0 <= version <= MAX_VERSION:
            raise ValueError("a deny list's version is a non-negative 63-bit integer")
        keys = sorted(set(ids))
        _check_ids(keys)
        self.version = version
        self._high, self._low = _columns(b"".join(keys))
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()

    def __contains__(self, key: object) -> bool:
        if key in self._added:
            return True
        if key in self._removed or not isinstance(key, bytes) or len(key) != ID_BYTES:
            return False
        return self._index(key) is not None

    def __len__(self) -> int:
        return len(self._high) + len(self._added) - len(self._removed)

    def __iter__(self) -> Iterator[bytes]:
        """Every id, in order (for tests and audits: a million are slow to walk)."""
        packed = (_ID.pack(high, low) for high, low in zip(self._high, self._low, strict=True))
        return iter(sorted({*packed, *self._added} - self._removed))

    def apply(self, delta: Delta) -> bool:
        """Apply ``delta``; False if this list already includes it (a redelivery).

        VersionGap unless ``delta.base`` is this list's version: the caller fetches a full list.
        """
        if delta.version <= self.version:
            return False
        if delta.base != self.version:
            raise VersionGap(held=self.version, base=delta.base)
        for key in delta.removed:
            self._added.discard(key)
            if self._index(key) is not None:
                self._removed.add(key)
        for key in delta.added:
            self._removed.discard(key)
            if self._index(key) is None:
                self._added.add(key)
        self.version = delta.version
        if len(self._added) + len(self._removed) > COMPACT_AT:
            self._compact()
        return True

    def snapshot(self) -> bytes:
        """The whole list (docs/ride-code.md): what transit sends and a gate keeps on disk."""
        self._compact()
        head = _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, FORMAT, self.version, len(self._high))
        return _with_crc(head, _packed(self._high, self._low))

    @classmethod
    def load(cls, data: bytes) -> DenyList:
        """The list a snapshot holds; DenyListError("format") for anything else."""
        body = _without_crc(data, _SNAPSHOT_HEAD.size)
        magic, form, version, entries = _SNAPSHOT_HEAD.unpack_from(body)
        if magic != SNAPSHOT_MAGIC or form != FORMAT or version > MAX_VERSION:
            raise DenyListError("format")
        if len(body) != _SNAPSHOT_HEAD.size + ID_BYTES * entries:
            raise DenyListError("format")
        loaded = cls(version)
        loaded._high, loaded._low = _columns(body[_SNAPSHOT_HEAD.size :])
        if not _strictly_increasing(loaded._high, loaded._low):
            raise DenyListError("format")
        return loaded

    def nbytes(self) -> int:
        """Bytes this list holds in memory (the columns, the overlay and its ids)."""
        columns = sys.getsizeof(self._high) + sys.getsizeof(self._low)
        overlay = (*self._added, *self._removed)
        sets = sys.getsizeof(self._added) + sys.getsizeof(self._removed)
        return sys.getsizeof(self) + columns + sets + sum(map(sys.getsizeof, overlay))

    def _index(self, key: bytes) -> int | None:
        """Where ``key`` sits in the sorted columns, or None."""
        high, low = _ID.unpack(key)
        at = self._position(high, low)
        found = at < len(self._high) and self._high[at] == high and self._low[at] == low
        return at if found else None

    def _position(self, high: int, low: int) -> int:
        """The first index whose id is not below (high, low)."""
        at = bisect_left(self._high, high)
        while at < len(self._high) and self._high[at] == high and self._low[at] < low:
            at += 1  # ids sharing 64 high bits: rare for random ids, so a walk
        return at

    def _compact(self) -> None:
        """Merge the overlay into the columns: C copies between the changes, in order."""
        if not self._added and not self._removed:
            return
        changes = sorted(
            [(key, True) for key in self._added] + [(key, False) for key in self._removed]
        )
        high, low, start = array("Q"), array("Q"), 0
        for key, added in changes:
            key_high, key_low = _ID.unpack(key)
            at = self._position(key_high, key_low)
            high.extend(self._high[start:at])
            low.extend(self._low[start:at])
            if added:
                high.append(key_high)
                low.append(key_low)
            start = at if added else at + 1
        high.extend(self._high[start:])
        low.extend(self._low[start:])
        self._high, self._low = high, low
        self._added, self._removed = set(), set()


def _check_ids(ids: Iterable[object]) -> None:
    for key in ids:
        if not isinstance(key, bytes) or len(key) != ID_BYTES:
            raise ValueError(f"deny-list ids are {ID_BYTES} bytes")


def _columns(packed: bytes | memoryview) -> tuple[array[int], array[int]]:
    """Big-endian 16-byte ids, back to back, as (high, low) columns of native integers."""
    words = array("Q")
    words.frombytes(packed)
    if sys.byteorder == "little":
        words.byteswap()
    return words[0::2], words[1::2]


def _packed(high: array[int], low: array[int]) -> bytes:
    """The columns back as big-endian 16-byte ids, back to back."""
    words = array("Q", (0,)) * (2 * len(high))
    words[0::2], words[1::2] = high, low
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()


def _split_ids(packed: memoryview) -> list[bytes]:
    return [bytes(packed[at : at + ID_BYTES]) for at in range(0, len(packed), ID_BYTES)]


def _strictly_increasing(high: array[int], low: array[int]) -> bool:
    """Sorted and unique, checked at C speed: high never falls, low rises where high ties."""
    following = islice(high, 1, None)
    if not all(map(operator.le, high, following)):
        return False
    ties = compress(count(), map(operator.eq, high, islice(high, 1, None)))
    return all(low[at] < low[at + 1] for at in ties)


def _with_crc(*parts: bytes) -> bytes:
    """``parts`` joined, with their CRC-32 after them (in one copy: a snapshot is 16 MB)."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join((*parts, _CRC.pack(crc)))


def _without_crc(data: bytes, head: int) -> memoryview:
    """A view of ``data`` less its CRC-32, if it checks: a torn write on a gate's disk is
    caught here. A view, not a copy: a million ids must not be held twice while loading."""
    if not isinstance(data, bytes) or len(data) < head + _CRC.size:
        raise DenyListError("format")
    body = memoryview(data)[: -_CRC.size]
    if _CRC.unpack(data[-_CRC.size :])[0] != zlib.crc32(body):
        raise DenyListError("format")
    return body
