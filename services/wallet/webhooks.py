"""Webhooks we send to providers: written with the change that causes them, signed to
Standard Webhooks at each attempt, retried with capped exponential backoff, every attempt logged.

A delivery keeps its id (``webhook-id``) across attempts, so the provider can deduplicate.
Senders claim due deliveries with ``SKIP LOCKED`` and push the next attempt ahead before
sending, so two wallet processes never send the same attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec

from services.wallet import providers
from services.wallet.topups import Provider
from shared.clock import Clock, wait_for_stop
from shared.db import Connection
from shared.ids import new_id

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
       next_attempt_at = now() + make_interval(secs => $2)
  FROM (SELECT id FROM webhook_deliveries
         WHERE status = 'pending' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
 WHERE d.id = due.id
RETURNING d.id, d.provider, d.url, d.body, d.attempts"""


async def enqueue(conn: Connection, provider: Provider, event_type: str, data: Any) -> uuid.UUID:
    """Record a webhook to send, in the caller's transaction."""
    if provider.webhook_url is None:
        raise ValueError(f"{provider.name} takes no webhooks")
    delivery = new_id()
    body = msgspec.json.encode({"type": event_type, "data": data})
    await conn.execute(
        "INSERT INTO webhook_deliveries (id, provider, url, event_type, body)"
        " VALUES ($1, $2, $3, $4, $5)",
        delivery,
        provider.name,
        provider.webhook_url,
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
    ) -> None:
        self.pool, self.providers, self.clock, self.backoff = pool, providers_, clock, backoff

    async def run(self, stopping: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.backoff.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stopping.is_set():
                try:
                    sent = await self.send_due(session)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
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
        status, error = None, None
        if provider is None or provider.outgoing_keys is None:
            error = "provider no longer configured for webhooks"
        else:
            headers = providers.standard_webhook_headers(
                provider.outgoing_keys.secrets, str(row["id"]), self.clock.now(), row["body"]
            )
            headers["Content-Type"] = "application/json"
            try:
                async with session.post(row["url"], data=row["body"], headers=headers) as answer:
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = type(exc).__name__
        await self._record(row, status, error)

    async def _record(self, row: asyncpg.Record, status: int | None, error: str | None) -> None:
        delivered = status is not None and 200 <= status < 300
        gave_up = not delivered and row["attempts"] >= self.backoff.attempts
        outcome = "delivered" if delivered else "failed" if gave_up else "pending"
        async with self.pool.acquire() as conn, conn.transaction():
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
