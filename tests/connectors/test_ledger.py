"""The upload journal: delivered ranges survive restarts, torn lines and compaction."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import connectors.ledger as journal_mod
from connectors.ledger import Ledger


def ids(obj: str, *offsets: int) -> list[str]:
    return [f"{obj}-{o}" for o in offsets]


def test_records_are_remembered_across_a_restart(tmp_path: Path) -> None:
    j = Ledger(tmp_path, 0)
    j.record(ids("aaaa", 0, 1, 2, 5))
    j.record(ids("bb-cc", 7))  # object ids never contain "-", but offsets are split from the right
    j.close()
    again = Ledger(tmp_path, 0)
    assert [again.has(r) for r in ids("aaaa", 0, 1, 2, 3, 4, 5, 6)] == [
        True, True, True, False, False, True, False]
    assert again.has("bb-cc-7") and not again.has("bb-cc-8")
    assert not again.has("zzzz-0")


def test_every_workers_file_is_read(tmp_path: Path) -> None:
    Ledger(tmp_path, 0).record(ids("a", 1))
    Ledger(tmp_path, 1).record(ids("b", 2))
    j = Ledger(tmp_path, 0)  # e.g. after a restart with one worker instead of two
    assert j.has("a-1") and j.has("b-2")


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    j = Ledger(tmp_path, 0)
    j.record(ids("a", 1))
    j.close()
    with (tmp_path / "journal-w0.jsonl").open("ab") as f:
        f.write(b'{"t": 1, "r": {"a": [[5, ')  # a crash in the middle of a write
    again = Ledger(tmp_path, 0)
    assert again.has("a-1") and not again.has("a-5")


def test_lines_of_another_shape_are_rejected_and_the_rest_is_read(tmp_path: Path,
                                                                   caplog) -> None:
    """A line that is JSON but not a journal entry (a damaged disk, a hand edit) is rejected
    with the reason in the log; the start goes on. An offset beyond what a range array
    holds stopped the start with OverflowError."""
    j = Ledger(tmp_path, 0)
    j.record(ids("a", 1))
    j.close()
    t = int(time.time())
    with (tmp_path / "journal-w0.jsonl").open("ab") as f:
        f.write(b'{"t": %d, "r": {"b": [[0, 9223372036854775813]]}}\n' % t)  # 2**63 + 5
        f.write(b'{"t": %d, "r": {"c": [[0, 1, 2]]}}\n' % t)
        f.write(b'{"t": true, "r": {"d": [[0, 1]]}}\n')
        f.write(b'[1, 2]\n')
        f.write(b'{"t": %d, "r": {"e": [[2, 4], [6, 7]]}, "x": "ignored"}\n' % t)
    again = Ledger(tmp_path, 0)
    assert again.has("a-1") and again.has("e-3") and again.has("e-6") and not again.has("e-5")
    assert not any(again.has(f"{o}-0") for o in "bcd")
    assert "malformed: 4 (lines 2, 3, 4, 5)" in caplog.text
    assert "not journal lines of this version" in caplog.text and "authenticate" not in caplog.text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_deep_nesting_and_a_huge_line_do_not_stop_a_start(
        tmp_path_factory, junk: list[bytes]) -> None:
    """Whatever the journal holds besides its lines, a start reads the good ones and goes
    on: arbitrary bytes, JSON nested 100,000 deep, a line of 200,000 ranges."""
    d = tmp_path_factory.mktemp("journal")
    t = int(time.time())
    huge = b",".join(b"[%d,%d]" % (2 * i, 2 * i + 1) for i in range(200_000))
    with (d / "journal-w0.jsonl").open("wb") as f:
        f.write(b'{"t": %d, "r": {"a": [[0, 2]]}}\n' % t)
        for line in junk:
            f.write(line.replace(b"\n", b" ") + b"\n")
        f.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        f.write(b'{"t": %d, "r": {"z": [[0, 1]], "n": ' % t + b"[" * 100_000 + b"\n")
        f.write(b'{"t": %d, "r": {"h": [%s]}}\n' % (t, huge))
        f.write(b'{"t": %d, "r": {"b": [[5, 6]]}}\n' % t)
    j = Ledger(d, 1)
    assert j.has("a-1") and j.has("b-5") and j.has("h-399998") and not j.has("h-399999")
    assert not j.has("z-0")


def test_compaction_merges_and_expires_relative_to_the_newest_entry(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(journal_mod, "COMPACT_EVERY", 5)
    clock = [1000.0]
    monkeypatch.setattr(journal_mod.time, "time", lambda: clock[0])
    j = Ledger(tmp_path, 0, retention_secs=100)
    j.record(ids("old", 0, 1))
    clock[0] += 500  # "old" is now far older than the retention
    for i in range(4):
        j.record(ids("new", i))
    assert not j.has("old-0")  # expired at the 5th append's compaction
    assert all(j.has(f"new-{i}") for i in range(4))
    j.close()
    lines = (tmp_path / "journal-w0.jsonl").read_bytes().splitlines()
    assert lines == [b'{"t":1500.0,"r":{"new":[[0,4]]}}']
    # A long outage does not expire anything: age is measured from the newest entry.
    clock[0] += 10**6
    assert Ledger(tmp_path, 0, retention_secs=100).has("new-3")


def test_view_tails_appends_and_rereads_compacted_files(tmp_path) -> None:
    from connectors.ledger import DEAD_LETTERED, LedgerView

    delivered = Ledger(tmp_path, 0)
    dead = Ledger(tmp_path, 1, name=DEAD_LETTERED)
    view = LedgerView(tmp_path)
    delivered.record([f"a-{i}" for i in range(5)])
    view.refresh()
    assert view.covered("a", 5) and not view.covered("a", 7)
    dead.record_ranges({"a": [[5, 7]]})
    view.refresh()
    assert view.covered("a", 7)
    delivered.record(["b-0"])
    delivered._file.close()
    delivered._compact(rewrite=True)  # replaced by a new file: the view reads it again from the start
    view.refresh()
    assert view.covered("b", 1) and view.covered("a", 7)
    assert view.covered("zzz", 0) and not view.covered("zzz", 1)


# -- authenticated lines (a key is configured) -------------------------------------------------

def _ring(*ids: str, current: str | None = None):
    from connectors.ops.crypto import Keyring

    keys = {"k1": bytes(range(32)), "k2": bytes(range(1, 33))}
    return Keyring({i: keys[i] for i in ids}, current or ids[-1])


def _rejected(reason: str, journal: str = "journal") -> float:
    from dataflow.core import metrics

    return metrics.JOURNAL_REJECTED_LINES.labels(journal, reason)._value.get()


class _Recorder:
    """A service that accepts everything and remembers what it was sent."""

    def __init__(self, _cfg: object) -> None:
        self.sent: list[bytes] = []

    def send(self, stream: str, body: bytes, request_id: str | None = None) -> None:
        self.sent.append(body)

    def close(self) -> None:
        pass


def test_a_line_slipped_into_the_journal_does_not_make_the_sink_skip_a_record(
        tmp_path: Path, caplog) -> None:
    import base64
    import gzip

    import orjson

    from connectors.deadletter import DeadLetterStore
    from connectors.sentinel.sink import SentinelSink
    from dataflow.config import SentinelConfig
    from dataflow.core.messages import Batch

    ring = _ring("k1")
    j = Ledger(tmp_path, 0, keyring=ring)
    j.record(ids("mine", 0, 1))
    j.close()
    assert b'"kid":"k1","mac":"' in (tmp_path / "journal-w0.jsonl").read_bytes()
    before = {r: _rejected(r) for r in ("unauthenticated", "bad_mac", "unknown_key")}
    zeros = base64.b64encode(bytes(32)).decode()
    now = time.time()
    (tmp_path / "journal-w7.jsonl").write_text(
        f'{{"t":{now},"r":{{"victim":[[0,100]]}}}}\n'  # no MAC: what the attack appended
        f'{{"t":{now},"r":{{"victim2":[[0,5]]}},"kid":"k1","mac":"{zeros}"}}\n'
        f'{{"t":{now},"r":{{"victim3":[[0,5]]}},"kid":"k9","mac":"{zeros}"}}\n')
    caplog.set_level("ERROR")
    again = Ledger(tmp_path, 0, keyring=ring)
    assert again.has("mine-1")
    assert not any(again.has(f"{v}-3") for v in ("victim", "victim2", "victim3"))
    assert {r: _rejected(r) - before[r] for r in before} == {
        "unauthenticated": 1, "bad_mac": 1, "unknown_key": 1}
    assert "journal-w7.jsonl: lines rejected" in caplog.text and "lines 2" in caplog.text
    assert Ledger(tmp_path, 1).has("victim-3")  # without a key: not checked

    # The sink takes the keyring of the dead-letter store (the same runtime.encryption_*):
    # the record the forged line names is sent.
    cfg = SentinelConfig(endpoint="https://127.0.0.1:1", rule_id="dcr-0")
    recorder: list[_Recorder] = []

    def service(*c: object) -> _Recorder:
        recorder.append(_Recorder(c))
        return recorder[0]

    sink = SentinelSink(cfg, service, journal_dir=str(tmp_path),
                        dead_letters=lambda: DeadLetterStore(tmp_path / "errors", keyring=ring))
    part = sink.build("out", 0, 1)
    part.write_batch([Batch("Custom-T_CL", (b'{"i":3}', b'{"i":0}'), ("victim-3", "mine-0"))])
    part.close()
    assert [orjson.loads(gzip.decompress(b)) for b in recorder[0].sent] == [[{"i": 3}]]


def test_authenticated_lines_survive_key_rotation_and_old_plain_lines_are_refused(
        tmp_path: Path) -> None:
    Ledger(tmp_path, 9).record(ids("plain", 0))  # written before a key was configured
    j = Ledger(tmp_path, 0, keyring=_ring("k1"))
    j.record(ids("a", 0, 1))
    j.close()
    Ledger(tmp_path, 1, keyring=_ring("k1")).record(ids("b", 0))
    before = _rejected("unauthenticated")
    both = _ring("k1", "k2", current="k2")
    j = Ledger(tmp_path, 0, keyring=both)  # compaction re-authenticates w0 under k2
    assert j.has("a-1") and j.has("b-0")
    assert not j.has("plain-0")  # refused: sent again, a duplicate rather than a loss
    assert _rejected("unauthenticated") - before == 1
    j.close()
    assert b'"kid":"k2"' in (tmp_path / "journal-w0.jsonl").read_bytes()
    only_k2 = Ledger(tmp_path, 0, keyring=_ring("k2"))
    assert only_k2.has("a-1")  # rewritten under k2
    assert not only_k2.has("b-0")  # w1 is still under the retired k1


def test_the_view_checks_macs_too(tmp_path: Path) -> None:
    from connectors.ledger import LedgerView

    ring = _ring("k1")
    Ledger(tmp_path, 0, keyring=ring).record(ids("a", 0, 1, 2))
    with (tmp_path / "journal-w5.jsonl").open("ab") as f:
        f.write(b'{"t":%f,"r":{"b":[[0,9]]}}\n' % time.time())
    view = LedgerView(tmp_path, keyring=ring)
    view.refresh()
    assert view.covered("a", 3) and not view.covered("b", 1)
    unchecked = LedgerView(tmp_path)
    unchecked.refresh()
    assert unchecked.covered("b", 1)


def test_a_line_names_the_dcr_that_accepted_it_and_stays_authenticated(tmp_path: Path) -> None:
    import orjson

    ring = _ring("k1")
    j = Ledger(tmp_path, 0, keyring=ring)
    j.record(ids("obj", 0, 1, 2), via="dcr-" + "a" * 32)
    j.close()
    (line,) = (tmp_path / "journal-w0.jsonl").read_bytes().splitlines()
    assert orjson.loads(line)["d"] == "dcr-" + "a" * 32
    again = Ledger(tmp_path, 1, keyring=ring)  # the MAC covers the DCR id: the line is used
    assert all(again.has(f"obj-{i}") for i in range(3))
    forged = line.replace(b"dcr-aaaa", b"dcr-bbbb")
    (tmp_path / "journal-w0.jsonl").write_bytes(forged + b"\n")
    assert not Ledger(tmp_path, 2, keyring=ring).has("obj-0")


# --- what the ledgers hold in memory ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=6),
                max_size=8),
       st.lists(st.tuples(st.integers(0, 70), st.integers(0, 10)), max_size=10))
def test_compact_ranges_hold_exactly_what_was_added(batches, asked) -> None:
    """Ranges are kept as one flat array per object; whatever order and overlap they come
    in, an offset is held exactly when some added range has it."""
    from connectors.ledger import _flat_add, _holds, _pairs

    flat, held = None, set()
    for batch in batches:
        ranges = [[s, s + n] for s, n in batch]
        before = None if flat is None else flat.tolist()
        new = _flat_add(flat, ranges)
        assert flat is None or flat.tolist() == before  # a new array: stored ones are shared
        flat = new
        held.update(o for s, e in ranges for o in range(s, e))
    pairs = _pairs(flat) if flat is not None else []
    assert [o for s, e in pairs for o in range(s, e)] == sorted(held)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(pairs))  # merged: none touch
    for s, n in asked:
        assert _holds(flat, s, s + n) == all(o in held for o in range(s, s + n))


def test_a_ledger_keeps_one_array_per_object_of_its_own(tmp_path: Path) -> None:
    """The writer's own objects are in both its tables (all files, its file) as one array."""
    j = Ledger(tmp_path, 0)
    j.record(ids("a", 0, 1, 5))
    j.record(ids("a", 2))
    assert j._done["a"] is j._mine["a"]
    Ledger(tmp_path, 1).record(ids("a", 9))
    again = Ledger(tmp_path, 0)  # a's ranges from both files, and from its own apart
    assert again._done["a"].tolist() == [0, 3, 5, 6, 9, 10]
    assert again._mine["a"].tolist() == [0, 3, 5, 6]


