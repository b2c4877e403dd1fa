"""The gateway's own settings, from the environment."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from services.gateway.clients import Client, ClientsError, parse_clients
from services.gateway.ratelimit import Limit, LimitsError, parse_limits
from shared.config import ConfigError, Env

T = TypeVar("T")

# What each rate-limit class allows per client unless GATEWAY_RATE_LIMITS says otherwise.
DEFAULT_LIMITS = {
    "default": Limit(requests=600, period_s=60),
    "read": Limit(requests=1200, period_s=60),
    "money": Limit(requests=30, period_s=60, burst=10),
    "taps": Limit(requests=12_000, period_s=60),
    "provider": Limit(requests=6000, period_s=60),
    "token": Limit(requests=60, period_s=60, burst=20),
}


@dataclass(frozen=True)
class ExternalIssuer:
    """A city identity provider whose tokens the gateway accepts, up to ``scopes``."""

    issuer: str
    jwks_url: str
    audience: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class GatewayConfig:
    """Where the services are, who the clients are, and how hard each may push."""

    public_url: str
    upstreams: Mapping[str, str] = field(default_factory=dict)
    audience: str = "cardless"
    clients: Mapping[str, Client] = field(default_factory=dict)
    issuers: tuple[ExternalIssuer, ...] = ()
    limits: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    token_ttl_s: int = 600
    internal_ttl_s: int = 120
    key_rotation_s: int = 86_400
    key_algorithm: str = "EdDSA"
    max_in_flight: int = 512
    breaker_failures: int = 5
    breaker_open_s: int = 5
    retry_budget_ratio_pct: int = 20
    connections_per_upstream: int = 100
    cors_origins: frozenset[str] = frozenset()

    @property
    def token_url(self) -> str:
        return f"{self.public_url}/oauth/token"

    def __post_init__(self) -> None:
        # An internal token must not outlive the key that signed it (see keyring.py).
        if self.internal_ttl_s > self.token_ttl_s:
            raise ConfigError("GATEWAY_INTERNAL_TTL_S: expected at most GATEWAY_TOKEN_TTL_S")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, port: int) -> GatewayConfig:
        env = Env(environ)
        public_url = env.url("GATEWAY_PUBLIC_URL", ("http", "https"), f"http://127.0.0.1:{port}")
        return cls(
            public_url=public_url.rstrip("/"),
            upstreams=_upstreams(environ.get("GATEWAY_UPSTREAMS", "")),
            audience=env.text("GATEWAY_AUDIENCE", cls.audience),
            clients=_parsed(env, "GATEWAY_CLIENTS", parse_clients, ClientsError, {}),
            issuers=_issuers(env.document("GATEWAY_ISSUERS")),
            limits={
                **DEFAULT_LIMITS,
                **_parsed(env, "GATEWAY_RATE_LIMITS", parse_limits, LimitsError, {}),
            },
            token_ttl_s=env.integer("GATEWAY_TOKEN_TTL_S", cls.token_ttl_s, minimum=30),
            internal_ttl_s=env.integer("GATEWAY_INTERNAL_TTL_S", cls.internal_ttl_s, minimum=10),
            key_rotation_s=env.integer("GATEWAY_KEY_ROTATION_S", cls.key_rotation_s, minimum=60),
            key_algorithm=_algorithm(env),
            max_in_flight=env.integer("GATEWAY_MAX_IN_FLIGHT", cls.max_in_flight, minimum=1),
            breaker_failures=env.integer(
                "GATEWAY_BREAKER_FAILURES", cls.breaker_failures, minimum=1
            ),
            breaker_open_s=env.integer("GATEWAY_BREAKER_OPEN_S", cls.breaker_open_s, minimum=1),
            retry_budget_ratio_pct=env.integer(
                "GATEWAY_RETRY_BUDGET_PCT", cls.retry_budget_ratio_pct, maximum=100
            ),
            connections_per_upstream=env.integer(
                "GATEWAY_UPSTREAM_CONNECTIONS", cls.connections_per_upstream, minimum=1
            ),
            cors_origins=_origins(env.text("GATEWAY_CORS_ORIGINS", "")),
        )


def _parsed(env: Env, name: str, parse: Callable[[str], T], error: type[Exception], empty: T) -> T:
    text = env.document(name)
    if not text.strip():
        return empty
    try:
        return parse(text)
    except error as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _json(name: str, text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(f"{name}: expected JSON") from None


def _upstreams(text: str) -> dict[str, str]:
    if not text.strip():
        return {}
    given = _json("GATEWAY_UPSTREAMS", text)
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise ConfigError('GATEWAY_UPSTREAMS: expected JSON like {"wallet": "http://host:port"}')
    for name, url in given.items():
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"GATEWAY_UPSTREAMS: {name}: expected an http(s) URL, got {url!r}")
    return {name: url.rstrip("/") for name, url in given.items()}


def _issuers(text: str) -> tuple[ExternalIssuer, ...]:
    if not text.strip():
        return ()
    given = _json("GATEWAY_ISSUERS", text)
    if not isinstance(given, list):
        raise ConfigError("GATEWAY_ISSUERS: expected a JSON list of issuers")
    return tuple(_issuer(i, entry) for i, entry in enumerate(given))


def _issuer(i: int, entry: object) -> ExternalIssuer:
    where = f"GATEWAY_ISSUERS[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    issuer, url, audience = entry.get("issuer"), entry.get("jwks_url"), entry.get("audience")
    scopes = entry.get("scopes", [])
    if not all(isinstance(v, str) and v for v in (issuer, url, audience)):
        raise ConfigError(f"{where}: issuer, jwks_url and audience are required strings")
    if urlsplit(str(url)).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: jwks_url must be an http(s) URL")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}: scopes must be a list of strings")
    return ExternalIssuer(str(issuer), str(url), str(audience), frozenset(scopes))


def _algorithm(env: Env) -> str:
    chosen = env.choice("GATEWAY_KEY_ALGORITHM", ("eddsa", "es256"), "eddsa")
    return "EdDSA" if chosen == "eddsa" else "ES256"


def _origins(text: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in text.split(",") if o.strip())
