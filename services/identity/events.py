"""Identity's events, versioned in this one place: other services consume these types.

They carry pseudonymous ids and claim names, never a disclosed value.
"""

from __future__ import annotations

from shared.events import Event, EventCatalog

identity_events = EventCatalog("identity")


@identity_events.event("identity.credential.issued", version=1)
class CredentialIssued(Event, frozen=True, kw_only=True):
    """The city issued a citizen an ID credential bound to their phone's key."""

    credential_id: str
    citizen: str
    expires_at: int


@identity_events.event("identity.credential.status_changed", version=1)
class CredentialStatusChanged(Event, frozen=True, kw_only=True):
    """A credential was revoked, suspended or reinstated (``status``: valid, revoked, …)."""

    credential_id: str
    citizen: str
    status: str


@identity_events.event("identity.checked", version=1)
class IdentityChecked(Event, frozen=True, kw_only=True):
    """An agency's request was answered: which claims, the result, and why not."""

    request_id: str
    agency: str
    citizen: str
    claims: list[str]
    result: str
    reason: str | None = None
