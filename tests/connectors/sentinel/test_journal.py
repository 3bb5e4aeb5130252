"""The upload journal: delivered ranges survive restarts, torn lines and compaction."""

from __future__ import annotations

from pathlib import Path

import connectors.sentinel.journal as journal_mod
from connectors.sentinel.journal import UploadJournal


def ids(obj: str, *offsets: int) -> list[str]:
    return [f"{obj}-{o}" for o in offsets]


def test_records_are_remembered_across_a_restart(tmp_path: Path) -> None:
    j = UploadJournal(tmp_path, 0)
    j.record(ids("aaaa", 0, 1, 2, 5))
    j.record(ids("bb-cc", 7))  # object ids never contain "-", but offsets are split from the right
    j.close()
    again = UploadJournal(tmp_path, 0)
    assert [again.delivered(r) for r in ids("aaaa", 0, 1, 2, 3, 4, 5, 6)] == [
        True, True, True, False, False, True, False]
    assert again.delivered("bb-cc-7") and not again.delivered("bb-cc-8")
    assert not again.delivered("zzzz-0")


def test_every_workers_file_is_read(tmp_path: Path) -> None:
    UploadJournal(tmp_path, 0).record(ids("a", 1))
    UploadJournal(tmp_path, 1).record(ids("b", 2))
    j = UploadJournal(tmp_path, 0)  # e.g. after a restart with one worker instead of two
    assert j.delivered("a-1") and j.delivered("b-2")


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    j = UploadJournal(tmp_path, 0)
    j.record(ids("a", 1))
    j.close()
    with (tmp_path / "journal-w0.jsonl").open("ab") as f:
        f.write(b'{"t": 1, "r": {"a": [[5, ')  # a crash in the middle of a write
    again = UploadJournal(tmp_path, 0)
    assert again.delivered("a-1") and not again.delivered("a-5")


def test_compaction_merges_and_expires_relative_to_the_newest_entry(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(journal_mod, "COMPACT_EVERY", 5)
    clock = [1000.0]
    monkeypatch.setattr(journal_mod.time, "time", lambda: clock[0])
    j = UploadJournal(tmp_path, 0, retention_secs=100)
    j.record(ids("old", 0, 1))
    clock[0] += 500  # "old" is now far older than the retention
    for i in range(4):
        j.record(ids("new", i))
    assert not j.delivered("old-0")  # expired at the 5th append's compaction
    assert all(j.delivered(f"new-{i}") for i in range(4))
    j.close()
    lines = (tmp_path / "journal-w0.jsonl").read_bytes().splitlines()
    assert lines == [b'{"t":1500.0,"r":{"new":[[0,4]]}}']
    # A long outage does not expire anything: age is measured from the newest entry.
    clock[0] += 10**6
    assert UploadJournal(tmp_path, 0, retention_secs=100).delivered("new-3")


def test_view_tails_appends_and_rereads_compacted_files(tmp_path) -> None:
    from connectors.sentinel.journal import DEAD_LETTERED, JournalView

    delivered = UploadJournal(tmp_path, 0)
    dead = UploadJournal(tmp_path, 1, name=DEAD_LETTERED)
    view = JournalView(tmp_path)
    delivered.record([f"a-{i}" for i in range(5)])
    view.refresh()
    assert view.covered("a", 5) and not view.covered("a", 7)
    dead.record_ranges({"a": [[5, 7]]})
    view.refresh()
    assert view.covered("a", 7)
    delivered.record(["b-0"])
    delivered._file.close()
    delivered._compact()  # replaced by a new file: the view reads it again from the start
    view.refresh()
    assert view.covered("b", 1) and view.covered("a", 7)
    assert view.covered("zzz", 0) and not view.covered("zzz", 1)
