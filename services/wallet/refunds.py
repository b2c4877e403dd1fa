"""Refunds of top-ups: a hold on the rider's wallet until the provider says it paid back.

Asking for a refund places a pending transfer (wallet -> the provider's clearing account) and
queues a signed ``refund.requested`` webhook, in one transaction. The provider's
``refund.succeeded`` posts the hold, ``refund.failed`` voids it: the money returns to the
wallet. Ids derive from the refund id, so a retried request or a replayed notice does nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.wallet import store, webhooks
from services.wallet.events import Publish
from services.wallet.ledger import (
    LEDGERS,
    Result,
    Transfer,
    TransferCode,
    TransferFlags,
    derived_id,
)
from services.wallet.topups import (
    NotificationRejected,
    Provider,
    RefundSettled,
)
from services.wallet.writer import book
from shared.db import Connection
from shared.money import Money


class RefundRefused(Exception):
    """A refund that cannot be made as asked."""

    def __init__(self, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Refund:
    id: uuid.UUID
    order_id: uuid.UUID
    amount: Money
    status: str


async def request(
    conn: Connection,
    provider: Provider,
    order_id: uuid.UUID,
    amount: Money,
    refund_id: uuid.UUID,
    publish: Publish,
) -> Refund:
    """Hold ``amount`` of a paid top-up and ask its provider to pay it back."""
    order = await store.top_up_for_update(conn, order_id)
    if order is None or order["provider"] != provider.name:
        raise RefundRefused("no such top-up", 404)
    if order["status"] != "paid":
        raise RefundRefused("the top-up has not been paid")
    if not provider.takes_refund_requests:
        raise RefundRefused(f"{provider.name} takes no refund requests from us")
    if amount.currency != order["currency"].strip():
        raise RefundRefused(f"the top-up was in {order['currency']}")
    if (
        amount.minor <= 0
        or await store.refunded_so_far(conn, order_id) + amount.minor > order["amount"]
    ):
        raise RefundRefused("a refund is positive and at most what is left of the top-up")
    hold = Transfer(
        id=derived_id(f"refund/{refund_id}"),
        debit_account_id=order["account_id"],
        credit_account_id=provider.clearing_account,
        amount=amount.minor,
        ledger=LEDGERS[amount.currency],
        code=TransferCode.REFUND,
        flags=TransferFlags.PENDING,
        reference=f"refund/{refund_id}",
    )
    (outcome,) = await book(conn, [hold], publish)
    if outcome.result is Result.EXISTS:
        raise RefundRefused("this refund was already requested", 409)
    if outcome.result is Result.EXCEEDS_CREDITS:
        raise RefundRefused("the wallet no longer holds that much")
    if outcome.result is not Result.CREATED:
        raise RuntimeError(f"the ledger refused a refund hold: {outcome.result}")
    await store.create_refund(conn, refund_id, order_id, amount.minor, hold.id)
    await webhooks.enqueue(conn, provider, *_asking(provider, order, refund_id, amount))
    return Refund(refund_id, order_id, amount, "requested")


def _asking(
    provider: Provider, order: Any, refund_id: uuid.UUID, amount: Money
) -> tuple[str, dict[str, str]]:
    """What we send the provider: a signed ``refund.requested`` webhook, or Alipay's
    ``alipay.trade.refund`` call, whose ``out_request_no`` makes a retry the same refund."""
    if provider.scheme == "alipay-rsa2":
        return webhooks.ALIPAY_REFUND, {
            "out_trade_no": str(order["id"]),
            "trade_no": order["provider_reference"],
            "out_request_no": str(refund_id),
            "refund_amount": amount.to_decimal_string(),
        }
    return "refund.requested", {
        "refund_id": str(refund_id),
        "order_id": str(order["id"]),
        "provider_reference": order["provider_reference"],
        "amount": amount.to_decimal_string(),
        "currency": amount.currency,
    }


async def settle(
    conn: Connection, provider: Provider, notice: RefundSettled, publish: Publish
) -> str:
    """The provider's word on a refund: post the hold, or void it; once."""
    refund = await store.refund_for_update(conn, notice.refund_id)
    if refund is None or refund["provider"] != provider.name:
        raise NotificationRejected("no such refund for this provider", 404)
    if refund["status"] != "requested":
        return "already settled"
    flag, status = (
        (TransferFlags.POST_PENDING_TRANSFER, "refunded")
        if notice.succeeded
        else (TransferFlags.VOID_PENDING_TRANSFER, "failed")
    )
    resolution = Transfer(
        id=derived_id(f"refund/{refund['id']}/{status}"), pending_id=refund["hold_id"], flags=flag
    )
    (outcome,) = await book(conn, [resolution], publish)
    if outcome.result is not Result.CREATED:
        raise RuntimeError(f"the ledger refused to settle refund {refund['id']}: {outcome.result}")
    await store.resolve_refund(conn, refund["id"], status, resolution.id)
    return status
