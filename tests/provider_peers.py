"""The payment providers' side in tests, played by their own libraries."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import standardwebhooks
from alipay import AliPay
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


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


def rsa_pem_pair() -> tuple[str, str]:
    """A fresh RSA key pair as PEM (private PKCS #8, public SPKI), as Alipay's console gives."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def alipay_trade_notification(
    *,
    app_id: str,
    out_trade_no: str,
    private_key: str,
    public_key: str,
    status: str = "TRADE_SUCCESS",
    amount: str = "12.50",
    sent: datetime | None = None,
) -> dict[str, str]:
    """A trade notification as Alipay sends it, signed by Alipay's own SDK."""
    sent = (sent or datetime.now(UTC)).astimezone(ZoneInfo("Asia/Shanghai"))
    fields = {
        "app_id": app_id,
        "notify_id": secrets.token_hex(16),
        "notify_time": sent.strftime("%Y-%m-%d %H:%M:%S"),
        "notify_type": "trade_status_sync",
        "out_trade_no": out_trade_no,
        "trade_no": f"2026112522001{secrets.randbelow(10**8):08d}",
        "trade_status": status,
        "total_amount": amount,
        "charset": "utf-8",
        "version": "1.0",
    }
    peer = AliPay(
        appid=app_id,
        app_notify_url=None,
        app_private_key_string=private_key,
        alipay_public_key_string=public_key,
    )
    signed = dict(parse_qsl(peer.sign_data(fields), keep_blank_values=True))
    return {**fields, "sign": signed["sign"], "sign_type": "RSA2"}
