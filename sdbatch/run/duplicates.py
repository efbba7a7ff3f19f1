"""Near-duplicate groups by perceptual hash: images whose 64-bit phashes differ in at most a few bits."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import TypeVar

HASH_BITS = 64  # imagehash.phash with hash_size 8, as the phash step records it (16 hex digits)
# Bits two phashes may differ in and still be near-duplicates: 8 of 64 is the cut imagehash users commonly take
# (resized, recompressed or slightly edited copies stay within it; different images are about 32 apart).
THRESHOLD = 8
_HEX = re.compile(r"[0-9a-fA-F]{16}")
Item = TypeVar("Item")


def parse_hash(value: object) -> int | None:
    """The hash as an int, or None when missing or not 16 hex digits."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        return None
    return int(value, 16)


def bands(threshold: int) -> list[tuple[int, int]]:
    """threshold + 1 bands (shift, mask) covering the 64 bits: by pigeonhole, two hashes within threshold bits
    of each other agree exactly on at least one band."""
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold {threshold}: use 0..{HASH_BITS - 1} bits")
    count = threshold + 1
    edges = [band * HASH_BITS // count for band in range(count + 1)]
    return [(low, (1 << (high - low)) - 1) for low, high in zip(edges, edges[1:])]


class _Sets:
    """Union-find over positions 0..n-1 (path halving; the smaller position becomes the root)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, at: int) -> int:
        while self.parent[at] != at:
            self.parent[at] = self.parent[self.parent[at]]
            at = self.parent[at]
        return at

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def near_duplicates(ids: Sequence[Item], hashes: Sequence[str | None],
                    threshold: int = THRESHOLD) -> list[list[Item]]:
    """Groups of two or more ids (any items, one per hash) linked by chains of hashes at most `threshold` bits
    apart: members in input order, groups in the order of their first member. Missing or malformed hashes are
    left out."""
    if len(ids) != len(hashes):
        raise ValueError(f"{len(ids)} ids but {len(hashes)} hashes")
    parsed = [parse_hash(value) for value in hashes]
    sets = _Sets(len(ids))
    first: dict[int, int] = {}  # each distinct hash: its first position (equal hashes join it directly)
    for at, value in enumerate(parsed):
        if value is not None:
            sets.union(first.setdefault(value, at), at)
    _link_close(sorted(first.items(), key=lambda item: item[1]), threshold, sets)
    members: dict[int, list[Item]] = defaultdict(list)
    for at, value in enumerate(parsed):
        if value is not None:
            members[sets.find(at)].append(ids[at])
    return [group for _, group in sorted(members.items()) if len(group) > 1]


def _link_close(distinct: list[tuple[int, int]], threshold: int, sets: _Sets) -> None:
    """Join the positions of distinct hashes within threshold bits: only pairs that share a band's exact value
    are compared, and only while they are still in different sets."""
    for shift, mask in bands(threshold):
        buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for value, at in distinct:
            buckets[(value >> shift) & mask].append((value, at))
        for bucket in buckets.values():
            for n, (value, at) in enumerate(bucket):
                for other, other_at in bucket[:n]:
                    if sets.find(at) != sets.find(other_at) and (value ^ other).bit_count() <= threshold:
                        sets.union(at, other_at)
