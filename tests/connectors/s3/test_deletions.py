"""The SQS deletion journal: what a restart reads again, how long deletions are kept, and
lines it must not trust."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ops.crypto import Keyring
from connectors.s3.deletions import DELETIONS, DeletionJournal
from dataflow.core import metrics

OBJ = [("logs/a.json", "e1", 10)]


def _ring(kid: str) -> Keyring:
    return Keyring({kid: bytes(range(32)) if kid == "k1" else bytes(range(1, 33))}, kid)


def test_since_a_mark_and_with_no_snapshot(tmp_path: Path) -> None:
    j = DeletionJournal(tmp_path, "src:0/2")
    j.record([("m1", OBJ)])
    mark = j.mark()
    j.record([("m2", [("b", "", 0), ("c", "e", 3)]), ("m3", OBJ)])
    j.close()
    again = DeletionJournal(tmp_path, "src:0/2")
    assert [e.m for e in again.since(mark)] == ["m2", "m3"]
    assert again.since(mark)[0].o == [("b", "", 0), ("c", "e", 3)]
    assert [e.m for e in again.since(None)] == ["m1", "m2", "m3"]
    assert again.since(again.mark()) == []
    assert DeletionJournal(tmp_path, "src:1/2").since(None) == []  # another partition's


def test_old_deletions_go_and_sequence_numbers_are_never_reused(tmp_path: Path) -> None:
    clock = [1000.0]
    j = DeletionJournal(tmp_path, "p", clock=lambda: clock[0], keep_secs=60)
    j.record([("old", OBJ)])
    clock[0] += 100
    j.record([("new", OBJ)])
    j.close()
    again = DeletionJournal(tmp_path, "p", clock=lambda: clock[0], keep_secs=60)
    assert [e.m for e in again.since(None)] == ["new"]  # 100 s before the newest: dropped
    mark = again.mark()
    clock[0] += 1000  # a long outage drops nothing: age counts from the newest deletion
    again.close()
    third = DeletionJournal(tmp_path, "p", clock=lambda: clock[0], keep_secs=60)
    assert [e.m for e in third.since(None)] == ["new"]
    third.record([("later", OBJ)])
    assert third.mark() > mark and [e.m for e in third.since(mark)] == ["later"]


def test_torn_forged_and_malformed_lines_are_not_read_again(tmp_path: Path) -> None:
    j = DeletionJournal(tmp_path, "p", _ring("k1"))
    j.record([("good", OBJ)])
    j.close()
    path = next(tmp_path.glob("sqsdeleted-*.jsonl"))
    with path.open("ab") as f:
        f.write(b'{"n":9,"t":1.0,"m":"forged","o":[["x","",1]]}\n')  # no MAC
        f.write(b'{"n":"x"}\n')  # another shape
        f.write(b'{"n":10,"t":1.0,"m":"torn","o":[["x"')  # cut short by a crash
    again = DeletionJournal(tmp_path, "p", _ring("k1"))
    assert [e.m for e in again.since(None)] == ["good"]
    again.close()
    other = DeletionJournal(tmp_path, "p", _ring("k2"))
    assert other.since(None) == []  # under another key: dropped
    mark = again.mark()
    other.record([("next", OBJ)])
    assert [e.m for e in other.since(mark)] == ["next"]  # not numbered from 1 again


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_deep_nesting_and_a_huge_line_do_not_stop_a_start(
        tmp_path_factory, junk: list[bytes]) -> None:
    """Whatever the file holds besides its lines, a start reads the good ones and goes on:
    arbitrary bytes, JSON nested 100,000 deep, a message naming 200,000 objects; lines of
    another shape are counted."""
    d = tmp_path_factory.mktemp("deletions")
    before = metrics.JOURNAL_REJECTED_LINES.labels(DELETIONS, "malformed")._value.get()
    huge = b",".join(b'["k%d","",1]' % i for i in range(200_000))
    with (d / "sqsdeleted-p.jsonl").open("wb") as f:
        f.write(b'{"n":1,"t":1.0,"m":"first","o":[["a","e",1]]}\n')
        for line in junk:
            f.write(line.replace(b"\n", b" ") + b"\n")
        f.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        f.write(b'{"n":"x"}\n')  # JSON of another shape
        f.write(b'{"n":2,"t":1.0,"m":"deep","o":' + b"[" * 100_000 + b"\n")
        f.write(b'{"n":3,"t":1.0,"m":"huge","o":[%s]}\n' % huge)
        f.write(b'{"n":4,"t":1.0,"m":"last","o":[["b","",2]]}\n')
    j = DeletionJournal(d, "p")
    got = {e.m: e for e in j.since(None)}
    assert {"first", "huge", "last"} <= set(got) and "deep" not in got
    assert len(got["huge"].o) == 200_000 and got["last"].o == [("b", "", 2)]
    assert j.mark() >= 4
    assert metrics.JOURNAL_REJECTED_LINES.labels(DELETIONS, "malformed")._value.get() > before
