"""connectors.ops.crypto: AES-256-GCM envelopes, keyrings from files and secret stores, and key
rotation over a dead-letter directory, including rotations cut short by a crash."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from connectors.ops import crypto
from connectors.ops.crypto import (
    DecryptError,
    Envelope,
    Keyring,
    KeyringError,
    add_key_to_file,
    generate_key_file,
)
from connectors.ops.sealed import decrypt_file, rotate_directory, rotate_file, write_encrypted_file

K1, K2 = os.urandom(32), os.urandom(32)


def ring(*ids: str, current: str | None = None) -> Keyring:
    keys = {"k1": K1, "k2": K2}
    return Keyring({i: keys[i] for i in ids}, current or ids[-1])


def entry(i: int) -> bytes:
    return json.dumps({"stage": "deliver", "record_id": f"obj-{i}", "row": "x" * i}).encode()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A dead-letter directory: three files of entries encrypted with k1."""
    d = tmp_path / "errors"
    d.mkdir()
    for f in range(3):
        write_encrypted_file(d / f"errors-w{f}.jsonl", [entry(10 * f + i) for i in range(4)],
                             ring("k1"))
    return d


def test_round_trip() -> None:
    r = ring("k1")
    env = r.encrypt(b"secret record", b"errors-w0.jsonl")
    assert env.key_id == "k1" and env.version == crypto.VERSION and len(env.nonce) == 12
    assert r.decrypt(env, b"errors-w0.jsonl") == b"secret record"
    as_json = json.loads(env.to_bytes())
    assert set(as_json) == {"v", "kid", "n", "ct"} and b"secret" not in env.to_bytes()
    assert r.decrypt(as_json, b"errors-w0.jsonl") == b"secret record"
    assert r.decrypt(env.to_bytes().decode(), b"errors-w0.jsonl") == b"secret record"
    assert Envelope.from_bytes(env.to_bytes()) == env
    assert r.encrypt(b"same", b"").nonce != r.encrypt(b"same", b"").nonce
    # The nonce is random bytes, so its repr can hold any two letters: look for the
    # ciphertext itself and its field name, not for "ct".
    assert "ciphertext" not in repr(env) and repr(env.ciphertext) not in repr(env)
    assert K1.hex() not in repr(r)


def test_tampering_is_detected() -> None:
    r = ring("k1", "k2")
    env = r.encrypt(b"record", b"aad").to_json()
    ct = bytearray(base64.b64decode(env["ct"]))
    ct[3] ^= 1
    with pytest.raises(DecryptError, match="authentication failed with key 'k2'.*altered") as e:
        r.decrypt(dict(env, ct=base64.b64encode(ct).decode()), b"aad")
    assert e.value.key_id == "k2"
    with pytest.raises(DecryptError, match="authentication failed with key 'k1'"):
        r.decrypt(dict(env, kid="k1"), b"aad")  # the key id is authenticated too
    with pytest.raises(DecryptError, match="truncated"):
        r.decrypt(dict(env, ct=env["ct"][:8]), b"aad")
    with pytest.raises(DecryptError, match="version 2 .* not supported"):
        r.decrypt(dict(env, v=2), b"aad")
    with pytest.raises(DecryptError, match="is this file encrypted"):
        r.decrypt({"stage": "parse", "data": "plain"}, b"aad")
    with pytest.raises(DecryptError, match="not JSON"):
        r.decrypt(b"\x00garbage", b"aad")


def test_wrong_associated_data_is_refused(store: Path, tmp_path: Path) -> None:
    r = ring("k1")
    env = r.encrypt(b"record", b"errors-w0.jsonl")
    with pytest.raises(DecryptError, match="associated data differs"):
        r.decrypt(env, b"errors-w1.jsonl")
    moved = tmp_path / "renamed.jsonl"
    (store / "errors-w0.jsonl").rename(moved)
    with pytest.raises(DecryptError, match=r"renamed.jsonl, line 1: .*renamed"):
        decrypt_file(moved, r)


