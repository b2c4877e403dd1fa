"""The offline gate verifier: a scanned ride code in, open or deny with a reason code out.

Runs on a gate or station controller with no network: transit's issuer keys (by kid) and the
deny list are held in memory and on the gate's disk, and updated when the network returns.
Every input, however malformed, ends in a Decision: a gate never crashes on what a stranger
holds up to its camera. Not thread-safe: one verifier per station controller's scan loop.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.transit import ridecode
from services.transit.denylist import Delta as DenyDelta
from services.transit.denylist import DenyList, DenyListError
from services.transit.ridecode import CodeError, Credential, ParsedCode, PublicKey, Verify

REASONS = (
    "ok",
    "truncated",
    "format",
    "version",
    "unknown_issuer",
    "issuer_signature",
    "credential_not_yet_valid",
    "credential_expired",
    "device_signature",
    "stale",
    "future",
    "replay",
    "denied",
    "passback",
    "image",
    "no_code",
)
DIRECTIONS = ("entry", "exit")
WINDOW_S, SKEW_S, PASSBACK_S = 30, 5, 600
STATE_MAGIC, STATE_FORMAT = b"CLGS", 1

_STATE_HEAD = struct.Struct(">4sB")  # magic, format
_SEEN = struct.Struct(">16sIq")  # credential id, last counter, when it opened the gate
_ENTERED = struct.Struct(">16sq")  # rider, when they entered
_COUNT = struct.Struct(">I")
_CRC = struct.Struct(">I")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Decision:
    """Open or not, and why. Rider and credential only once transit's signature vouches for
    them: a forged code must not put an innocent rider's id in the gate's tap log."""

    open: bool
    reason: str
    rider: bytes | None = None
    credential_id: bytes | None = None
    category: str | None = None


_REFUSED = {reason: Decision(False, reason) for reason in REASONS}


class StateError(Exception):
    """Saved gate state that cannot be loaded (torn, foreign, or another format)."""


class GateVerifier:
    """One station's verifier: issuer keys, deny list, and what it has recently let through."""

    def __init__(
        self,
        *,
        station: str,
        issuer_keys: Mapping[str, PublicKey],
        deny: DenyList,
        window_s: int = WINDOW_S,
        skew_s: int = SKEW_S,
        passback_s: int = PASSBACK_S,
    ) -> None:
        if window_s <= 0 or skew_s < 0 or passback_s < 0:
            raise ValueError("the window is positive, skew and pass-back time not negative")
        self.station, self.deny = station, deny
        self.window_s, self.skew_s, self.passback_s = window_s, skew_s, passback_s
        self._issuers: dict[str, PublicKey] = {}
        self._verifiers: dict[str, Verify] = {}
        for kid, key in issuer_keys.items():
            self.add_issuer_key(kid, key)
        # credential id -> (last counter, when it opened), oldest first; kept while a code
        # accepted then could still be inside its window (with skew at both ends).
        self._seen: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        # rider -> when they entered here, oldest first; an exit forgets them.
        self._entered: OrderedDict[bytes, int] = OrderedDict()

    # -- scanning --------------------------------------------------------------------------

    def scan(self, data: bytes, *, now: int, direction: str = "entry") -> Decision:
        """Decide on a code's bytes at ``now`` (unix seconds); an open is remembered."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction is one of {DIRECTIONS}, not {direction!r}")
        try:
            code = ridecode.parse_code(data)
        except CodeError as error:
            return _REFUSED[error.reason]
        credential = code.credential
        if (refused := self._check_issuer(credential)) is not None:
            return _REFUSED[refused]
        self._forget(now)
        reason = self._check_code(code, now) or self._check_rider(credential, now, direction)
        if reason is None:
            self._remember(code, now, direction)
        return Decision(
            reason is None, reason or "ok", credential.rider, credential.credential_id,
            credential.category,
        )  # fmt: skip

    def scan_image(self, image: bytes, *, now: int, direction: str = "entry") -> Decision:
        """Decide on a camera image: "image" or "no_code" when no code can be read from it."""
        try:
            data = ridecode.decode_image(image)
        except CodeError as error:
            return _REFUSED[error.reason]
        return self.scan(data, now=now, direction=direction)

    def _check_issuer(self, credential: Credential) -> str | None:
        verify = self._verifiers.get(credential.kid)
        if verify is None:
            return "unknown_issuer"
        message = ridecode.CREDENTIAL_CONTEXT + credential.signed
        return None if verify(credential.signature, message) else "issuer_signature"

    def _check_code(self, code: ParsedCode, now: int) -> str | None:
        credential = code.credential
        if now + self.skew_s < credential.not_before:
            return "credential_not_yet_valid"
        if now - self.skew_s >= credential.not_after:
            return "credential_expired"
        if not self._device_signed(code):
            return "device_signature"
        if code.timestamp > now + self.skew_s:
            return "future"
        if code.timestamp < now - self.window_s - self.skew_s:
            return "stale"
        seen = self._seen.get(credential.credential_id)
        # The same code again, or an older one: a copy (a screenshot, a relayed image).
        return "replay" if seen is not None and code.counter <= seen[0] else None

    def _device_signed(self, code: ParsedCode) -> bool:
        verify = ridecode.device_verifier(code.credential)
        # None: transit signed a point that is not a key, so no code can verify against it
        return verify is not None and verify(code.signature, ridecode.CODE_CONTEXT + code.signed)

    def _check_rider(self, credential: Credential, now: int, direction: str) -> str | None:
        if credential.credential_id in self.deny or credential.rider in self.deny:
            return "denied"
        entered = self._entered.get(credential.rider)
        if direction == "entry" and entered is not None and now - entered < self.passback_s:
            return "passback"
        return None

    def _remember(self, code: ParsedCode, now: int, direction: str) -> None:
        credential = code.credential
        self._seen[credential.credential_id] = (code.counter, now)
        self._seen.move_to_end(credential.credential_id)
        if direction == "entry":
            self._entered[credential.rider] = now
            self._entered.move_to_end(credential.rider)
        else:
            self._entered.pop(credential.rider, None)

    def _forget(self, now: int) -> None:
        """Drop what can no longer matter, oldest first (O(1) a scan, amortized)."""
        # A code accepted at t was stamped at most skew_s after t, so is stale by
        # t + skew_s + window_s + skew_s: any copy of it is refused as stale from then.
        _drop_before(self._seen, now - self.window_s - 2 * self.skew_s, lambda seen: seen[1])
        _drop_before(self._entered, now - self.passback_s, lambda entered: entered)

    # -- updates when the network is back --------------------------------------------------

    def add_issuer_key(self, kid: str, key: PublicKey) -> None:
        """Trust ``key`` for credentials naming ``kid`` (learnt before it signs any)."""
        self._verifiers[kid] = ridecode.verifier(key)  # ValueError for a key of another kind
        self._issuers[kid] = key

    def remove_issuer_key(self, kid: str) -> None:
        """Stop trusting ``kid`` (retired once its last credential has expired)."""
        self._issuers.pop(kid, None)
        self._verifiers.pop(kid, None)

    @property
    def issuer_kids(self) -> frozenset[str]:
        """The kids this gate trusts."""
        return frozenset(self._issuers)

    def apply_delta(self, delta: DenyDelta) -> bool:
        """Apply a deny-list delta; VersionGap if it does not follow the version held (then
        fetch the full list for :meth:`replace_deny_list`), False for one already applied."""
        return self.deny.apply(delta)

    def replace_deny_list(self, deny: DenyList) -> None:
        """Take a full list; DenyListError("older") for one older than the list held."""
        if deny.version < self.deny.version:
            raise DenyListError("older")
        self.deny = deny

    # -- the gate's disk -------------------------------------------------------------------

    def to_bytes(self, *, now: int) -> bytes:
        """Everything this gate knows (keys, deny list, recent opens), for its disk."""
        self._forget(now)
        parts = [
            _STATE_HEAD.pack(STATE_MAGIC, STATE_FORMAT),
            _short(self.station.encode()),
            _issuers_bytes(self._issuers),
            _records(_SEEN, [(cid, *seen) for cid, seen in self._seen.items()]),
            _records(_ENTERED, list(self._entered.items())),
        ]
        deny = self.deny.snapshot()
        crc = zlib.crc32(deny, zlib.crc32(b"".join(parts)))
        return b"".join((*parts, deny, _CRC.pack(crc)))

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        window_s: int = WINDOW_S,
        skew_s: int = SKEW_S,
        passback_s: int = PASSBACK_S,
    ) -> GateVerifier:
        """The verifier :meth:`to_bytes` saved; StateError if these bytes are not one."""
        reader = _Reader(_checked(data))
        magic, form = reader.take(_STATE_HEAD)
        if magic != STATE_MAGIC or form != STATE_FORMAT:
            raise StateError("not a gate state of a known format")
        station = reader.short().decode("utf-8", "replace")
        issuers = _read_issuers(reader)
        seen, entered = reader.records(_SEEN), reader.records(_ENTERED)
        try:
            deny = DenyList.load(reader.rest())
        except DenyListError:
            raise StateError("the deny list in the state is damaged") from None
        gate = cls(
            station=station, issuer_keys=issuers, deny=deny, window_s=window_s, skew_s=skew_s,
            passback_s=passback_s,
        )  # fmt: skip
        gate._seen.update((cid, (counter, at)) for cid, counter, at in seen)
        gate._entered.update(entered)
        return gate

    def save(self, path: Path, *, now: int) -> None:
        """Write the state to ``path`` atomically: a power cut leaves the old state or the new."""
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as out:
            out.write(self.to_bytes(now=now))
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        window_s: int = WINDOW_S,
        skew_s: int = SKEW_S,
        passback_s: int = PASSBACK_S,
    ) -> GateVerifier:
        """The verifier :meth:`save` wrote to ``path``."""
        data = path.read_bytes()
        return cls.from_bytes(data, window_s=window_s, skew_s=skew_s, passback_s=passback_s)


def _drop_before(entries: OrderedDict[bytes, _T], horizon: int, when: Callable[[_T], int]) -> None:
    while entries:
        key, value = next(iter(entries.items()))
        if when(value) > horizon:
            return
        del entries[key]


# ---------------------------------------------------------------------------------------
# The state's byte layout: a header, then length- or count-prefixed sections, then the deny
# list's own snapshot, then a CRC-32 over everything before it.


def _short(raw: bytes) -> bytes:
    if len(raw) > 255:
        raise ValueError("a station name or kid takes at most 255 bytes")
    return bytes((len(raw),)) + raw


def _issuers_bytes(issuers: Mapping[str, PublicKey]) -> bytes:
    parts = [_COUNT.pack(len(issuers))]
    for kid, key in issuers.items():
        key_type, raw = ridecode.raw_public_key(key)
        parts += [_short(kid.encode()), bytes((key_type,)), raw]
    return b"".join(parts)


def _records(layout: struct.Struct, rows: list[tuple[Any, ...]]) -> bytes:
    return _COUNT.pack(len(rows)) + b"".join(layout.pack(*row) for row in rows)


def _checked(data: bytes) -> bytes:
    if not isinstance(data, bytes) or len(data) < _STATE_HEAD.size + _CRC.size:
        raise StateError("too short to be a gate state")
    body = data[: -_CRC.size]
    if _CRC.unpack(data[-_CRC.size :])[0] != zlib.crc32(body):
        raise StateError("the state's checksum does not match: a torn or damaged file")
    return body


def _read_issuers(reader: _Reader) -> dict[str, PublicKey]:
    issuers = {}
    for _ in range(reader.take(_COUNT)[0]):
        kid = reader.short().decode("utf-8", "replace")
        key_type = reader.read(1)[0]
        raw = reader.read(ridecode.KEY_LENGTHS.get(key_type, 0))
        try:
            issuers[kid] = ridecode.load_public_key(key_type, raw)
        except CodeError:
            raise StateError(f"issuer key {kid!r} in the state is damaged") from None
    return issuers


class _Reader:
    """Reads the state's sections in order; StateError past the end."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = memoryview(data), 0

    def read(self, length: int) -> bytes:
        if self._at + length > len(self._data):
            raise StateError("the state ends early")
        chunk = self._data[self._at : self._at + length]
        self._at += length
        return bytes(chunk)

    def take(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.read(layout.size))

    def short(self) -> bytes:
        return self.read(self.read(1)[0])

    def records(self, layout: struct.Struct) -> list[tuple[Any, ...]]:
        count = self.take(_COUNT)[0]
        return [self.take(layout) for _ in range(count)]

    def rest(self) -> bytes:
        return self.read(len(self._data) - self._at)
