"""The merged OpenAPI document as served: every service's fetched, merged, and kept fresh.

Each upstream's ``/v1/<name>/openapi.json`` is fetched at most once per refresh window; a
service that is down is shown from its last good document, or left out and named, so the
gateway always serves a document (``openapi.merge`` does the merging).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import msgspec

from services.gateway.openapi import (
    MAX_DOCUMENT_BYTES,
    STALE,
    UNAVAILABLE,
    Document,
    MergeError,
    merge,
)

log = logging.getLogger(__name__)


class Catalog:
    """The merged document, fetched from every upstream at most once per ``refresh_s``.

    A service that is down, slow or serves a document that does not merge is shown from its
    last good document (named under ``info["x-cardless-stale"]``) or left out (named under
    ``info["x-cardless-unavailable"]``): the merged document is always served.
    """

    def __init__(
        self,
        upstreams: Mapping[str, str],
        session: aiohttp.ClientSession,
        gateway_document: Mapping[str, Any],
        version: str,
        refresh_s: float = 60,
        *,
        timeout_s: float = 2.0,
        title: str = "Cardless API",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstreams = {name: base.rstrip("/") for name, base in upstreams.items()}
        self._session, self._gateway, self._version = session, gateway_document, version
        self._refresh_s, self._title, self._monotonic = refresh_s, title, monotonic
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._lock = asyncio.Lock()  # one refresh at a time; callers meanwhile await it
        self._merged: Document | None = None
        self._fetched_at = -math.inf
        self._last_good: dict[str, Document] = {}

    async def document(self) -> Document:
        """The merged document (shared: do not modify it)."""
        async with self._lock:
            if self._merged is None or self._monotonic() - self._fetched_at >= self._refresh_s:
                started = self._monotonic()
                self._merged = await self._refresh()
                self._fetched_at = started
            return self._merged

    async def _refresh(self) -> Document:
        names = sorted(self._upstreams)
        fetched = await asyncio.gather(*(self._fetch(name) for name in names))
        accepted: dict[str, Document] = {}
        stale: dict[str, str] = {}
        missing: dict[str, str] = {}
        for name, got in zip(names, fetched, strict=True):
            if isinstance(got, dict):
                reason = self._accept(accepted, name, got)
                if reason is None:
                    self._last_good[name] = got
                    continue
            else:
                reason = got
            previous = self._last_good.get(name)
            if previous is not None and self._accept(accepted, name, previous) is None:
                stale[name] = reason
            else:
                missing[name] = reason
        merged = merge(accepted, gateway=self._gateway, title=self._title, version=self._version)
        if stale:
            merged["info"][STALE] = stale
        if missing:
            merged["info"][UNAVAILABLE] = missing
        return merged

    def _accept(self, accepted: dict[str, Document], name: str, document: Document) -> str | None:
        """Add ``document`` to ``accepted`` if it merges with them; else why not."""
        try:
            merge({**accepted, name: document}, gateway=self._gateway, version=self._version)
        except MergeError as exc:
            log.warning(
                "openapi document does not merge", extra={"service": name, "error": str(exc)}
            )
            return f"does not merge: {exc}"
        except Exception as exc:  # noqa: BLE001 - one service's broken document leaves it out, not all
            log.warning("openapi document unusable", extra={"service": name, "error": repr(exc)})
            return "not a usable OpenAPI document"
        accepted[name] = document
        return None

    async def _fetch(self, name: str) -> Document | str:
        """The service's document, or a short reason (safe to publish) why there is none."""
        try:
            document = await self._get(f"{self._upstreams[name]}/v1/{name}/openapi.json")
        except TimeoutError:
            reason = "timed out"
        except aiohttp.ClientError:
            reason = "unreachable"
        except msgspec.DecodeError:
            reason = "not JSON"
        except _Unusable as exc:
            reason = str(exc)
        else:
            if isinstance(document, dict):
                return document
            reason = "not an OpenAPI document"
        log.warning("openapi document unavailable", extra={"service": name, "reason": reason})
        return reason

    async def _get(self, url: str) -> Any:
        async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as answer:
            if answer.status != 200:
                raise _Unusable(f"answered HTTP {answer.status}")
            chunks, size = [], 0
            async for chunk in answer.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise _Unusable("too large")
                chunks.append(chunk)
        return msgspec.json.decode(b"".join(chunks))


class _Unusable(Exception):
    """An upstream's answer that cannot be its document; the message says why."""
