"""Requests we send to providers: written with the change that causes them, signed at each
attempt, retried with capped exponential backoff, every attempt logged.

Two kinds: Standard Webhooks (``refund.requested``), delivered when the provider answers 2xx
and settled later by its own signed notification; and Alipay's OpenAPI ``alipay.trade.refund``,
whose signed synchronous answer settles the refund at once (``on_refund``, in the transaction
that records the attempt). A delivery keeps its id (``webhook-id``; Alipay: the refund's
``out_request_no``) across attempts, so the provider can deduplicate. Senders claim due
deliveries with ``SKIP LOCKED`` and push the next attempt ahead before sending, so two wallet
processes never send the same attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import msgspec

from services.wallet import providers
from services.wallet.topups import Provider, RefundSettled
from shared.clock import Clock, wait_for_stop
from shared.db import SERVER_FAILURES, Connection
from shared.ids import new_id

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
       next_attempt_at = now() + make_interval(secs => $2)
  FROM (SELECT id FROM webhook_deliveries
         WHERE status = 'pending' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
 WHERE d.id = due.id
RETURNING d.id, d.provider, d.url, d.event_type, d.body, d.attempts"""
ALIPAY_REFUND = "alipay.trade.refund"
_ALIPAY_ANSWER = "alipay_trade_refund_response"
_ALIPAY_ZONE = ZoneInfo("Asia/Shanghai")  # Alipay reads a request's timestamp in Beijing time
# Alipay's answers that say "not now" rather than "no": asked again, same out_request_no.
_ALIPAY_RETRY = frozenset({"ACQ.SYSTEM_ERROR", "ACQ.REFUND_FEE_ERROR", "aop.ACQ.SYSTEM_ERROR"})

# Settles a refund from the provider's answer, in the caller's transaction.
OnRefund = Callable[[Connection, Provider, RefundSettled], Awaitable[str]]


async def enqueue(conn: Connection, provider: Provider, event_type: str, data: Any) -> uuid.UUID:
    """Record a request to send, in the caller's transaction."""
    alipay = event_type == ALIPAY_REFUND
    url = provider.gateway_url if alipay else provider.webhook_url
    if url is None:
        raise ValueError(f"{provider.name} takes no {event_type} from us")
    delivery = new_id()
    # Alipay's biz_content is the JSON of the call's fields; a webhook wraps them in an event.
    body = msgspec.json.encode(data if alipay else {"type": event_type, "data": data})
    await conn.execute(
        "INSERT INTO webhook_deliveries (id, provider, url, event_type, body)"
        " VALUES ($1, $2, $3, $4, $5)",
        delivery,
        provider.name,
        url,
        event_type,
        body,
    )
    return delivery


