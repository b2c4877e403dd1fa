"""Transit's events, versioned in this one place: the wallet consumes these types."""

from __future__ import annotations

import uuid

from shared.events import Event, EventCatalog

transit_events = EventCatalog("transit")


@transit_events.event("transit.fare.due", version=1)
class FareDue(Event, frozen=True, kw_only=True):
    """What a rider owes for a journey now, caps applied, to this operator (key: the rider).

    A statement of the whole amount, not a change: the wallet moves the difference from what
    it has taken for the journey so far, charging the rider or refunding them, and so takes
    only what is owed and refunds only what it took. ``version`` counts the journey's
    statements; the wallet applies each journey's newest one once and ignores older ones. A
    journey a late tap superseded is stated at 0.
    """

    journey_id: uuid.UUID
    version: int
    rider: str
    operator: str
    amount: int
    currency: str