def test_partitions_of_a_process_share_one_view_of_the_journals(tmp_path: Path) -> None:
    from connectors.ledger import LedgerView
    from connectors.s3.delivery import DeliveryTracker

    a = DeliveryTracker(str(tmp_path), "trail", "trail:0/2")
    b = DeliveryTracker(str(tmp_path), "trail", "trail:1/2")
    assert a._view is b._view is LedgerView.shared(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert LedgerView.shared(other) is not a._view
    assert LedgerView.shared(tmp_path, keyring=_ring("k1")) is not a._view  # checks MACs


def test_the_view_drops_what_nobody_waits_for_after_the_retention(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Lines name objects no partition of this process waits for (other processes',
    findings): the view keeps them only as long as the journal keeps ranges, counted from
    the newest entry. Before, it kept them for as long as the process ran."""
    from connectors.ledger import LedgerView

    clock = [1000.0]
    monkeypatch.setattr(journal_mod.time, "time", lambda: clock[0])
    j = Ledger(tmp_path, 0)
    view = LedgerView(tmp_path, retention_secs=100)
    j.record(ids("others", 0, 1))
    j.record(ids("waited", 0))
    view.watch("waited")
    view.refresh()
    assert len(view) == 2
    clock[0] += 50
    j.record(ids("recent", 0))
    view.refresh()
    assert len(view) == 3  # nothing is older than the retention yet
    clock[0] += 60
    j.record(ids("newest", 0))
    view.refresh()
    assert not view.covered("others", 1)  # 110 s before the newest entry: dropped
    assert view.covered("waited", 1) and view.covered("recent", 1)  # watched; 60 s old
    assert len(view) == 3
    clock[0] += 10**6  # a long outage expires nothing: age counts from the newest entry
    view.refresh()
    assert len(view) == 3


def test_a_view_keeps_a_forgotten_object_until_the_retention(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Once no owner waits for an object its ranges stay, as any unwatched object's do:
    the view reads each line once, and the object may be waited for again (a second
    notification of it, after its first message was deleted). They went with the last
    forget, and such a message waited for ever."""
    from connectors.ledger import LedgerView

    clock = [1000.0]
    monkeypatch.setattr(journal_mod.time, "time", lambda: clock[0])
    j = Ledger(tmp_path, 0)
    j.record(ids("x", 0, 1))
    view = LedgerView(tmp_path, retention_secs=100)
    view.watch("x")
    view.watch("x")  # two partitions got notifications of the same object
    view.refresh()
    view.forget("x")
    assert view.covered("x", 2)  # the other still waits
    view.forget("x")
    view.watch("x")  # notified again
    view.refresh()
    assert view.covered("x", 2)
    view.forget("x")
    clock[0] += 150
    j.record(ids("y", 0))
    view.refresh()
    assert not view.covered("x", 1) and len(view) == 1  # past the retention: dropped


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c-d", "a.rules"]), st.integers(0, 40)),
                max_size=30),
       st.lists(st.tuples(st.sampled_from(["a", "b", "c-d", "a.rules", "z"]),
                          st.integers(0, 50)), max_size=40))
