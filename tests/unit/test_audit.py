"""The citizen's audit log: RFC 6962 proofs exactly as the textbook defines them, and tampering
with the stored log named at the first bad entry."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from services.identity.audit import (
    CHECKPOINT_TYP,
    GENESIS,
    Checkpoint,
    CheckpointError,
    Entry,
    Finding,
    StoredEntry,
    chain_hash,
    checkpoint_claims,
    completed_nodes,
    consistency_nodes,
    consistency_proof,
    inclusion_proof,
    node_hash,
    proof_nodes,
    read_checkpoint,
    root_nodes,
    tree_head,
    verify_consistency,
    verify_inclusion,
    verify_log,
)

Nodes = dict[tuple[int, int], bytes]
AT = datetime(2030, 3, 1, 9, 15, 0, 250_000, tzinfo=UTC)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_of(data: bytes) -> bytes:
    return sha256(b"\x00" + data)


# -- the textbook: RFC 6962 §2.1, written straight from its recursive definitions ----------


def split(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    if m == len(leaves):
        return [] if complete else [mth(leaves)]
    k = split(len(leaves))
    if m <= k:
        return [*subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n])."""
    return subproof(m, leaves, True)


def perfect_nodes(leaves: Sequence[bytes]) -> Nodes:
    """Every perfect subtree of the textbook tree, by (level, index)."""
    nodes: Nodes = {}
    level = 0
    while 1 << level <= len(leaves):
        width = 1 << level
        for index in range(len(leaves) // width):
            nodes[level, index] = mth(leaves[index * width : (index + 1) * width])
        level += 1
    return nodes


def appended(leaves: Sequence[bytes]) -> Nodes:
    """The nodes the database holds after appending ``leaves`` one at a time."""
    nodes: Nodes = {}
    for n, leaf in enumerate(leaves):
        for level, index, hash_ in completed_nodes(n, leaf, lambda lv, ix: nodes[lv, ix]):
            nodes[level, index] = hash_
    return nodes


def only(nodes: Mapping[tuple[int, int], bytes], wanted: list[tuple[int, int]]) -> Nodes:
    """Just the rows a query for ``wanted`` would fetch: proves the list is enough."""
    assert len(set(wanted)) == len(wanted)
    return {node: nodes[node] for node in wanted}


LEAVES_70 = [leaf_of(f"entry {i}".encode()) for i in range(70)]
NODES_70 = appended(LEAVES_70)

# -- known answers ------------------------------------------------------------------------
# Copied, not derived: transparency-dev/merkle, proof/verify_test.go at commit
# 02194e9afb6c1d95b5381350007963aa70fff472 (the RFC 6962 test data Google's trillian and
# certificate-transparency-go share). There leaf indices are 1-based; here they are 0-based.
RFC6962_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
RFC6962_ROOTS = [  # by tree size, 0 to 8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC6962_INCLUSION = [  # (leaf index, tree size, PATH)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
RFC6962_CONSISTENCY = [  # (old size, new size, PROOF)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
RFC6962_LEAVES = [leaf_of(data) for data in RFC6962_INPUTS]
RFC6962_NODES = appended(RFC6962_LEAVES)


def hexes(hashes: Sequence[bytes]) -> list[str]:
    return [hash_.hex() for hash_ in hashes]


@pytest.mark.parametrize("size", range(9))
def test_tree_heads_match_the_published_rfc6962_roots(size: int) -> None:
    head = tree_head(size, only(RFC6962_NODES, root_nodes(size)))

    assert head.hex() == RFC6962_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "expected"), RFC6962_INCLUSION)
def test_inclusion_proofs_match_the_published_rfc6962_paths(
    index: int, size: int, expected: list[str]
) -> None:
    got = inclusion_proof(index, size, only(RFC6962_NODES, proof_nodes(index, size)))

    assert hexes(got) == expected
    root = bytes.fromhex(RFC6962_ROOTS[size])
    assert verify_inclusion(RFC6962_LEAVES[index], index, size, got, root)


@pytest.mark.parametrize(("old", "new", "expected"), RFC6962_CONSISTENCY)
def test_consistency_proofs_match_the_published_rfc6962_proofs(
    old: int, new: int, expected: list[str]
) -> None:
    got = consistency_proof(old, new, only(RFC6962_NODES, consistency_nodes(old, new)))

    assert hexes(got) == expected
    old_root, new_root = bytes.fromhex(RFC6962_ROOTS[old]), bytes.fromhex(RFC6962_ROOTS[new])
    assert verify_consistency(old, new, old_root, new_root, got)


# -- against the textbook, exhaustively for small trees ----------------------------------


def test_appending_leaves_stores_exactly_the_textbook_trees_perfect_subtrees() -> None:
    for size in range(1, 71):
        assert appended(LEAVES_70[:size]) == perfect_nodes(LEAVES_70[:size])


def test_appending_a_leaf_completes_its_subtree_up_the_right_edge() -> None:
    nodes = appended(LEAVES_70[:7])

    done = completed_nodes(7, LEAVES_70[7], lambda level, index: nodes[level, index])

    assert [(level, index) for level, index, _ in done] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert done[-1][2] == mth(LEAVES_70[:8])


@pytest.mark.parametrize("size", range(1, 71))
def test_tree_head_is_the_textbook_mth_for_every_size(size: int) -> None:
    assert tree_head(size, only(NODES_70, root_nodes(size))) == mth(LEAVES_70[:size])


@pytest.mark.parametrize("size", range(1, 71))
def test_inclusion_proof_is_the_textbook_path_for_every_index(size: int) -> None:
    root = mth(LEAVES_70[:size])
    for index in range(size):
        got = inclusion_proof(index, size, only(NODES_70, proof_nodes(index, size)))

        assert got == path(index, LEAVES_70[:size]), (index, size)
        assert verify_inclusion(LEAVES_70[index], index, size, got, root), (index, size)


@pytest.mark.parametrize("new", range(1, 71))
def test_consistency_proof_is_the_textbook_proof_for_every_older_size(new: int) -> None:
    new_root = mth(LEAVES_70[:new])
    for old in range(1, new + 1):
        got = consistency_proof(old, new, only(NODES_70, consistency_nodes(old, new)))

        assert got == proof(old, LEAVES_70[:new]), (old, new)
        old_root = mth(LEAVES_70[:old])
        assert verify_consistency(old, new, old_root, new_root, got), (old, new)


def test_the_empty_tree_has_the_empty_hash_and_is_consistent_with_every_tree() -> None:
    assert tree_head(0, {}) == sha256(b"")
    assert root_nodes(0) == []
    assert consistency_nodes(0, 5) == []
    assert verify_consistency(0, 5, sha256(b""), mth(LEAVES_70[:5]), [])
    assert not verify_consistency(0, 5, mth(LEAVES_70[:1]), mth(LEAVES_70[:5]), [])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 5)])
