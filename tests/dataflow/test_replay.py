"""``s3sentinel replay`` end to end: a poison record, a record the mapping refuses and an
object of unknown format end in the dead-letter store while everything else is delivered;
replay keeps what still fails, and after the fix delivers each of them exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from devstack.stack import LocalStack
from tests.conftest import ROOT, flow_env, run_flow

BUCKET = "e2e-replay"
STREAM = "Custom-AppEvents_CL"


def _config(path: Path, *, fixed: bool, runtime: str = "") -> Path:
    status_type = "string" if fixed else "int"
    misc = ('format = "delimited"\nfields = ["ts", "msg", "user"]\ntable = "AppEvents_CL"'
            if fixed else 'format = "auto"')
    path.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_max_secs = 5
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
{runtime}

[[sources]]
name = "app"
bucket = "{BUCKET}"
prefix = "app/"
format = "ndjson"
table = "AppEvents_CL"

[[sources]]
name = "misc"
bucket = "{BUCKET}"
prefix = "misc/"
{misc}

[[tables]]
name = "AppEvents_CL"
columns = [
  {{ name = "TimeGenerated", type = "datetime", source = "ts", required = true }},
  {{ name = "Message", type = "string", source = "msg", required = true }},
  {{ name = "Status", type = "{status_type}", source = "status" }},
]
""")
    return path


def _replay(stack: LocalStack, config: Path, errors: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflow.cli", "replay", "-c", str(config), *args],
                          env=flow_env(stack, config, errors), cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def _entries(errors: Path) -> list[dict]:
    from connectors.deadletter import read_entries

    return read_entries(errors) if errors.exists() else []


def test_poison_record_and_object_are_dead_lettered_then_replayed_once(
        clean: LocalStack, tmp_path: Path) -> None:
    s3 = clean.s3()
    s3.create_bucket(Bucket=BUCKET)
    lines = [{"ts": f"2026-11-28T10:00:{i:02d}Z", "msg": f"event {i}", "status": 200}
             for i in range(50)]
    lines.insert(10, {"ts": "2026-11-28T10:01:00Z", "msg": "bad status", "status": "n/a"})
    lines.insert(20, {"ts": "2026-11-28T10:02:00Z", "msg": "POISON", "status": 500})
    s3.put_object(Bucket=BUCKET, Key="app/2026/11/28/a.ndjson",
                  Body=b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    s3.put_object(Bucket=BUCKET, Key="misc/x.log",
                  Body=b"".join(b"2026-11-28T11:00:%02dZ|line %d|bob\n" % (i, i) for i in range(5)))
    admin = clean.admin()
    admin.set_rejects(["POISON"])
    errors = tmp_path / "errors"
    broken = _config(tmp_path / "broken.toml", fixed=False)

    run_flow(clean, broken, errors, "-w", "2")
    assert len(admin.records(STREAM)) == 50
    by_stage = {e["stage"]: e for e in _entries(errors)}
    assert sorted(by_stage) == ["deliver", "map", "read"]
    assert by_stage["deliver"]["status"] == 400 and by_stage["deliver"]["request_id"]
    assert by_stage["map"]["offset"] == 10 and by_stage["map"]["code"] == "wrong_type"
    assert "cannot tell the format" in by_stage["read"]["reason"]

    # Nothing fixed yet: replay sends nothing, keeps all three, and says so (exit 1).
    proc = _replay(clean, broken, errors)
    assert proc.returncode == 1, proc.stderr
    assert "delivered 0 records" in proc.stdout and "still failing 3" in proc.stdout
    assert len(_entries(errors)) == 3 and len(admin.records(STREAM)) == 50

    # The fix: the service takes the row, the mapping takes the status, the format is set.
    admin.set_rejects([])
    fixed = _config(tmp_path / "fixed.toml", fixed=True)
    dry = _replay(clean, fixed, errors, "--dry-run")
    assert dry.returncode == 0 and "would send 7 records" in dry.stdout, dry.stdout + dry.stderr
    assert len(admin.records(STREAM)) == 50
    proc = _replay(clean, fixed, errors)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"delivered 7 records [{STREAM}=7]" in proc.stdout
    assert _entries(errors) == []

    again = _replay(clean, fixed, errors)
    assert again.returncode == 0 and "0 dead-letter entries selected" in again.stdout
    got = admin.records(STREAM)
    messages = sorted(r["Message"] for r in got)
    assert len(got) == 57 == len(set(messages))
    assert {"POISON", "bad status", "line 0", "line 4"} <= set(messages)
    assert len({r["RecordId"] for r in got}) == 57


def test_an_encrypted_entry_is_replayed_after_key_rotation(clean: LocalStack,
                                                           tmp_path: Path) -> None:
    import json

    from connectors.deadletter import DeadLetterStore
    from ops.crypto import Keyring, add_key_to_file, generate_key_file

    keys = generate_key_file(tmp_path / "keys.json", "k1")
    errors = tmp_path / "errors"
    row = {"TimeGenerated": "2026-11-28T12:00:00Z", "Message": "kept secret", "RecordId": "e-0"}
    DeadLetterStore(errors, keyring=Keyring.from_file(keys)).write([{
        "stage": "deliver", "stream": STREAM, "record_id": "e0e0e0e0e0e0e0e0-0",
        "object_id": "e0e0e0e0e0e0e0e0", "offset": 0, "row": json.dumps(row),
        "reason": "HTTP 503", "time": 0}], "undelivered-w0")
    assert b"kept secret" not in b"".join(p.read_bytes() for p in errors.iterdir())
    config = _config(tmp_path / "flow.toml", fixed=True,
                     runtime=f'encryption_key_file = "{keys}"')
    add_key_to_file(keys, "k2")
    rot = subprocess.run([sys.executable, "-m", "dataflow.cli", "rotate-key", "-c", str(config)],
                         env=flow_env(clean, config, errors), cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert rot.returncode == 0 and "1 entries in 1 files" in rot.stdout, rot.stdout + rot.stderr
    doc = json.loads(keys.read_text())
    del doc["keys"]["k1"]  # retired once rotation finished
    keys.write_text(json.dumps(doc))
    proc = _replay(clean, config, errors)
    assert proc.returncode == 0 and f"delivered 1 records [{STREAM}=1]" in proc.stdout, \
        proc.stdout + proc.stderr
    assert [r["Message"] for r in clean.admin().records(STREAM)] == ["kept secret"]
