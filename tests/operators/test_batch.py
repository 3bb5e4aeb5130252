"""BatchLogic: size boundary, record cap, age flush, EOF flush, snapshot/restore; and in a flow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.core.messages import Batch, Row, Rows
from operators.batch import BatchLogic, batch_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def row(i: int, size: int = 10) -> Row:
    data = b'"' + str(i).encode().ljust(size - 2, b"x") + b'"'
    assert len(data) == size
    return Row("Custom-T", f"id-{i}", data, "p:0/1")


def logic(clock: Clock | None = None, snap: dict | None = None, **kw: object) -> BatchLogic:
    args = {"max_bytes": 100, "max_records": 1000, "max_age": timedelta(seconds=5)} | kw
    return BatchLogic(clock=clock or Clock(), resume_state=snap, **args)  # type: ignore[arg-type]


def test_a_batch_is_cut_exactly_before_it_would_overflow() -> None:
    # Body of n rows of 10 bytes: 1 + 11 n ("[" + rows + commas + "]"); 9 rows = 100 bytes.
    lg = logic()
    out, retain = lg.on_batch([row(i) for i in range(9)])
    assert retain is False
    assert [len(b.rows) for b in out] == [9]
    assert out[0].body_bytes == len(out[0].body()) == 100
    out, _ = lg.on_batch([row(i) for i in range(9, 19)])  # 10 rows: 9 fit, 1 waits
    assert [len(b.rows) for b in out] == [9]
    assert lg.snapshot()["ids"] == ["id-18"]


def test_no_body_ever_exceeds_max_bytes() -> None:
    lg = logic(max_bytes=1000)
    rows = [row(i, size=10 + (i * 37) % 180) for i in range(500)]
    out, _ = lg.on_batch(rows)
    out += lg.on_eof()[0]
    assert all(len(b.body()) <= 1000 for b in out)
    assert [r for b in out for r in b.record_ids] == [r.record_id for r in rows]
    assert all(len(b.body()) + len(rows[sum(len(x.rows) for x in out[:k + 1])].data) + 1 > 1000
               for k, b in enumerate(out[:-1]))  # each batch was full: the next row did not fit


def test_max_records_caps_a_batch() -> None:
    out, _ = logic(max_bytes=10_000, max_records=3).on_batch([row(i) for i in range(7)])
    assert [len(b.rows) for b in out] == [3, 3]


def test_age_flush_and_notify_at() -> None:
    clock = Clock()
    lg = logic(clock)
    assert lg.notify_at() is None
    lg.on_batch([row(1)])
    assert lg.notify_at() == T0 + timedelta(seconds=5)
    clock.now = T0 + timedelta(seconds=3)
    lg.on_batch([row(2)])
    assert lg.notify_at() == T0 + timedelta(seconds=5)  # the oldest row sets the deadline
    assert lg.on_notify()[0] == []
    clock.now = T0 + timedelta(seconds=5)
    out, retain = lg.on_notify()
    assert [b.record_ids for b in out] == [("id-1", "id-2")] and retain is False
    assert lg.notify_at() is None


def test_eof_flushes_and_discards() -> None:
    lg = logic()
    lg.on_batch([row(1)])
    out, discard = lg.on_eof()
    assert [b.record_ids for b in out] == [("id-1",)] and discard is True
    assert logic().on_eof() == ([], True)


def test_snapshot_restores_pending_rows_and_deadline() -> None:
    clock = Clock()
    lg = logic(clock)
    lg.on_batch([row(1), row(2)])
    snap = lg.snapshot()
    restored = logic(clock, snap)
    assert restored.notify_at() == lg.notify_at()
    a = lg.on_batch([row(i) for i in range(3, 12)])[0]
    b = restored.on_batch([row(i) for i in range(3, 12)])[0]
    assert a == b and a[0].stream == "Custom-T"


def test_bundles_and_single_rows_batch_alike() -> None:
    rows = [row(i) for i in range(20)]
    bundle = Rows("Custom-T", "p:0/1", tuple(r.data for r in rows), tuple(r.record_id for r in rows))
    assert logic().on_batch([bundle]) == logic().on_batch(rows)


def test_split_halves_keep_order() -> None:
    b = Batch("s", tuple(b"%d" % i for i in range(5)), tuple(str(i) for i in range(5)))
    left, right = b.split()
    assert left.rows + right.rows == b.rows and left.record_ids + right.record_ids == b.record_ids


@pytest.mark.parametrize("max_bytes", [50, 200, 10_000])
def test_in_a_dataflow_every_row_is_batched_once(max_bytes: int) -> None:
    rows = [Row(f"Custom-{i % 2}", f"id-{i}", b'{"i":%d}' % i, f"p:{i % 3}/3") for i in range(300)]
    out: list = []
    flow = Dataflow("batch_test")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(rows, batch_size=17)),
                      lambda r: f"{r.stream}|{r.partition}")
    batches = batch_rows("batch", keyed, max_bytes=max_bytes, max_records=1000,
                         max_age=timedelta(hours=1))
    op.output("out", batches, TestingSink(out))
    run_main(flow)
    ids = [i for _, b in out for i in b.record_ids]
    assert sorted(ids) == sorted(r.record_id for r in rows)
    for key, b in out:
        assert key.startswith(b.stream) and len(b.body()) <= max_bytes


def test_pending_rows_are_encrypted_in_snapshots_with_a_keyring() -> None:
    import pickle

    from connectors.ops.crypto import Keyring

    ring = Keyring({"k1": bytes(range(32))}, "k1")
    clock = Clock()
    secret = Row("Custom-T", "id-1", b'{"UserName":"alice-secret"}', "p:0/1")
    lg = logic(clock, keyring=ring, max_bytes=1000)
    lg.on_batch([secret])
    snap = lg.snapshot()
    assert b"alice-secret" not in pickle.dumps(snap) and b'"kid":"k1"' in snap["sealed"]
    restored = logic(clock, snap, keyring=ring, max_bytes=1000)
    assert restored.on_eof()[0] == lg.on_eof()[0]
    with pytest.raises(RuntimeError, match="encryption_key_file"):
        logic(clock, snap, max_bytes=1000)
