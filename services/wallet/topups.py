"""Top-ups: a rider's order, a provider's signed word that it was paid, and the rules between.

A provider's notification is verified on the exact bytes received, against every active key
of that provider (rotation), with a two-sided time window read from an injectable clock.
Only then is it read as a ``Payment``; whether it credits anything is decided in ``credit``:
the order must exist, belong to that provider and match amount and currency. The credit is a
ledger transfer whose id derives from the order's, so it can happen once, however often and
in whatever order the provider notifies.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

from services.wallet import fares, providers, store
from services.wallet.events import Publish, TopUpCompleted
from services.wallet.ledger import (
    LEDGERS,
    WALLET_FLAGS,
    Account,
    AccountCode,
    Transfer,
    TransferCode,
    clearing_account,
    derived_id,
    wallet_account,
)
from services.wallet.writer import book
from shared.config import ConfigError
from shared.db import Connection
from shared.ids import new_id
from shared.money import Money

Scheme = Literal["standard-webhooks", "alipay-rsa2"]
_ALIPAY_TIME = ZoneInfo("Asia/Shanghai")  # Alipay's notify_time is Beijing time, no offset
_ALIPAY_PAID = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})


class NotificationRejected(Exception):
    """A notification we will not act on; ``reason`` is safe to log (no secrets, no body)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Provider:
    """A payment provider as configured: how it signs, with which keys, in which currency."""

    name: str
    scheme: Scheme
    currency: str
    webhook_keys: providers.StandardWebhooksKeys | None = None
    alipay_keys: providers.AlipayKeys | None = None
    app_id: str | None = None
    tolerance: timedelta = providers.DEFAULT_TOLERANCE
    webhook_url: str | None = None
    """Where we send this provider our webhooks (refund requested, settlement ready)."""
    outgoing_keys: providers.StandardWebhooksKeys | None = None
    """The secrets we sign those webhooks with: several during a rotation."""
    gateway_url: str | None = None
    """Alipay: its OpenAPI gateway, where we ask for refunds (``alipay.trade.refund``)."""
    app_private_key: str | None = field(default=None, repr=False)
    """Alipay: our application's RSA key, which signs what we ask the gateway."""

    @property
    def takes_refund_requests(self) -> bool:
        if self.scheme == "alipay-rsa2":
            return self.gateway_url is not None
        return self.webhook_url is not None

    @property
    def clearing_account(self) -> uuid.UUID:
        """The account a provider's top-ups are debited from (what the provider owes us)."""
        return clearing_account(self.name, self.currency)


@dataclass(frozen=True)
class Payment:
    """What a verified notification says: this order was paid, this much."""

    notification_id: str
    order_id: uuid.UUID
    provider_reference: str
    amount: Money


def credit_transfer_id(order_id: uuid.UUID) -> uuid.UUID:
    """The one transfer that may ever credit an order."""
    return derived_id(f"topup/{order_id}")


WALLET_CODE, CLEARING_CODE = AccountCode.RIDER_WALLET, AccountCode.PROVIDER_CLEARING


class _PaymentData(msgspec.Struct, frozen=True):
    order_id: uuid.UUID
    provider_reference: str
    amount: str
    currency: str


class _RefundData(msgspec.Struct, frozen=True):
    refund_id: uuid.UUID


class _SandboxEvent(msgspec.Struct, frozen=True):
    type: str
    data: msgspec.Raw


@dataclass(frozen=True)
class RefundSettled:
    """What a verified notification says about a refund we asked for: done, or failed."""

    notification_id: str
    refund_id: uuid.UUID
    succeeded: bool


_REFUND_TYPES = {"refund.succeeded": True, "refund.failed": False}


