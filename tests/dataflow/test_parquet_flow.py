"""Parquet VPC flow logs through the real flow (issue 15, item 4): objects in AWS's Hive-
compatible layout, read with ``format = "auto"``, land in AWSVPCFlow row for row; a row
with a bad value and a truncated object become dead letters with their offset, and the
flow goes on."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from devstack.stack import LocalStack
from tests.conftest import run_flow
from tests.connectors.s3.test_parquet import ACCT, flows, parquet_object

BUCKET = "e2e-parquet"


def _key(n: int) -> str:
    return (f"AWSLogs/aws-account-id={ACCT}/aws-service=vpcflowlogs/aws-region=us-east-1/"
            f"year=2026/month=01/day=02/hour=0{n}/{ACCT}_vpcflowlogs_us-east-1_fl-0a1b2c3d4e5f6"
            f"_20260102T0{n}05Z_4a5b6c7d.log.parquet")


def test_parquet_flow_logs_are_delivered_row_for_row(clean: LocalStack, tmp_path: Path) -> None:
    s3 = clean.s3()
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="e2e-parquet-dead-letter")
    first, second = flows(700, seed=1), flows(500, seed=2)
    ports = [None if f["srcport"] is None else str(f["srcport"]) for f in second]
    bad = next(i for i, p in enumerate(ports) if p is not None)
    ports[bad] = "http"
    s3.put_object(Bucket=BUCKET, Key=_key(1), Body=parquet_object(first, row_group_size=128))
    s3.put_object(Bucket=BUCKET, Key=_key(2), Body=parquet_object(
        second, row_group_size=128, srcport=pl.Series(ports, dtype=pl.String)))
    s3.put_object(Bucket=BUCKET, Key=_key(3), Body=parquet_object(first)[:-500])  # cut short
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
errors_s3_uri = "s3://e2e-parquet-dead-letter/s3sentinel/"
[[sources]]
name = "vpcpq"
bucket = "{BUCKET}"
format = "auto"
""")
    run_flow(clean, cfg, tmp_path / "errors")
    got = clean.admin().records("Custom-AWSVPCFlow")

    def key(f: dict) -> tuple:
        return (f["interface-id"], f["start"], f["srcaddr"], f["srcport"], f["bytes"],
                f["log-status"])

    want = sorted(key(f) for f in first + [f for i, f in enumerate(second) if i != bad])
    assert sorted((r["InterfaceId"], _epoch(r["Start"]), r.get("SrcAddr"), r.get("SrcPort"),
                   r.get("Bytes"), r["LogStatus"]) for r in got) == want
    assert len({r["RecordId_CF"] for r in got}) == len(got)  # each row once
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-parquet-dead-letter")["Contents"]]
    entries = [orjson.loads(line) for k in keys for line in s3.get_object(
        Bucket="e2e-parquet-dead-letter", Key=k)["Body"].read().splitlines()]
    assert sorted((e["key"], e["stage"], e["offset"]) for e in entries) == [
        (_key(2), "parse", bad), (_key(3), "read", 0)]
    assert any("truncated Parquet file" in e["reason"] for e in entries)


def _epoch(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
