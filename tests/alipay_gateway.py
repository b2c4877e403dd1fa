"""Alipay's OpenAPI gateway, as far as refunds go: a party outside the city, played in tests.

It checks a merchant's ``alipay.trade.refund`` with Alipay's own Python SDK (python-alipay-sdk,
an independent implementation of RSA2), keeps refunds by ``out_request_no`` (a repeat is the
same refund, ``fund_change: N``), refuses more than the trade's amount, and answers signed
with Alipay's key the way the gateway does: ``{"alipay_trade_refund_response": {...},
"sign": "..."}``, the signature over the response node's exact text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from alipay import AliPay

NODE = "alipay_trade_refund_response"


@dataclass
class AlipayGateway:
    app_id: str
    merchant_public_key: str  # the app's key, as registered with Alipay
    alipay_private_key: str
    alipay_public_key: str
    trades: dict[str, Decimal] = field(default_factory=dict)  # out_trade_no -> paid
    refunds: dict[str, Decimal] = field(default_factory=dict)  # out_request_no -> amount
    busy_answers: int = 0  # how many calls get ACQ.SYSTEM_ERROR before the gateway works
    calls: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/gateway.do", self._gateway)
        return app

    async def _gateway(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = dict(await request.post())
        params = {k: str(v) for k, v in form.items()}
        if not self._signed_by_merchant(params):
            return self._answer({"code": "40002", "msg": "Invalid Arguments",
                                 "sub_code": "isv.invalid-signature"})  # fmt: skip
        if self.busy_answers > 0:
            self.busy_answers -= 1
            return self._answer({"code": "20000", "msg": "Service Currently Unavailable",
                                 "sub_code": "ACQ.SYSTEM_ERROR"})  # fmt: skip
        return self._answer(self._refund(json.loads(params["biz_content"])))

    def _signed_by_merchant(self, params: dict[str, str]) -> bool:
        """The merchant's signature, checked by the SDK: every parameter but ``sign``,
        ``sign_type`` included (OpenAPI requests keep it), sorted, with the app's key."""
        if params.get("app_id") != self.app_id or params.get("method") != "alipay.trade.refund":
            return False
        sign = params.pop("sign", "")
        peer = AliPay(
            appid=self.app_id,
            app_notify_url=None,
            app_private_key_string=self.alipay_private_key,
            alipay_public_key_string=self.merchant_public_key,
        )
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        return bool(peer._verify(content, sign))

    def _refund(self, asked: dict[str, Any]) -> dict[str, Any]:
        trade, request_no = asked.get("out_trade_no", ""), asked.get("out_request_no", "")
        amount = Decimal(asked.get("refund_amount", "0"))
        base = {"out_trade_no": trade, "trade_no": asked.get("trade_no", "")}
        if trade not in self.trades:
            return {"code": "40004", "msg": "Business Failed",
                    "sub_code": "ACQ.TRADE_NOT_EXIST", **base}  # fmt: skip
        if request_no in self.refunds:  # the same refund asked again: done already
            return {"code": "10000", "msg": "Success", "fund_change": "N",
                    "refund_fee": str(self.refunded(trade)), **base}  # fmt: skip
        if amount <= 0 or self.refunded(trade) + amount > self.trades[trade]:
            return {"code": "40004", "msg": "Business Failed",
                    "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", **base}  # fmt: skip
        self.refunds[f"{trade}/{request_no}"] = amount
        self.refunds[request_no] = amount
        return {"code": "10000", "msg": "Success", "fund_change": "Y",
                "refund_fee": str(self.refunded(trade)), **base}  # fmt: skip

    def refunded(self, trade: str) -> Decimal:
        return sum(
            (amount for key, amount in self.refunds.items() if key.startswith(f"{trade}/")),
            Decimal(0),
        )

    def _answer(self, node: dict[str, Any]) -> web.Response:
        """Signed as the gateway signs: the node's JSON text exactly as sent, with Alipay's key."""
        text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        signer = AliPay(
            appid=self.app_id,
            app_notify_url=None,
            app_private_key_string=self.alipay_private_key,
            alipay_public_key_string=self.alipay_public_key,
        )
        body = f'{{"{NODE}":{text},"sign":"{signer._sign(text)}"}}'
        return web.Response(text=body, content_type="application/json")
