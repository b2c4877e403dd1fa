"""Sortable unique ids (UUIDv7, RFC 9562): time-ordered, so indexes stay append-only."""

import uuid

from uuid_utils import compat


def new_id() -> uuid.UUID:
    """A fresh UUIDv7 as a standard-library UUID."""
    return compat.uuid7()
