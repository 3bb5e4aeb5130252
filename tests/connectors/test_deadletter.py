"""The dead-letter store: atomic files, entries encrypted at rest with key rotation, and
sealed files whose deleted, duplicated, reordered or forged lines are reported."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from connectors.deadletter import DeadLetterFileError, DeadLetterStore, read_entries
from connectors.ops.crypto import Keyring, add_key_to_file, encrypt_line, generate_key_file

ENTRY = {"stage": "deliver", "stream": "Custom-T_CL", "record_id": "abc-1", "offset": 1,
         "row": '{"UserName":"alice","SourceIp":"203.0.113.9"}', "reason": "HTTP 400"}


def _without(path: Path, key_id: str) -> None:
    doc = json.loads(path.read_text())
    del doc["keys"][key_id]
    path.write_text(json.dumps(doc))


def test_writes_are_whole_files_and_replace_is_atomic(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path)
    name = store.write([ENTRY, {**ENTRY, "offset": 2}], "errors-w0")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    store.replace(name, [ENTRY])
    assert read_entries(tmp_path) == [ENTRY]
    store.replace(name, [])
    assert store.names() == []


def test_encrypted_entries_are_unreadable_without_the_key_and_survive_rotation(
        tmp_path: Path) -> None:
    keys = generate_key_file(tmp_path / "keys.json", "k1")
    errors = tmp_path / "errors"
    DeadLetterStore(errors, keyring=Keyring.from_file(keys)).write([ENTRY], "errors-w0")
    raw = b"".join(p.read_bytes() for p in errors.iterdir())
    assert b"alice" not in raw and b"203.0.113.9" not in raw and b'"kid":"k1"' in raw
    with pytest.raises(PermissionError, match="encrypted.*encryption_key_file"):
        read_entries(errors)
    assert read_entries(errors, Keyring.from_file(keys)) == [ENTRY]

    ring = add_key_to_file(keys, "k2")  # k2 current, k1 still decrypts
    report = DeadLetterStore(errors, keyring=ring).rotate()
    assert report.ok and (report.files, report.entries, report.reencrypted) == (1, 1, 1)
    assert b'"kid":"k2"' in b"".join(p.read_bytes() for p in errors.iterdir())
    _without(keys, "k1")
    assert read_entries(errors, Keyring.from_file(keys)) == [ENTRY]
    old = Keyring({"k1": b"\0" * 32}, "k1")
    with pytest.raises(DeadLetterFileError, match="line 1: .*'k2'.*undecryptable"):
        read_entries(errors, old)


RING = Keyring({"k1": bytes(range(32))}, "k1")


def _entries(n: int) -> list[dict]:
    return [{**ENTRY, "record_id": f"abc-{i}", "offset": i} for i in range(n)]


def test_deleted_duplicated_reordered_and_forged_lines_are_reported(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path, keyring=RING)
    name = store.write(_entries(5), "undelivered-w0")
    lines = (tmp_path / name).read_bytes().splitlines(keepends=True)
    forged = b'{"stage":"deliver","stream":"Custom-T_CL","record_id":"abc-9","row":"{}"}\n'
    # entry 2 deleted, entry 3 twice, entries 4 and 5 swapped, a plain line slipped in
    (tmp_path / name).write_bytes(lines[0] + lines[2] + lines[2] + forged + lines[4] + lines[3])

    got = store.load(name)
    assert [e["record_id"] for e in got.entries] == ["abc-0", "abc-2", "abc-4", "abc-3"]
    assert got.lines == [1, 2, 5, 6]
    assert [(i.line, i.kind, i.refused) for i in got.issues] == [
        (3, "duplicate", True), (4, "plain", True), (6, "reordered", False),
        (0, "missing", False)]
    assert "entry 3 again (first at line 2)" in str(got.issues[0])
    assert "entries 2 of 5 are missing" in got.issues[3].detail
    assert not got.intact and len(got.refused) == 2
    with pytest.raises(DeadLetterFileError, match="4 problems") as e:
        store.read(name)
    assert [i.kind for i in e.value.issues] == ["duplicate", "plain", "reordered", "missing"]

    # A line of another file, or of another write of this file, does not fit either.
    other = store.write(_entries(5), "undelivered-w1")
    again = (tmp_path / name).read_bytes()
    store.replace(name, _entries(5))  # a new write of the same file (same count)
    fresh = (tmp_path / name).read_bytes().splitlines(keepends=True)
    mixed = fresh[:2] + [again.splitlines(keepends=True)[4]] + fresh[3:]
    (tmp_path / name).write_bytes(b"".join(mixed))
    assert [(i.line, i.kind) for i in store.load(name).issues] == [(3, "foreign"),
                                                                  (0, "missing")]
    moved = (tmp_path / other).read_bytes().splitlines(keepends=True)
    (tmp_path / name).write_bytes(b"".join(fresh[:4] + [moved[4]]))
    assert [(i.line, i.kind) for i in store.load(name).issues] == [(5, "undecryptable")]


def test_files_of_the_previous_version_are_read_and_rotation_seals_them(tmp_path: Path) -> None:
    """Entries encrypted one by one with the file name only (the previous version) are read,
    reported as legacy; a duplicated legacy line is still noticed; rotate-key seals them."""
    name = "errors-w0-1-000001.jsonl"
    legacy = [encrypt_line(RING, orjson.dumps(e), name.encode()) + b"\n" for e in _entries(3)]
    (tmp_path / name).write_bytes(b"".join(legacy))
    (tmp_path / "plain-w0-1-000002.jsonl").write_bytes(  # written before encryption was on
        b"".join(orjson.dumps(e) + b"\n" for e in _entries(2)))
    store = DeadLetterStore(tmp_path, keyring=RING)

    got = store.load(name)
    assert got.legacy and got.intact and got.entries == _entries(3)
    assert [i.kind for i in got.issues] == ["legacy"]
    assert store.read(name) == _entries(3)
    (tmp_path / name).write_bytes(b"".join(legacy + legacy[1:2]))
    assert [(i.line, i.kind) for i in store.load(name).issues] == [(4, "duplicate"),
                                                                  (0, "legacy")]
    (tmp_path / name).write_bytes(b"".join(legacy))
    # Under a key, a plain file is refused line by line until rotate-key encrypts it.
    plain = store.load("plain-w0-1-000002.jsonl")
    assert plain.entries == [] and [i.kind for i in plain.issues] == ["plain", "plain"]
    assert DeadLetterStore(tmp_path).read("plain-w0-1-000002.jsonl") == _entries(2)

    report = store.rotate()
    assert report.ok, str(report)
    assert (report.upgraded, report.encrypted_plaintext, report.files_rewritten) == (1, 2, 2)
    for n, want in ((name, _entries(3)), ("plain-w0-1-000002.jsonl", _entries(2))):
        got = store.load(n)
        assert got.issues == [] and not got.legacy and got.entries == want
    sealed = (tmp_path / name).read_bytes().splitlines(keepends=True)
    (tmp_path / name).write_bytes(b"".join(sealed[:2]))  # now a deletion is noticed
    assert [i.kind for i in store.load(name).issues] == ["missing"]
    report = store.rotate()  # and such a file is not rewritten
    assert set(report.failures) == {name} and "entries 3 of 3 are missing" in report.failures[name]
