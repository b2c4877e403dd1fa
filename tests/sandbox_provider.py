"""The sandbox payment provider: a small aiohttp app outside the city that speaks the same
protocol as a real Standard Webhooks provider, signing and verifying with that standard's own
reference library (``standardwebhooks``), never with the wallet's code.

- ``POST /pay`` ``{"order_id", "amount", "currency"}``: the rider paid in the provider's app;
  the provider notifies the wallet (``payment.succeeded``), signed.
- ``POST /webhooks``: the wallet's webhooks to the provider, verified. A ``refund.requested``
  is answered by a ``refund.succeeded`` notification (or ``refund.failed`` if the sandbox is
  set to refuse refunds). The first ``refuse_refund_requests`` refund requests get a 503, to
  make the wallet retry.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import standardwebhooks
from aiohttp import web


@dataclass
class SandboxProvider:
    """The provider's state: its secret, ours, where the wallet listens, what it received."""

    name: str
    secret: str  # signs the notifications it sends
    our_secret: str  # the wallet signs its webhooks with this
    wallet_url: str = ""  # set once the wallet is listening
    refuse_refund_requests: int = 0
    refunds_fail: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/pay", self.pay)
        app.router.add_post("/webhooks", self.webhook)
        return app

    async def pay(self, request: web.Request) -> web.Response:
        order = await request.json()
        status = await self.notify("payment.succeeded", {
            "order_id": order["order_id"], "provider_reference": f"sbx-{secrets.token_hex(6)}",
            "amount": order["amount"], "currency": order["currency"],
        })  # fmt: skip
        return web.json_response({"notified": status})

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = standardwebhooks.Webhook(self.our_secret).verify(body, dict(request.headers))
        except Exception:
            return web.Response(status=401)
        if event["type"] == "refund.requested" and self.refuse_refund_requests:
            self.refuse_refund_requests -= 1
            return web.Response(status=503)
        self.received.append({**event, "id": request.headers["webhook-id"]})
        if event["type"] == "refund.requested":
            outcome = "refund.failed" if self.refunds_fail else "refund.succeeded"
            await self.notify(outcome, {"refund_id": event["data"]["refund_id"]})
        return web.Response(status=204)

    async def notify(self, event_type: str, data: dict[str, Any]) -> int:
        """Send the wallet a signed notification; returns the wallet's HTTP status."""
        body = json.dumps({"type": event_type, "data": data})
        msg_id = f"msg_{secrets.token_hex(8)}"
        now = datetime.now(UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": standardwebhooks.Webhook(self.secret).sign(msg_id, now, body),
            "Content-Type": "application/json",
        }
        url = f"{self.wallet_url}/v1/wallet/providers/{self.name}/notifications"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body.encode(), headers=headers) as answer,
        ):
            return answer.status
