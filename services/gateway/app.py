"""The gateway: the city's one public door, wired onto the platform.

A request to a service passes, in this order: request id and trace, timing and the access
log, problem+json errors, load shedding, the route table (404/405), dot segments (400),
authentication and authorization (401/403), the rate limit (429), the body limit (413), then
the upstream through its circuit breaker, within the route's deadline (502/503/504).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.gateway import docs, openapi
from services.gateway.access import Admitted, Gatekeeper
from services.gateway.catalog import Catalog
from services.gateway.config import GatewayConfig
from services.gateway.proxy import Forwarder, ProxyMetrics, Upstreams
from services.gateway.ratelimit import RateLimiter, RateLimitUnavailable, headers
from services.gateway.resilience import InFlightLimit, RetryBudget, shedding
from services.gateway.resp import RespPipe
from services.gateway.routes import FAIL_OPEN_CLASSES, ROUTES, Route
from services.gateway.tokens import TokenEndpoint, TokenKeys, TokenSettings
from shared import context, http
from shared.auth import RemoteJwks, StaticKeys, TokenVerifier
from shared.clock import Clock, every
from shared.config import AuthConfig, ConfigError
from shared.db import SERVER_FAILURES
from shared.keyring import Keyring, RotationPolicy
from shared.keys import Keys
from shared.service import CLOCK, CONFIG, POOL, REDIS, Service

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("gateway_config", GatewayConfig)
KEYRING_REFRESH_S = 60.0
# draft-ietf-httpapi-ratelimit-headers-11 §5.1
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
# The limiter asks Redis with a short deadline: a stalled Redis must not stall the gateway.
LIMITER_TIMEOUT_S = 0.25
UNSAFE_PATH = re.compile(r"(^|/)\.\.?(/|$)|%2f|%5c|%2e", re.IGNORECASE)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


@dataclass
class Parts:
    """Everything a request passes through, built once when the gateway starts."""

    keyring: Keyring
    own_keys: StaticKeys  # what the gatekeeper checks our own tokens against
    tokens: TokenEndpoint
    gatekeeper: Gatekeeper
    limiter: RateLimiter
    forwarder: Forwarder
    catalog: Catalog
    limit_decisions: Counter

    async def rotate(self) -> None:
        """Bring the signing keys up to date (new ones ahead, old ones retired)."""
        await self.keyring.refresh()
        self.own_keys.replace(self.keyring.verification_keys())


PARTS = web.AppKey("gateway_parts", Parts)
PROXY_METRICS = web.AppKey("gateway_proxy_metrics", ProxyMetrics)


def add_routes(
    app: web.Application,
    *,
    routes: Sequence[Route] = ROUTES,
    settings: GatewayConfig | None = None,
) -> None:
    """The gateway's own endpoints, and every row of ``routes`` whose upstream is configured
    (``settings`` from the environment unless given)."""
    settings = settings or GatewayConfig.from_env(os.environ, port=app[CONFIG].port)
    if any(external.issuer == app[CONFIG].auth.issuer for external in settings.issuers):
        raise ConfigError("GATEWAY_ISSUERS: an external issuer may not take the gateway's name")
    app[SETTINGS] = settings
    app[PROXY_METRICS] = ProxyMetrics(app[http.METRICS].registry)
    app.middlewares.append(shedding(InFlightLimit(settings.max_in_flight), app[PROXY_METRICS]))
    app.cleanup_ctx.append(_parts)
    app.on_response_prepare.append(_edges)
    app[http.ACCESS_LOG] = True
    app.router.add_post("/oauth/token", _token)
    app.router.add_get("/.well-known/jwks.json", _jwks)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/docs", _docs)
    # Preflights on the paths we serve only: a catch-all OPTIONS route would turn every
    # unknown path into a 405 instead of a 404.
    paths = {"/oauth/token", "/.well-known/jwks.json", "/openapi.json", "/docs"}
    for route in routes:
        if route.upstream in settings.upstreams:
            app.router.add_route(route.method, route.path, _forwarding(route))
            paths.add(route.path)
    for path in sorted(paths):
        app.router.add_route("OPTIONS", path, _preflight)


async def _parts(app: web.Application) -> AsyncIterator[None]:
    settings, config, clock = app[SETTINGS], app[CONFIG], app[CLOCK]
    policy = RotationPolicy(
        sign_for_s=settings.key_rotation_s,
        token_ttl_s=settings.token_ttl_s,
        leeway_s=config.auth.leeway_s,
        algorithm=settings.key_algorithm,
    )
    keyring = Keyring(app[POOL], clock, policy)
    await keyring.refresh()
    own_keys = StaticKeys(keyring.verification_keys())
    tokens = TokenEndpoint(
        keyring,
        settings.clients,
        app[REDIS],
        TokenKeys(config.bus.namespace),
        app[POOL],
        clock,
        TokenSettings(
            issuer=config.auth.issuer,
            audience=settings.audience,
            token_url=settings.token_url,
            ttl_s=settings.token_ttl_s,
        ),
    )
    limit_decisions = Counter(
        "gateway_rate_limit_decisions_total",
        "Rate-limit decisions by class: allowed, limited, fail_open, fail_closed.",
        ["class", "decision"],
        registry=app[http.METRICS].registry,
    )
    limiter_redis = RespPipe(config.redis_url)
    async with aiohttp.ClientSession() as session, contextlib.aclosing(limiter_redis):
        verifiers, fetchers = _verifiers(settings, config.auth, own_keys, session, clock)
        upstreams = Upstreams.create(
            settings.upstreams,
            breaker_threshold=settings.breaker_failures,
            breaker_open_s=settings.breaker_open_s,
            connections_per_upstream=settings.connections_per_upstream,
        )
        app[PARTS] = parts = Parts(
            keyring=keyring,
            own_keys=own_keys,
            tokens=tokens,
            gatekeeper=Gatekeeper(
                verifiers,
                keyring.sign,
                tokens.check_dpop,
                issuer=config.auth.issuer,
                internal_audience=config.auth.audience,
                internal_ttl_s=settings.internal_ttl_s,
                leeway_s=config.auth.leeway_s,
                public_url=settings.public_url,
                clock=clock,
                trusted_scopes={external.issuer: external.scopes for external in settings.issuers},
            ),
            limiter=RateLimiter(
                limiter_redis, Keys(config.bus.namespace), timeout_s=LIMITER_TIMEOUT_S
            ),
            forwarder=Forwarder(
                upstreams,
                RetryBudget(ratio=settings.retry_budget_ratio_pct / 100),
                app[PROXY_METRICS],
            ),
            catalog=Catalog(settings.upstreams, session, openapi.gateway_document(), version="1"),
            limit_decisions=limit_decisions,
        )

        stopping = asyncio.Event()
        retry_on = SERVER_FAILURES
        task = asyncio.create_task(
            every(KEYRING_REFRESH_S, parts.rotate, stopping, retry_on=retry_on, what="key rotation")
        )
        try:
            yield
        finally:
            stopping.set()
            await task
            await upstreams.close()
            for fetcher in fetchers:
                await fetcher.aclose()


def _verifiers(
    settings: GatewayConfig,
    auth: AuthConfig,
    own_keys: StaticKeys,
    session: aiohttp.ClientSession,
    clock: Clock,
) -> tuple[dict[str, TokenVerifier], list[RemoteJwks]]:
    """A verifier per trusted issuer: ours on our own keys, each external one on its JWKS."""
    own = replace(auth, audience=settings.audience, jwks=(), jwks_url=None)
    verifiers = {auth.issuer: TokenVerifier(own, clock, own_keys)}
    fetchers = []
    for external in settings.issuers:
        config = replace(own, issuer=external.issuer, audience=external.audience)
        fetchers.append(RemoteJwks(external.jwks_url, session=session))
        verifiers[external.issuer] = TokenVerifier(config, clock, fetchers[-1])
    return verifiers, fetchers


def _forwarding(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def forward(request: web.Request) -> web.StreamResponse:
        return await _pass(request, route, request.app[PARTS])

    return forward


async def _pass(request: web.Request, route: Route, parts: Parts) -> web.StreamResponse:
    if UNSAFE_PATH.search(request.rel_url.raw_path):
        # A service could resolve these to a path other than the one the table admitted.
        raise http.Problem(400, "Bad Request", "dot segments and encoded slashes are refused")
    admitted: Admitted | None = None
    if not route.public:
        with _redis_needed():  # DPoP proofs are single-use: their ids are kept in Redis
            admitted = await parts.gatekeeper.admit(request, route)
        if admitted.principal.client_id:
            request[http.CLIENT_ID] = admitted.principal.client_id
    client = admitted.principal.subject if admitted else f"ip:{request.remote}"
    limit_headers = await _rate_limit(request, parts, client, route.rate_class)
    # Read only for a caller we know and let through: nobody else makes us hold a body.
    body = await _body(request, route.max_body_bytes)
    forwarded = {
        "X-Request-Id": context.request_id.get() or "",
        "traceparent": context.traceparent.get() or "",
    }
    if admitted is not None:
        forwarded["Authorization"] = f"Bearer {admitted.internal}"
    retryable = request.method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers
    response = await parts.forwarder.forward(
        request,
        route.upstream,
        deadline_s=route.timeout_s,
        retryable=retryable,
        headers=forwarded,
        body=body,
    )
    response.headers.update(limit_headers)
    return response


async def _body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass ``limit``."""
    too_large = http.Problem(
        413, "Content Too Large", f"this route takes bodies up to {limit} bytes"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _rate_limit(
    request: web.Request, parts: Parts, client: str, route_class: str
) -> dict[str, str]:
    limit = request.app[SETTINGS].limits.get(route_class) or request.app[SETTINGS].limits["default"]
    decisions = parts.limit_decisions
    try:
        decision = await parts.limiter.check(client, route_class, limit)
    except RateLimitUnavailable:
        if route_class in FAIL_OPEN_CLASSES:
            decisions.labels(route_class, "fail_open").inc()
            return {}
        decisions.labels(route_class, "fail_closed").inc()
        raise http.Problem(
            503,
            "Service Unavailable",
            "the rate limiter is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    decisions.labels(route_class, "allowed" if decision.allowed else "limited").inc()
    limit_headers = headers(decision, route_class, limit)
    if not decision.allowed:
        raise http.Problem(
            429,
            "Too Many Requests",
            f"rate limit of class {route_class} reached",
            type_=QUOTA_EXCEEDED,
            headers=limit_headers,
            **{"violated-policies": [route_class]},
        )
    return limit_headers


async def _token(request: web.Request) -> web.StreamResponse:
    parts = request.app[PARTS]
    await _rate_limit(request, parts, f"ip:{request.remote}", "token")
    with _redis_needed():  # assertions are single-use: their ids are kept in Redis
        return await parts.tokens.handle(request)


@contextlib.contextmanager
def _redis_needed() -> Iterator[None]:
    """A Redis outage where a check cannot be skipped: 503, never a 500, never a pass."""
    try:
        yield
    except RedisError:
        log.warning("Redis unavailable for a single-use check; refusing", exc_info=True)
        raise http.Problem(
            503,
            "Service Unavailable",
            "a dependency is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        ) from None


async def _jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[PARTS].keyring.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PARTS].catalog.document())


async def _docs(request: web.Request) -> web.Response:
    page = docs.docs_page(await request.app[PARTS].catalog.document())
    return web.Response(
        text=page, content_type="text/html", headers={"Content-Security-Policy": docs.DOCS_CSP}
    )


async def _preflight(request: web.Request) -> web.Response:
    """CORS preflight: answered here, never forwarded (``_edges`` adds the allow headers)."""
    return web.Response(status=204)


async def _edges(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer, and CORS for the city's own web pages."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    origin = request.headers.get("Origin")
    if origin is None or origin not in request.app[SETTINGS].cors_origins:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Expose-Headers"] = (
        "X-Request-Id, Retry-After, RateLimit, RateLimit-Policy, Idempotent-Replayed"
    )
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE"
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, DPoP, Content-Type, Idempotency-Key, X-Request-Id, traceparent"
        )
        response.headers["Access-Control-Max-Age"] = "600"


SERVICE = Service(
    name="gateway",
    add_routes=add_routes,
    migrations=Path(__file__).parent / "migrations",
    components=["keyring"],  # its signing keys, rotated by shared.keyring
)