def test_unreadable_without_the_key() -> None:
    env = ring("k1").encrypt(b"record", b"")
    with pytest.raises(DecryptError, match="encrypted with key 'k1', which the keyring does not "
                                           "hold \\(it holds k2\\); add key 'k1' back") as e:
        ring("k2").decrypt(env, b"")
    assert e.value.key_id == "k1"
    impostor = Keyring({"k1": K2}, "k1")  # same id, another key: replaced, not rotated
    with pytest.raises(DecryptError, match="replaced instead of rotated"):
        impostor.decrypt(env, b"")
    err = pickle.loads(pickle.dumps(e.value))
    assert isinstance(err, DecryptError) and err.key_id == "k1" and str(err) == str(e.value)


def test_rotation_reencrypts_every_entry(store: Path) -> None:
    both = ring("k1", "k2", current="k2")
    with pytest.raises(DecryptError, match="'k1'"):
        decrypt_file(store / "errors-w0.jsonl", both.without("k1"))
    report = rotate_directory(store, both)
    assert report.ok, str(report)
    assert (report.files, report.files_rewritten, report.entries, report.reencrypted) == (
        3, 3, 12, 12)
    for f in sorted(store.glob("*.jsonl")):
        assert {e["kid"] for e in lines(f)} == {"k2"}
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    only_k2 = both.without("k1")
    assert only_k2.key_ids == ["k2"]
    got = [e for f in sorted(store.glob("*.jsonl")) for e in decrypt_file(f, only_k2)]
    assert got == [entry(10 * f + i) for f in range(3) for i in range(4)]
    again = rotate_directory(store, only_k2)
    assert (again.files_rewritten, again.already_current, again.reencrypted) == (0, 12, 0)
    assert "12 entries: 0 re-encrypted, 12 already current" in str(again)
    with pytest.raises(KeyringError, match="is current"):
        only_k2.without("k2")


def test_rotation_with_a_key_file(store: Path, tmp_path: Path) -> None:
    keyfile = tmp_path / "keys.json"
    generate_key_file(keyfile, "k1")
    doc = json.loads(keyfile.read_text())
    doc["keys"]["k1"] = base64.b64encode(K1).decode()  # the key the store was written with
    keyfile.write_text(json.dumps(doc))
    r = add_key_to_file(keyfile, "kv2")
    assert r.current == "kv2" and r.key_ids == ["k1", "kv2"]
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert rotate_directory(store, Keyring.from_file(keyfile)).reencrypted == 12
    with pytest.raises(KeyringError, match="already has a key 'kv2'"):
        add_key_to_file(keyfile, "kv2")


class Crash(BaseException):
    """The process dies here (not an error anything should catch)."""


