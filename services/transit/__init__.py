"""Transit: ride credentials, gates, journeys and fares (its own issue; the event contract
other services consume is already here, in ``events.py``)."""
