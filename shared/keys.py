"""Every Redis key and stream name, built in one place.

Each stream partition's name carries a Redis Cluster hash tag (the part in braces), and every
key that belongs with that partition (its lease, its dead letters) carries the same tag, so a
partition lives in one slot and can be changed atomically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace (one city, or one test)."""

    namespace: str

    def stream(self, topic: str, partition: int) -> str:
        """The stream that carries one partition of a topic's events."""
        return f"{self.namespace}:stream:{{{topic}.{partition}}}"

    def dead_letters(self, topic: str, partition: int, group: str) -> str:
        """Where a group parks entries of one partition it could not apply."""
        return f"{self.namespace}:dead:{{{topic}.{partition}}}:{group}"

    def lease(self, topic: str, partition: int, group: str) -> str:
        """Which consumer of a group currently owns a partition."""
        return f"{self.namespace}:lease:{{{topic}.{partition}}}:{group}"

    def members(self, topic: str, group: str) -> str:
        """Sorted set of a group's live consumers (score: heartbeat deadline, ms)."""
        return f"{self.namespace}:members:{{{topic}}}:{group}"

    def rate_limit(self, client: str, route_class: str) -> str:
        """The GCRA state (theoretical arrival time) of one client on one route class.

        The client id is hashed to fixed-length hex, so whatever it holds (``:``, braces that
        would form a Cluster hash tag, lone surrogates from a JSON token) two clients never
        share a key, and a key listing does not spell the id out. The class is escaped.
        """
        digest = hashlib.sha256(client.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        route = quote(route_class, safe="", errors="surrogatepass")
        return f"{self.namespace}:ratelimit:{digest}:{route}"
