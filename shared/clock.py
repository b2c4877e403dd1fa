"""Time, injectable: code asks a Clock for now() so tests can fix or advance it."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

_log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


async def wait_for_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Pause for up to ``seconds``, returning early when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


async def wait_for_first(*events: asyncio.Event, seconds: float) -> None:
    """Pause until one of ``events`` is set, or for ``seconds`` at most."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def every(
    seconds: float,
    work: Callable[[], Awaitable[object]],
    stopping: asyncio.Event,
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
) -> None:
    """Run ``work`` now and then every ``seconds`` until ``stopping``; a failure among
    ``retry_on`` (a server away) is logged and tried again next round."""
    while not stopping.is_set():
        try:
            await work()
        except retry_on as exc:
            _log.warning("%s failed; will retry", what, extra={"error": repr(exc)})
        await wait_for_stop(stopping, seconds)


# Background work: how often, what to do, and its name for the logs.
Round = tuple[float, Callable[[], Awaitable[object]], str]


@contextlib.asynccontextmanager
async def rounds(*planned: Round, retry_on: tuple[type[BaseException], ...]) -> AsyncIterator[None]:
    """Each round ``every`` its period while the block runs (a service's ``cleanup_ctx``):
    started on entry, stopped and awaited on exit."""
    stopping = asyncio.Event()
    tasks = [
        asyncio.create_task(every(s, work, stopping, retry_on=retry_on, what=what), name=what)
        for s, work, what in planned
    ]
    try:
        yield
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
