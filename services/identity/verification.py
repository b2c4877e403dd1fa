"""An agency's check of a citizen's ID: the presentation against the request it answers.

Pure: the issuers' keys and the credentials' statuses are given, so the whole check runs (and
is benchmarked) without I/O. Every refusal has a stable reason code the agency, the citizen's
audit log and the metrics share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.identity import dcql, sdjwt
from services.identity.statuslist import INVALID, SUSPENDED, Reference, StatusListError
from shared.auth import VerificationKey

# The reasons beyond sdjwt.REASONS: the request, the answer's shape, the status, the query.
REASONS = sdjwt.REASONS | {
    "request_expired",
    "request_answered",
    "vp_token",
    "revoked",
    "suspended",
    "status_unavailable",
    "credential_type",
    "claims_missing",
    "claim_value",
}


@dataclass(frozen=True)
class Request:
    """A pending verification request, as the answer is checked against it."""

    request_id: str
    agency: str
    purpose: str
    query: dcql.Query
    nonce: str
    expires_at: int


@dataclass(frozen=True)
class Outcome:
    """What the check concluded: the asked-for claims, or the reason for refusal."""

    reason: str | None = None
    detail: str | None = None
    claims: dict[str, Any] | None = None
    status: Reference | None = None  # the credential's place in a status list, if it has one
    holder_jwk: dict[str, Any] | None = None

    @property
    def verified(self) -> bool:
        return self.reason is None


def refused(reason: str, detail: str) -> Outcome:
    return Outcome(reason=reason, detail=detail)


class IssuerKeys:
    """The keys credentials may be signed with: the city's own (by kid) and trusted issuers'."""

    def __init__(self, own_issuer: str) -> None:
        self.own_issuer = own_issuer
        self._keys: dict[tuple[str, str], sdjwt.IssuerKey] = {}

    def update(self, issuer: str, keys: tuple[VerificationKey, ...]) -> None:
        """Replace one issuer's keys (the city's after each keyring refresh)."""
        fresh = {(issuer, k.kid): sdjwt.IssuerKey(k.key, k.algorithm) for k in keys}
        kept = {name: key for name, key in self._keys.items() if name[0] != issuer}
        self._keys = kept | fresh

    def __call__(
        self, header: Mapping[str, Any], payload: Mapping[str, Any]
    ) -> sdjwt.IssuerKey | None:
        iss, kid = payload.get("iss"), header.get("kid")
        if not isinstance(iss, str) or not isinstance(kid, str):
            return None
        return self._keys.get((iss, kid))


class Verifier:
    """Checks answers to requests; ``status_of`` reads a cached status list."""

    def __init__(
        self,
        *,
        client_id: str,
        issuer_keys: IssuerKeys,
        status_of: Callable[[Reference], int],
        policy: sdjwt.Policy,
    ) -> None:
        self.client_id, self.issuer_keys = client_id, issuer_keys
        self.status_of, self.policy = status_of, policy

    def check(self, vp_token: Any, request: Request, now: int) -> Outcome:
        """The whole check, in the order that reveals least to a caller who fails it."""
        if now >= request.expires_at:
            return refused("request_expired", "the request has expired; ask the agency again")
        presentation = _one_presentation(vp_token, request.query.id)
        if presentation is None:
            return refused(
                "vp_token",
                f"vp_token: expected {{{request.query.id!r}: [one presentation]}}",
            )
        try:
            verified = sdjwt.verify(
                presentation,
                issuer_keys=self.issuer_keys,
                nonce=request.nonce,
                audience=self.client_id,
                now=now,
                policy=self.policy,
            )
        except sdjwt.Rejected as rejected:
            return refused(rejected.reason, rejected.detail)
        return self._answer(verified, request)

    def _answer(self, verified: sdjwt.Verified, request: Request) -> Outcome:
        claims = verified.claims
        status = claims.get("status")
        reference = None
        if status is not None or claims.get("iss") == self.issuer_keys.own_issuer:
            try:
                reference = Reference.from_claim(status)
                current = self.status_of(reference)
            except StatusListError as error:
                return refused("status_unavailable", f"the credential's status: {error.reason}")
            if current == INVALID:
                return refused("revoked", "the credential has been revoked")
            if current == SUSPENDED:
                return refused("suspended", "the credential is suspended")
        try:
            answer = dcql.answer(claims, request.query)
        except dcql.Unmet as unmet:
            return refused(unmet.reason, unmet.detail)
        return Outcome(claims=answer, status=reference, holder_jwk=verified.holder_jwk)


def _one_presentation(vp_token: Any, query_id: str) -> str | None:
    """OpenID4VP 1.0 §8.1: ``vp_token`` maps the credential query's id to presentations."""
    if not isinstance(vp_token, dict) or len(vp_token) != 1 or query_id not in vp_token:
        return None
    presentations = vp_token[query_id]
    if not isinstance(presentations, list) or len(presentations) != 1:
        return None
    presentation = presentations[0]
    return presentation if isinstance(presentation, str) else None
