"""What travels with a unit of work: the request id and the W3C trace context.

Held in context variables so that logs, and events written to the outbox, carry them
without every function passing them along.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
traceparent: ContextVar[str | None] = ContextVar("traceparent", default=None)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(header: str | None) -> tuple[str, str] | None:
    """(trace_id, parent_id) of a valid version-00 traceparent header, else None."""
    match = _TRACEPARENT.match((header or "").strip().lower())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1), match.group(2)


def child_traceparent(parent: str | None) -> str:
    """A traceparent for a new span: same trace as ``parent`` if valid, else a new trace."""
    parsed = parse_traceparent(parent)
    trace_id = parsed[0] if parsed else secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def trace_id() -> str | None:
    """The trace id of the current context, for logs."""
    parsed = parse_traceparent(traceparent.get())
    return parsed[0] if parsed else None
