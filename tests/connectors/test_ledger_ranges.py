"""connectors.s3.delivery: the merged ranges of offsets a partition emitted for an object."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ledger import add_offset


def merged(offsets: list[int]) -> list[list[int]]:
    """The merged half-open ranges holding exactly ``offsets`` (the expected result)."""
    out: list[list[int]] = []
    for o in sorted(set(offsets)):
        if out and out[-1][1] == o:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1])
    return out


def added(offsets: list[int], ranges: list[list[int]] | None = None) -> list[list[int]]:
    out = [list(r) for r in ranges or []]
    for o in offsets:
        add_offset(out, o)
    return out


@pytest.mark.parametrize("before,offset,after", [
    ([], 0, [[0, 1]]),
    ([], 7, [[7, 8]]),
    ([[0, 3]], 3, [[0, 4]]),                          # the next one: the last range grows
    ([[0, 3]], 5, [[0, 3], [5, 6]]),                  # a gap after the last range
    # Below the end of the last range: sorted in, and merged with what it touches.
    ([[0, 1], [2, 3]], 1, [[0, 3]]),                  # fills a gap: adjacent on both sides
    ([[5, 6]], 4, [[4, 6]]),                          # just before the last range
    ([[5, 6]], 2, [[2, 3], [5, 6]]),                  # well before it: a range of its own
    ([[0, 2], [5, 8]], 2, [[0, 3], [5, 8]]),          # right after an earlier range
    ([[0, 2], [5, 8]], 3, [[0, 2], [3, 4], [5, 8]]),  # between two, touching neither
    ([[0, 2], [5, 8]], 4, [[0, 2], [4, 8]]),          # right before the last range
    ([[3, 4], [6, 7]], 0, [[0, 1], [3, 4], [6, 7]]),  # before every range
    # Duplicates change nothing.
    ([[0, 5]], 0, [[0, 5]]),
    ([[0, 5]], 2, [[0, 5]]),
    ([[0, 5]], 4, [[0, 5]]),
    ([[0, 2], [4, 9]], 6, [[0, 2], [4, 9]]),
    ([[0, 2], [4, 6], [8, 9]], 1, [[0, 2], [4, 6], [8, 9]]),
])
def test_add_offset(before: list[list[int]], offset: int, after: list[list[int]]) -> None:
    ranges = [list(r) for r in before]
    add_offset(ranges, offset)
    assert ranges == after


def test_offsets_out_of_order_adjacent_overlapping_and_repeated() -> None:
    # A record re-emitted after a retry, a dead letter marked late, a restart part-way.
    offsets = [0, 1, 2, 6, 7, 4, 3, 3, 9, 5, 8, 0, 12, 10, 11, 11, 2]
    assert added(offsets) == [[0, 13]]
    assert added([10, 8, 6, 4, 2, 0]) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert added([10, 8, 6, 4, 2, 0, 9, 7, 5, 3, 1]) == [[0, 11]]


@settings(max_examples=300, deadline=None)
@given(offsets=st.lists(st.integers(0, 40), max_size=60))
def test_any_order_gives_the_merged_ranges_of_the_set(offsets: list[int]) -> None:
    ranges = added(offsets)
    assert ranges == merged(offsets)
    # Sorted, disjoint and not touching: the ranges are as few as they can be.
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
