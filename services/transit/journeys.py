"""Taps into journeys: a rider's entries and exits, paired in time order, whatever order the
gates uploaded them in.

Pure. The service keeps every tap and pairs a rider's taps again whenever one arrives, so a
late or repeated upload changes the result exactly as if it had come on time: pairing is a
function of the set of taps, not of their arrival. A journey's id derives from the tap that
opened it, so the same journey keeps its id (and its charges) across re-pairings.

- entry then exit within ``max_journey``: a complete journey (the same station both ends
  included);
- entry with no exit by ``max_journey``: incomplete (charged the maximum fare; an exit that
  arrives late makes it complete again, and the charge is corrected);
- entry while a journey is open: the open one becomes incomplete, a new one starts;
- exit with no open entry, more than ``max_journey`` ago: exit-only (charged the most that
  exit could cost); a more recent one is open: the entry may come in a late upload;
- entry with no exit yet, within ``max_journey``: open, not priced yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache

# Journey ids are UUIDv5 in this namespace, over the opening tap's id.
_JOURNEYS = uuid.UUID("6f1c2a1e-5b0d-4c7e-9a51-3c1f0e8d2b47")


class Direction(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


class Kind(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    EXIT_ONLY = "exit_only"
    OPEN = "open"
    SUPERSEDED = "superseded"  # kept by the service: a late tap gave its taps to another


@dataclass(frozen=True)
class Tap:
    """One scan that opened a gate, as the gate reported it."""

    tap_id: uuid.UUID
    rider: str
    station: str
    direction: Direction
    at: datetime  # aware


@dataclass(frozen=True)
class Journey:
    journey_id: uuid.UUID
    rider: str
    kind: Kind
    entry: Tap | None
    exit: Tap | None

    @property
    def priced(self) -> bool:
        """Whether the journey is settled enough to charge (open ones wait for their exit)."""
        return self.kind is not Kind.OPEN

    @property
    def started_at(self) -> datetime:
        first = self.entry or self.exit
        assert first is not None, "a journey has at least one tap"
        return first.at


def journey_id(opening: Tap) -> uuid.UUID:
    return _journey_id(opening.tap_id)


@lru_cache(maxsize=65536)  # a rider's week is paired again at each upload
def _journey_id(tap_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_JOURNEYS, str(tap_id))


def pair(taps: Iterable[Tap], *, now: datetime, max_journey: timedelta) -> list[Journey]:
    """One rider's journeys from their taps (duplicates by id count once), oldest first."""
    unique = {tap.tap_id: tap for tap in taps}
    ordered = sorted(unique.values(), key=_order)
    journeys: list[Journey] = []
    open_entry: Tap | None = None
    for tap in ordered:
        if open_entry is not None and tap.at - open_entry.at > max_journey:
            journeys.append(_journey(Kind.INCOMPLETE, open_entry, None))
            open_entry = None
        if tap.direction is Direction.ENTRY:
            if open_entry is not None:
                journeys.append(_journey(Kind.INCOMPLETE, open_entry, None))
            open_entry = tap
        elif open_entry is not None:
            journeys.append(_journey(Kind.COMPLETE, open_entry, tap))
            open_entry = None
        else:
            journeys.append(_journey(Kind.EXIT_ONLY, None, tap))
    if open_entry is not None:
        overdue = now - open_entry.at > max_journey
        journeys.append(_journey(Kind.INCOMPLETE if overdue else Kind.OPEN, open_entry, None))
    return [_waiting(j, now, max_journey) for j in journeys]


def _waiting(journey: Journey, now: datetime, max_journey: timedelta) -> Journey:
    """An exit alone is not charged while a gate may still upload the entry that opened it."""
    if journey.kind is Kind.EXIT_ONLY and now - journey.started_at <= max_journey:
        return Journey(journey.journey_id, journey.rider, Kind.OPEN, None, journey.exit)
    return journey


def _order(tap: Tap) -> tuple[datetime, int, str]:
    # Gates stamp whole seconds: within one, an entry comes first (a rider who taps in and
    # straight out again), and the tap id makes the order total, so every pairing agrees.
    return tap.at, 0 if tap.direction is Direction.ENTRY else 1, str(tap.tap_id)


def _journey(kind: Kind, entry: Tap | None, exit_: Tap | None) -> Journey:
    opening = entry or exit_
    assert opening is not None
    return Journey(journey_id(opening), opening.rider, kind, entry, exit_)
