"""The deny list: membership as a set would answer it through any sequence of deltas, versions
that only move forward, its wire formats, and a million ids in well under 64 MB."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.transit import denylist
from services.transit.denylist import Delta, DenyList, DenyListError, VersionGap

IDS = st.binary(min_size=16, max_size=16)


def ids(count: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(count)]


# -- membership -----------------------------------------------------------------------------


def test_members_are_in_and_others_are_not() -> None:
    members, others = ids(500), ids(500)
    deny = DenyList(7, members)
    assert all(m in deny for m in members)
    assert not any(o in deny for o in others)
    assert (len(deny), deny.version) == (500, 7)
    assert list(deny) == sorted(members)


def test_ids_sharing_their_high_half_are_told_apart() -> None:
    twins = [bytes(8) + bytes([n]) * 8 for n in (1, 3, 5)] + [b"\xff" * 16, bytes(16)]
    deny = DenyList(1, twins)
    assert all(t in deny for t in twins)
    assert bytes(8) + b"\x02" * 8 not in deny
    assert bytes(8) + b"\x06" * 8 not in deny


def test_things_that_are_not_ids_are_never_members() -> None:
    deny = DenyList(1, [bytes(16)])
    assert bytes(15) not in deny
    assert bytes(17) not in deny
    assert "x" * 16 not in deny


@pytest.mark.parametrize("bad", [[b"short"], [bytes(17)], ["sixteen chars ok"]])
def test_ids_are_16_bytes(bad: list[bytes]) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DenyList(1, bad)
    with pytest.raises(ValueError, match="16 bytes"):
        Delta(1, 2, added=tuple(bad))


def test_duplicates_are_one_member() -> None:
    one = os.urandom(16)
    assert len(DenyList(1, [one, one, one])) == 1


# -- versions and deltas --------------------------------------------------------------------


def test_a_delta_on_the_version_held_applies() -> None:
    kept, dropped, added = ids(3)
    deny = DenyList(5, [kept, dropped])
    assert deny.apply(Delta(5, 6, added=(added,), removed=(dropped,)))
    assert deny.version == 6
    assert kept in deny
    assert added in deny
    assert dropped not in deny
    assert len(deny) == 2


def test_a_delta_that_skips_a_version_is_refused_and_changes_nothing() -> None:
    member, newcomer = ids(2)
    deny = DenyList(5, [member])
    for base, version in [(6, 7), (4, 9), (3, 6)]:
        with pytest.raises(VersionGap) as gap:
            deny.apply(Delta(base, version, added=(newcomer,), removed=(member,)))
        assert (gap.value.held, gap.value.base, gap.value.reason) == (5, base, "version_gap")
    assert deny.version == 5
    assert member in deny
    assert newcomer not in deny


def test_a_delta_already_included_is_ignored() -> None:
    member = os.urandom(16)
    deny = DenyList(5, [member])
    assert not deny.apply(Delta(4, 5, removed=(member,)))
    assert not deny.apply(Delta(1, 3, removed=(member,)))
    assert member in deny
    assert deny.version == 5


def test_deltas_in_order_after_a_gap_resume_from_the_full_list() -> None:
    first, second = ids(2)
    gate = DenyList(1)
    with pytest.raises(VersionGap):
        gate.apply(Delta(2, 3, added=(second,)))
    gate = DenyList.load(DenyList(2, [first]).snapshot())  # the full list, fetched
    assert gate.apply(Delta(2, 3, added=(second,)))
    assert first in gate
    assert second in gate
    assert gate.version == 3


@pytest.mark.parametrize(
    ("base", "version", "added", "removed"),
    [(5, 5, (), ()), (6, 5, (), ()), (-1, 2, (), ()), (1, 2, (bytes(16),), (bytes(16),))],
)
def test_a_delta_goes_forward_and_never_adds_and_removes_one_id(
    base: int, version: int, added: tuple[bytes, ...], removed: tuple[bytes, ...]
) -> None:
    with pytest.raises(ValueError, match="a delta"):
        Delta(base, version, added, removed)


@settings(max_examples=60, deadline=None)
@given(
    start=st.sets(IDS, max_size=40),
    changes=st.lists(
        st.tuples(st.sets(IDS, max_size=8), st.sets(IDS, max_size=8)), min_size=1, max_size=12
    ),
    compact_at=st.sampled_from([0, 3, 4096]),
    probes=st.lists(IDS, max_size=10),
)
def test_membership_matches_a_set_through_any_sequence_of_deltas(
    start: set[bytes],
    changes: list[tuple[set[bytes], set[bytes]]],
    compact_at: int,
    probes: list[bytes],
) -> None:
    model, deny = set(start), DenyList(0, start)
    with pytest.MonkeyPatch.context() as patch:  # merge often, sometimes or never
        patch.setattr(denylist, "COMPACT_AT", compact_at)
        for version, (added, removed) in enumerate(changes, start=1):
            removed = (removed | set(sorted(model)[:2])) - added  # some removals that remove
            deny.apply(Delta(version - 1, version, tuple(added), tuple(removed)))
            model = (model | added) - removed
            assert len(deny) == len(model)
    assert all((p in deny) == (p in model) for p in [*probes, *start, *model])
    assert list(deny) == sorted(model)
    assert list(DenyList.load(deny.snapshot())) == sorted(model)


def test_many_deltas_merge_into_the_sorted_columns() -> None:
    base = ids(2000)
    deny = DenyList(0, base)
    added = ids(denylist.COMPACT_AT + 10)
    deny.apply(Delta(0, 1, tuple(added), tuple(base[:100])))
    assert not deny._added
    assert not deny._removed
    assert len(deny) == 2000 - 100 + len(added)
    assert all(a in deny for a in added)
    assert not any(b in deny for b in base[:100])
    assert list(deny) == sorted(base[100:] + added)


# -- wire formats ---------------------------------------------------------------------------


def test_a_snapshot_loads_as_the_same_list() -> None:
    members = ids(300)
    deny = DenyList(42, members)
    deny.apply(Delta(42, 43, added=tuple(ids(3)), removed=tuple(members[:3])))
    loaded = DenyList.load(deny.snapshot())
    assert loaded.version == 43
    assert list(loaded) == list(deny)


def test_an_empty_list_round_trips() -> None:
    loaded = DenyList.load(DenyList(0).snapshot())
    assert (loaded.version, len(loaded), list(loaded)) == (0, 0, [])


def test_a_delta_round_trips() -> None:
    delta = Delta(9, 12, added=tuple(ids(3)), removed=tuple(ids(2)))
    assert Delta.decode(delta.encode()) == delta


def test_the_snapshot_layout_is_the_documented_one() -> None:
    low, high = bytes(15) + b"\x01", b"\x80" + bytes(15)
    data = DenyList(258, [high, low]).snapshot()
    body = b"CLDS\x01" + struct.pack(">QI", 258, 2) + low + high
    assert data == body + struct.pack(">I", zlib.crc32(body))


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"CLDS",
        DenyList(1, ids(3)).snapshot()[:-1],
        DenyList(1, ids(3)).snapshot()[:-4] + b"\x00\x00\x00\x00",  # checksum wrong
        with_crc(b"CLDD\x01" + struct.pack(">QI", 1, 0)),  # a delta's magic
        with_crc(b"CLDS\x02" + struct.pack(">QI", 1, 0)),  # a future format
        with_crc(b"CLDS\x01" + struct.pack(">QI", 1, 2) + bytes(16)),  # fewer ids than said
        with_crc(b"CLDS\x01" + struct.pack(">QI", 1, 2) + b"\x02" * 16 + b"\x01" * 16),  # unsorted
        with_crc(b"CLDS\x01" + struct.pack(">QI", 1, 2) + b"\x01" * 32),  # a duplicate
        with_crc(b"CLDS\x01" + struct.pack(">QI", 1, 2) + bytes(8) + b"\x02" * 8 + bytes(16)),
        with_crc(b"CLDS\x01" + struct.pack(">QI", 2**63, 0)),  # a version past 63 bits
    ],
)
def test_bytes_that_are_not_a_snapshot_are_refused(data: bytes) -> None:
    with pytest.raises(DenyListError) as refused:
        DenyList.load(data)
    assert refused.value.reason == "format"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        Delta(1, 2, added=(bytes(16),)).encode()[:-1],
        with_crc(b"CLDS\x01" + struct.pack(">QQII", 1, 2, 0, 0)),
        with_crc(b"CLDD\x01" + struct.pack(">QQII", 1, 2, 1, 0)),  # an id short
        with_crc(b"CLDD\x01" + struct.pack(">QQII", 2, 2, 0, 0)),  # not forward
        with_crc(b"CLDD\x01" + struct.pack(">QQII", 1, 2, 1, 1) + bytes(32)),  # add and remove
    ],
)
def test_bytes_that_are_not_a_delta_are_refused(data: bytes) -> None:
    with pytest.raises(DenyListError) as refused:
        Delta.decode(data)
    assert refused.value.reason == "format"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"CLDS\x01" + bytes(12) + struct.pack(">I", zlib.crc32(b"CLDS\x01" + bytes(12))))
@example(b"CLDD\x01" + bytes(24) + struct.pack(">I", zlib.crc32(b"CLDD\x01" + bytes(24))))
def test_arbitrary_bytes_load_or_refuse_and_never_crash(data: bytes) -> None:
    for read in (DenyList.load, Delta.decode):
        reason = "format"
        try:
            read(data)
        except DenyListError as refused:
            reason = refused.reason
        assert reason == "format"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_damaged_snapshot_is_refused(data: st.DataObject) -> None:
    snapshot = bytearray(DenyList(3, [bytes([n]) * 16 for n in range(5)]).snapshot())
    at = data.draw(st.integers(0, len(snapshot) - 1))
    snapshot[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DenyListError):
        DenyList.load(bytes(snapshot))


# -- a million ids --------------------------------------------------------------------------


def test_a_million_id_list_loads_in_well_under_64_mb() -> None:
    rng = random.Random(1)
    members = [rng.randbytes(16) for _ in range(1_000_000)]
    snapshot = DenyList(77, members).snapshot()  # transit's side: it sorts the list
    tracemalloc.start()
    try:
        gate_list = DenyList.load(snapshot)  # the gate's side: from the wire or its disk
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 20 * 2**20
    assert peak < 40 * 2**20
    assert gate_list.nbytes() < 20 * 2**20
    assert len(gate_list) == 1_000_000
    assert gate_list.version == 77
    assert all(m in gate_list for m in members[::997])
    assert not any(rng.randbytes(16) in gate_list for _ in range(1000))
    newcomers = tuple(rng.randbytes(16) for _ in range(denylist.COMPACT_AT + 1))
    gate_list.apply(Delta(77, 78, added=newcomers, removed=tuple(members[:10])))
    assert gate_list.nbytes() < 20 * 2**20
    assert newcomers[0] in gate_list
    assert members[0] not in gate_list
    assert members[10] in gate_list