def test_a_leaf_outside_the_tree_has_no_proof_and_never_verifies(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        proof_nodes(index, size)

    assert not verify_inclusion(LEAVES_70[0], index, size, [], mth(LEAVES_70[:1]))


def test_a_shrinking_log_has_no_consistency_proof() -> None:
    with pytest.raises(ValueError, match="no consistency proof"):
        consistency_nodes(5, 4)

    assert not verify_consistency(5, 4, mth(LEAVES_70[:5]), mth(LEAVES_70[:4]), [])


# -- properties: real proofs verify, any tampering does not --------------------------------


@st.composite
def trees(draw: st.DrawFn) -> list[bytes]:
    """Leaf hashes of a tree of 1 to 100 distinct entries (identical entries would be
    interchangeable, so a proof for one would rightly prove the other)."""
    entries = draw(st.lists(st.binary(max_size=12), min_size=1, max_size=100, unique=True))
    return [leaf_of(entry) for entry in entries]


def flipped(hashes: Sequence[bytes], at: int) -> list[bytes]:
    """``hashes`` with one bit of the hash at ``at`` changed."""
    changed = list(hashes)
    changed[at] = bytes([changed[at][0] ^ 0x10]) + changed[at][1:]
    return changed


@given(trees(), st.data())
def test_an_inclusion_proof_verifies_and_no_tampered_variant_does(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    nodes, root, leaf = appended(leaves), mth(leaves), leaves[index]
    got = inclusion_proof(index, size, only(nodes, proof_nodes(index, size)))

    assert verify_inclusion(leaf, index, size, got, root)
    for at in range(len(got)):
        assert not verify_inclusion(leaf, index, size, flipped(got, at), root)
    assert not verify_inclusion(flipped([leaf], 0)[0], index, size, got, root)
    assert not verify_inclusion(leaf, index, size, got, flipped([root], 0)[0])
    assert not verify_inclusion(leaf, index, size, [*got, root], root)
    if got:
        assert not verify_inclusion(leaf, index, size, got[:-1], root)
    for other in set(range(size)) - {index}:
        assert not verify_inclusion(leaf, other, size, got, root)
    for other in {size * 2, size // 2} - {size}:
        assert not verify_inclusion(leaf, index, other, got, root)


@given(trees(), st.integers(1, 120), st.data())
def test_an_inclusion_proof_for_one_size_does_not_verify_for_another(
    leaves: list[bytes], other: int, data: st.DataObject
) -> None:
    """A checkpoint gives a size and its root together: the proof must fit both.

    (RFC 9162's check does not bind the size by itself: leaf 0's PATH in a 3-leaf tree also
    verifies as leaf 0 of a 4-leaf tree against the 3-leaf root. A checkpoint signs the size
    with its root, and the root of the claimed size is what rules that out.)
    """
    more = [leaf_of(b"more %d" % i) for i in range(max(0, other - len(leaves)))]
    history = leaves + more
    size = len(leaves)
    index = data.draw(st.integers(0, min(size, other) - 1), label="index")
    got = inclusion_proof(index, size, appended(leaves))

    fits = verify_inclusion(history[index], index, other, got, mth(history[:other]))

    assert fits == (other == size)


@given(trees(), st.data())
def test_a_consistency_proof_verifies_and_no_tampered_variant_does(
    leaves: list[bytes], data: st.DataObject
) -> None:
    new = len(leaves)
    old = data.draw(st.integers(1, new), label="old")
    nodes = appended(leaves)
    old_root, new_root = mth(leaves[:old]), mth(leaves)
    got = consistency_proof(old, new, only(nodes, consistency_nodes(old, new)))

    assert verify_consistency(old, new, old_root, new_root, got)
    for at in range(len(got)):
        assert not verify_consistency(old, new, old_root, new_root, flipped(got, at))
    if old == new:
        return
    assert not verify_consistency(old, new, flipped([old_root], 0)[0], new_root, got)
    assert not verify_consistency(old, new, old_root, flipped([new_root], 0)[0], got)
    assert not verify_consistency(old, new, new_root, old_root, got)
    assert not verify_consistency(old, new, old_root, new_root, got[:-1])
    assert not verify_consistency(old, new, old_root, new_root, [*got, new_root])
    for other in set(range(1, new + 1)) - {old}:
        assert not verify_consistency(other, new, mth(leaves[:other]), new_root, got)
    for other in set(range(old, new)):
        assert not verify_consistency(old, other, old_root, mth(leaves[:other]), got)


# -- entries, hashes and the chain --------------------------------------------------------


def entry(seq: int, **changes: Any) -> Entry:
    good: dict[str, Any] = {
        "seq": seq,
        "at": AT + timedelta(seconds=seq),
        "citizen": f"citizen-{seq % 3}",
        "agency": "city-library",
        "purpose": "library card",
        "claims": ("age_over_18", "address.locality"),
        "result": "verified",
        "reason": None,
        "request_id": f"req-{seq:04d}",
    }
    return Entry(**{**good, **changes})


def test_an_entry_body_is_compact_sorted_json_with_a_microsecond_utc_time() -> None:
    body = entry(3, result="rejected", reason="credential_revoked", citizen="p-ü").body()

    assert (
        body
        == (
            '{"agency":"city-library","at":"2030-03-01T09:15:03.250000Z",'
            '"citizen":"p-ü","claims":["age_over_18","address.locality"],'
            '"purpose":"library card","reason":"credential_revoked","request_id":"req-0003",'
            '"result":"rejected","seq":3}'
        ).encode()
    )
    assert json.loads(body)["reason"] == "credential_revoked"


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    elsewhere = (AT + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5)))

    assert entry(1, at=elsewhere).leaf_hash() == entry(1).leaf_hash()


def test_an_entry_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        entry(0, at=datetime(2030, 3, 1, 9, 15))


def test_a_leaf_is_the_rfc6962_hash_of_the_body_and_the_chain_starts_at_genesis() -> None:
    first = entry(0)

    assert first.leaf_hash() == sha256(b"\x00" + first.body())
    assert chain_hash(GENESIS, first.leaf_hash()) == sha256(bytes(32) + first.leaf_hash())
    assert node_hash(b"l" * 32, b"r" * 32) == sha256(b"\x01" + b"l" * 32 + b"r" * 32)


# -- the stored log -----------------------------------------------------------------------


def stored(entries: Sequence[Entry]) -> list[StoredEntry]:
    """Rows as the writer stores them: each leaf, and the chain up to it."""
    rows, previous = [], GENESIS
    for one in entries:
        leaf = one.leaf_hash()
        previous = chain_hash(previous, leaf)
        rows.append(StoredEntry(one, leaf, previous))
    return rows


def log(size: int) -> list[StoredEntry]:
    return stored([entry(seq) for seq in range(size)])


def checkpoint_of(rows: Sequence[StoredEntry], size: int) -> Checkpoint:
    """The checkpoint the service would have published when the log had ``size`` rows."""
    leaves = [row.entry.leaf_hash() for row in rows[:size]]
    head = rows[size - 1].chain if size else GENESIS
    return Checkpoint("https://id.cardless.dev/audit", size, mth(leaves), head, 1_900_000_000)


def where(finding: Finding | None) -> tuple[int, str] | None:
    """The seq and kind of problem a finding names."""
    return None if finding is None else (finding.seq, finding.problem)


def rewritten(row: StoredEntry, **changes: Any) -> StoredEntry:
    """The row with its entry changed and its leaf recomputed, its chain value left alone."""
    changed = dataclasses.replace(row.entry, **changes)
    return StoredEntry(changed, changed.leaf_hash(), row.chain)


def test_an_untouched_log_holds_together() -> None:
    rows = log(40)
    checkpoints = [checkpoint_of(rows, size) for size in (0, 1, 17, 32, 40)]

    assert verify_log(rows, checkpoints) is None
    assert verify_log([]) is None


def test_a_log_is_read_in_one_pass() -> None:
    rows = log(300)

    def streamed() -> Iterator[StoredEntry]:
        yield from rows

    assert verify_log(streamed(), [checkpoint_of(rows, 300)]) is None


@pytest.mark.parametrize("k", [0, 7, 19])
def test_a_changed_field_is_named_at_its_row(k: int) -> None:
    rows = log(20)
    rows[k] = dataclasses.replace(rows[k], entry=dataclasses.replace(rows[k].entry, agency="tax"))

    assert verify_log(rows) == Finding(k, "changed", "the entry does not hash to its stored leaf")


def test_a_row_rewritten_with_its_leaf_recomputed_is_changed_at_its_row() -> None:
    rows = log(20)
    rows[6] = rewritten(rows[6], claims=("age_over_18",))

    finding = verify_log(rows)

    assert where(finding) == (6, "changed")


@pytest.mark.parametrize("k", [0, 7, 18])
def test_a_deleted_row_is_named_as_the_first_missing_seq(k: int) -> None:
    rows = log(20)
    del rows[k]

    finding = verify_log(rows)

    assert where(finding) == (k, "removed")


@pytest.mark.parametrize(("j", "k"), [(0, 1), (7, 8), (3, 15), (18, 19)])
def test_two_swapped_rows_are_reordered_at_the_first(j: int, k: int) -> None:
    rows = log(20)
    rows[j], rows[k] = rows[k], rows[j]

    finding = verify_log(rows)

    assert where(finding) == (j, "reordered")


def test_two_rows_that_swapped_contents_under_their_seqs_are_reordered() -> None:
    rows = log(20)
    first, second = rows[7], rows[8]
    rows[7] = rewritten(second, seq=7)
    rows[8] = rewritten(first, seq=8)

    finding = verify_log(rows)

    assert where(finding) == (7, "reordered")


def test_a_row_appended_without_being_chained_is_inserted() -> None:
    rows = log(20)
    extra = entry(20, agency="unknown-agency")
    rows.append(StoredEntry(extra, extra.leaf_hash(), chain_hash(GENESIS, extra.leaf_hash())))

    finding = verify_log(rows)

    assert where(finding) == (20, "inserted")


def test_a_second_row_claiming_a_seq_is_inserted() -> None:
    rows = log(20)
    forged = entry(9, agency="unknown-agency")
    rows.insert(10, StoredEntry(forged, forged.leaf_hash(), rows[9].chain))

    finding = verify_log(rows)

    assert where(finding) == (10, "inserted")


@pytest.mark.parametrize("kept", [0, 12, 24])
def test_a_log_truncated_after_a_checkpoint_is_named_at_the_first_missing_entry(
    kept: int,
) -> None:
    rows = log(30)
    checkpoint = checkpoint_of(rows, 25)

    finding = verify_log(rows[:kept], [checkpoint])

    assert where(finding) == (kept, "checkpoint")


def test_a_log_rewritten_consistently_still_disagrees_with_its_checkpoint() -> None:
    rows = log(30)
    checkpoints = [checkpoint_of(rows, 10), checkpoint_of(rows, 25)]
    history = [row.entry for row in rows]
    history[12] = dataclasses.replace(history[12], purpose="tax audit")

    finding = verify_log(stored(history), checkpoints)

    assert where(finding) == (24, "checkpoint")


def test_a_checkpoint_whose_chain_head_differs_is_named() -> None:
    rows = log(10)
    checkpoint = dataclasses.replace(checkpoint_of(rows, 10), chain_head=GENESIS)

    finding = verify_log(rows, [checkpoint])

    assert where(finding) == (9, "checkpoint")


def test_the_first_bad_entry_is_named_when_there_are_several() -> None:
    rows = log(20)
    rows[15] = dataclasses.replace(rows[15], entry=dataclasses.replace(rows[15].entry, seq=16))
    del rows[4]

    finding = verify_log(rows)

    assert where(finding) == (4, "removed")


# -- checkpoints --------------------------------------------------------------------------

LOG_KEY = ec.generate_private_key(ec.SECP256R1())
ORIGIN = "https://id.cardless.dev/audit"


def log_key(header: Mapping[str, Any]) -> tuple[Any, str] | None:
    return (LOG_KEY.public_key(), "ES256") if header.get("kid") == "audit-1" else None


def signed(claims: Mapping[str, Any], *, typ: str = CHECKPOINT_TYP, key: Any = LOG_KEY) -> str:
    headers = {"kid": "audit-1", "typ": typ}
    return jwt.encode(dict(claims), key, algorithm="ES256", headers=headers)


def published(rows: Sequence[StoredEntry]) -> dict[str, Any]:
    checkpoint = checkpoint_of(rows, len(rows))
    return checkpoint_claims(
        origin=ORIGIN,
        size=checkpoint.size,
        root=checkpoint.root,
        chain_head=checkpoint.chain_head,
        iat=checkpoint.iat,
    )


def refusal(token: str, keys: Callable[[Mapping[str, Any]], Any] = log_key) -> str:
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(token, keys=keys)
    return refused.value.reason


def test_a_signed_checkpoint_reads_back_and_vouches_for_the_log() -> None:
    rows = log(12)

    checkpoint = read_checkpoint(signed(published(rows)), keys=log_key)

    assert checkpoint == checkpoint_of(rows, 12)
    assert verify_log(rows, [checkpoint]) is None


def test_checkpoint_claims_carry_the_hashes_in_unpadded_base64url() -> None:
    claims = published(log(3))

    assert set(claims) == {"iss", "tree_size", "root_hash", "chain_head", "iat"}
    assert len(claims["root_hash"]) == 43  # 32 bytes, no "=" padding


def test_a_tampered_checkpoint_fails_its_signature() -> None:
    header, _, signature = signed(published(log(12))).split(".")
    grown = jwt.utils.base64url_encode(
        json.dumps({**published(log(12)), "tree_size": 11}).encode()
    ).decode()

    assert refusal(f"{header}.{grown}.{signature}") == "signature"


def test_a_checkpoint_signed_by_another_key_fails_its_signature() -> None:
    other = ec.generate_private_key(ec.SECP256R1())

    assert refusal(signed(published(log(3)), key=other)) == "signature"


def test_a_checkpoint_from_an_unknown_log_key_is_unknown_key() -> None:
    assert refusal(signed(published(log(3))), keys=lambda header: None) == "unknown_key"


@pytest.mark.parametrize(
    "changes",
    [
        {"tree_size": -1},
        {"tree_size": "12"},
        {"tree_size": True},
        {"root_hash": "AAAA"},
        {"root_hash": sha256(b"").hex()},
        {"chain_head": None},
        {"iss": None},
        {"iat": 1.5},
    ],
    ids=repr,
)
def test_a_signed_checkpoint_with_a_malformed_claim_is_malformed(changes: dict[str, Any]) -> None:
    claims = {**published(log(3)), **changes}

    token = signed({name: value for name, value in claims.items() if value is not None})

    assert refusal(token) == "malformed"


def test_a_token_of_another_type_is_not_a_checkpoint() -> None:
    assert refusal(signed(published(log(3)), typ="JWT")) == "malformed"
