"""Concession fares, proven with the rider's city ID.

A rider asks for a category (``senior``); transit, registered with identity as an agency,
asks identity through the gateway (``services.gateway.client``) for the one claim that proves
it (``age_over_65``), for this rider's account only (identity refuses another citizen's ID:
nobody lends their account a grandparent's). The phone answers identity directly, as to any
agency; identity logs the check where the citizen reads it. When the rider claims the
concession, transit reads identity's answer (handed over once) and, if the claim is true,
grants the category: the rider's next ride credential carries it, and gates and fares follow.
Transit keeps that the category was proven, never the claims.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.gateway.client import GatewayClient
from shared.http import Problem

# A category, and the claim of the city ID that proves it.
CONCESSIONS = {"senior": ("age_over_65",)}
PURPOSE = "Concession fares: {category}"
PROBLEMS = "https://cardless.dev/problems/transit"


@dataclass(frozen=True)
class Verdict:
    """What identity answered: granted, or why not (None while the phone has not answered)."""

    granted: bool
    reason: str | None


class IdentityDesk:
    """Transit as an agency of identity, through the gateway."""

    def __init__(self, gateway: GatewayClient) -> None:
        self._gateway = gateway

    async def ask(self, category: str, subject: str) -> dict[str, Any]:
        """Identity's verification request for ``category``'s claim, answerable by the citizen
        signed in as ``subject`` only: its id and the authorization request for the phone."""
        query = {"credentials": [{"id": "city_id", "format": "dc+sd-jwt",
                                  "claims": [{"path": list(claim(category))}]}]}  # fmt: skip
        body = {"purpose": PURPOSE.format(category=category), "dcql_query": query,
                "subject": subject}  # fmt: skip
        answer = await self._gateway.request(
            "POST", "/v1/identity/requests", json.dumps(body).encode()
        )
        if answer.status != 201:
            raise unavailable(f"identity refused the request ({answer.status})")
        created: dict[str, Any] = json.loads(answer.body)
        return created

    async def verdict(self, request_id: str, category: str) -> Verdict | None:
        """Identity's answer to the request: None while it is pending."""
        answer = await self._gateway.request("GET", f"/v1/identity/requests/{request_id}")
        if answer.status != 200:
            raise unavailable(f"identity did not answer ({answer.status})")
        result = json.loads(answer.body)
        if result["state"] == "pending":
            return None
        if result["state"] != "verified":
            return Verdict(False, result.get("reason") or "rejected")
        if result.get("claims") is None:  # read once already: the grant was recorded then
            return Verdict(False, "answer_already_read")
        value: Any = result["claims"]
        for step in claim(category):
            value = value.get(step) if isinstance(value, dict) else None
        return Verdict(value is True, None if value is True else "not_eligible")


def claim(category: str) -> tuple[str, ...]:
    """The claim path that proves ``category``; a 422 problem for one that needs no proof or
    is not a concession here."""
    if category not in CONCESSIONS:
        raise Problem(422, "Unprocessable Content",
                      f"category: one of {', '.join(sorted(CONCESSIONS))}",
                      type_=f"{PROBLEMS}/no-such-concession")  # fmt: skip
    return CONCESSIONS[category]


def unavailable(detail: str) -> Problem:
    """Identity cannot be asked now: the rider may try again shortly."""
    return Problem(503, "Service Unavailable", detail, type_=f"{PROBLEMS}/identity-unavailable",
                   headers={"Retry-After": "5"})  # fmt: skip
