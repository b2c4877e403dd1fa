"""Settings from the environment: frozen dataclasses, validated once at start.

A bad value fails with one line naming the variable and what it expects, e.g.
``BUS_PARTITIONS: expected an integer >= 1, got 'many'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.auth import JwksError, VerificationKey, parse_jwks


class OperatorError(Exception):
    """A failure the operator can fix (a setting, a port, a server): the ``cardless`` command
    prints its message as one line, without a traceback."""


class ConfigError(OperatorError):
    """A setting is missing or invalid; the message is one line for the operator."""


class Env:
    """Typed, validating reads of environment variables."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip() or default
        if value is None:
            raise ConfigError(f"{name}: required, but not set")
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            expected = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise ConfigError(f"{name}: expected an integer {expected}, got {raw!r}")
        return value

    def document(self, name: str) -> str:
        """A setting given inline or as ``@/path/to/file`` (a mounted secret); "" if unset."""
        raw = self._environ.get(name, "").strip()
        if not raw.startswith("@"):
            return raw
        try:
            # Bytes that are not UTF-8 become U+FFFD, which no parser takes: one error path.
            return Path(raw[1:]).read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ConfigError(f"{name}: cannot read {raw[1:]!r}: {reason}") from None

    def jwks(self, name: str) -> tuple[VerificationKey, ...]:
        """A JWKS given inline as JSON or as ``@/path/to/jwks.json``; unset means no keys."""
        raw = self.document(name).strip()
        try:
            return parse_jwks(raw) if raw else ()
        except JwksError as error:
            # The message names the key by position only: the value itself is never echoed.
            raise ConfigError(f"{name}: {error}") from None

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            expected = " or ".join(f"{s}://host:port/..." for s in schemes)
            raise ConfigError(f"{name}: expected a URL like {expected}, got {_redact(value)!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(name, default).lower()
        if value not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {value!r}")
        return value


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches an error message."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@dataclass(frozen=True)
class BusConfig:
    """How events flow: partitions per stream, delivery limits, batching, leases."""

    namespace: str = "cardless"
    partitions: int = 4
    max_deliveries: int = 5
    batch_size: int = 256
    block_ms: int = 1000
    lease_ms: int = 10_000
    claim_idle_ms: int = 30_000
    retention_hours: int = 168

    @classmethod
    def from_env(cls, env: Env) -> BusConfig:
        return cls(
            namespace=env.text("CARDLESS_NAMESPACE", cls.namespace),
            partitions=env.integer("BUS_PARTITIONS", cls.partitions, minimum=1),
            max_deliveries=env.integer("BUS_MAX_DELIVERIES", cls.max_deliveries, minimum=1),
            batch_size=env.integer("BUS_BATCH_SIZE", cls.batch_size, minimum=1),
            block_ms=env.integer("BUS_BLOCK_MS", cls.block_ms, minimum=1),
            lease_ms=env.integer("BUS_LEASE_MS", cls.lease_ms, minimum=100),
            claim_idle_ms=env.integer("BUS_CLAIM_IDLE_MS", cls.claim_idle_ms, minimum=1),
            retention_hours=env.integer("BUS_RETENTION_HOURS", cls.retention_hours, minimum=1),
        )


@dataclass(frozen=True)
class AuthConfig:
    """How a service checks access tokens: whose, for whom, with which keys (inline or by URL)."""

    issuer: str = "cardless-gateway"
    # Services take only the gateway's internal tokens (decision 006), never a client's own.
    audience: str = "cardless-internal"
    jwks: tuple[VerificationKey, ...] = ()
    leeway_s: int = 30
    jwks_url: str | None = None
    jwks_refresh_s: int = 30

    @classmethod
    def from_env(cls, env: Env) -> AuthConfig:
        jwks, jwks_url = env.jwks("AUTH_JWKS"), _jwks_url(env, "AUTH_JWKS_URL")
        if env.text("AUTH_JWKS", "") and jwks_url is not None:
            raise ConfigError("AUTH_JWKS, AUTH_JWKS_URL: set one of them, not both")
        return cls(
            issuer=env.text("AUTH_ISSUER", cls.issuer),
            audience=env.text("AUTH_AUDIENCE", cls.audience),
            jwks=jwks,
            leeway_s=env.integer("AUTH_LEEWAY_S", cls.leeway_s, maximum=300),
            jwks_url=jwks_url,
            jwks_refresh_s=env.integer(
                "AUTH_JWKS_REFRESH_S", cls.jwks_refresh_s, minimum=1, maximum=300
            ),
        )


def _jwks_url(env: Env, name: str) -> str | None:
    """Where to fetch the JWKS, if set: an http(s) URL naming a host (and a valid port)."""
    if not env.text(name, ""):
        return None
    url = env.url(name, ("https", "http"))
    parts = urlsplit(url)
    try:
        usable = parts.hostname is not None and parts.port != 0
    except ValueError:  # a port that is not a number from 0 to 65535
        usable = False
    if not usable:
        raise ConfigError(
            f"{name}: expected a URL like https://host:port/..., got {_redact(url)!r}"
        )
    return url


@dataclass(frozen=True)
class PlatformConfig:
    """What every service process needs: where its servers are and how it serves HTTP."""

    service: str
    redis_url: str
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    reuse_port: bool = False  # several processes of one service share its port (SO_REUSEPORT)
    log_level: str = "info"
    max_body_bytes: int = 1 << 20
    shutdown_timeout_s: int = 15
    db_pool_max: int = 10
    bus: BusConfig = BusConfig()
    auth: AuthConfig = AuthConfig()

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> PlatformConfig:
        env = Env(os.environ if environ is None else environ)
        return cls(
            service=service,
            redis_url=env.url("REDIS_URL", ("redis", "rediss", "unix")),
            database_url=env.url("DATABASE_URL", ("postgresql", "postgres")),
            host=env.text("HOST", cls.host),
            port=env.integer("PORT", cls.port, minimum=0),
            reuse_port=env.choice("HTTP_REUSE_PORT", ("0", "1"), "0") == "1",
            log_level=env.choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info"),
            max_body_bytes=env.integer("HTTP_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1),
            shutdown_timeout_s=env.integer("SHUTDOWN_TIMEOUT_S", cls.shutdown_timeout_s),
            db_pool_max=env.integer("DB_POOL_MAX", cls.db_pool_max, minimum=1),
            bus=BusConfig.from_env(env),
            auth=AuthConfig.from_env(env),
        )