def test_crash_between_files_leaves_each_file_whole(store: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    both = ring("k1", "k2", current="k2")
    real_replace = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(crypto.os, "replace", replace)
    with pytest.raises(Crash):
        rotate_directory(store, both)
    monkeypatch.setattr(crypto.os, "replace", real_replace)
    kids = [{e["kid"] for e in lines(f)} for f in sorted(store.glob("*.jsonl"))]
    assert kids == [{"k2"}, {"k1"}, {"k1"}]  # each file all new or all old
    for f in sorted(store.glob("*.jsonl")):
        assert len(decrypt_file(f, both)) == 4
    # A kill -9 would have left the temporary file behind; the next run removes it.
    (store / ".errors-w1.jsonl.abc123.rotate-tmp").write_bytes(b'{"v":1,"kid":"k2","n":"')
    report = rotate_directory(store, both)
    assert (report.stale_tmp_removed, report.reencrypted, report.already_current) == (1, 8, 4)
    assert sorted(p.name for p in store.iterdir()) == [f"errors-w{i}.jsonl" for i in range(3)]
    for f in sorted(store.glob("*.jsonl")):
        assert len(decrypt_file(f, both.without("k1"))) == 4


def test_crash_while_writing_leaves_the_old_file(store: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = (store / "errors-w0.jsonl").read_bytes()

    def fsync(fd: int) -> None:
        raise Crash

    monkeypatch.setattr(crypto.os, "fsync", fsync)
    with pytest.raises(Crash):
        rotate_file(store / "errors-w0.jsonl", ring("k1", "k2", current="k2"))
    assert (store / "errors-w0.jsonl").read_bytes() == before
    assert decrypt_file(store / "errors-w0.jsonl", ring("k1")) == [entry(i) for i in range(4)]


def test_failures_are_reported_and_the_rest_rotated(store: Path) -> None:
    bad = store / "errors-w1.jsonl"
    data = lines(bad)
    data[2]["ct"] = base64.b64encode(b"x" * 40).decode()
    bad.write_text("".join(json.dumps(e) + "\n" for e in data))
    before = bad.read_bytes()
    (store / "legacy.jsonl").write_text('{"stage": "parse", "data": "plain"}\n')
    report = rotate_directory(store, ring("k1", "k2", current="k2"))
    assert not report.ok and set(report.failures) == {"errors-w1.jsonl", "legacy.jsonl"}
    assert "line 3: authentication failed with key 'k1'" in report.failures["errors-w1.jsonl"]
    assert "encrypt_plaintext=True" in report.failures["legacy.jsonl"]
    assert bad.read_bytes() == before and report.reencrypted == 8
    assert "FAILED (keep the old keys)" in str(report)
    legacy = rotate_file(store / "legacy.jsonl", ring("k2"), encrypt_plaintext=True)
    assert legacy.encrypted_plaintext == 1
    assert json.loads(decrypt_file(store / "legacy.jsonl", ring("k2"))[0]) == {
        "stage": "parse", "data": "plain"}


def test_key_file_must_be_private(tmp_path: Path) -> None:
    keyfile = generate_key_file(tmp_path / "keys.json")
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    r = Keyring.from_file(keyfile)
    assert r.current == "k1" and r.key_ids == ["k1"]
    for mode in (0o644, 0o640, 0o604, 0o660):
        keyfile.chmod(mode)
        with pytest.raises(KeyringError, match=f"chmod 600 {keyfile}"):
            Keyring.from_file(keyfile)
    keyfile.chmod(0o600)
    with pytest.raises(KeyringError, match="exists; it is not overwritten"):
        generate_key_file(keyfile)
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.from_file(tmp_path / "missing.json")


def test_key_file_contents_are_checked(tmp_path: Path) -> None:
    def load(doc: object) -> Keyring:
        p = tmp_path / "k.json"
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        p.chmod(0o600)
        return Keyring.from_file(p)

    good = base64.b64encode(K1).decode()
    with pytest.raises(KeyringError, match="not JSON"):
        load("{")
    with pytest.raises(KeyringError, match="must hold exactly"):
        load({"current": "k1", "keys": {"k1": good}, "extra": 1})
    with pytest.raises(KeyringError, match="current key 'k9' is not among the keys"):
        load({"current": "k9", "keys": {"k1": good}})
    with pytest.raises(KeyringError, match="decodes to 16 bytes"):
        load({"current": "k1", "keys": {"k1": base64.b64encode(b"x" * 16).decode()}})
    with pytest.raises(KeyringError, match="not base64"):
        load({"current": "k1", "keys": {"k1": "not base64!"}})
    with pytest.raises(KeyringError, match="key id 'a b' is not usable"):
        load({"current": "a b", "keys": {"a b": good}})


def test_keyring_from_secrets() -> None:
    vault = {"dl-key-1": base64.b64encode(K1).decode(), "dl-key-2": base64.b64encode(K2).decode()}
    r = Keyring.from_secrets(vault.__getitem__, ["dl-key-1", "dl-key-2"], current="dl-key-2")
    assert r.current == "dl-key-2"
    env = r.encrypt(b"x", b"")
    assert env.key_id == "dl-key-2"
    assert Keyring({"dl-key-2": K2}, "dl-key-2").decrypt(env, b"") == b"x"
    with pytest.raises(KeyringError, match="cannot read secret 'dl-key-3'.*may get secrets"):
        Keyring.from_secrets(vault.__getitem__, ["dl-key-1", "dl-key-3"], current="dl-key-1")
    with pytest.raises(KeyringError, match="secret 'dl-key-1' is not base64"):
        Keyring.from_secrets(lambda _: "%%%", ["dl-key-1"], current="dl-key-1")