def read_standard_webhook(
    provider: Provider, body: bytes, headers: Mapping[str, str], now: datetime
) -> Payment | RefundSettled | None:
    """A verified notification as what it says; None for event types that move nothing."""
    assert provider.webhook_keys is not None
    try:
        providers.verify_standard_webhook(
            body, headers, provider.webhook_keys.secrets, now=now, tolerance=provider.tolerance
        )
    except providers.SignatureError as exc:
        raise NotificationRejected(exc.reason, 401) from None
    notification_id = headers.get(providers.ID_HEADER, "")
    try:
        event = msgspec.json.decode(body, type=_SandboxEvent)
        if event.type in _REFUND_TYPES:
            refund = msgspec.json.decode(event.data, type=_RefundData)
            return RefundSettled(notification_id, refund.refund_id, _REFUND_TYPES[event.type])
        if event.type != "payment.succeeded":
            return None
        data = msgspec.json.decode(event.data, type=_PaymentData)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise NotificationRejected("body is not an event we know") from None
    return Payment(
        notification_id=notification_id,
        order_id=data.order_id,
        provider_reference=data.provider_reference,
        amount=_amount(data.amount, data.currency),
    )


def read_alipay(provider: Provider, form: Mapping[str, str], now: datetime) -> Payment | None:
    """A verified, paid Alipay trade notification as a Payment; None if the trade is not paid."""
    assert provider.alipay_keys is not None
    try:
        params = providers.verify_alipay_notification(form, provider.alipay_keys.public_keys)
    except providers.SignatureError as exc:
        raise NotificationRejected(exc.reason, 401) from None
    if provider.app_id is not None and params.get("app_id") != provider.app_id:
        raise NotificationRejected("notification is for another app_id", 401)
    _check_fresh(params.get("notify_time", ""), now, provider.tolerance)
    if params.get("trade_status") not in _ALIPAY_PAID:
        return None
    try:
        order_id = uuid.UUID(params.get("out_trade_no", ""))
    except ValueError:
        raise NotificationRejected("out_trade_no is not one of our orders", 404) from None
    return Payment(
        notification_id=params.get("notify_id", ""),
        order_id=order_id,
        provider_reference=params.get("trade_no", ""),
        amount=_amount(params.get("total_amount", ""), provider.currency),
    )


def _check_fresh(notify_time: str, now: datetime, tolerance: timedelta) -> None:
    try:
        sent = datetime.strptime(notify_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_ALIPAY_TIME)
    except ValueError:
        raise NotificationRejected("notify_time is missing or malformed") from None
    if abs(now - sent) > tolerance:
        raise NotificationRejected("notify_time outside tolerance", 401)


def _amount(text: str, currency: str) -> Money:
    try:
        return Money.parse(text, currency)
    except ValueError:
        raise NotificationRejected("amount is not a valid amount of its currency") from None


class _ProviderSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scheme: Scheme
    currency: str = "CNY"
    secrets: tuple[str, ...] = ()
    public_keys: tuple[str, ...] = ()
    app_id: str | None = None
    tolerance_s: int = 300
    webhook_url: str | None = None
    outgoing_secrets: tuple[str, ...] = ()
    gateway_url: str | None = None
    app_private_key: str | None = None


def parse_providers(text: str) -> tuple[Provider, ...]:
    """Providers from ``WALLET_PROVIDERS``: JSON, name -> {scheme, currency, keys, …}."""
    try:
        specs = msgspec.json.decode(text.strip() or "{}", type=dict[str, _ProviderSpec])
        return tuple(_provider(name, spec) for name, spec in sorted(specs.items()))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"WALLET_PROVIDERS: {exc}") from None


