"""Named crash points, for proving exactly-once under crashes with real processes.

``CARDLESS_FAILPOINTS="relay.after_xadd=1"`` makes this process SIGKILL itself the first time it
reaches that point; ``=0.01`` does so with that probability at each pass. Unset, every point is a
dictionary lookup and nothing more.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Failpoints:
    """The crash points armed in this process."""

    def __init__(self, armed: Mapping[str, float]) -> None:
        self._armed = dict(armed)
        self._random = random.Random()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Failpoints:
        spec = (os.environ if environ is None else environ).get("CARDLESS_FAILPOINTS", "")
        armed = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, chance = item.partition("=")
            armed[name] = float(chance or 1)
        return cls(armed)

    def hit(self, name: str) -> None:
        """Die here, abruptly, if this point is armed and the dice say so."""
        chance = self._armed.get(name)
        if chance is not None and self._random.random() < chance:
            log.warning("failpoint reached: killing this process", extra={"failpoint": name})
            os.kill(os.getpid(), signal.SIGKILL)
