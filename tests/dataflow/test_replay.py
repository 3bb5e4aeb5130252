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
    from connectors.ops.crypto import Keyring, add_key_to_file, generate_key_file

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


def _deliver_entry(i: int, message: str, obj: str = "d0d0d0d0d0d0d0d0") -> dict:
    import json

    row = {"TimeGenerated": f"2026-11-28T12:00:{i:02d}Z", "Message": message}
    return {"stage": "deliver", "stream": STREAM, "record_id": f"{obj}-{i}", "object_id": obj,
            "offset": i, "row": json.dumps(row), "reason": "HTTP 503", "time": 0}


def test_tampered_encrypted_files_are_reported_line_by_line_and_the_rest_replayed(
        clean: LocalStack, tmp_path: Path) -> None:
    """With a key configured: a forged plain line is refused, a deleted line reported, a
    duplicated line sent once, an altered line skipped with its reason; everything else
    is delivered exactly once, the exit status is 1, and the tampered files stay as they
    are (as evidence, and so that nothing is lost)."""
    import base64
    import json

    from connectors.deadletter import DeadLetterStore
    from connectors.ops.crypto import Keyring, generate_key_file

    keys = generate_key_file(tmp_path / "keys.json", "k1")
    errors = tmp_path / "errors"
    store = DeadLetterStore(errors, keyring=Keyring.from_file(keys))
    tampered = store.write([_deliver_entry(i, f"row {i}") for i in range(5)], "undelivered-w0")
    intact = store.write([_deliver_entry(5, "row 5")], "undelivered-w1")
    altered = store.write([_deliver_entry(i, f"row {i}", "e1e1e1e1e1e1e1e1") for i in range(2)],
                          "undelivered-w2")
    lines = (errors / tampered).read_bytes().splitlines(keepends=True)
    forged = orjson.dumps(_deliver_entry(9, "FORGED", "f0f0f0f0f0f0f0f0")) + b"\n"
    (errors / tampered).write_bytes(b"".join(  # entry 3 deleted, entry 2 twice, one forged
        [lines[0], lines[1], lines[1], forged, lines[3], lines[4]]))
    two = [json.loads(x) for x in (errors / altered).read_bytes().splitlines()]
    two[1]["ct"] = base64.b64encode(b"\0" * 40).decode()
    (errors / altered).write_text("".join(json.dumps(x) + "\n" for x in two))
    kept = {n: (errors / n).read_bytes() for n in (tampered, altered)}
    config = _config(tmp_path / "flow.toml", fixed=True,
                     runtime=f'encryption_key_file = "{keys}"')

    proc = _replay(clean, config, errors)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = sorted(r["Message"] for r in clean.admin().records(STREAM))
    assert got == ["row 0", "row 0", "row 1", "row 3", "row 4", "row 5"]  # two files' row 0
    out = proc.stdout
    assert "delivered 6 records" in out and "rejected 3 lines (integrity)" in out
    assert f"{tampered}, line 3: entry 2 again (first at line 2) [duplicate]" in out
    assert f"{tampered}, line 4: not encrypted although a key is configured" in out
    assert f"{tampered}, file: entries 3 of 5 are missing" in out
    assert f"{altered}, line 2: authentication failed with key 'k1'" in out
    assert f"{tampered}: left as it is" in out
    assert {n: (errors / n).read_bytes() for n in kept} == kept
    assert not (errors / intact).exists()  # delivered: it leaves the store

    again = _replay(clean, config, errors)
    assert again.returncode == 1 and "delivered 0 records" in again.stdout
    assert "already delivered 5" in again.stdout
    assert len(clean.admin().records(STREAM)) == 6


def test_a_read_entry_outside_its_source_is_refused(clean: LocalStack, tmp_path: Path) -> None:
    """An entry that names another bucket, or another prefix of the source's bucket, does
    not make replay read it with the connector's credentials; the legitimate one is read."""
    from connectors.deadletter import DeadLetterStore

    s3 = clean.s3()
    for bucket in (BUCKET, "victim-payroll"):
        s3.create_bucket(Bucket=bucket)
    secret = b'{"ts": "2026-11-28T10:00:00Z", "msg": "SECRET salary", "status": 1}\n'
    s3.put_object(Bucket="victim-payroll", Key="app/x.ndjson", Body=secret)
    s3.put_object(Bucket=BUCKET, Key="private/x.ndjson", Body=secret)
    ok = s3.put_object(Bucket=BUCKET, Key="app/ok.ndjson",
                       Body=b'{"ts": "2026-11-28T10:00:00Z", "msg": "fine", "status": 1}\n')

    def read_entry(bucket: str, key: str, etag: str) -> dict:
        return {"source": "app", "bucket": bucket, "key": key, "etag": etag,
                "format": "ndjson", "offset": 0, "stage": "read", "code": "read_error",
                "reason": "connection reset", "time": 0, "record_id": None,
                "object_id": f"{len(bucket + key):016x}"}

    errors = tmp_path / "errors"
    DeadLetterStore(errors).write([read_entry("victim-payroll", "app/x.ndjson", ""),
                                   read_entry(BUCKET, "private/x.ndjson", ""),
                                   read_entry(BUCKET, "app/ok.ndjson", ok["ETag"].strip('"'))],
                                  "errors-w0")
    config = _config(tmp_path / "flow.toml", fixed=True)
    proc = _replay(clean, config, errors)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [r["Message"] for r in clean.admin().records(STREAM)] == ["fine"]
    assert "refused 2 entries (outside their source)" in proc.stdout
    assert ("s3://victim-payroll/app/x.ndjson is outside source 'app' (s3://e2e-replay/app/)"
            in proc.stdout)
    left = _entries(errors)
    assert [e["key"] for e in left] == ["app/x.ndjson", "private/x.ndjson"]
    assert all(e["reason"].startswith("replay refused: ") for e in left)


