"""The dead-letter store: atomic files, and entries encrypted at rest with key rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.deadletter import DeadLetterStore, read_entries
from ops.crypto import DecryptError, Keyring, add_key_to_file, generate_key_file

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
    assert DeadLetterStore(errors, keyring=ring).rotate() == (1, 1)
    assert b'"kid":"k2"' in b"".join(p.read_bytes() for p in errors.iterdir())
    _without(keys, "k1")
    assert read_entries(errors, Keyring.from_file(keys)) == [ENTRY]
    old = Keyring({"k1": b"\0" * 32}, "k1")
    with pytest.raises(DecryptError):
        read_entries(errors, old)
