"""The route table: the one place that says who may call what, and how it is forwarded.

Every public path of every service is a row here. A path that no row matches is a 404 at the
gateway; nothing reaches a service unless a row lets it. Services check scopes and ownership
again (decision 006), so a row that is too generous still meets a second check.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024

# Rate-limit classes, each with its limit in configuration (``GATEWAY_RATE_LIMITS``). When
# Redis cannot be asked, ``taps`` pass (gates must never stall) and the rest are refused:
# money never moves unmetered.
FAIL_OPEN_CLASSES = frozenset({"taps"})


@dataclass(frozen=True)
class Route:
    """One public route: where it goes and what a caller needs to get there."""

    method: str
    path: str  # an aiohttp path template, as the service itself declares it
    upstream: str
    # Any one of these scopes admits the caller; ``None``: no token (the service
    # authenticates the caller itself, as with providers' signed notifications).
    scopes: tuple[str, ...] | None
    rate_class: str = "default"
    timeout_s: float = 10.0
    max_body_bytes: int = 64 * KIB
    # A path parameter that must equal the caller's subject, unless it holds ``owner_exempt``.
    owner: str | None = None
    owner_exempt: str | None = None

    @property
    def public(self) -> bool:
        return self.scopes is None


W = "/v1/wallet"
ID = "/v1/identity"
TR = "/v1/transit"
STATEMENT = "/{day}.{format:csv|json}"

ROUTES: tuple[Route, ...] = (
    Route("GET", f"{W}/openapi.json", "wallet", None),
    Route("GET", f"{W}/balance", "wallet", ("wallet:read",), rate_class="read"),
    Route("GET", f"{W}/statement", "wallet", ("wallet:read",), rate_class="read"),
    Route("POST", f"{W}/topups", "wallet", ("wallet:topup",), rate_class="money"),
    Route("GET", f"{W}/topups/{{order_id}}", "wallet", ("wallet:read",), rate_class="read"),
    Route(
        "POST", f"{W}/topups/{{order_id}}/refunds", "wallet", ("wallet:refund",), rate_class="money"
    ),
    # Providers sign their notifications; the wallet verifies the signature on the bytes.
    Route(
        "POST", f"{W}/providers/{{provider}}/notifications", "wallet", None, rate_class="provider"
    ),
    Route(
        "GET",
        f"{W}/providers/{{provider}}/statements{STATEMENT}",
        "wallet",
        ("wallet:settlement", "wallet:finance"),
        timeout_s=30.0,
        owner="provider",
        owner_exempt="wallet:finance",
    ),
    Route(
        "POST",
        f"{W}/providers/{{provider}}/bills/{{day}}",
        "wallet",
        ("wallet:finance",),
        timeout_s=30.0,
        max_body_bytes=KIB * KIB,  # a provider's daily bill
    ),
    Route(
        "GET",
        f"{W}/operators/{{operator}}/statements{STATEMENT}",
        "wallet",
        ("wallet:finance",),
        timeout_s=30.0,
    ),
    # Identity: the issuer's public documents, the registry office, agencies, citizens.
    Route("GET", f"{ID}/openapi.json", "identity", None),
    Route("GET", f"/.well-known/jwt-vc-issuer{ID}", "identity", None, rate_class="read"),
    Route("GET", f"{ID}/types/city-id", "identity", None, rate_class="read"),
    Route("GET", f"{ID}/status-lists/{{list_id}}", "identity", None, rate_class="read"),
    Route("GET", f"{ID}/audit/checkpoint", "identity", None, rate_class="read"),
    Route("POST", f"{ID}/credentials", "identity", ("identity:issue",)),
    Route("GET", f"{ID}/credentials/{{credential_id}}", "identity", ("identity:admin",)),
    Route("POST", f"{ID}/credentials/{{credential_id}}/status", "identity", ("identity:admin",)),
    Route("POST", f"{ID}/requests", "identity", ("identity:verify",)),
    Route("GET", f"{ID}/requests/{{request_id}}", "identity", ("identity:verify",)),
    # The citizen's phone answers a request: its key-binding JWT is the proof, not a token.
    Route("POST", f"{ID}/presentations", "identity", None, max_body_bytes=32 * KIB),
    Route("GET", f"{ID}/audit", "identity", ("identity:holder",), rate_class="read"),
    # Transit: riders' phones enrol and read their journeys; gates fetch keys and upload taps.
    Route("GET", f"{TR}/openapi.json", "transit", None),
    Route("POST", f"{TR}/credentials", "transit", ("transit:ride",)),
    Route("GET", f"{TR}/credentials", "transit", ("transit:ride",), rate_class="read"),
    Route("POST", f"{TR}/concessions", "transit", ("transit:ride",)),
    Route("POST", f"{TR}/concessions/{{concession_id}}/claim", "transit", ("transit:ride",)),
    Route("GET", f"{TR}/issuer-keys", "transit", None, rate_class="read"),
    Route(
        "POST",
        f"{TR}/taps",
        "transit",
        ("transit:taps",),
        rate_class="taps",
        max_body_bytes=KIB * KIB,  # a gate's batch after a while offline
    ),
    Route("GET", f"{TR}/journeys", "transit", ("transit:ride",), rate_class="read"),
    Route("GET", f"{TR}/deny-list", "transit", ("transit:taps",), rate_class="taps"),
)
