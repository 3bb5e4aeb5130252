"""operators.batch: BatchLogic driven directly (size, count, age, EOF, snapshots) and in a flow."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ops.crypto import Keyring
from dataflow.core.messages import Batch, Row, Rows
from operators.batch import BatchLogic, batch_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AGE = timedelta(seconds=5)
STREAM = "Custom-T_CL"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def data(i: int, size: int) -> bytes:
    """A JSON string of exactly ``size`` bytes, distinct per ``i``."""
    body = str(i).encode().ljust(size - 2, b"x")
    assert len(body) == size - 2
    return b'"' + body + b'"'


def row(i: int, size: int = 19, stream: str = STREAM) -> Row:
    return Row(stream, f"id-{i}", data(i, size), "src:0")


def logic(clock: Clock | None = None, *, max_bytes: int = 1000, max_records: int = 1000,
          resume: dict | None = None, keyring: Any = None) -> BatchLogic:
    return BatchLogic(max_bytes=max_bytes, max_records=max_records, max_age=AGE,
                      clock=clock or Clock(), resume_state=resume, keyring=keyring)


def ids(batches: list[Batch]) -> list[list[str]]:
    return [list(b.record_ids) for b in batches]


def check(batch: Batch) -> None:
    assert batch.body_bytes == len(batch.body())
    assert len(batch.rows) == len(batch.record_ids)
    for r, rid in zip(batch.rows, batch.record_ids, strict=False):  # ids stay paired with their rows
        assert r.decode().strip('"').rstrip("x") == rid.removeprefix("id-")


# --------------------------------------------------------------------------- size


def test_cut_exactly_when_the_next_row_would_overflow() -> None:
    # Each 19-byte row adds 20 bytes (itself and a comma); k rows make a body of 1 + 20k.
    b = logic(max_bytes=100)
    out, retain = b.on_batch([row(i) for i in range(4)])           # body 81
    assert list(out) == [] and retain == StatefulBatchLogic.RETAIN
    out, _ = b.on_batch([row(4)])                                  # 101 > 100: cut before it
    (batch,) = out
    check(batch)
    assert list(batch.record_ids) == ["id-0", "id-1", "id-2", "id-3"]
    assert batch.body_bytes == 81 and batch.stream == STREAM
    assert b.snapshot()["ids"] == ["id-4"]


def test_a_batch_that_is_exactly_full_is_sent_at_once() -> None:
    b = logic(max_bytes=101)
    out, _ = b.on_batch([row(i) for i in range(5)])                # body exactly 101
    (batch,) = out
    check(batch)
    assert batch.body_bytes == 101 == len(batch.body())
    assert b.snapshot()["rows"] == [] and b.notify_at() is None


def test_one_row_per_batch_when_two_do_not_fit() -> None:
    b = logic(max_bytes=40)
    out, _ = b.on_batch([row(i) for i in range(3)])                # 21 each; 2 rows = 41
    assert ids(list(out)) == [["id-0"], ["id-1"]]
    out, _ = b.on_eof()
    assert ids(list(out)) == [["id-2"]]


def test_a_row_larger_than_max_bytes_goes_alone() -> None:
    # RecordMapper keeps rows below max_bytes - 2; if one is larger it is still sent, alone.
    b = logic(max_bytes=50)
    out, _ = b.on_batch([row(0), row(1, size=80), row(2)])
    assert ids(list(out)) == [["id-0"], ["id-1"]]
    assert b.snapshot()["ids"] == ["id-2"]


def test_rows_bundles_and_single_rows_mix_in_order() -> None:
    b = logic(max_bytes=100)
    bundle = Rows(STREAM, "src:0", tuple(data(i, 19) for i in range(1, 7)),
                  tuple(f"id-{i}" for i in range(1, 7)))
    out, _ = b.on_batch([row(0), bundle, row(7)])
    out = list(out)
    out += list(b.on_eof()[0])
    for batch in out:
        check(batch)
        assert batch.body_bytes <= 100
    assert ids(out) == [["id-0", "id-1", "id-2", "id-3"], ["id-4", "id-5", "id-6", "id-7"]]


# --------------------------------------------------------------------------- count


def test_max_records() -> None:
    b = logic(max_records=3)
    out, _ = b.on_batch([row(i) for i in range(7)])
    assert ids(list(out)) == [["id-0", "id-1", "id-2"], ["id-3", "id-4", "id-5"]]
    assert b.snapshot()["ids"] == ["id-6"]
    out, _ = b.on_batch([row(7), row(8), row(9)])
    assert ids(list(out)) == [["id-6", "id-7", "id-8"]]


# --------------------------------------------------------------------------- age


def test_age_flush() -> None:
    clock = Clock()
    b = logic(clock)
    assert b.notify_at() is None
    assert list(b.on_notify()[0]) == []
    clock.now = T0 + timedelta(seconds=1)
    b.on_batch([row(0)])
    opened = T0 + timedelta(seconds=1)
    assert b.notify_at() == opened + AGE
    clock.now = opened + timedelta(seconds=3)
    b.on_batch([row(1)])                               # later rows do not move the deadline
    assert b.notify_at() == opened + AGE
    clock.now = opened + AGE - timedelta(microseconds=1)
    out, retain = b.on_notify()
    assert list(out) == [] and retain == StatefulBatchLogic.RETAIN
    clock.now = opened + AGE
    out, retain = b.on_notify()
    assert ids(list(out)) == [["id-0", "id-1"]] and retain == StatefulBatchLogic.RETAIN
    assert b.notify_at() is None
    assert list(b.on_notify()[0]) == []


def test_age_flush_late_and_new_batch_gets_its_own_deadline() -> None:
    clock = Clock()
    b = logic(clock, max_records=2)
    b.on_batch([row(0), row(1), row(2)])               # [0, 1] sent; 2 opens a batch at T0
    clock.now = T0 + timedelta(seconds=2)
    b.on_batch([row(3), row(4)])                       # [2, 3] sent; 4 opens one at T0 + 2s
    assert b.notify_at() == T0 + timedelta(seconds=2) + AGE
    clock.now = T0 + timedelta(hours=1)                # long overdue
    assert ids(list(b.on_notify()[0])) == [["id-4"]]


# --------------------------------------------------------------------------- EOF


def test_eof_flushes_and_discards() -> None:
    b = logic()
    b.on_batch([row(0), row(1)])
    out, retain = b.on_eof()
    assert ids(list(out)) == [["id-0", "id-1"]]
    assert retain == StatefulBatchLogic.DISCARD
    out, retain = logic().on_eof()
    assert list(out) == [] and retain == StatefulBatchLogic.DISCARD


# --------------------------------------------------------------------------- snapshots


def test_snapshot_and_restore() -> None:
    clock = Clock()
    b = logic(clock, max_bytes=100)
    b.on_batch([row(0), row(1), row(2)])
    snap = pickle.loads(pickle.dumps(b.snapshot()))     # bytewax pickles snapshots
    assert snap["rows"] == [data(i, 19) for i in range(3)]
    assert snap["ids"] == ["id-0", "id-1", "id-2"]
    assert snap["stream"] == STREAM and snap["opened"] == T0

    b.on_batch([row(3)])                               # the snapshot is a copy
    assert snap["ids"] == ["id-0", "id-1", "id-2"]

    original = logic(clock, max_bytes=100, resume=snap)
    restored = logic(clock, max_bytes=100, resume=snap)
    assert restored.snapshot() == snap
    assert restored.notify_at() == T0 + AGE
    # Same pending size: the next output is the same for the same input.
    more = [row(i) for i in range(3, 8)]
    assert list(restored.on_batch(more)[0]) == list(original.on_batch(more)[0])
    (first,) = list(logic(clock, max_bytes=100, resume=snap).on_batch(more)[0])
    assert list(first.record_ids) == ["id-0", "id-1", "id-2", "id-3"]
    assert first.stream == STREAM

    clock.now = T0 + AGE
    (aged,) = list(logic(clock, max_bytes=100, resume=snap).on_notify()[0])
    assert list(aged.record_ids) == ["id-0", "id-1", "id-2"]


def test_restore_empty_snapshot() -> None:
    snap = logic().snapshot()
    assert snap["rows"] == [] and snap["opened"] is None
    b = logic(resume=snap)
    assert b.notify_at() is None and list(b.on_eof()[0]) == []


def test_pending_rows_are_encrypted_in_snapshots_with_a_keyring() -> None:
    ring = Keyring({"k1": bytes(range(32))}, "k1")
    clock = Clock()
    secret = Row(STREAM, "id-1", b'{"UserName":"alice-secret"}', "src:0")
    b = logic(clock, keyring=ring)
    b.on_batch([secret])
    snap = b.snapshot()
    assert b"alice-secret" not in pickle.dumps(snap) and b'"kid":"k1"' in snap["sealed"]
    restored = logic(clock, resume=snap, keyring=ring)
    assert restored.on_eof()[0] == b.on_eof()[0]
    with pytest.raises(RuntimeError, match="encryption_key_file"):
        logic(clock, resume=snap)


# --------------------------------------------------------------------------- Batch.split


def test_split_halves_keep_order() -> None:
    b = Batch("s", tuple(b"%d" % i for i in range(5)), tuple(str(i) for i in range(5)))
    left, right = b.split()
    assert left.rows + right.rows == b.rows and left.record_ids + right.record_ids == b.record_ids


# --------------------------------------------------------------------------- property


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(2, 60), max_size=60),
       max_bytes=st.integers(62, 300), max_records=st.integers(1, 8),
       groups=st.lists(st.integers(1, 6), min_size=1, max_size=10),
       snap_at=st.integers(0, 10))
def test_property_batches_are_maximal_ordered_and_within_limits(
        sizes: list[int], max_bytes: int, max_records: int, groups: list[int],
        snap_at: int) -> None:
    rows = [row(i, max(s, len(str(i)) + 2)) for i, s in enumerate(sizes)]
    b = logic(max_bytes=max_bytes, max_records=max_records)
    out: list[Batch] = []
    i = step = 0
    while i < len(rows):
        n = groups[step % len(groups)]
        chunk = rows[i:i + n]
        item: list[Row | Rows] = (
            [Rows(STREAM, "src:0", tuple(r.data for r in chunk), tuple(r.record_id for r in chunk))]
            if step % 2 else list(chunk))
        out += list(b.on_batch(item)[0])
        if step == snap_at:  # a restart in the middle changes nothing
            b = logic(max_bytes=max_bytes, max_records=max_records,
                      resume=pickle.loads(pickle.dumps(b.snapshot())))
        i += n
        step += 1
    out += list(b.on_eof()[0])
    assert [rid for batch in out for rid in batch.record_ids] == [r.record_id for r in rows]
    assert [d for batch in out for d in batch.rows] == [r.data for r in rows]
    for k, batch in enumerate(out):
        check(batch)
        assert batch.rows and batch.stream == STREAM
        assert batch.body_bytes <= max_bytes
        assert len(batch.rows) <= max_records
        if k + 1 < len(out):  # cut only when the next row would not have fit
            nxt = len(out[k + 1].rows[0]) + 1
            assert batch.body_bytes + nxt > max_bytes or len(batch.rows) == max_records


# --------------------------------------------------------------------------- in a dataflow


def test_batch_rows_in_a_dataflow() -> None:
    streams = ["Custom-A_CL", "Custom-B_CL"]
    parts = ["p:0", "p:1"]
    inp: list[Row | Rows] = []
    for i in range(120):
        stream, part = streams[i % 2], parts[(i // 2) % 2]
        inp.append(Row(stream, f"{stream}/{part}/{i}", data(i, 10 + i % 30), part))
    inp.append(Rows("Custom-A_CL", "p:0", (b'"bundled-1"', b'"bundled-2"'),
                    ("Custom-A_CL/p:0/b1", "Custom-A_CL/p:0/b2")))
    out: list[tuple[str, Batch]] = []

    flow = Dataflow("batch_test")
    rows = op.input("inp", flow, TestingSource(inp, batch_size=7))
    keyed = op.key_on("key", rows, lambda r: f"{r.stream}|{r.partition}")
    batches = batch_rows("batch", keyed, max_bytes=200, max_records=5,
                         max_age=timedelta(hours=1))
    op.output("out", batches, TestingSink(out))
    run_main(flow)

    expected: dict[str, list[str]] = {}
    for item in inp:
        key = f"{item.stream}|{item.partition}"
        new = item.record_ids if isinstance(item, Rows) else (item.record_id,)
        expected.setdefault(key, []).extend(new)
    got: dict[str, list[str]] = {}
    for key, batch in out:
        assert isinstance(batch, Batch)
        assert batch.stream == key.split("|")[0]
        assert batch.body_bytes <= 200 and 1 <= len(batch.rows) <= 5
        assert batch.body_bytes == len(batch.body())
        assert all(rid.startswith(key.replace("|", "/")) for rid in batch.record_ids)
        got.setdefault(key, []).extend(batch.record_ids)
    # Every row exactly once, in order per key; the last partial batches came out at EOF.
    assert got == expected
    assert sum(len(b.rows) for _, b in out) == 122