@dataclass(frozen=True)
class Backoff:
    """Attempt n waits base * 2**(n-1), jittered, capped; after ``attempts`` it gives up."""

    base_s: float = 1.0
    cap_s: float = 3600.0
    attempts: int = 12
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return float(random.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


class WebhookSender:
    """Sends due deliveries until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        providers_: dict[str, Provider],
        clock: Clock,
        backoff: Backoff = Backoff(),
        on_refund: OnRefund | None = None,
    ) -> None:
        self.pool, self.providers, self.clock, self.backoff = pool, providers_, clock, backoff
        self.on_refund = on_refund

    async def run(self, stopping: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.backoff.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stopping.is_set():
                try:
                    sent = await self.send_due(session)
                except SERVER_FAILURES as exc:
                    log.warning("webhook sending failed; will retry", extra={"error": repr(exc)})
                    sent = 0
                if not sent:
                    await wait_for_stop(stopping, min(1.0, self.backoff.base_s))

    async def send_due(self, session: aiohttp.ClientSession, limit: int = 20) -> int:
        """One round: claim what is due, send it, record each attempt; returns how many."""
        lease = self.backoff.timeout_s * 2  # no other sender retries while this one is trying
        rows = await self.pool.fetch(_CLAIM, limit, lease)
        await asyncio.gather(*(self._attempt(session, row) for row in rows))
        return len(rows)

    async def _attempt(self, session: aiohttp.ClientSession, row: asyncpg.Record) -> None:
        provider = self.providers.get(row["provider"])
        status, error, settled = None, None, None
        try:
            if provider is None:
                error = "provider no longer configured"
            elif row["event_type"] == ALIPAY_REFUND:
                status, settled, error = await self._ask_alipay(session, provider, row)
            elif provider.outgoing_keys is None:
                error = "provider no longer configured for webhooks"
            else:
                status = await self._post_webhook(session, provider.outgoing_keys, row)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        await self._record(row, status, error, provider, settled)

    async def _post_webhook(
        self,
        session: aiohttp.ClientSession,
        keys: providers.StandardWebhooksKeys,
        row: asyncpg.Record,
    ) -> int:
        headers = providers.standard_webhook_headers(
            keys.secrets, str(row["id"]), self.clock.now(), row["body"]
        )
        headers["Content-Type"] = "application/json"
        async with session.post(row["url"], data=row["body"], headers=headers) as answer:
            return answer.status

    async def _ask_alipay(
        self, session: aiohttp.ClientSession, provider: Provider, row: asyncpg.Record
    ) -> tuple[int | None, RefundSettled | None, str | None]:
        """Call ``alipay.trade.refund``; the refund's outcome if its signed answer gives one."""
        if provider.app_private_key is None or provider.alipay_keys is None:
            return None, None, "provider no longer configured for Alipay calls"
        stamp = self.clock.now().astimezone(_ALIPAY_ZONE).strftime("%Y-%m-%d %H:%M:%S")
        form = providers.sign_alipay(
            {"app_id": provider.app_id or "", "method": ALIPAY_REFUND, "charset": "utf-8",
             "timestamp": stamp, "version": "1.0", "biz_content": row["body"].decode()},
            provider.app_private_key,
            keep_sign_type=True,
        )  # fmt: skip
        async with session.post(row["url"], data=form) as answer:
            status, text = answer.status, await answer.text()
        try:
            body = providers.verify_alipay_response(
                text, _ALIPAY_ANSWER, provider.alipay_keys.public_keys
            )
        except providers.SignatureError as exc:
            return status, None, f"answer refused: {exc.reason}"
        code, sub_code = str(body.get("code")), str(body.get("sub_code", ""))
        if code != "10000" and (code == "20000" or sub_code in _ALIPAY_RETRY):
            return status, None, f"alipay {code} {sub_code}"  # asked again later
        refund_id = uuid.UUID(msgspec.json.decode(row["body"])["out_request_no"])
        answered = RefundSettled(f"alipay:{row['id']}", refund_id, succeeded=code == "10000")
        return status, answered, None if code == "10000" else f"alipay {code} {sub_code}"

    async def _record(
        self,
        row: asyncpg.Record,
        status: int | None,
        error: str | None,
        provider: Provider | None,
        settled: RefundSettled | None,
    ) -> None:
        delivered = settled is not None or (
            error is None and status is not None and 200 <= status < 300
        )
        gave_up = not delivered and row["attempts"] >= self.backoff.attempts
        outcome = "delivered" if delivered else "failed" if gave_up else "pending"
        async with self.pool.acquire() as conn, conn.transaction():
            if settled is not None and provider is not None and self.on_refund is not None:
                await self.on_refund(conn, provider, settled)
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, http_status, error)"
                " VALUES ($1, $2, $3, $4)",
                row["id"],
                row["attempts"],
                status,
                error,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET status = $2,"
                " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,"
                " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                row["id"],
                outcome,
                self.backoff.delay(row["attempts"]),
            )
        log.log(
            logging.INFO if delivered else logging.WARNING,
            "webhook attempt",
            extra={"provider": row["provider"], "attempt": row["attempts"], "outcome": outcome,
                   "http_status": status, "error": error},
        )  # fmt: skip
