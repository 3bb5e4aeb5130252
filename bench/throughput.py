"""Throughput of the real dataflow on CloudTrail, against the bare work it has to do.

Seeds N CloudTrail objects into the local stack once, then:

1. measures, on one core in this process, the bare work per event: gunzip (ISA-L),
   JSON decode, column mapping, JSON encode, gzip (ISA-L level 1) — in a tight loop
   over the same objects, with the fastest decoders we have (msgspec typed structs,
   and orjson for comparison; the faster one is the baseline);
2. runs the real flow (``python -m bytewax.run dataflow.flow:flow``) with 1 worker, and
   with 2 processes, to catch-up against moto S3 and the HTTPS Sentinel emulator.

The local servers share the machine's cores with the flow (the emulator decompresses
and parses every request), so pipeline figures are a lower bound of the connector's own.

    python bench/throughput.py [--objects 400] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import orjson
from isal import igzip, isal_zlib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.demo import flow_env  # noqa: E402 (after the sys.path line above)
from devstack.samples import seed_cloudtrail  # noqa: E402 (after the sys.path line above)
from devstack.stack import LocalStack, free_port  # noqa: E402 (after the sys.path line above)
from operators.schema import Mapper, load_tables  # noqa: E402 (after the sys.path line above)

BUCKET = "bench-trail"
STREAM = "Custom-AWSCloudTrail"


def bare_work(objects: list[bytes], mapper: Mapper, seconds: float = 3.0) -> dict[str, float]:
    """Events/s on one core for the work every event needs, by decoder."""
    records_of = msgspec.json.Decoder(dict[str, list[msgspec.Raw]]).decode

    def with_msgspec(blob: bytes) -> int:
        rows = [mapper.map_json(r, "x-0") for r in records_of(isal_zlib.decompress(blob, 31))["Records"]]
        igzip.compress(b"[" + b",".join(rows) + b"]", compresslevel=1)
        return len(rows)

    def with_orjson(blob: bytes) -> int:
        recs = orjson.loads(isal_zlib.decompress(blob, 31))["Records"]
        rows = [mapper.map_dict(r, "x-0") for r in recs]
        igzip.compress(b"[" + b",".join(rows) + b"]", compresslevel=1)
        return len(rows)

    out = {}
    for name, fn in (("msgspec", with_msgspec), ("orjson", with_orjson)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for blob in objects:
                n += fn(blob)
        out[name] = n / (time.perf_counter() - t0)
    return out


def _cpu_secs(pid: int) -> float:
    """User + system CPU time of a running process, in seconds (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int) -> float:
    """Resident set size of a running process, in MB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_flow(stack: LocalStack, workdir: Path, processes: int, partitions: int,
             epoch_secs: int, enrich: str = "") -> dict:
    """Run the flow to catch-up; wall time, and the peak RSS of the largest process.

    :arg enrich: ``""`` (off), ``rules`` (rules, fast lane, findings) or ``all`` (and
        anomaly scores and sequences).
    """
    name = f"{processes}{('-' + enrich) if enrich else ''}"
    cfg = workdir / f"bench-{name}.toml"
    extra = ""
    if enrich:
        extra = "[enrich]\nenabled = true\n" + (
            "anomaly = true\nsequences = true\n" if enrich == "all" else "")
    cfg.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 2.0
[runtime]
mode = "catch_up"
[[sources]]
name = "trail"
bucket = "{BUCKET}"
prefix = "AWSLogs/"
format = "cloudtrail"
table = "AWSCloudTrail"
partitions = {partitions}
fetch_threads = 4
{extra}""")
    env = flow_env(stack, workdir / f"run-{name}p" / "errors", cfg)  # own journal per run
    env["S3SENTINEL__OPS__PORT"] = "0"
    base = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-s", str(epoch_secs)]
    if processes == 1:
        cmds = [base]
    else:
        addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        cmds = [base + ["-i", str(i), "-a", addrs] for i in range(processes)]
    before = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0)
    started_at = time.time()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, cwd=ROOT, stderr=subprocess.DEVNULL) for c in cmds]
    rss = [0.0] * len(procs)
    cpu = [0.0] * len(procs)
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            rss[i] = max(rss[i], _rss_mb(p.pid))
            cpu[i] = max(cpu[i], _cpu_secs(p.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"the flow failed: exit statuses {[p.returncode for p in procs]}")
    delivered = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0) - before
    # Steady state: from the first accepted request to the last (start-up left out).
    reqs = [r for r in stack.admin().requests() if r["status"] == 204][-10**6:]
    reqs = [r for r in reqs if r["time"] >= started_at and r["stream"] == STREAM]
    span = reqs[-1]["time"] - reqs[0]["time"] if len(reqs) > 1 else 0.0
    steady = (sum(r["record_count"] for r in reqs[1:]) / span) if span > 0 else 0.0
    return {"wall_secs": wall, "records": delivered, "peak_rss_mb": max(rss),
            "cpu_secs": sum(cpu), "steady_eps": steady}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--records", type=int, nargs=2, default=(300, 700), metavar=("MIN", "MAX"))
    ap.add_argument("--epoch-secs", type=int, default=1,
                    help="bytewax epoch length (-s): bounds how much is read ahead of delivery")
    ap.add_argument("--enrich-all", action="store_true",
                    help="also run with anomaly scores and sequences (slow: see the README)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = ap.parse_args()

    tables = load_tables()
    streams = {t.stream: None for t in tables.values()}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalStack(Path(tmp) / "stack", streams, store_records=False) as stack:
        s3 = stack.s3()
        t0 = time.perf_counter()
        manifest = seed_cloudtrail(s3, BUCKET, objects=args.objects,
                                   records_per_object=tuple(args.records), digests=False)
        seed_secs = time.perf_counter() - t0
        blobs = [s3.get_object(Bucket=BUCKET, Key=o.key)["Body"].read()
                 for o in manifest.objects]
        raw_bytes = sum(len(isal_zlib.decompress(b, 31)) for b in blobs)
        events = manifest.record_count
        mb = raw_bytes / 1e6
        print(f"seeded {events} CloudTrail events in {len(blobs)} objects "
              f"({mb:.1f} MB uncompressed, {raw_bytes / events:.0f} B/event) in {seed_secs:.1f}s")

        bare = bare_work(blobs[:40], Mapper(tables["AWSCloudTrail"]))
        baseline = max(bare.values())
        print(f"bare work, one core: msgspec {bare['msgspec']:,.0f} ev/s, "
              f"orjson {bare['orjson']:,.0f} ev/s (baseline: the faster)")

        runs = {}
        for procs, parts in ((1, 4), (2, 4)):
            r = run_flow(stack, Path(tmp), procs, parts, args.epoch_secs)
            assert r["records"] == events, f"{procs} process(es): {r['records']} of {events}"
            r["events_per_sec"] = events / r["wall_secs"]
            r["mb_per_sec"] = mb / r["wall_secs"]
            r["events_per_cpu_sec"] = events / r["cpu_secs"]
            runs[procs] = r
            print(f"pipeline, {procs} process{'es' if procs > 1 else ''} "
                  f"({'1 worker' if procs == 1 else '1 worker each'}): "
                  f"{r['events_per_sec']:,.0f} ev/s, {r['mb_per_sec']:.1f} MB/s, "
                  f"{r['wall_secs']:.1f}s wall (incl. start-up), "
                  f"steady state {r['steady_eps']:,.0f} ev/s, "
                  f"{r['events_per_cpu_sec']:,.0f} ev per CPU-second of the flow, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")

        for mode in ("rules", "all") if args.enrich_all else ("rules",):
            r = run_flow(stack, Path(tmp), 1, 4, args.epoch_secs, enrich=mode)
            assert r["records"] == events, f"enrich {mode}: {r['records']} of {events}"
            r["events_per_sec"] = events / r["wall_secs"]
            r["events_per_cpu_sec"] = events / r["cpu_secs"]
            runs[mode] = r
            print(f"pipeline, 1 process, enrichment {mode}: {r['events_per_sec']:,.0f} ev/s "
                  f"({r['events_per_sec'] / runs[1]['events_per_sec']:.2f} of without), "
                  f"steady state {r['steady_eps']:,.0f} ev/s, "
                  f"{r['events_per_cpu_sec']:,.0f} ev per CPU-second "
                  f"({r['events_per_cpu_sec'] / runs[1]['events_per_cpu_sec']:.2f} of without), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB  (target >= 0.75 of without, by CPU)")

    ratio = runs[1]["events_per_sec"] / baseline
    steady_ratio = runs[1]["steady_eps"] / baseline
    cpu_ratio = runs[1]["events_per_cpu_sec"] / baseline
    speedup = runs[2]["events_per_sec"] / runs[1]["events_per_sec"]
    steady_speedup = runs[2]["steady_eps"] / runs[1]["steady_eps"]
    print(f"pipeline / bare work (1 process): {ratio:.2f} by wall time incl. start-up, "
          f"{steady_ratio:.2f} in steady state, {cpu_ratio:.2f} by the flow's own CPU time "
          "(target >= 0.5)")
    print(f"2 processes / 1 process: {speedup:.2f}x by wall time, {steady_speedup:.2f}x in steady "
          "state  (target >= 1.3)")
    figures = {
        "events": events, "objects": len(blobs), "uncompressed_mb": round(mb, 1),
        "bare_msgspec_eps": round(bare["msgspec"]), "bare_orjson_eps": round(bare["orjson"]),
        "pipeline_1p_eps": round(runs[1]["events_per_sec"]),
        "pipeline_1p_mbps": round(runs[1]["mb_per_sec"], 2),
        "pipeline_1p_peak_rss_mb": round(runs[1]["peak_rss_mb"]),
        "pipeline_2p_eps": round(runs[2]["events_per_sec"]),
        "pipeline_2p_mbps": round(runs[2]["mb_per_sec"], 2),
        "pipeline_2p_peak_rss_mb": round(runs[2]["peak_rss_mb"]),
        "pipeline_1p_eps_per_cpu": round(runs[1]["events_per_cpu_sec"]),
        "pipeline_2p_eps_per_cpu": round(runs[2]["events_per_cpu_sec"]),
        "pipeline_1p_steady_eps": round(runs[1]["steady_eps"]),
        "pipeline_2p_steady_eps": round(runs[2]["steady_eps"]),
        "ratio_pipeline_to_bare": round(ratio, 3), "ratio_steady_to_bare": round(steady_ratio, 3),
        "ratio_cpu_to_bare": round(cpu_ratio, 3),
        "speedup_2p": round(speedup, 3), "speedup_2p_steady": round(steady_speedup, 3),
        "enrich_rules_1p_eps": round(runs["rules"]["events_per_sec"]),
        "enrich_rules_ratio": round(runs["rules"]["events_per_sec"] / runs[1]["events_per_sec"], 3),
        "enrich_rules_eps_per_cpu": round(runs["rules"]["events_per_cpu_sec"]),
        # The enrichment targets are by CPU time (the machine may be shared): per CPU-second
        # of the flow, against the flow without enrichment and against the bare work.
        "enrich_rules_ratio_cpu": round(runs["rules"]["events_per_cpu_sec"]
                                        / runs[1]["events_per_cpu_sec"], 3),
        "enrich_rules_peak_rss_mb": round(runs["rules"]["peak_rss_mb"]),
    }
    if "all" in runs:
        figures["enrich_all_1p_eps"] = round(runs["all"]["events_per_sec"])
        figures["enrich_all_ratio"] = round(runs["all"]["events_per_sec"]
                                            / runs[1]["events_per_sec"], 3)
        figures["enrich_all_eps_per_cpu"] = round(runs["all"]["events_per_cpu_sec"])
        figures["enrich_all_ratio_cpu"] = round(runs["all"]["events_per_cpu_sec"]
                                                / runs[1]["events_per_cpu_sec"], 3)
        figures["enrich_all_ratio_cpu_to_bare"] = round(runs["all"]["events_per_cpu_sec"]
                                                        / baseline, 3)
        figures["enrich_all_peak_rss_mb"] = round(runs["all"]["peak_rss_mb"])
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
