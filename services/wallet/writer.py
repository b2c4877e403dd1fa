"""One writer per shard: concurrent requests coalesce into one batch, one transaction.

Callers ``submit`` a list of transfers (a linked chain stays whole and in order) and await
their outcomes. Each shard runs one batch at a time on its own connection; whatever arrives
while a batch is being committed forms the next one, so under load a commit (an fsync) is
shared by thousands of transfers and with no load a lone transfer goes at once. A wallet's
transfers always go to the same shard, in the order they were submitted.

The events of created transfers are written to the outbox in the batch's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from services.wallet import store
from services.wallet.events import Publish, expiry_events, ledger_events
from services.wallet.ledger import Outcome, Transfer
from shared.db import SERVER_FAILURES, Connection, in_transaction

log = logging.getLogger(__name__)


async def book(conn: Connection, transfers: Sequence[Transfer], publish: Publish) -> list[Outcome]:
    """Apply transfers in the caller's transaction and publish what the ledger did: the
    transfers it created, and the holds it expired on the way. Every use case books so."""
    outcomes = await store.create_transfers(conn, transfers)
    events = ledger_events(outcomes) + expiry_events(await store.expired_holds(conn))
    if events:
        await publish(conn, events)
    return outcomes


class LedgerUnavailable(Exception):
    """A batch failed (its connection died, the database went away): its outcome is unknown
    to this process, so retry with the same transfer ids; they apply at most once."""


@dataclass(eq=False)
class _Submission:
    transfers: Sequence[Transfer]
    done: asyncio.Future[list[Outcome]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LedgerWriter:
    """Coalesces submissions per shard into batches of at most ``max_batch`` transfers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publish: Publish,
        *,
        shards: int = 2,
        max_batch: int = 4000,
        idle_s: float = 1.0,
    ) -> None:
        self.pool, self.publish, self.max_batch, self.idle_s = pool, publish, max_batch, idle_s
        self._queues: list[asyncio.Queue[_Submission]] = [asyncio.Queue() for _ in range(shards)]
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, transfers: Sequence[Transfer]) -> list[Outcome]:
        """Apply ``transfers`` (ids distinct, chains whole) and return their outcomes."""
        if not transfers:
            return []
        if not self._tasks:
            raise RuntimeError("the ledger writer is not running")
        submission = _Submission(transfers)
        self._queues[self._shard(transfers[0])].put_nowait(submission)
        return await submission.done

    def _shard(self, first: Transfer) -> int:
        key = first.debit_account_id or first.pending_id or first.id
        return zlib.crc32(key.bytes) % len(self._queues)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(queue), name=f"ledger-writer-{n}")
            for n, queue in enumerate(self._queues)
        ]

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        for queue in self._queues:
            await queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, queue: asyncio.Queue[_Submission]) -> None:
        carried: list[_Submission] = []
        while True:
            if not carried:
                try:
                    carried = [await asyncio.wait_for(queue.get(), self.idle_s)]
                except TimeoutError:
                    await self._sweep()
                    continue
            batch, carried = carried, []
            carried = self._fill(queue, batch)
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    def _fill(
        self, queue: asyncio.Queue[_Submission], batch: list[_Submission]
    ) -> list[_Submission]:
        """Take what is waiting into ``batch``; a submission that does not fit is returned."""
        ids = {t.id for s in batch for t in s.transfers}
        size = len(ids)
        while not queue.empty():
            submission = queue.get_nowait()
            more = {t.id for t in submission.transfers}
            # A batch holds each id once: a repeated id waits for the next batch, and answers
            # "exists" there, as it would have had it come a moment later.
            if size + len(more) > self.max_batch or not ids.isdisjoint(more):
                return [submission]
            batch.append(submission)
            ids |= more
            size += len(more)
        return []

    async def _sweep(self) -> None:
        """An empty batch: it releases holds past their timeout (on database time)."""
        try:
            await in_transaction(self.pool, lambda conn: book(conn, [], self.publish))
        except SERVER_FAILURES as exc:
            log.warning("expiring holds failed; will retry", extra={"error": repr(exc)})

    async def _commit(self, batch: list[_Submission]) -> None:
        transfers = [t for s in batch for t in s.transfers]

        async def work(conn: Connection) -> list[Outcome]:
            return await book(conn, transfers, self.publish)

        try:
            outcomes = await in_transaction(
                self.pool, work, retry_on=(asyncpg.UniqueViolationError,)
            )
        except Exception as exc:  # noqa: BLE001 - every waiter learns that its batch failed
            log.warning(
                "ledger batch failed", extra={"transfers": len(transfers), "error": repr(exc)}
            )
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_exception(LedgerUnavailable(repr(exc)))
            return
        start = 0
        for submission in batch:
            end = start + len(submission.transfers)
            if not submission.done.done():
                submission.done.set_result(outcomes[start:end])
            start = end
