"""`s3sentinel estimate`: events and GB a day per table, before and after the transforms, and
the monthly cost by plan, from a sample of each source's objects (moto) or local files."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from dataflow.cli import main
from dataflow.config import parse_config
from dataflow.estimate import estimate, print_estimate
from dataflow.tables import tables_for
from devstack.stack import LocalStack

HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets " \
         "bytes start end action log-status"
COLUMNS = [("TimeGenerated", "datetime"), ("SrcAddr", "string"), ("DstAddr", "string"),
           ("DstPort", "int"), ("Bytes", "long"), ("Action", "string")]


def _object(n: int, k: int) -> bytes:
    lines = [f"2 111122223333 eni-1 10.0.0.{i % 9} 10.1.0.1 40000 {53 if i % 4 == 0 else 443} "
             f"6 3 {100 + i} 1764547200 1764547260 {'REJECT' if i % 5 == 0 else 'ACCEPT'} OK"
             for i in range(k * n, k * n + n)]
    return gzip.compress(("\n".join([HEADER, *lines]) + "\n").encode())


def _cfg(bucket: str, endpoint: str = "") -> object:
    return parse_config({
        "sources": [{"name": "vpc", "bucket": bucket, "format": "vpcflow"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"},
        **({"aws": {"endpoint_url": endpoint}} if endpoint else {}),
        "tables": [{"name": "VpcAux_CL", "plan": "Auxiliary",
                    "columns": [{"name": c, "type": t} for c, t in COLUMNS]}],
        "transforms": [{"table": "AWSVPCFlow", "where": "Action <> 'REJECT'",
                        "route": [{"table": "VpcAux_CL", "where": "DstPort = 53"}]}]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with LocalStack(tmp_path_factory.mktemp("est")) as st:
        yield st


def test_the_estimate_scales_a_sample_and_applies_the_transforms(stack: LocalStack,
                                                                 monkeypatch) -> None:
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    s3 = stack.s3()
    s3.create_bucket(Bucket="est-vpc")
    for k in range(10):
        s3.put_object(Bucket="est-vpc", Key=f"AWSLogs/111122223333/vpcflowlogs/us-east-1/2025/12/"
                      f"01/111122223333_vpcflowlogs_us-east-1_fl-{k}.log.gz", Body=_object(40, k))
    cfg = _cfg("est-vpc", stack.s3_endpoint)
    est = estimate(cfg, sample=5, days=1.0, seed=1)
    assert est.sources == {"vpc": (10, 5)}
    before, after, aux = est.before["AWSVPCFlow"], est.after["AWSVPCFlow"], est.after["VpcAux_CL"]
    assert before.rows == 400  # 5 objects of 40 rows read, scaled by 10/5
    # 1 row in 5 is REJECT (dropped); of the rest, DstPort 53 (1 in 4) goes to the Aux table.
    kept = [i for i in range(400) if i % 5 != 0]
    assert aux.rows == sum(1 for i in kept if i % 4 == 0)
    assert after.rows == len(kept) - aux.rows
    assert aux.bytes < after.bytes and after.bytes + aux.bytes < before.bytes
    out = io.StringIO()
    print_estimate(est, tables_for(cfg), {"Analytics": 4.0, "Basic": 1.0, "Auxiliary": 0.1},
                   out)
    text = out.getvalue()
    assert "AWSVPCFlow" in text and "VpcAux_CL" in text and "Auxiliary" in text
    assert "less)" in text


def test_local_files_stand_for_days_of_a_source(tmp_path: Path, capsys) -> None:
    files = []
    for k in range(4):
        f = tmp_path / f"fl-{k}.log.gz"
        f.write_bytes(_object(30, k))
        files.append(f)
    config = tmp_path / "c.toml"
    config.write_text("""
[sentinel]
endpoint = "https://x"
rule_id = "dcr-1"
[[sources]]
name = "vpc"
bucket = "b"
format = "vpcflow"
[[transforms]]
table = "AWSVPCFlow"
sample = 3
""")
    assert main(["estimate", "-c", str(config), "--days", "2", "--sample", "2",
                 "--price", "Analytics=5", "--files", *map(str, files)]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("AWSVPCFlow")]
    events_before = int(line.split()[2].replace(",", ""))
    assert events_before == 60  # 2 files of 30 read, scaled by 4/2, over 2 days
    assert "Analytics 5.0" in out
    assert main(["estimate", "-c", str(config), "--price", "Premium=1", "--files",
                 str(files[0])]) == 2
