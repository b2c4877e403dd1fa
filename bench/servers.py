"""The servers a benchmark runs on: REDIS_URL/DATABASE_URL, or throwaway embedded ones."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.city import Servers, servers


@contextlib.contextmanager
def bench_servers() -> Iterator[Servers]:
    with (
        tempfile.TemporaryDirectory(prefix="cardless-bench-") as tmp,
        servers(Path(tmp), "everysec", os.environ) as urls,
    ):
        yield urls


def progress(message: str) -> None:
    """A progress line for the operator watching a long run (stderr: stdout is the JSON)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)
