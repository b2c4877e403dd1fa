"""The citizen's tamper-evident audit log: every identity check, hash-chained and Merkle-logged.

Each entry commits to the one before (``chain_hash``), and the entries are the leaves of an
RFC 6962 Merkle tree whose signed heads (checkpoints) are published, so a citizen can check
with an inclusion proof that their entries are in the log, and anyone holding two
checkpoints can check with a consistency proof that the log only grew. The database keeps
the perfect subtrees (``completed_nodes``); the functions here say which nodes a head or a
proof needs and compute it from them. Pure: the caller reads the rows and signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, pairwise
from typing import Any

import jwt
import jwt.types

GENESIS = bytes(32)
EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32
CHECKPOINT_TYP = "checkpoint+jwt"
# The algorithms a resolver may pin a key to: the same two the platform's JWKS accepts.
ALGORITHMS = ("ES256", "EdDSA")
RESULTS = ("verified", "rejected")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_CHECKPOINT_CLAIMS = ("iss", "tree_size", "root_hash", "chain_head", "iat")
_DECODE_OPTIONS: jwt.types.Options = {
    "require": list(_CHECKPOINT_CLAIMS),
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
}

Node = tuple[int, int]  # (level, index): covers leaves [index * 2**level, (index + 1) * 2**level)


@dataclass(frozen=True)
class Entry:
    """One identity check, as the citizen sees it: who asked, why, for which claims (names only).

    ``citizen`` is pseudonymous and ``claims`` are claim names, never values: the log is shown
    to the citizen and published as hashes, so it must hold nothing a leak would disclose.
    """

    seq: int
    at: datetime
    citizen: str
    agency: str
    purpose: str
    claims: tuple[str, ...]
    result: str
    reason: str | None
    request_id: str

    def __post_init__(self) -> None:
        # A naive time has no single canonical form, so it could not be hashed the same twice.
        if self.at.utcoffset() is None:
            raise ValueError("Entry.at must be an aware datetime")

    def body(self) -> bytes:
        """The canonical bytes hashed into the log: compact JSON, sorted keys, UTF-8."""
        document = {
            "seq": self.seq,
            "at": self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "citizen": self.citizen,
            "agency": self.agency,
            "purpose": self.purpose,
            "claims": list(self.claims),
            "result": self.result,
            "reason": self.reason,
            "request_id": self.request_id,
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def leaf_hash(self) -> bytes:
        """RFC 6962 leaf hash: the 0x00 prefix keeps a leaf from passing for an inner node."""
        return hashlib.sha256(b"\x00" + self.body()).digest()


def chain_hash(previous: bytes, leaf: bytes) -> bytes:
    """The chain value after ``leaf``; the first entry's ``previous`` is ``GENESIS``."""
    return hashlib.sha256(previous + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 inner node hash, with the 0x01 prefix."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def completed_nodes(
    n: int, leaf: bytes, node: Callable[[int, int], bytes]
) -> list[tuple[int, int, bytes]]:
    """The perfect nodes appending leaf ``n`` completes, leaf first: what the database stores.

    ``node(level, index)`` gives an earlier stored node: only left siblings are asked for.
    """
    level, index, hash_ = 0, n, leaf
    done = [(level, index, hash_)]
    while index % 2 == 1:
        hash_ = node_hash(node(level, index - 1), hash_)
        level, index = level + 1, index // 2
        done.append((level, index, hash_))
    return done


def root_nodes(size: int) -> list[Node]:
    """The perfect nodes a tree head of ``size`` is built from, left to right."""
    return _range_nodes(0, size)


