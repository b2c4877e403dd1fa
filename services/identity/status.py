"""The statuses of the credentials the city issued, as served and as checked.

Each list is rebuilt from the database and signed every ``status_refresh_s``: that bounds how
long a revocation takes to show, both in the served Status List Token and in our own checks,
which read the same in-memory list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from services.identity import store
from services.identity.config import IdentityConfig
from services.identity.statuslist import (
    TYP,
    VALID,
    Reference,
    StatusList,
    StatusListError,
    token_claims,
)
from shared.clock import Clock
from shared.db import Connection
from shared.keyring import Keyring

log = logging.getLogger(__name__)

NAMES = {0: "valid", 1: "revoked", 2: "suspended"}
CODES = {name: code for code, name in NAMES.items()}


@dataclass(frozen=True)
class Served:
    """One list as of its last rebuild: the decoded statuses and the signed token."""

    statuses: StatusList
    token: str
    built_at: int


class StatusLists:
    """Every status list of the city, rebuilt by ``refresh``."""

    def __init__(self, config: IdentityConfig, keyring: Keyring, clock: Clock) -> None:
        self.config, self.keyring, self.clock = config, keyring, clock
        self._served: dict[int, Served] = {}
        self._by_uri: dict[str, StatusList] = {}

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Rebuild and re-sign every list from the database."""
        async with pool.acquire() as conn:
            lists = await store.status_lists(conn)
            built = {
                row["list_id"]: await self._build(conn, row["list_id"], row["size"])
                for row in lists
            }
        self._served = built
        self._by_uri = {self.config.status_list_uri(n): s.statuses for n, s in built.items()}

    async def _build(self, conn: Connection, list_id: int, size: int) -> Served:
        statuses = StatusList(size, bits=2)
        for index, status in await store.statuses(conn, list_id):
            statuses[index] = status
        now = int(self.clock.now().timestamp())
        ttl = self.config.status_refresh_s
        claims = token_claims(
            statuses,
            uri=self.config.status_list_uri(list_id),
            issuer=self.config.issuer,
            iat=now,
            exp=now + 2 * ttl + self.config.leeway_s,
            ttl=ttl,
        )
        return Served(statuses, self.keyring.sign(claims, typ=TYP), now)

    def token(self, list_id: int) -> Served | None:
        return self._served.get(list_id)

    def status_of(self, reference: Reference) -> int:
        """The status as of the last rebuild; ``StatusListError`` for a list we do not serve
        or an index past its end.

        A list opened since the last rebuild (by this replica or another) is all valid as of
        that rebuild: a change in it shows within ``status_refresh_s``, as any change does.
        """
        statuses = self._by_uri.get(reference.uri)
        if statuses is not None:
            return statuses[reference.index]
        list_id = self.list_id(reference.uri)
        newest = max(self._served, default=0)
        if list_id is None or list_id <= newest:
            raise StatusListError("wrong_list")
        if not 0 <= reference.index < self.config.status_list_size:
            raise StatusListError("out_of_range")
        return VALID

    def list_id(self, uri: str) -> int | None:
        """The number of one of our lists from its URI; None for anyone else's."""
        prefix = self.config.status_list_uri(0)[:-1]
        number = uri.removeprefix(prefix)
        if number == uri or not number.isdigit() or len(number) > 9:
            return None
        return int(number)
