"""HTTP conventions every service shares: problem+json errors, request context, limits, health.

Errors are answered as ``application/problem+json`` (RFC 9457) from one middleware: a service
raises ``Problem`` (or maps its own exceptions through ``error_map``) and never builds an error
response by hand.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import context
from shared.ids import new_id
from shared.metrics import Metrics

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[str | None]]
B = TypeVar("B")
MAX_HEADER_FIELD_BYTES = 32 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

PROBLEMS = "https://cardless.dev/problems/"
MALFORMED_JSON = PROBLEMS + "malformed-json"
INVALID_BODY = PROBLEMS + "invalid-body"

METRICS = web.AppKey("metrics", Metrics)
# Whether to write one JSON access-log line a request (the gateway does; services need not).
ACCESS_LOG = web.AppKey("access_log", bool)
access_log = logging.getLogger("cardless.access")
# Who the request was for, once authenticated: the access log names the client, never a token.
CLIENT_ID = web.RequestKey("client_id", str)
READINESS = web.AppKey("readiness", dict[str, ReadinessCheck])


class Problem(Exception):
    """An error answered to the client as problem details."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers, self.extensions = dict(headers or {}), extensions

    def response(self, instance: str | None = None) -> web.Response:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return web.json_response(
            body, status=self.status, headers=self.headers, content_type=PROBLEM_JSON
        )


def error_middleware(error_map: Mapping[type[Exception], tuple[int, str]] = {}) -> Any:
    """Answer every error as problem details; ``error_map``: domain exception -> status, title."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return problem.response(request.path)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
            detail = exc.text if exc.text and exc.text != exc.reason else None
            return Problem(exc.status, exc.reason, detail, headers=headers).response(request.path)
        except tuple(error_map) as exc:
            status, title = next(v for k, v in error_map.items() if isinstance(exc, k))
            return Problem(status, title, str(exc)).response(request.path)
        except Exception:
            log.exception("unhandled error", extra={"route": _route(request)})
            return Problem(500, "Internal Server Error").response(request.path)

    return errors


async def read_body(request: web.Request, body_type: type[B]) -> B:
    """The request's JSON body as ``body_type``: 400 if it is not JSON, 422 if it does not fit."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise Problem(422, "Unprocessable Content", str(exc), type_=INVALID_BODY) from None
    except msgspec.DecodeError as exc:
        raise Problem(
            400, "Bad Request", f"body is not valid JSON: {exc}", type_=MALFORMED_JSON
        ) from None


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Carry the caller's request id and trace into logs, events and the response."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID.match(given) else str(new_id())
    trace = context.child_traceparent(request.headers.get("traceparent"))
    rid_token, trace_token = context.request_id.set(rid), context.traceparent.set(trace)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    finally:
        context.request_id.reset(rid_token)
        context.traceparent.reset(trace_token)
    response.headers["X-Request-Id"] = rid
    response.headers["traceparent"] = trace
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by route template (never the raw path: ids would explode labels),
    and write its access-log line where the app asks for one."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed, route = time.perf_counter() - started, _route(request)
        request.app[METRICS].request_duration.labels(route, request.method, str(status)).observe(
            elapsed
        )
        if request.app.get(ACCESS_LOG):
            _log_access(request, route, status, elapsed)


def _log_access(request: web.Request, route: str, status: int, elapsed: float) -> None:
    # The route template, never the raw path or query (they can carry ids); no headers.
    access_log.info(
        "request",
        extra={
            "method": request.method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "client_id": request.get(CLIENT_ID),
            "bytes_in": request.content_length or 0,
        },
    )


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def healthz(_: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every dependency check passes (database, Redis, migrations)."""
    failures = {}
    for name, check in request.app[READINESS].items():
        try:
            problem = await check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            failures[name] = problem
    if failures:
        raise Problem(503, "Service Unavailable", "not ready", checks=failures)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def base_app(
    metrics_: Metrics,
    *,
    max_body_bytes: int,
    error_map: Mapping[type[Exception], tuple[int, str]] = {},
) -> web.Application:
    """An application with the shared middlewares and the health and metrics routes."""
    app = web.Application(
        client_max_size=max_body_bytes,
        # Past aiohttp's 8 KiB, so that an oversized token reaches the token check and gets a
        # 401 problem saying so, rather than a bare 400 from the parser.
        handler_args={"max_field_size": MAX_HEADER_FIELD_BYTES},
        middlewares=[request_context, observe, error_middleware(error_map)],
    )
    app[METRICS] = metrics_
    app[READINESS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
