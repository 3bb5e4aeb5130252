"""s3sentinel preview: rows on stdout, errors with positions on stderr, exit status."""

from __future__ import annotations

import gzip
import io
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson

from dataflow.preview import preview
from devstack.samples import cloudtrail_event, cloudtrail_object


def run(path: Path, **kw: object) -> tuple[int, list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = preview(str(path), out=out, err=err, **kw)  # type: ignore[arg-type]
    return rc, [orjson.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_a_good_cloudtrail_file_previews_every_row(tmp_path: Path) -> None:
    rng = random.Random(2)
    events = [cloudtrail_event(rng, account="1", region="eu-west-1",
                               when=datetime(2026, 1, 1, tzinfo=UTC)) for _ in range(5)]
    path = tmp_path / "ct.json.gz"
    path.write_bytes(cloudtrail_object(events))
    rc, rows, err = run(path)
    assert rc == 0
    assert [r["AwsEventId"] for r in rows] == [e["eventID"] for e in events]
    assert "5 rows for stream Custom-AWSCloudTrail, 0 errors (format cloudtrail)" in err


def test_bad_records_are_named_and_the_status_says_so(tmp_path: Path) -> None:
    path = tmp_path / "app.ndjson"
    path.write_bytes(b'{"ts": "2026-01-01T00:00:00Z", "msg": "ok"}\n{"msg": "no time"}\nnot json\n')
    table = tmp_path / "tables"
    table.mkdir()
    (table / "App_CL.toml").write_text(
        'table = "App_CL"\ncolumns = [\n'
        '{ name = "TimeGenerated", type = "datetime", source = "ts", required = true },\n'
        '{ name = "Msg", type = "string", source = "msg" }]\n')
    from dataflow.config import parse_config

    cfg = parse_config({"sentinel": {"endpoint": "https://x", "rule_id": "r"},
                        "runtime": {"tables_dir": str(table)},
                        "sources": [{"name": "a", "bucket": "b", "format": "ndjson",
                                     "table": "App_CL"}]})
    rc, rows, err = run(path, fmt="ndjson", table="App_CL", cfg=cfg)
    assert rc == 1 and [r["Msg"] for r in rows] == ["ok"]
    assert f"{path}: record 1: map: required field 'ts'" in err
    assert f"{path}: record 2: map: not valid JSON" in err


def test_a_corrupt_object_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.json.gz"
    path.write_bytes(gzip.compress(b'{"Records": [{"eventTime": "x"}')[:-12])
    rc, rows, err = run(path, fmt="cloudtrail")
    assert rc == 1 and rows == [] and "truncated" in err


def test_unknown_formats_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "mystery.bin"
    path.write_bytes(b"\x00\x01 what is this")
    assert run(path)[0] == 2 and "cannot tell the format" in run(path)[2]
    assert run(tmp_path / "nope")[0] == 2


def test_enrich_shows_priority_and_reasons_under_a_users_rule(tmp_path: Path) -> None:
    rules = tmp_path / "mine.toml"
    rules.write_text("""
[[rules]]
id = "watch-describe"
table = "AWSCloudTrail"
priority = "high"
reason = "{EventName} from {SourceIpAddress}"
match = { EventName = { equals = "DescribeInstances" } }
""")
    rng = random.Random(1)
    when = datetime(2026, 11, 28, tzinfo=UTC)
    events = [cloudtrail_event(rng, account="111122223333", region="us-east-1", when=when)
              for _ in range(3)]
    events[1] = {**events[1], "eventName": "DescribeInstances", "sourceIPAddress": "192.0.2.1"}
    events[2] = {k: v for k, v in events[2].items() if k not in ("errorCode", "errorMessage")
                 } | {"eventName": "StopLogging", "eventSource": "cloudtrail.amazonaws.com"}
    path = tmp_path / "trail.json"
    path.write_bytes(cloudtrail_object(events))
    out = io.StringIO()
    assert preview(str(path), fmt="cloudtrail", enrich=str(rules), out=out, err=io.StringIO()) == 0
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    enr = [x["_enrichment"] for x in lines if "_enrichment" in x]
    assert len(enr) == 3
    assert enr[1]["priority"] == "high" and enr[1]["rule_ids"] == ["watch-describe"]
    assert enr[1]["reasons"] == ["DescribeInstances from 192.0.2.1"]
    assert enr[2]["priority"] == "critical"  # shipped rules apply too


def test_an_object_of_a_cross_account_source_is_read_with_its_role(stack, monkeypatch) -> None:
    """preview -c CONFIG s3://...: the object of a configured source is read with that
    source's role (and external id), as the flow reads it."""
    import botocore.client

    from dataflow.config import parse_config

    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    s3 = stack.s3()
    s3.create_bucket(Bucket="preview-xacct")
    event = cloudtrail_event(random.Random(5), account="210987654321", region="eu-west-1",
                             when=datetime(2026, 1, 1, tzinfo=UTC))
    s3.put_object(Bucket="preview-xacct", Key="logs/a.json.gz", Body=cloudtrail_object([event]))
    role = "arn:aws:iam::210987654321:role/preview-reader"
    cfg = parse_config({"sentinel": {"endpoint": "https://x", "rule_id": "r"},
                        "aws": {"endpoint_url": stack.s3_endpoint},
                        "sources": [{"name": "other", "bucket": "preview-xacct",
                                     "prefix": "", "format": "cloudtrail"},
                                    {"name": "x", "bucket": "preview-xacct", "prefix": "logs/",
                                     "format": "cloudtrail", "role_arn": role,
                                     "external_id": "preview-ext"}]})
    calls: list[tuple[str, dict, str]] = []
    real = botocore.client.BaseClient._make_api_call

    def spy(self, name, params):
        calls.append((name, params, getattr(self._request_signer._credentials, "method", "")))
        return real(self, name, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    out, err = io.StringIO(), io.StringIO()
    assert preview("s3://preview-xacct/logs/a.json.gz", cfg=cfg, out=out, err=err) == 0, \
        err.getvalue()
    assert orjson.loads(out.getvalue())["AwsEventId"] == event["eventID"]
    assert [p for n, p, _ in calls if n == "AssumeRole"] == [
        {"RoleArn": role, "RoleSessionName": "s3sentinel", "ExternalId": "preview-ext"}]
    assert [m for n, _, m in calls if n == "GetObject"] == ["assume-role"]


def test_a_cloudtrail_digest_is_skipped_with_a_message(tmp_path: Path) -> None:
    folder = tmp_path / "AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/01/01"
    folder.mkdir(parents=True)
    path = folder / ("111122223333_CloudTrail-Digest_us-east-1_trail_us-east-1_"
                     "20260101T000000Z.json.gz")
    path.write_bytes(gzip.compress(orjson.dumps({
        "awsAccountId": "111122223333", "digestStartTime": "2026-01-01T00:00:00Z",
        "digestEndTime": "2026-01-01T01:00:00Z", "logFiles": []})))
    for kw in ({}, {"fmt": "cloudtrail"}):
        rc, rows, err = run(path, **kw)
        assert (rc, rows) == (0, []), err
        assert "skipped: CloudTrail digest file" in err and "Traceback" not in err


def test_a_file_with_no_table_for_its_format_is_reported_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "app.ndjson"
    path.write_bytes(b'{"a": 1}\n')
    rc, rows, err = run(path)
    assert (rc, rows) == (1, [])
    assert "onto table None, which is not defined" in err
    assert "0 rows for no table (name one with --table), 1 errors (format ndjson)" in err


def test_empty_guardduty_envelopes_are_skipped_not_errors(tmp_path: Path) -> None:
    from devstack.formatsamples import _guardduty

    (finding,) = _guardduty()
    path = tmp_path / "AWSLogs/111122223333/GuardDuty/us-east-1/2026/01/01/f.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b'{"findings":[]}\n' + orjson.dumps(finding)
                                   + b'\n{ "findings" : [ ] }\n'))
    rc, rows, err = run(path)
    assert rc == 0, err
    assert [r["Id"] for r in rows] == [finding["id"]]
    assert "1 rows for stream Custom-AWSGuardDuty, 0 errors, 2 empty envelopes skipped" in err
