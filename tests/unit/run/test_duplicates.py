"""Near-duplicate groups by phash: the band index finds exactly what comparing every pair finds."""

from __future__ import annotations

import random

import pytest

from sdbatch.run.duplicates import HASH_BITS, THRESHOLD, bands, near_duplicates, parse_hash

BASE = 0x0123456789ABCDEF


def _hex(value: int) -> str:
    return f"{value:016x}"


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _brute_force(hashes: list[str | None], threshold: int) -> list[list[int]]:
    """The oracle: components of the graph of every pair within threshold bits, by depth-first search."""
    values = {n: parse_hash(h) for n, h in enumerate(hashes) if parse_hash(h) is not None}
    seen: set[int] = set()
    groups = []
    for start in values:
        if start in seen:
            continue
        stack, component = [start], set()
        while stack:
            at = stack.pop()
            if at in component:
                continue
            component.add(at)
            stack += [n for n in values if n not in component and (values[n] ^ values[at]).bit_count() <= threshold]
        seen |= component
        if len(component) > 1:
            groups.append(sorted(component))
    return groups


def test_the_bands_cover_the_64_bits_once_each_in_threshold_plus_one_parts():
    for threshold in (0, 1, 7, 8, 13, 63):
        parts = bands(threshold)
        assert len(parts) == threshold + 1
        covered = [shift + bit for shift, mask in parts for bit in range(mask.bit_length())]
        assert covered == list(range(HASH_BITS))
    for bad in (-1, HASH_BITS):
        with pytest.raises(ValueError, match="0..63"):
            near_duplicates([], [], bad)


@pytest.mark.parametrize("threshold", [0, 3, THRESHOLD])
def test_hashes_exactly_threshold_apart_group_and_one_bit_more_does_not(threshold):
    # The hardest case for the index: the flipped bits spread over every band but one, for each band left intact.
    for shift, mask in bands(threshold):
        others = [s for s, _ in bands(threshold) if s != shift][:threshold]
        near = _flip(BASE, others)
        assert (near ^ BASE).bit_count() == threshold
        assert near_duplicates(["a", "b"], [_hex(BASE), _hex(near)], threshold) == [["a", "b"]]
        far = _flip(near, [shift])  # one bit more, in the band that was intact
        assert near_duplicates(["a", "b"], [_hex(BASE), _hex(far)], threshold) == []
    assert THRESHOLD == 8
    assert near_duplicates(["a", "b"], [_hex(BASE), _hex(_flip(BASE, list(range(8))))]) == [["a", "b"]]
    assert near_duplicates(["a", "b"], [_hex(BASE), _hex(_flip(BASE, list(range(9))))]) == []


def test_groups_are_transitive_through_chains_even_when_the_ends_are_far_apart():
    a = BASE
    b = _flip(a, [0, 9, 18])
    c = _flip(b, [27, 36, 45])  # 6 bits from a: above the threshold of 4, joined only through b
    d = _flip(c, [50, 55, 60])
    lone = _flip(a, list(range(0, 64, 4)))
    hashes = [_hex(d), _hex(lone), _hex(a), _hex(c), _hex(b)]
    assert near_duplicates(["d", "lone", "a", "c", "b"], hashes, 4) == [["d", "a", "c", "b"]]
    assert near_duplicates(["d", "lone", "a", "c", "b"], hashes, 2) == []


def test_missing_and_malformed_hashes_are_left_out_not_an_error():
    good = _hex(BASE)
    near = _hex(_flip(BASE, [3]))
    hashes = [None, good, "", "xyz", good[:-1], good + "0", "0x" + good[2:], " " + good[1:], "+" + good[1:],
              good.replace("1", "_", 1), 12345, near.upper(), None]
    ids = [f"i{n}" for n in range(len(hashes))]
    assert near_duplicates(ids, hashes) == [["i1", "i11"]]  # upper-case hex reads as the same hash
    assert near_duplicates(["a", "b"], [None, None]) == [] and near_duplicates([], []) == []
    with pytest.raises(ValueError, match="3 ids but 2 hashes"):
        near_duplicates(["a", "b", "c"], [good, good])


def test_identical_hashes_form_one_group_and_the_order_follows_the_input():
    same = _hex(BASE)
    other = _hex(~BASE & (2**64 - 1))
    hashes = [other, same, other, same, same, other]
    ids = ["o1", "s1", "o2", "s2", "s3", "o3"]
    expected = [["o1", "o2", "o3"], ["s1", "s2", "s3"]]
    assert near_duplicates(ids, hashes) == expected and near_duplicates(ids, hashes) == expected
    reordered = [1, 0, 2, 3, 4, 5]
    assert near_duplicates([ids[n] for n in reordered], [hashes[n] for n in reordered]) == expected[::-1]
    assert near_duplicates([("any", 1), ("item", 2)], [same, same]) == [[("any", 1), ("item", 2)]]


@pytest.mark.parametrize("threshold", [0, 3, THRESHOLD, 12])
def test_the_band_index_finds_what_comparing_every_pair_finds(threshold):
    chance = random.Random(31 + threshold)
    hashes: list[str | None] = []
    for _ in range(60):  # planted: copies of a base a few bits off, and chains of them
        value = chance.getrandbits(64)
        hashes.append(_hex(value))
        for _ in range(chance.randint(1, 4)):
            if chance.random() < 0.5:
                value = chance.choice([parse_hash(h) for h in hashes[-3:] if h])  # a chain or a star
            hashes.append(_hex(_flip(value, chance.sample(range(64), chance.randint(0, threshold + 2)))))
    hashes += [_hex(chance.getrandbits(64)) for _ in range(150)]
    hashes += [None, "not a hash"] * 5
    chance.shuffle(hashes)
    found = near_duplicates(list(range(len(hashes))), hashes, threshold)
    expected = _brute_force(hashes, threshold)
    assert found == expected
    assert len(hashes) >= 300 and len(expected) >= 20  # planted groups are there to be found
