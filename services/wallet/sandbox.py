"""The demo city's payment provider: a sandbox that pays what it is asked, over the real protocol.

Under ``cardless up`` (with no ``WALLET_PROVIDERS`` of its own) the wallet takes top-ups from a
provider named ``sandbox`` whose Standard Webhooks secret is kept in the data directory
(``sandbox/secret``, readable by its owner only). ``cardless sandbox pay <order>`` plays the
provider: it signs a ``payment.succeeded`` notification with that secret and sends it through
the gateway, exactly as a real provider's server would.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.wallet.providers import standard_webhook_headers
from shared.money import Money

SANDBOX = "sandbox"


class SandboxError(Exception):
    """The sandbox cannot pay; one line saying why."""


def providers_setting(data_dir: Path) -> str:
    """``WALLET_PROVIDERS`` for the demo city: the sandbox, its secret made on first use."""
    spec = {"scheme": "standard-webhooks", "secrets": [_secret(data_dir)], "currency": "CNY"}
    return json.dumps({SANDBOX: spec})


def _secret(data_dir: Path) -> str:
    path = data_dir / "sandbox" / "secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret)
    return secret


def pay(data_dir: Path, gateway_url: str, order_id: str, amount: Money) -> tuple[int, Any]:
    """Tell the wallet, signed, that the rider paid ``amount`` for ``order_id``."""
    if not (data_dir / "sandbox" / "secret").exists():
        raise SandboxError(f"no sandbox secret in {data_dir}; start the city with `cardless up`")
    data = {
        "order_id": order_id,
        "provider_reference": f"sbx_{secrets.token_hex(6)}",
        "amount": amount.to_decimal_string(),
        "currency": amount.currency,
    }
    body = json.dumps({"type": "payment.succeeded", "data": data}).encode()
    headers = standard_webhook_headers(
        _secret(data_dir), f"msg_{secrets.token_hex(8)}", int(time.time()), body
    )
    url = f"{gateway_url.rstrip('/')}/v1/wallet/providers/{SANDBOX}/notifications"
    request = urllib.request.Request(  # noqa: S310 - the operator's own gateway
        url, data=body, method="POST", headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        raise SandboxError(f"cannot reach the gateway at {url}: {error}") from None