def test_held_answers_for_a_batch_what_has_answers_for_each_record(tmp_path_factory,
                                                                    recorded, batch) -> None:
    """The sink asks once per batch (held), has() for one record: exactly the records
    journaled, for ids in any order, of objects the ledger has, has not, or has partly."""
    j = Ledger(tmp_path_factory.mktemp("held"), 0)
    if recorded:
        j.record([f"{o}-{n}" for o, n in recorded])
    ids = [f"{o}-{n}" for o, n in batch]
    assert j.held(ids) == [i for i, key in enumerate(batch) if key in set(recorded)]
    assert [j.has(rid) for rid in ids] == [key in set(recorded) for key in batch]


def test_the_view_keeps_nothing_of_derived_ids(tmp_path: Path) -> None:
    """Findings have record ids of their own (``<object id>.rules-<offset>``), sparse: the
    sink's journal keeps them (a replay must not send a finding twice), the sources' view
    does not (no source waits for them)."""
    from connectors.ledger import LedgerView
    from dataflow.core.messages import derived_id

    j = Ledger(tmp_path, 0)
    j.record([*ids("9f00", 0, 1, 2), *ids(derived_id("9f00", "rules"), 1, 5, 9)])
    view = LedgerView(tmp_path)
    view.refresh()
    assert view.covered("9f00", 3) and len(view) == 1
    assert j.has(f"{derived_id('9f00', 'rules')}-5")