def _range_nodes(start: int, count: int) -> list[Node]:
    """The perfect nodes covering leaves [start, start + count), largest (leftmost) first.

    Every range RFC 6962's recursion splits off starts at a multiple of its own rounded-up
    size, so these nodes exist and folding them from the right gives the range's MTH.
    """
    nodes = []
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def _range_hash(start: int, count: int, nodes: Mapping[Node, bytes]) -> bytes:
    """MTH(D[start:start + count]) from the stored perfect nodes."""
    hashes = [nodes[node] for node in _range_nodes(start, count)]
    head = hashes[-1]
    for left in reversed(hashes[:-1]):
        head = node_hash(left, head)
    return head


def _split(n: int) -> int:
    """RFC 6962's k: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The (start, count) ranges whose MTHs form PATH(index, D[0:size]), leaf end first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    ranges, start, count = [], 0, size
    while count > 1:
        k = _split(count)
        if index - start < k:
            ranges.append((start + k, count - k))
            count = k
        else:
            ranges.append((start, k))
            start, count = start + k, count - k
    return ranges[::-1]


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The (start, count) ranges whose MTHs form PROOF(old, D[0:new]), in RFC 6962's order."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old in (0, new):
        return []
    ranges, start, count, whole = [], 0, new, True
    while old != count:
        k = _split(count)
        if old <= k:
            ranges.append((start + k, count - k))
            count = k
        else:
            ranges.append((start, k))
            start, count, old, whole = start + k, count - k, old - k, False
    if not whole:
        ranges.append((start, count))
    return ranges[::-1]


def _nodes_of(ranges: Iterable[tuple[int, int]]) -> list[Node]:
    return [node for start, count in ranges for node in _range_nodes(start, count)]


def proof_nodes(index: int, size: int) -> list[Node]:
    """The perfect nodes ``inclusion_proof(index, size, ...)`` reads, to fetch in one query."""
    return _nodes_of(_path_ranges(index, size))


def consistency_nodes(old: int, new: int) -> list[Node]:
    """The perfect nodes ``consistency_proof(old, new, ...)`` reads, to fetch in one query."""
    return _nodes_of(_consistency_ranges(old, new))


def tree_head(size: int, nodes: Mapping[Node, bytes]) -> bytes:
    """MTH(D[0:size]) from the nodes ``root_nodes(size)`` names; the empty tree's is sha256("")."""
    return EMPTY_ROOT if size == 0 else _range_hash(0, size, nodes)


