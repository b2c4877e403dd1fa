"""Transit's events, versioned in this one place: the wallet consumes these types."""

from __future__ import annotations

import uuid

from shared.events import Event, EventCatalog

transit_events = EventCatalog("transit")


@transit_events.event("transit.fare.charged", version=1)
class FareCharged(Event, frozen=True, kw_only=True):
    """A journey was priced: charge the rider this fare, for this operator (key: the rider).

    ``charge_id`` makes the charge happen once however often it is delivered; a journey that
    is corrected later is charged or refunded under a new ``charge_id``.
    """

    charge_id: uuid.UUID
    journey_id: uuid.UUID
    rider: str
    operator: str
    amount: int
    currency: str
