"""The one envelope every event travels in, and each topic's catalog of typed payloads.

A service declares its events in one place (its ``events.py``)::

    wallet_events = EventCatalog("wallet")

    @wallet_events.event("wallet.transfer.posted", version=1)
    class TransferPosted(Event):
        transfer_id: UUID
        amount: int

Consumers decode with the producer's catalog, so the payload types are the contract.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, TypeVar

import msgspec

from shared.ids import new_id


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event payload; the catalog sets the class variables."""

    event_type: ClassVar[str]
    event_version: ClassVar[int]
    topic: ClassVar[str]


E = TypeVar("E", bound=type[Event])


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What is written to the outbox and carried on the stream."""

    id: uuid.UUID
    type: str
    version: int
    occurred_at: datetime
    source: str
    key: str
    traceparent: str | None = None
    payload: msgspec.Raw


class MalformedEvent(Exception):
    """An entry that can never be applied: bad JSON, unknown type, a missing field."""


class EventCatalog:
    """The event types one topic carries, by (type, version)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._types: dict[tuple[str, int], type[Event]] = {}

    def event(self, event_type: str, *, version: int = 1) -> Callable[[E], E]:
        """Class decorator registering a payload type under its name and version."""

        def register(cls: E) -> E:
            if (event_type, version) in self._types:
                raise ValueError(f"{event_type} v{version} is registered twice")
            cls.event_type, cls.event_version, cls.topic = event_type, version, self.topic
            self._types[(event_type, version)] = cls
            return cls

        return register

    def payload_type(self, event_type: str, version: int) -> type[Event]:
        try:
            return self._types[(event_type, version)]
        except KeyError:
            raise MalformedEvent(f"unknown event type {event_type!r} v{version}") from None

    def decode(self, envelope: Envelope) -> Event:
        """The typed payload of an envelope of this topic."""
        cls = self.payload_type(envelope.type, envelope.version)
        try:
            return msgspec.json.decode(envelope.payload, type=cls)
        except msgspec.ValidationError as exc:
            raise MalformedEvent(f"invalid {envelope.type} payload: {exc}") from None


_encoder = msgspec.json.Encoder()


def seal(
    payload: Event, *, key: str, source: str, occurred_at: datetime, traceparent: str | None
) -> Envelope:
    """Wrap a payload in a new envelope with a fresh sortable id."""
    return Envelope(
        id=new_id(),
        type=payload.event_type,
        version=payload.event_version,
        occurred_at=occurred_at,
        source=source,
        key=key,
        traceparent=traceparent,
        payload=msgspec.Raw(_encoder.encode(payload)),
    )


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(body: bytes | None) -> Envelope:
    """Parse an envelope, or raise MalformedEvent saying why not."""
    if body is None:
        raise MalformedEvent("entry has no envelope field")
    try:
        return msgspec.json.decode(body, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(f"bad envelope: {exc}") from None


def partition_of(key: str, partitions: int) -> int:
    """Stable partition of a key: events of one key always share a partition, hence an order."""
    return zlib.crc32(key.encode()) % partitions
