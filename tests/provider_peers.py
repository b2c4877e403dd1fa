"""The payment providers' side in tests, played by their own libraries."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

import standardwebhooks


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(body: bytes, secret: str, *, at: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed by the reference library."""
    msg_id = f"msg_{secrets.token_hex(8)}"
    at = at or datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
