"""[[transforms]] through the real flow (issue 15): a cost policy on VPC flow logs, checked row
by row against the source objects; the routed table is declared by the deployment template
and lands in its own stream."""

from __future__ import annotations

import collections
import gzip
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from dataflow.config import load_config
from dataflow.dcr import dcr_template
from dataflow.tables import tables_for
from devstack.demo import flow_env
from devstack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
          "bytes start end action log-status")


def _lines(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        dst_port = rng.choice([22, 443, 53, 8080])
        out.append(f"2 111122223333 eni-0a1b2c3d 10.0.{rng.randrange(3)}.{rng.randrange(9)} "
                   f"10.1.0.{rng.randrange(9)} {rng.randrange(1024, 65535)} {dst_port} 6 "
                   f"{rng.randrange(1, 90)} {rng.randrange(40, 90000)} 1764547200 1764547260 "
                   f"{rng.choice(['ACCEPT', 'REJECT'])} OK")
    return out


def test_a_cost_policy_is_applied_row_by_row(tmp_path: Path) -> None:
    config = tmp_path / "flow.toml"
    config.write_text("""
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"

[[sources]]
name = "vpc"
bucket = "cost-vpc"
format = "vpcflow"

[[tables]]
name = "AWSVPCFlowAux_CL"
plan = "Auxiliary"
columns = [
""" + "".join(f'  {{ name = "{c}", type = "{t}" }},\n' for c, t in [
        ("TimeGenerated", "datetime"), ("Version", "int"), ("AccountId", "string"),
        ("InterfaceId", "string"), ("SrcAddr", "string"), ("DstAddr", "string"),
        ("SrcPort", "int"), ("DstPort", "int"), ("Protocol", "int"), ("Packets", "long"),
        ("Bytes", "long"), ("Start", "datetime"), ("End", "datetime"), ("Action", "string"),
        ("LogStatus", "string")]) + """]

[[transforms]]
table = "AWSVPCFlow"
where = "NOT (Action = 'REJECT' AND DstPort = 22)"      # noise: scans of closed SSH
route = [{ table = "AWSVPCFlowAux_CL", where = "DstPort = 53" }]
""")
    cfg = load_config(config, environ={}, need_target=False)
    tables = tables_for(cfg)
    streams = {tables[t].stream for t in ("AWSVPCFlow", "AWSVPCFlowAux_CL")}
    wanted = [t for t in tables.values() if t.stream in streams]
    template = dcr_template(wanted)
    declared = {s for r in template["resources"] if r["type"].endswith("dataCollectionRules")
                for s in r["properties"]["streamDeclarations"]}
    assert declared == streams  # the template declares the table the transform writes
    rng = random.Random(3)
    with LocalStack(tmp_path / "stack", template=template, tables=tables) as stack:
        s3 = stack.s3()
        s3.create_bucket(Bucket="cost-vpc")
        sent: list[list[str]] = []
        for k in range(6):
            lines = _lines(rng, 150)
            sent.append(lines)
            s3.put_object(Bucket="cost-vpc", Key=f"AWSLogs/111122223333/vpcflowlogs/us-east-1/"
                          f"2025/12/01/111122223333_vpcflowlogs_us-east-1_fl-{k}.log.gz",
                          Body=gzip.compress(("\n".join([HEADER, *lines]) + "\n").encode()))
        env = flow_env(stack, tmp_path / "errors", config) | {"S3SENTINEL__OPS__PORT": "0"}
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        admin = stack.admin()
        main = admin.records("Custom-AWSVPCFlow")
        aux = admin.records("Custom-AWSVPCFlowAux_CL")
        summary = admin.summary()

    def key(f: list[str]) -> tuple:
        return (f[3], f[4], int(f[5]), int(f[6]), int(f[9]), f[12])

    flows = [line.split() for lines in sent for line in lines]
    kept = [f for f in flows if not (f[12] == "REJECT" and f[6] == "22")]
    want_aux = sorted(key(f) for f in kept if f[6] == "53")
    want_main = sorted(key(f) for f in kept if f[6] != "53")

    def got(rows: list[dict]) -> list[tuple]:
        return sorted((r["SrcAddr"], r["DstAddr"], r["SrcPort"], r["DstPort"], r["Bytes"],
                       r["Action"]) for r in rows)

    assert got(main) == want_main
    assert got(aux) == want_aux
    assert len(main) + len(aux) < len(flows)  # something was dropped
    assert all("RecordId" in r for r in aux) and all("RecordId_CF" in r for r in main)
    for stream, st in summary["streams"].items():  # every column declared, every type right
        assert st["dropped_columns"] == {} and st["dropped_values"] == {}, (stream, st)


def test_accepted_flows_are_summarised_per_object_and_minute(tmp_path: Path) -> None:
    """The issue's policy: drop health checks, summarise accepted flows per minute into a
    declared table, route the rest to an Auxiliary table; summaries checked against the
    source objects, and summary rows land exactly once."""
    config = tmp_path / "flow.toml"
    aux_columns = "".join(f'  {{ name = "{c}", type = "{t}" }},\n' for c, t in [
        ("TimeGenerated", "datetime"), ("SrcAddr", "string"), ("DstAddr", "string"),
        ("DstPort", "int"), ("Action", "string"), ("Bytes", "long")])
    config.write_text("""
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"

[[sources]]
name = "vpc"
bucket = "agg-vpc"
format = "vpcflow"

[[tables]]
name = "AWSVPCFlowAux_CL"
plan = "Auxiliary"
columns = [
""" + aux_columns + """]

[[tables]]
name = "VPCFlowSummary_CL"
columns = [
  { name = "TimeGenerated", type = "datetime" },
  { name = "SrcAddr", type = "string" },
  { name = "DstAddr", type = "string" },
  { name = "DstPort", type = "int" },
  { name = "Bytes", type = "long" },
  { name = "Packets", type = "long" },
  { name = "Flows", type = "long" },
]

[[transforms]]
table = "AWSVPCFlow"
where = "DstPort <> 8080"                       # the load balancer's health checks
route = [{ table = "AWSVPCFlowAux_CL", where = "true" }]
[[transforms.aggregate]]
table = "VPCFlowSummary_CL"
where = "Action = 'ACCEPT'"
by = ["SrcAddr", "DstAddr", "DstPort"]
values = ["sum(Bytes) AS Bytes", "sum(Packets) AS Packets", "count(*) AS Flows"]
bucket_secs = 60
""")
    cfg = load_config(config, environ={}, need_target=False)
    tables = tables_for(cfg)
    streams = {tables[t].stream for t in ("AWSVPCFlow", "AWSVPCFlowAux_CL", "VPCFlowSummary_CL")}
    template = dcr_template([t for t in tables.values() if t.stream in streams])
    declared = {s for r in template["resources"] if r["type"].endswith("dataCollectionRules")
                for s in r["properties"]["streamDeclarations"]}
    assert declared == streams  # the template declares every table a transform writes
    rng = random.Random(5)
    sent: list[list[list[str]]] = []
    with LocalStack(tmp_path / "stack", template=template, tables=tables) as stack:
        s3 = stack.s3()
        s3.create_bucket(Bucket="agg-vpc")
        for k in range(5):
            flows = []
            for line in _lines(rng, 200):
                f = line.split()
                f[10] = str(1764547200 + rng.randrange(0, 180))  # start: three minutes
                flows.append(f)
            sent.append(flows)
            s3.put_object(Bucket="agg-vpc", Key=f"AWSLogs/111122223333/vpcflowlogs/us-east-1/"
                          f"2025/12/01/111122223333_vpcflowlogs_us-east-1_fl-{k}.log.gz",
                          Body=gzip.compress(("\n".join(
                              [HEADER, *(" ".join(f) for f in flows)]) + "\n").encode()))
        env = flow_env(stack, tmp_path / "errors", config) | {"S3SENTINEL__OPS__PORT": "0"}
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        admin = stack.admin()
        main = admin.records("Custom-AWSVPCFlow")
        aux = admin.records("Custom-AWSVPCFlowAux_CL")
        summaries = admin.records("Custom-VPCFlowSummary_CL")
        summary = admin.summary()

    want: dict[tuple, list[int]] = {}
    for flows in sent:
        for f in flows:
            if f[6] == "8080" or f[12] != "ACCEPT":
                continue
            minute = (int(f[10]) // 60) * 60
            when = datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            # Summaries are per object: the same key in two objects is two rows.
            acc = want.setdefault((id(flows), when, f[3], f[4], int(f[6])), [0, 0, 0])
            acc[0] += int(f[9])
            acc[1] += int(f[8])
            acc[2] += 1
    got = collections.Counter(
        (r["TimeGenerated"], r["SrcAddr"], r["DstAddr"], r["DstPort"], r["Bytes"], r["Packets"],
         r["Flows"]) for r in summaries)
    expected = collections.Counter(
        (when, src, dst, port, *acc) for (_, when, src, dst, port), acc in want.items())
    assert got == expected
    assert len({r["RecordId"] for r in summaries}) == len(summaries)  # each exactly once
    rejected = [f for flows in sent for f in flows if f[6] != "8080" and f[12] == "REJECT"]
    assert sorted((r["SrcAddr"], r["DstPort"], r["Bytes"]) for r in aux) == sorted(
        (f[3], int(f[6]), int(f[9])) for f in rejected)
    assert main == []  # every flow is summarised, routed or dropped
    for stream, st in summary["streams"].items():
        assert st["dropped_columns"] == {} and st["dropped_values"] == {}, (stream, st)
