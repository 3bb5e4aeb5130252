"""Idle objects' ranges, packed: the same answers as the live tables, in a fraction of the
memory, and the journals that use them keep every promise of the unpacked ones."""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import connectors.ledger as journal_mod
from connectors.ledger import IDLE_SECS, Ledger, LedgerView
from connectors.packed import PackedRanges, pack_flat, unpack_flat


def oid(n: int) -> str:
    """An object id of the shape :func:`dataflow.core.messages.object_id` makes."""
    return hashlib.sha256(str(n).encode()).hexdigest()[:16]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), max_size=40, unique=True),
       st.lists(st.integers(1, 300), max_size=40), st.integers(0, 2**62))
def test_packed_ranges_unpack_to_the_same_numbers(numbers, gaps, start) -> None:
    for flat in (array("q", sorted(numbers)[: len(numbers) // 2 * 2]),
                 array("q", itertools.accumulate(gaps[: len(gaps) // 2 * 2], initial=start)
                       )[: len(gaps) // 2 * 2]):
        assert unpack_flat(pack_flat(flat)).tolist() == flat.tolist()


def test_ranges_pack_into_a_few_bytes() -> None:
    assert len(pack_flat(array("q", [0, 480]))) == 5
    sparse = array("q", [o for s in range(7, 500, 11) for o in (s, s + 1)])  # findings
    assert len(pack_flat(sparse)) == 1 + 8 + len(sparse) - 1
    assert len(pack_flat(array("q", [0, 5, 2**40, 2**40 + 1]))) == 1 + 4 * 8
    for odd in ([-5, 3], [-300, -2, 7, 9]):  # a journal line may hold anything that is ints
        assert unpack_flat(pack_flat(array("q", odd))).tolist() == odd


def test_store_answers_as_a_dict_would_and_leaves_other_ids_alone() -> None:
    store = PackedRanges()
    flats = {oid(i): array("q", [0, i + 1]) for i in range(2000)}
    for n, (obj, flat) in enumerate(flats.items()):
        assert store.put(obj, float(n), flat, flag=n % 2 == 0)
    derived = oid(7) + ".rules"
    assert store.put(derived, 5.0, array("q", [3, 4, 9, 10]))
    assert len(store) == 2001
    for obj, flat in flats.items():
        assert store.get(obj).tolist() == flat.tolist()
    assert store.get(derived).tolist() == [3, 4, 9, 10]
    assert store.get(oid(7) + ".intel") is None and store.get(oid(99999)) is None
    # ids of another shape are not taken (their owner keeps them)
    for other in ("obj", "ABCDEF0123456789", oid(1)[:15], oid(1) + "."):
        assert not store.put(other, 1.0, array("q", [0, 1]))
        assert store.get(other) is None
    assert {o for o, _, _ in store.items(flagged=True)} == {
        o for n, o in enumerate(flats) if n % 2 == 0}
    t, flat, flag = store.pop(oid(3))
    assert (t, flat.tolist(), flag) == (3.0, [0, 4], False)
    assert store.get(oid(3)) is None and store.pop(oid(3)) is None and len(store) == 2000
    assert store.put(oid(4), 9.0, array("q", [0, 2]))  # replaced, not added
    assert len(store) == 2000 and store.get(oid(4)).tolist() == [0, 2]


def test_store_expires_by_time_once_past_the_slack() -> None:
    store = PackedRanges()
    for i in range(1000):
        store.put(oid(i), float(i), array("q", [0, 1]))
    assert store.expire(100.0, slack=200.0) == 0  # no bucket holds one older than 100 - 200
    gone = store.expire(500.0, slack=200.0)  # the buckets holding one older than 300 ...
    assert 0 < gone <= 500 and len(store) == 1000 - gone
    assert store.get(oid(0)) is None and store.get(oid(500)) is not None  # ... all of < 500
    assert store.expire(500.0) == 500 - gone
    assert len(store) == 500
    assert store.get(oid(499)) is None and store.get(oid(500)) is not None


def test_a_week_of_journal_costs_a_fraction_of_what_live_entries_did(tmp_path: Path) -> None:
    """Memory, not speed: a ledger and the sources' view over 20,000 objects of a week.
    Kept live, they held ~230 + ~290 bytes an object (bench/journal.py)."""
    now = [1.7e9]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ledger = Ledger(tmp_path, 0, clock=lambda: now[0])
        view = LedgerView(tmp_path)
        for i in range(20_000):
            ledger.record_ranges({oid(i): [[0, 300 + i % 400]]})
            now[0] += 30.0  # a week: 20,000 objects, one every 30 s
            if i % 100 == 99:
                view.refresh()
        view.refresh()
        per_object = (tracemalloc.get_traced_memory()[0] - base) / 20_000
    finally:
        tracemalloc.stop()
    assert len(ledger) == len(view) == 20_000
    assert per_object < 200  # ~140 measured
    assert all(view.covered(oid(i), 300) for i in range(0, 20_000, 997))
    assert ledger.held([f"{oid(5)}-{o}" for o in (0, 304, 305)]) == [0, 1]


# --- the journals, with objects packed --------------------------------------------------------


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(journal_mod.time, "time", lambda: now[0])
    monkeypatch.setattr(journal_mod, "COMPACT_EVERY", 4)
    return now


def test_ledger_packs_idle_objects_and_still_skips_their_records(tmp_path: Path,
                                                                 clock) -> None:
    j = Ledger(tmp_path, 0)
    a, b = oid(1), oid(2)
    j.record([f"{a}-{i}" for i in range(500)])
    j.record([f"{a}.rules-{i}" for i in (3, 40, 41, 400)])
    clock[0] += IDLE_SECS + 1
    j.record([f"{b}-0"])
    j.record([f"{b}-1"])  # the 4th append: a compaction
    assert a not in j._done and a + ".rules" not in j._done and b in j._done
    assert len(j) == 3
    assert j.held([f"{a}-0", f"{a}-499", f"{a}-500", f"{a}.rules-40", f"{a}.rules-42",
                   f"{b}-1"]) == [0, 1, 3, 5]
    # a replay delivers more of a packed object: merged with what was packed
    j.record([f"{a}-500"])
    assert j._done[a].tolist() == [0, 501] and j._done[a] is j._mine[a]
    j.close()
    again = Ledger(tmp_path, 0)  # the file still has every object, packed or not
    assert again.held([f"{a}-500", f"{a}.rules-400", f"{a}.rules-5", f"{b}-1"]) == [0, 1, 3]


def test_a_rewrite_keeps_packed_objects_and_only_the_own_files(tmp_path: Path, clock) -> None:
    other = Ledger(tmp_path, 1)
    a, b = oid(1), oid(2)
    other.record([f"{a}-0"])
    other.close()
    j = Ledger(tmp_path, 0)
    j.record([f"{b}-0", f"{b}-1"])
    clock[0] += IDLE_SECS + 1
    for i in range(4):  # a compaction, which packs a and b, then rewrites
        j.record([f"{oid(10 + i)}-0"])
    assert not j._done.keys() & {a, b} and j.has(f"{a}-0") and j.has(f"{b}-1")
    j._compact(rewrite=True)
    written = (tmp_path / "journal-w0.jsonl").read_text()
    assert b in written and a not in written  # a is the other file's
    j.close()
    (tmp_path / "journal-w1.jsonl").unlink()
    again = Ledger(tmp_path, 0)
    assert again.has(f"{b}-1") and not again.has(f"{a}-0")


def test_packed_objects_expire_after_the_retention(tmp_path: Path, clock) -> None:
    j = Ledger(tmp_path, 0, retention_secs=10 * IDLE_SECS)
    a = oid(1)
    j.record([f"{a}-0"])
    clock[0] += 2 * IDLE_SECS
    for i in range(4):
        j.record([f"{oid(10 + i)}-0"])
    assert a not in j._done and j.has(f"{a}-0")  # packed
    clock[0] += 10 * IDLE_SECS  # past the retention, and the slack (a 16th of it)
    for i in range(4):
        j.record([f"{oid(20 + i)}-0"])
    assert not j.has(f"{a}-0") and j.has(f"{oid(10)}-0")


def test_the_file_is_not_rewritten_at_every_compaction(tmp_path: Path, clock) -> None:
    """Rewriting a week of objects every few appends would cost what the week holds, each
    time: the file is rewritten once it has had as many appends as the ledger has objects."""
    j = Ledger(tmp_path, 0)
    j.record_ranges({oid(i): [[0, 5]] for i in range(10)})  # one append, ten objects
    inode = (tmp_path / "journal-w0.jsonl").stat().st_ino
    for i in range(3):
        j.record([f"{oid(100 + i)}-0"])  # the 4th append: a compaction, 4 appends < 13
    assert (tmp_path / "journal-w0.jsonl").stat().st_ino == inode
    for i in range(8):  # more requests of one object: at the 12th append, 12 < 13 objects
        j.record([f"{oid(100)}-{i + 1}"])
    assert (tmp_path / "journal-w0.jsonl").stat().st_ino == inode
    for i in range(4):  # at the 16th: rewritten, one line an object
        j.record([f"{oid(100)}-{i + 9}"])
    assert (tmp_path / "journal-w0.jsonl").stat().st_ino != inode
    assert len((tmp_path / "journal-w0.jsonl").read_bytes().splitlines()) == len(j) == 13
    assert j.has(f"{oid(100)}-12")


def test_loading_packs_as_it_reads(tmp_path: Path, clock, monkeypatch) -> None:
    """A week of journal is not unpacked at start, all at once."""
    monkeypatch.setattr(journal_mod, "_LOAD_SETTLE_LINES", 50)
    j = Ledger(tmp_path, 0)
    for i in range(300):
        j.record([f"{oid(i)}-0"])
        clock[0] += 10
    j.close()
    peak = []
    real = Ledger._add

    def add(self, *args, **kwargs):
        real(self, *args, **kwargs)
        peak.append(len(self._done))

    monkeypatch.setattr(Ledger, "_add", add)
    again = Ledger(tmp_path, 0)
    assert max(peak) < 150  # 300 objects, one every 10 s, packed at least every 50 lines
    assert all(again.has(f"{oid(i)}-0") for i in range(300))


def test_view_packs_idle_unwatched_objects(tmp_path: Path, clock) -> None:
    j = Ledger(tmp_path, 0)
    view = LedgerView(tmp_path)
    a, b, c = oid(1), oid(2), oid(3)
    j.record([f"{a}-{i}" for i in range(3)])
    j.record([f"{b}-0"])
    view.watch(b)
    clock[0] += IDLE_SECS + 1
    j.record([f"{c}-0"])
    view.refresh()
    assert a not in view._done and b in view._done  # b is watched: kept live
    assert view.covered(a, 3) and not view.covered(a, 4) and len(view) == 3
    j.record([f"{a}-3"])  # more of a packed object: merged
    view.refresh()
    assert view.covered(a, 4)
    clock[0] += IDLE_SECS + 1
    j.record([f"{c}-1"])
    view.refresh()
    view.watch(a)
    view.forget(a)  # its last owner is done: kept, packed, until the retention
    assert view.covered(a, 4) and a not in view._done and len(view) == 3