def _provider(name: str, spec: _ProviderSpec) -> Provider:
    if spec.currency not in LEDGERS:
        raise ValueError(f"{name}: currency {spec.currency} has no ledger")
    if spec.webhook_url is not None and not spec.outgoing_secrets:
        raise ValueError(f"{name}: webhook_url needs outgoing_secrets to sign with")
    sandbox_like = spec.scheme == "standard-webhooks"
    if spec.gateway_url is not None and (
        sandbox_like or spec.app_private_key is None or spec.app_id is None
    ):
        raise ValueError(f"{name}: gateway_url is Alipay's, and needs app_id and app_private_key")
    if spec.app_private_key is not None:
        providers.sign_alipay({"check": "key"}, spec.app_private_key)  # a bad key fails now
    return Provider(
        name=name,
        scheme=spec.scheme,
        currency=spec.currency,
        webhook_keys=providers.StandardWebhooksKeys(spec.secrets) if sandbox_like else None,
        alipay_keys=None if sandbox_like else providers.AlipayKeys(spec.public_keys),
        app_id=spec.app_id,
        tolerance=timedelta(seconds=spec.tolerance_s),
        webhook_url=spec.webhook_url,
        outgoing_keys=(
            providers.StandardWebhooksKeys(spec.outgoing_secrets) if spec.outgoing_secrets else None
        ),
        gateway_url=spec.gateway_url,
        app_private_key=spec.app_private_key,
    )


class TopUpRefused(Exception):
    """A rider's top-up order cannot be made as asked (currency, bounds)."""


@dataclass(frozen=True)
class TopUpOrder:
    id: uuid.UUID
    rider: str
    account_id: uuid.UUID
    provider: str
    amount: Money


MAX_TOP_UP_MINOR = 1_000_000  # 10,000.00 in a two-decimal currency: a wallet, not a bank


async def create_order(
    conn: Connection, provider: Provider, rider: str, amount: Money
) -> TopUpOrder:
    """Open the rider's wallet if need be and record an order awaiting the provider."""
    if amount.currency != provider.currency:
        raise TopUpRefused(f"{provider.name} takes {provider.currency}, not {amount.currency}")
    if not 0 < amount.minor <= MAX_TOP_UP_MINOR:
        raise TopUpRefused(f"a top-up is between 1 and {MAX_TOP_UP_MINOR} minor units")
    account = wallet_account(rider, amount.currency)
    await store.open_accounts(
        conn, [Account(account, LEDGERS[amount.currency], WALLET_CODE, WALLET_FLAGS)]
    )
    order = TopUpOrder(new_id(), rider, account, provider.name, amount)
    await store.create_top_up(
        conn, order.id, rider, account, provider.name, amount.minor, amount.currency
    )
    return order


async def credit(
    conn: Connection,
    provider: Provider,
    payment: Payment,
    publish: Publish,
    *,
    low_balance: int = 0,
) -> str:
    """Credit the order a verified payment names, once, and take from it what the rider's
    journeys still owe (``fares.collect``); returns what was done."""
    order = await store.top_up_for_update(conn, payment.order_id)
    if order is None or order["provider"] != provider.name:
        raise NotificationRejected("no such order for this provider", 404)
    if Money(order["amount"], order["currency"].strip()) != payment.amount:
        raise NotificationRejected("amount or currency differs from the order", 422)
    if order["status"] == "paid":
        return "already credited"
    ledger = LEDGERS[payment.amount.currency]
    await store.open_accounts(conn, [Account(provider.clearing_account, ledger, CLEARING_CODE)])
    transfer = Transfer(
        id=credit_transfer_id(order["id"]),
        debit_account_id=provider.clearing_account,
        credit_account_id=order["account_id"],
        amount=payment.amount.minor,
        ledger=ledger,
        code=TransferCode.TOP_UP,
        reference=f"topup/{order['id']}",
    )
    (outcome,) = await book(conn, [transfer], publish)
    if not outcome.result.ok:  # a clearing account has no limit: this is a bug, not a refusal
        raise RuntimeError(f"the ledger refused a top-up credit: {outcome.result}")
    await store.mark_paid(conn, order["id"], payment.provider_reference, transfer.id)
    completed = TopUpCompleted(
        order_id=order["id"],
        account_id=order["account_id"],
        rider=order["rider"],
        amount=payment.amount.minor,
        currency=payment.amount.currency,
        provider=provider.name,
    )
    await publish(conn, [(str(order["account_id"]), completed)])
    # After the top-up's event: transit lets the rider through, and denies them again if a
    # fare still cannot be taken.
    await fares.collect(conn, order["account_id"], low_balance=low_balance, publish=publish)
    return "credited"