def test_read_entries_are_read_with_the_sources_role(clean: LocalStack, tmp_path: Path,
                                                     monkeypatch) -> None:
    """A cross-account source: replay assumes its role (with its external id) and reads the
    object with those credentials, as the flow does."""
    import botocore.client

    from connectors.deadletter import DeadLetterStore
    from dataflow.cli import main

    s3 = clean.s3()
    s3.create_bucket(Bucket="e2e-replay-xacct")
    put = s3.put_object(Bucket="e2e-replay-xacct", Key="app/a.ndjson",
                        Body=b'{"ts": "2026-11-28T10:00:00Z", "msg": "cross", "status": 1}\n')
    role = "arn:aws:iam::210987654321:role/replay-reader"
    config = tmp_path / "flow.toml"
    config.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_max_secs = 5
[runtime]
mode = "catch_up"
[[sources]]
name = "xacct"
bucket = "e2e-replay-xacct"
prefix = "app/"
format = "ndjson"
table = "AppEvents_CL"
role_arn = "{role}"
external_id = "replay-ext-7"
[[tables]]
name = "AppEvents_CL"
columns = [
  {{ name = "TimeGenerated", type = "datetime", source = "ts", required = true }},
  {{ name = "Message", type = "string", source = "msg", required = true }},
]
""")
    errors = tmp_path / "errors"
    DeadLetterStore(errors).write([{
        "source": "xacct", "bucket": "e2e-replay-xacct", "key": "app/a.ndjson",
        "etag": put["ETag"].strip('"'), "format": "ndjson", "offset": 0, "stage": "read",
        "code": "AccessDenied", "reason": "denied", "time": 0, "record_id": None,
        "object_id": "a1a1a1a1a1a1a1a1"}], "errors-w0")
    for key, value in flow_env(clean, config, errors).items():
        monkeypatch.setenv(key, value)
    calls: list[tuple[str, dict, str]] = []
    real = botocore.client.BaseClient._make_api_call

    def spy(self, name, params):
        creds = self._request_signer._credentials
        calls.append((name, params, getattr(creds, "method", "")))
        return real(self, name, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    assert main(["replay", "-c", str(config)]) == 0
    assert [r["Message"] for r in clean.admin().records(STREAM)] == ["cross"]
    assumed = [p for n, p, _ in calls if n == "AssumeRole"]
    assert assumed == [{"RoleArn": role, "RoleSessionName": "s3sentinel",
                        "ExternalId": "replay-ext-7"}]
    assert [m for n, _, m in calls if n == "GetObject"] == ["assume-role"]


def test_replayed_rows_go_through_the_transforms(tmp_path: Path) -> None:
    """A record mapped again by replay is kept, dropped, routed or trimmed as the flow would;
    a row an aggregate would take goes to its table as a row (the object's summaries were
    sent already)."""
    from dataflow.config import load_config
    from dataflow.replay import _Rebuilder
    from dataflow.tables import tables_for
    from dataflow.targets import Routing
    from operators.parse import RecordMapper

    config = _config(tmp_path / "t.toml", fixed=True)
    config.write_text(config.read_text() + """
[[tables]]
name = "Errors_CL"
columns = [{ name = "TimeGenerated", type = "datetime" }, { name = "Message", type = "string" }]
[[tables]]
name = "Counts_CL"
columns = [{ name = "TimeGenerated", type = "datetime" }, { name = "Rows", type = "long" }]
[[transforms]]
table = "AppEvents_CL"
where = "Message <> 'noise'"
route = [{ table = "Errors_CL", where = "Status = '500'" }]
[[transforms.aggregate]]
table = "Counts_CL"
where = "Status = '204'"
by = ["Message"]
values = ["count(*) AS Rows"]
""")
    cfg = load_config(config, environ={}, need_target=False)
    tables = tables_for(cfg)
    rebuild = _Rebuilder(cfg, RecordMapper(cfg.sources, tables, cfg.batch.max_bytes),
                         lambda src: None, Routing(cfg, tables), tables)

    def entry(msg: str, status: int) -> dict:
        data = orjson.dumps({"ts": "2026-11-28T10:00:00Z", "msg": msg, "status": status})
        return {"stage": "map", "source": "app", "bucket": BUCKET, "key": "app/a.ndjson",
                "etag": "e", "offset": 3, "data": data.decode(), "format": "ndjson"}

    assert rebuild(entry("noise", 200)).rows == []  # dropped, as the flow drops it
    ((stream, _, row),) = rebuild(entry("boom", 500)).rows
    assert stream == "Custom-Errors_CL" and orjson.loads(row)["Message"] == "boom"
    ((stream, _, row),) = rebuild(entry("fine", 204)).rows
    assert stream == STREAM and orjson.loads(row)["Status"] == "204"
