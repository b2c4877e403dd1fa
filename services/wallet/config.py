"""The wallet's own settings, from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.wallet.topups import Provider, parse_providers
from shared.config import Env


@dataclass(frozen=True)
class WalletConfig:
    """How the ledger batches, and the payment providers we take top-ups from."""

    ledger_shards: int = 2
    ledger_max_batch: int = 4000
    low_balance_minor: int = 500
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
            low_balance_minor=env.integer("WALLET_LOW_BALANCE_MINOR", cls.low_balance_minor),
            providers={p.name: p for p in parse_providers(environ.get("WALLET_PROVIDERS", ""))},
        )
