"""Every Redis key and stream name, built in one place.

Each stream partition's name carries a Redis Cluster hash tag (the part in braces), and every
key that belongs with that partition (its lease, its dead letters) carries the same tag, so a
partition lives in one slot and can be changed atomically.
"""

from __future__ import annotations

from dataclasses import dataclass


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