def inclusion_proof(index: int, size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(index, D[0:size]), from the nodes ``proof_nodes`` names."""
    return [_range_hash(start, count, nodes) for start, count in _path_ranges(index, size)]


def consistency_proof(old: int, new: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(old, D[0:new]), from the nodes ``consistency_nodes`` names."""
    return [_range_hash(start, count, nodes) for start, count in _consistency_ranges(old, new)]


def _hashes(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def _same(computed: bytes, given: bytes) -> bool:
    return hmac.compare_digest(computed, given)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``root`` of ``size``.

    RFC 9162 §2.1.3.2, step for step.
    """
    if not 0 <= index < size or not _hashes(leaf, root, *proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not (fn & 1) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and _same(r, root)


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree ``new_root`` of ``new`` extends ``old_root`` of ``old``.

    RFC 9162 §2.1.4.2, step for step; the sizes it leaves out (old of 0, or equal sizes) take
    an empty proof, and an empty tree's head is sha256("").
    """
    if not 0 <= old <= new or not _hashes(old_root, new_root, *proof):
        return False
    if old == 0:
        return not proof and _same(EMPTY_ROOT, old_root)
    if old == new:
        return not proof and _same(old_root, new_root)
    if not proof:
        return False
    # Step 2: when old is a power of two its tree is a node of the new one, and starts the path.
    path = [old_root, *proof] if (old & (old - 1)) == 0 else list(proof)
    return _consistency_walk(old, new, path, old_root, new_root)


def _consistency_walk(
    old: int, new: int, path: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    """Steps 3 to 7 of RFC 9162 §2.1.4.2."""
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not (fn & 1) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and _same(fr, old_root) and _same(sr, new_root)


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted; ``reason`` is a stable code:
    "malformed", "signature", "unknown_key"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: the log of ``origin`` had ``size`` entries, this root and chain head."""

    origin: str
    size: int
    root: bytes
    chain_head: bytes
    iat: int


def checkpoint_claims(
    *, origin: str, size: int, root: bytes, chain_head: bytes, iat: int
) -> dict[str, Any]:
    """The payload of a checkpoint JWS (``typ`` checkpoint+jwt) the service signs."""
    return {
        "iss": origin,
        "tree_size": size,
        "root_hash": _b64url(root),
        "chain_head": _b64url(chain_head),
        "iat": iat,
    }


def read_checkpoint(
    token: str, *, keys: Callable[[Mapping[str, Any]], tuple[Any, str] | None]
) -> Checkpoint:
    """The checkpoint ``token`` holds, its signature verified; ``CheckpointError`` otherwise.

    ``keys(header)`` gives the log's public key and the one algorithm it is pinned to, or None.
    """
    header = _checkpoint_header(token)
    found = keys(header)
    if found is None or found[1] not in ALGORITHMS:
        raise CheckpointError("unknown_key")
    return _checkpoint(_checkpoint_payload(token, *found))


def _checkpoint_header(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or not token.isascii():
        raise CheckpointError("malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise CheckpointError("malformed") from None
    if header.get("typ") != CHECKPOINT_TYP:
        raise CheckpointError("malformed")
    return header


def _checkpoint_payload(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], options=_DECODE_OPTIONS
        )
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
        raise CheckpointError("signature") from None
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise CheckpointError("malformed") from None
    return claims


def _checkpoint(claims: Mapping[str, Any]) -> Checkpoint:
    origin, size, iat = claims["iss"], claims["tree_size"], claims["iat"]
    if not isinstance(origin, str) or not _count(size) or not _count(iat):
        raise CheckpointError("malformed")
    root, head = _hash_claim(claims["root_hash"]), _hash_claim(claims["chain_head"])
    return Checkpoint(origin, size, root, head, iat)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hash_claim(value: object) -> bytes:
    """A 32-byte hash in base64url without padding; ``CheckpointError`` for anything else."""
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value):
        raise CheckpointError("malformed")
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise CheckpointError("malformed") from None
    if len(decoded) != HASH_SIZE:
        raise CheckpointError("malformed")
    return decoded


@dataclass(frozen=True)
class Finding:
    """The first thing wrong with a log: where, what kind, and a sentence for the operator."""

    seq: int
    problem: str  # "changed" | "removed" | "reordered" | "inserted" | "checkpoint"
    detail: str


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the database returned it, with the leaf and chain values stored beside it."""

    entry: Entry
    leaf: bytes
    chain: bytes


class _Tree:
    """The log replayed so far in O(log n): a frontier of perfect nodes, and the chain head."""

    def __init__(self) -> None:
        self.size = 0
        self.chain = GENESIS
        self._frontier: dict[int, bytes] = {}  # level -> the one perfect node at that level

    def append(self, leaf: bytes, chain: bytes) -> None:
        done = completed_nodes(self.size, leaf, lambda level, _index: self._frontier[level])
        top, _, hash_ = done[-1]
        for level in range(top):
            del self._frontier[level]
        self._frontier[top] = hash_
        self.size, self.chain = self.size + 1, chain

    def head(self) -> bytes:
        nodes = {node: self._frontier[node[0]] for node in root_nodes(self.size)}
        return tree_head(self.size, nodes)


def verify_log(
    rows: Iterable[StoredEntry], checkpoints: Sequence[Checkpoint] = ()
) -> Finding | None:
    """The first bad entry of the log ``rows`` (ordered by seq), or None if it holds together.

    One pass with O(log n) state, looking one row ahead to tell a rewritten row from a
    misplaced one. Each row in turn:
    - its seq skips ahead: "reordered" if the next row's seq is lower (the missing one comes
      later), else "removed" (``seq`` is the first missing one);
    - its seq goes back: "inserted" if it repeats the previous row's, else "reordered";
    - its recomputed leaf differs from the stored one: "changed";
    - its stored chain does not follow: "changed" if the next row follows it (the row was
      rewritten, leaf and all, under its genuine chain value), "inserted" if it is the last
      row (appended without being chained), else "reordered".
    At each checkpoint's size the replayed tree head and chain head must equal the
    checkpoint's, and the log must reach every checkpoint's size: else "checkpoint" (``seq``
    is the checkpoint's last entry, or for a truncated log the first missing entry).
    """
    if any(checkpoint.size < 0 for checkpoint in checkpoints):
        raise ValueError("a checkpoint cannot have a negative size")
    tree = _Tree()
    pending = sorted(checkpoints, key=lambda checkpoint: checkpoint.size)
    for row, following in _rows_with_next(rows):
        finding = _at_checkpoints(tree, pending) or _row_finding(tree, row, following)
        if finding is not None:
            return finding
        tree.append(row.leaf, row.chain)
    return _at_checkpoints(tree, pending) or _beyond_end(tree, pending)


def _rows_with_next(
    rows: Iterable[StoredEntry],
) -> Iterator[tuple[StoredEntry, StoredEntry | None]]:
    """Each row with the one after it (None after the last), reading ahead by one row only."""
    ahead: Iterable[StoredEntry | None] = chain(rows, [None])
    for row, following in pairwise(ahead):
        if row is not None:
            yield row, following


def _at_checkpoints(tree: _Tree, pending: list[Checkpoint]) -> Finding | None:
    """Check, and drop from ``pending``, the checkpoints the tree has just reached."""
    while pending and pending[0].size == tree.size:
        checkpoint = pending.pop(0)
        last = checkpoint.size - 1
        if not _same(tree.head(), checkpoint.root):
            return Finding(max(last, 0), "checkpoint", f"tree head at size {tree.size} differs")
        if not _same(tree.chain, checkpoint.chain_head):
            return Finding(max(last, 0), "checkpoint", f"chain head at size {tree.size} differs")
    return None


def _beyond_end(tree: _Tree, pending: list[Checkpoint]) -> Finding | None:
    if not pending:
        return None
    size = pending[-1].size
    return Finding(tree.size, "checkpoint", f"{tree.size} rows, but a checkpoint says {size}")


def _row_finding(tree: _Tree, row: StoredEntry, following: StoredEntry | None) -> Finding | None:
    return _order_finding(tree.size, row, following) or _content_finding(tree, row, following)


def _order_finding(
    expected: int, row: StoredEntry, following: StoredEntry | None
) -> Finding | None:
    seq = row.entry.seq
    if seq > expected:
        if following is not None and following.entry.seq < seq:
            return Finding(expected, "reordered", f"seq {seq} stored where {expected} belongs")
        return Finding(expected, "removed", f"seq {expected} is missing (next is {seq})")
    if seq < expected:
        if seq == expected - 1:
            return Finding(expected, "inserted", f"a second row claims seq {seq}")
        return Finding(expected, "reordered", f"seq {seq} stored after seq {expected - 1}")
    return None


def _content_finding(
    tree: _Tree, row: StoredEntry, following: StoredEntry | None
) -> Finding | None:
    seq = tree.size
    if not _same(row.entry.leaf_hash(), row.leaf):
        return Finding(seq, "changed", "the entry does not hash to its stored leaf")
    if _same(chain_hash(tree.chain, row.leaf), row.chain):
        return None
    if following is None:
        return Finding(seq, "inserted", "the last entry is not chained to the one before")
    if _same(chain_hash(row.chain, following.leaf), following.chain):
        return Finding(seq, "changed", "the entry was rewritten under its old chain value")
    return Finding(seq, "reordered", "the chain does not follow from the entry before")
