"""Tabular formats: rows per CPU-second of the line path and the columnar (polars) path.

For each tabular format, a generated gzip object of realistic size (10k and 200k rows) is
read as the connector reads it, on this machine's cores, with ``RecordMapper(columnar=...)``
off and on, in alternating rounds (the machine is shared: medians of the rounds):

- ``object``: decompress, frame, map and encode, in batches of 2,000 records as the
  source hands them on (the figure that matters);
- ``map``: the map step alone (records already framed): what the columnar path replaces.

CPU seconds are the process's (polars' threads included), so figures are per core. Each
case runs in its own process, which also gives its peak RSS (the objects are held
compressed; rows are produced batch by batch and dropped, as in the flow). The columnar
path covers VPC Flow Logs, ALB and NLB access logs (onto AWSALBAccessLogs and
AWSNLBAccessLogs) and S3 server access logs; CloudFront keeps the line path, and its figure
shows what the run detection costs.
Parquet has its own bench (``bench/parquet.py``).

    python bench/formats.py [--rounds 3] [--sizes 10000 200000] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 2000
FORMATS = ["vpcflow", "vpcflow_v5", "alb", "nlb", "cloudfront", "s3access"]


def _vpc_line(rng: random.Random, i: int) -> bytes:
    return (f"2 111122223333 eni-{rng.randrange(16**8):08x} 10.0.{rng.randrange(256)}."
            f"{rng.randrange(256)} 172.31.{rng.randrange(256)}.{rng.randrange(256)} "
            f"{rng.randrange(1024, 65536)} {rng.choice([22, 53, 80, 443, 3389, 8080])} "
            f"{rng.choice([6, 17])} {rng.randrange(1, 900)} {rng.randrange(40, 10**7)} "
            f"{1764547200 + i // 50} {1764547260 + i // 50} {rng.choice(['ACCEPT', 'REJECT'])} "
            f"OK").encode() if rng.random() > 0.02 else (
        f"2 111122223333 eni-{rng.randrange(16**8):08x} - - - - - - - {1764547200 + i // 50} "
        f"{1764547260 + i // 50} - NODATA").encode()


def _vpc_v5_line(rng: random.Random, i: int) -> bytes:
    return (_vpc_line(rng, i).replace(b"2 ", b"5 ", 1) + b" vpc-abcdefab012345678 "
            b"subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b " + str(rng.choice([2, 3, 18, 19]))
            .encode() + b" IPv4 10.0.0.71 52.95.128.179 us-east-1 use1-az1 - - - S3 " +
            rng.choice([b"egress", b"ingress"]) + b" " + str(rng.randrange(1, 9)).encode())


def _alb_line(rng: random.Random, i: int) -> bytes:
    """An ALB access log line of today's 33 fields; 1 in 100 with an escaped quote in its
    user agent (which takes the line path)."""
    ms = i * 7 % 1000
    ua = rng.choice(['"curl/8.4.0"', '"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"',
                     '"Go-http-client/1.1"', '"ELB-HealthChecker/2.0"'])
    if rng.random() < 0.01:
        ua = '"Mozilla/5.0 \\"quoted\\""'
    status = rng.choice(["200", "200", "200", "301", "404", "502"])
    return (f"https 2026-11-01T22:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{ms:03d}123Z "
            f"app/my-lb/50dc6c495c0c9188 192.168.{rng.randrange(256)}.{rng.randrange(256)}:"
            f"{rng.randrange(1024, 65536)} 10.0.0.{rng.randrange(1, 20)}:80 0.000 "
            f"0.{rng.randrange(1000):03d} 0.000 {status} {status} {rng.randrange(100, 900)} "
            f"{rng.randrange(200, 90000)} \"GET https://www.example.com:443/p/{rng.randrange(999)}"
            f"?q={rng.randrange(99)} HTTP/1.1\" {ua} ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 "
            f"arn:aws:elasticloadbalancing:us-east-2:111122223333:targetgroup/my-targets/"
            f"73e2d6bc24d8a067 \"Root=1-58337281-{rng.randrange(16**8):08x}\" "
            f"\"www.example.com\" \"arn:aws:acm:us-east-2:111122223333:certificate/1234\" 1 "
            f"2026-11-01T22:22:48.364000Z \"forward\" \"-\" \"-\" \"10.0.0.1:80\" "
            f"\"{status}\" \"-\" \"-\" TID_{rng.randrange(16**6):06x} \"-\" \"-\" \"-\""
            ).encode()


def _nlb_line(rng: random.Random, i: int) -> bytes:
    """An NLB (TLS listener) access log line of its 22 fields."""
    return (f"tls 2.0 2026-11-01T22:{i // 6000 % 60:02d}:{i // 100 % 60:02d} "
            f"net/my-nlb/c6e77e28c25b2234 listener/net/my-nlb/c6e77e28c25b2234/5b8f2c1d "
            f"192.168.{rng.randrange(256)}.{rng.randrange(256)}:{rng.randrange(1024, 65536)} "
            f"10.0.0.{rng.randrange(1, 20)}:443 {rng.randrange(1, 9000)} {rng.randrange(1, 90)} "
            f"{rng.randrange(100, 9000)} {rng.randrange(200, 90000)} - "
            f"arn:aws:acm:us-east-2:111122223333:certificate/1234 - "
            f"ECDHE-RSA-AES128-SHA tlsv12 - my-network-loadbalancer.example.com "
            f'h2 h2 "h2","http/1.1" 2026-11-01T22:00:0{i % 10}').encode()


def make_object(fmt: str, rows: int, seed: int = 1) -> tuple[str, bytes]:
    """(source format, gzip object of ``rows`` records) for one bench format."""
    from devstack import formatsamples as fs
    from operators.formats.vpcflow import FIELDS

    rng = random.Random(seed)
    if fmt == "vpcflow":
        return "vpcflow", gzip.compress(b"\n".join(
            [fs.VPC_HEADER, *(_vpc_line(rng, i) for i in range(rows))]) + b"\n", 1)
    if fmt == "vpcflow_v5":
        header = " ".join(FIELDS[:29]).encode()
        return "vpcflow", gzip.compress(b"\n".join(
            [header, *(_vpc_v5_line(rng, i) for i in range(rows))]) + b"\n", 1)
    if fmt in ("alb", "nlb"):
        line = _alb_line if fmt == "alb" else _nlb_line
        return fmt, gzip.compress(b"\n".join(line(rng, i) for i in range(rows)) + b"\n", 1)
    lines = {"cloudfront": fs.CF_LINES, "s3access": fs.S3ACCESS_LINES}[fmt]
    head = fs.CF_HEADER if fmt == "cloudfront" else []
    body = [*head, *(lines[i % len(lines)] for i in range(rows))]
    return fmt, gzip.compress(b"\n".join(body) + b"\n", 1)


def run_case(fmt: str, rows: int, columnar: bool, stage: str) -> dict[str, float]:
    """One case in this process: rows, CPU and wall seconds, peak RSS."""
    from connectors.s3.config import SourceConfig
    from connectors.s3.records import object_records
    from dataflow.core.messages import ObjectRef, RawRecord
    from operators.formats.registry import text_format
    from operators.parse import RecordMapper
    from operators.schema import load_tables

    source_fmt, blob = make_object(fmt, rows)
    src = SourceConfig(name="s", bucket="b", format=source_fmt)
    mapper = RecordMapper([src], load_tables(), 1_000_000, columnar=columnar)
    obj = ObjectRef("s", "s:0/1", "b", f"k.{fmt}", "e", len(blob), source_fmt, id="0123456789ab")

    def records() -> object:
        _, recs = object_records(obj.key, [blob], source_fmt, max_bytes=2**34,
                                 parser_for=lambda f: text_format(f))
        return recs

    def mapped(recs: list) -> int:
        n = 0
        for k in range(0, len(recs), BATCH):
            for item in mapper.map_batch(recs[k:k + BATCH]):
                n += len(getattr(item, "rows", ()))
        return n

    warm = [RawRecord(obj, off, data, hdr) for off, data, hdr in records()][:BATCH]
    mapper.map_batch(warm)  # polars' first call sets up its thread pool: not the steady cost
    framed = None
    if stage == "map":
        framed = [RawRecord(obj, off, data, hdr) for off, data, hdr in records()]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    if framed is not None:
        n = mapped(framed)
    else:
        n, batch = 0, []
        for off, data, hdr in records():
            batch.append(RawRecord(obj, off, data, hdr))
            if len(batch) == BATCH:
                n += mapped(batch)
                batch = []
        n += mapped(batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"rows": n, "cpu_s": cpu, "wall_s": wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss0 / 1024}


def _child(fmt: str, rows: int, columnar: bool, stage: str) -> dict[str, float]:
    # polars with one thread, as in a flow process (dataflow/__init__.py says why).
    out = subprocess.run([sys.executable, __file__, "--case", fmt, str(rows),
                          "columnar" if columnar else "line", stage],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "POLARS_MAX_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--formats", nargs="+", default=FORMATS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        fmt, rows, path, stage = args.case
        print(json.dumps(run_case(fmt, int(rows), path == "columnar", stage)))
        return
    figures: dict[str, dict] = {}
    print(f"{'format':<11} {'rows':>8} {'stage':<7} {'line rows/cpu-s':>16} "
          f"{'columnar':>10} {'x':>6} {'peak RSS MB line/col':>21}")
    for fmt in args.formats:
        for rows in args.sizes:
            for stage in ("object", "map"):
                got: dict[bool, list[dict]] = {False: [], True: []}
                for _ in range(args.rounds):  # alternate, so both see the same noise
                    for columnar in (False, True):
                        got[columnar].append(_child(fmt, rows, columnar, stage))
                rate = {c: statistics.median(r["rows"] / r["cpu_s"] for r in got[c])
                        for c in got}
                rss = {c: max(r["peak_rss_mb"] for r in got[c]) for c in got}
                ratio = rate[True] / rate[False]
                figures[f"{fmt}/{rows}/{stage}"] = {
                    "line_rows_per_cpu_s": round(rate[False]), "columnar_rows_per_cpu_s":
                    round(rate[True]), "speedup": round(ratio, 2),
                    "peak_rss_mb_line": round(rss[False], 1),
                    "peak_rss_mb_columnar": round(rss[True], 1),
                    "rows": got[True][0]["rows"]}
                print(f"{fmt:<11} {rows:>8} {stage:<7} {rate[False]:>16,.0f} "
                      f"{rate[True]:>10,.0f} {ratio:>6.2f} "
                      f"{rss[False]:>10.0f}/{rss[True]:<10.0f}", flush=True)
    if args.json:
        print(json.dumps({"rounds": args.rounds, "batch_records": BATCH, "cases": figures}))


if __name__ == "__main__":
    main()
