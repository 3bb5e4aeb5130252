"""What the connector writes holds record data, principals and offsets: dead-letter files,
journals and key files are 0600 in 0700 directories, whatever the umask (here 0o022, the
usual default, under which plain open()/mkdir() give 0644/0755)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import ledger as journal_mod
from connectors.deadletter import DeadLetterSink, DeadLetterStore
from connectors.ledger import DEAD_LETTERED, Ledger
from connectors.ops.crypto import Keyring, add_key_to_file, generate_key_file
from connectors.ops.sealed import rotate_file

ENTRY = {"stage": "parse", "record_id": "abc-1", "offset": 1, "data": "x", "reason": "bad"}


@pytest.fixture(autouse=True)
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("keyring", [None, Keyring({"k1": bytes(32)}, "k1")])
def test_dead_letter_files_and_their_directories(tmp_path: Path, keyring: Keyring | None) -> None:
    errors = tmp_path / "state" / "errors"  # the parents are new too
    store = DeadLetterStore(errors, keyring=keyring)
    name = store.write([ENTRY, ENTRY], "errors-w0")
    assert mode(errors) == 0o700 and mode(errors.parent) == 0o700
    assert mode(errors / name) == 0o600
    store.replace(name, [ENTRY])  # an atomic rewrite is a new file
    assert mode(errors / name) == 0o600
    assert [p.name for p in errors.iterdir()] == [name]


def test_a_directory_made_by_an_earlier_version_is_tightened(tmp_path: Path) -> None:
    errors = tmp_path / "errors"
    errors.mkdir(mode=0o755)
    os.chmod(errors, 0o755)
    DeadLetterStore(errors).write([ENTRY], "errors-w0")
    assert mode(errors) == 0o700


def test_journals_of_the_sink_and_of_the_dead_letter_sink(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(journal_mod, "COMPACT_EVERY", 2)
    journal = tmp_path / "journal"
    j = Ledger(journal, 0)
    j.record(["a-0"])
    assert mode(journal) == 0o700 and mode(journal / "journal-w0.jsonl") == 0o600
    j.record(["a-1"])  # compaction replaces the file
    j.close()
    assert mode(journal / "journal-w0.jsonl") == 0o600
    part = DeadLetterSink(tmp_path / "errors", journal_dir=journal).build("dead", 3, 4)
    part._journal.record_ranges({"a": [[2, 3]]})
    part.close()
    assert mode(journal / f"{DEAD_LETTERED}-w3.jsonl") == 0o600
    assert sorted(mode(p) for p in journal.iterdir()) == [0o600, 0o600]


def test_key_files_and_rotated_files(tmp_path: Path) -> None:
    keys = generate_key_file(tmp_path / "keys.json")
    assert mode(keys) == 0o600
    ring = add_key_to_file(keys, "k2")
    assert mode(keys) == 0o600
    old = tmp_path / "errors-w0.jsonl"  # a dead-letter file an earlier version left 0644
    old.write_bytes(b'{"stage": "parse", "data": "x"}\n')
    os.chmod(old, 0o644)
    rotate_file(old, ring, encrypt_plaintext=True)
    assert mode(old) == 0o600
