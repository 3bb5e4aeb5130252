"""s3sentinel preview: rows on stdout, errors with positions on stderr, exit status."""

from __future__ import annotations

import gzip
import io
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

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


# ------------------------------------------------- [[transforms]]: before and after


VPC_HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol "
              "packets bytes start end action log-status")


def _vpc_file(tmp_path: Path, n: int = 40) -> Path:
    """Row i: REJECT when i % 5 == 0, DstPort 53 when i % 4 == 0 (else 443)."""
    lines = [f"2 111122223333 eni-1 10.0.0.{i % 9} 10.1.0.1 40000 {53 if i % 4 == 0 else 443} "
             f"6 3 {100 + i} 1764547200 1764547260 {'REJECT' if i % 5 == 0 else 'ACCEPT'} OK"
             for i in range(n)]
    path = tmp_path / "fl.log.gz"
    path.write_bytes(gzip.compress(("\n".join([VPC_HEADER, *lines]) + "\n").encode()))
    return path


def _transform_cfg(**transform: object):
    from dataflow.config import parse_config

    cols = [("TimeGenerated", "datetime"), ("SrcAddr", "string"), ("DstAddr", "string"),
            ("DstPort", "int"), ("Bytes", "long"), ("Action", "string")]
    return parse_config({
        "sentinel": {"endpoint": "https://x", "rule_id": "r"},
        "sources": [{"name": "vpc", "bucket": "b", "format": "vpcflow"},
                    {"name": "trail", "bucket": "t", "format": "cloudtrail"}],
        "tables": [{"name": "VpcAux_CL", "plan": "Auxiliary",
                    "columns": [{"name": c, "type": t} for c, t in cols]}],
        "transforms": [{"table": "AWSVPCFlow", "sources": ["vpc"], **transform}]})


ROUTE = {"where": "Action <> 'REJECT'", "route": [{"table": "VpcAux_CL", "where": "DstPort = 53"}],
         "drop": ["AccountId"]}


