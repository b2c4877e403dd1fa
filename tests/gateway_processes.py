"""The gateway and the wallet as `cardless serve` targets under a test's own schema.

``cardless serve`` runs a Service by ``module:attribute``; a Service's name is its schema, so
a test process names the schema it migrated in ``CARDLESS_TEST_GATEWAY_NAME`` or
``CARDLESS_TEST_WALLET_NAME`` and serves ``tests.gateway_processes:GATEWAY`` (or ``:WALLET``).
"""

from __future__ import annotations

import os
from dataclasses import replace

from services.gateway.app import SERVICE as _GATEWAY
from services.wallet.app import SERVICE as _WALLET

GATEWAY_NAME = "CARDLESS_TEST_GATEWAY_NAME"
WALLET_NAME = "CARDLESS_TEST_WALLET_NAME"
GATEWAY_TARGET = f"{__name__}:GATEWAY"
WALLET_TARGET = f"{__name__}:WALLET"

GATEWAY = replace(_GATEWAY, name=os.environ.get(GATEWAY_NAME, _GATEWAY.name))
WALLET = replace(_WALLET, name=os.environ.get(WALLET_NAME, _WALLET.name))
