"""The demo city's payment provider: a small aiohttp app outside the city's services that
speaks exactly a Standard Webhooks provider's protocol.

Under ``cardless up`` (with no ``WALLET_PROVIDERS`` of its own) it runs as its own process
(``cardless sandbox serve``) and the wallet takes top-ups from it as provider ``sandbox``. Both
secrets are kept in the data directory (``sandbox/``, readable by their owner only): the one
the sandbox signs its notifications with, and the one the wallet signs its webhooks to it with.

- ``POST /pay`` ``{"order_id", "amount", "currency"}``: the rider paid in the provider's app;
  the sandbox notifies the wallet, signed (``payment.succeeded``), through the gateway.
- ``POST /webhooks``: the wallet's webhooks, verified; a ``refund.requested`` is answered with
  a signed ``refund.succeeded`` notification, as a provider that refunds at once would.

``cardless sandbox pay <order> <amount>`` asks the running sandbox to pay an order. (The
tests play providers with the providers' own libraries instead: an independent peer.)
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.wallet.providers import (
    SignatureError,
    standard_webhook_headers,
    verify_standard_webhook,
)
from shared.config import OperatorError

SANDBOX = "sandbox"
TOLERANCE = timedelta(minutes=5)


class SandboxError(OperatorError):
    """The sandbox cannot do what was asked; one line saying why."""


@dataclass(frozen=True)
class Secrets:
    """The sandbox's own signing secret, and the one the wallet signs its webhooks with."""

    notifications: str
    webhooks: str

    @classmethod
    def kept_in(cls, data_dir: Path) -> Secrets:
        """The demo's secrets, made on first use and kept for the next ``up``."""
        return cls(_secret(data_dir, "notifications"), _secret(data_dir, "webhooks"))


def providers_setting(data_dir: Path, sandbox_url: str) -> str:
    """``WALLET_PROVIDERS`` for the demo city: the sandbox, and where its webhooks go."""
    kept = Secrets.kept_in(data_dir)
    spec = {
        "scheme": "standard-webhooks",
        "secrets": [kept.notifications],
        "currency": "CNY",
        "webhook_url": f"{sandbox_url}/webhooks",
        "outgoing_secrets": [kept.webhooks],
    }
    return json.dumps({SANDBOX: spec})


def _secret(data_dir: Path, name: str) -> str:
    path = data_dir / "sandbox" / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret)
    return secret


def create_app(kept: Secrets, gateway_url: str) -> web.Application:
    """The sandbox provider's app, notifying the wallet through ``gateway_url``."""
    sandbox = _Sandbox(kept, gateway_url.rstrip("/"))
    app = web.Application()
    app.cleanup_ctx.append(_session)
    app.router.add_post("/pay", sandbox.pay)
    app.router.add_post("/webhooks", sandbox.webhook)
    app.router.add_get("/readyz", sandbox.ready)
    return app


SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield


@dataclass(frozen=True)
class _Sandbox:
    kept: Secrets
    gateway_url: str

    async def ready(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def pay(self, request: web.Request) -> web.Response:
        order = await request.json()
        data = {
            "order_id": order["order_id"],
            "provider_reference": f"sbx_{secrets.token_hex(6)}",
            "amount": order["amount"],
            "currency": order["currency"],
        }
        status = await self._notify(request.app[SESSION], "payment.succeeded", data)
        return web.json_response({"notified": status}, status=200 if status < 300 else 502)

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_standard_webhook(
                body,
                request.headers,
                (self.kept.webhooks,),
                now=datetime.now(UTC),
                tolerance=TOLERANCE,
            )
        except SignatureError:
            return web.Response(status=401)
        event = json.loads(body)
        if event.get("type") == "refund.requested":
            refund = {"refund_id": event["data"]["refund_id"]}
            await self._notify(request.app[SESSION], "refund.succeeded", refund)
        return web.Response(status=204)

    async def _notify(
        self, session: aiohttp.ClientSession, event_type: str, data: dict[str, Any]
    ) -> int:
        """Send the wallet a signed notification; the wallet's HTTP status."""
        body = json.dumps({"type": event_type, "data": data}).encode()
        msg_id = f"msg_{secrets.token_hex(8)}"
        headers = standard_webhook_headers(self.kept.notifications, msg_id, int(time.time()), body)
        url = f"{self.gateway_url}/v1/wallet/providers/{SANDBOX}/notifications"
        headers["Content-Type"] = "application/json"
        async with session.post(url, data=body, headers=headers) as answer:
            return answer.status


def serve(data_dir: Path, gateway_url: str, port: int) -> None:
    """Run the sandbox provider until SIGINT/SIGTERM (``cardless sandbox serve``); its address
    is left in the data directory for ``cardless sandbox pay``."""
    app = create_app(Secrets.kept_in(data_dir), gateway_url)
    (data_dir / "sandbox" / "url").write_text(f"http://127.0.0.1:{port}")
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def url_in(data_dir: Path) -> str:
    """Where the demo's sandbox listens, as the running ``up`` left it."""
    try:
        return (data_dir / "sandbox" / "url").read_text().strip()
    except OSError:
        raise SandboxError(
            f"no sandbox running for {data_dir}; start the city: cardless up"
        ) from None


def pay(sandbox_url: str, order_id: str, amount: str, currency: str) -> dict[str, Any]:
    """Ask the running sandbox to pay an order, as the rider would in the provider's app."""
    order = {"order_id": order_id, "amount": amount, "currency": currency}
    request = urllib.request.Request(  # noqa: S310 - the demo's own sandbox
        f"{sandbox_url.rstrip('/')}/pay",
        data=json.dumps(order).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as error:
        raise SandboxError(f"the wallet refused the payment: {error.read().decode()}") from None
    except OSError as error:
        raise SandboxError(f"cannot reach the sandbox at {sandbox_url}: {error}") from None