def test_transforms_show_rows_and_bytes_before_and_after_per_table(tmp_path: Path) -> None:
    path = _vpc_file(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert preview(str(path), cfg=_transform_cfg(**ROUTE), source="vpc", as_json=True, show=3,
                   out=out, err=err) == 0, err.getvalue()
    doc = orjson.loads(out.getvalue())
    vpc, aux = doc["tables"]["AWSVPCFlow"], doc["tables"]["VpcAux_CL"]
    dropped = [i for i in range(40) if i % 5 == 0]
    routed = [i for i in range(40) if i % 5 != 0 and i % 4 == 0]
    kept = 40 - len(dropped) - len(routed)
    assert vpc["transformed"] and vpc["rows_in"] == 40 and vpc["rows_out"] == kept
    assert vpc["outcomes"] == {"in": 40, "kept": kept, "dropped": len(dropped),
                               "routed": len(routed)}
    assert vpc["to"] == {"VpcAux_CL": len(routed)} and aux["from"] == {"AWSVPCFlow": len(routed)}
    assert aux["rows_in"] == 0 and aux["rows_out"] == len(routed)
    # The first rows after, routed ones under their table; dropped columns gone.
    assert len(vpc["rows"]) == len(aux["rows"]) == 3
    assert all(r["Action"] == "ACCEPT" and "AccountId" not in r for r in vpc["rows"])
    assert [r["DstPort"] for r in aux["rows"]] == [53] * 3 and "Version" not in aux["rows"][0]
    assert 0 < vpc["bytes_out"] < vpc["bytes_in"] and aux["bytes_out"] > 0
    assert doc["bytes_in"] == vpc["bytes_in"]
    assert doc["bytes_out"] == vpc["bytes_out"] + aux["bytes_out"]
    assert doc["saved"] == round(1 - doc["bytes_out"] / doc["bytes_in"], 4) > 0
    assert "40 rows for stream Custom-AWSVPCFlow, 0 errors (format vpcflow)" in err.getvalue()

    # The text form: a line per table, then its first rows (routed rows under their table).
    out = io.StringIO()
    assert preview(str(path), cfg=_transform_cfg(**ROUTE), source="vpc", show=2, out=out,
                   err=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    head = lines.index(next(x for x in lines if x.startswith("# AWSVPCFlow ")))
    assert lines[head].startswith(
        f"# AWSVPCFlow (Custom-AWSVPCFlow): 40 rows in, {kept} kept, {len(dropped)} dropped, "
        f"{len(routed)} routed; {len(routed)} rows to VpcAux_CL; ")
    assert f"{vpc['bytes_in']:,} bytes before, {vpc['bytes_out']:,} after (" in lines[head]
    assert [orjson.loads(x)["Action"] for x in lines[head + 1:head + 3]] == ["ACCEPT"] * 2
    aux_at = lines.index(next(x for x in lines if x.startswith("# VpcAux_CL ")))
    assert f"{len(routed)} rows from AWSVPCFlow" in lines[aux_at]
    assert [orjson.loads(x)["DstPort"] for x in lines[aux_at + 1:aux_at + 3]] == [53, 53]
    assert lines[-1].startswith(f"# all tables: {doc['bytes_in']:,} bytes before, "
                                f"{doc['bytes_out']:,} after (")


def test_sampled_rows_are_counted_and_the_kept_ones_are_the_flows(tmp_path: Path) -> None:
    import zlib

    path = _vpc_file(tmp_path)
    out = io.StringIO()
    assert preview(str(path), cfg=_transform_cfg(sample=3), source="vpc", as_json=True,
                   show=40, out=out, err=io.StringIO()) == 0
    vpc = orjson.loads(out.getvalue())["tables"]["AWSVPCFlow"]
    ids = [r["RecordId_CF"] for r in vpc["rows"]]
    assert ids and all(zlib.crc32(i.encode()) % 3 == 0 for i in ids)  # by record id
    assert vpc["outcomes"]["kept"] == len(ids) == vpc["rows_out"]
    assert vpc["outcomes"]["sampled_out"] == 40 - len(ids)


def test_transforms_of_another_source_do_not_apply_and_can_be_turned_off(tmp_path: Path) -> None:
    path = _vpc_file(tmp_path)
    out = io.StringIO()
    # The file stands for no source: a transform of source "vpc" does not apply.
    assert preview(str(path), cfg=_transform_cfg(**ROUTE), out=out, err=io.StringIO()) == 0
    head = out.getvalue().splitlines()[0]
    assert head.startswith("# AWSVPCFlow (Custom-AWSVPCFlow): 40 rows in, 40 kept (no "
                           "transforms apply; name the source with --source);")
    # --no-transforms: the mapped rows, NDJSON, as without a config.
    rc, rows, _ = run(path, cfg=_transform_cfg(**ROUTE), source="vpc", transforms=False)
    assert rc == 0 and len(rows) == 40 and rows[0]["Action"] == "REJECT"
    rc, _, err = run(path, cfg=_transform_cfg(**ROUTE), source="nope")
    assert rc == 2 and "--source nope: no such source in the config" in err


def test_the_cli_previews_transforms_as_json(tmp_path: Path, capsys) -> None:
    from dataflow.cli import main

    path = _vpc_file(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text("""
[sentinel]
endpoint = "https://x"
rule_id = "r"
[[sources]]
name = "vpc"
bucket = "b"
format = "vpcflow"
[[transforms]]
table = "AWSVPCFlow"
where = "Action = 'REJECT'"
""")
    assert main(["preview", "-c", str(config), "--json", "--rows", "1", str(path)]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    vpc = doc["tables"]["AWSVPCFlow"]
    assert vpc["outcomes"] == {"in": 40, "kept": 8, "dropped": 32}
    assert [r["Action"] for r in vpc["rows"]] == ["REJECT"] and doc["rows_out"] == 8
    with pytest.raises(SystemExit):
        main(["preview", "--rows", "-1", str(path)])
