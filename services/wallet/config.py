"""The wallet's own settings, from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.wallet.topups import Provider, parse_providers
from shared.config import ConfigError, Env


@dataclass(frozen=True)
class WalletConfig:
    """How the ledger batches, and the payment providers we take top-ups from."""

    ledger_shards: int = 2
    ledger_max_batch: int = 4000
    low_balance_minor: int = 500
    business_tz: str = "Asia/Shanghai"
    business_cutoff: time = time(4)
    webhook_backoff_s: int = 1
    webhook_attempts: int = 12
    providers: Mapping[str, Provider] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WalletConfig:
        env = Env(environ)
        return cls(
            ledger_shards=env.integer("WALLET_LEDGER_SHARDS", cls.ledger_shards, minimum=1),
            ledger_max_batch=env.integer(
                "WALLET_LEDGER_MAX_BATCH", cls.ledger_max_batch, minimum=1
            ),
            webhook_backoff_s=env.integer(
                "WALLET_WEBHOOK_BACKOFF_S", cls.webhook_backoff_s, minimum=1
            ),
            webhook_attempts=env.integer(
                "WALLET_WEBHOOK_ATTEMPTS", cls.webhook_attempts, minimum=1
            ),
            business_tz=_zone(env.text("WALLET_BUSINESS_TZ", cls.business_tz)),
            business_cutoff=_cutoff(env.text("WALLET_BUSINESS_CUTOFF", "04:00")),
            low_balance_minor=env.integer("WALLET_LOW_BALANCE_MINOR", cls.low_balance_minor),
            providers={p.name: p for p in parse_providers(environ.get("WALLET_PROVIDERS", ""))},
        )


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"WALLET_BUSINESS_TZ: expected an IANA time zone, got {name!r}") from None
    return name


def _cutoff(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"WALLET_BUSINESS_CUTOFF: expected HH:MM, got {text!r}") from None
