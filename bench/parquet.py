"""Parquet throughput and memory: VPC flow logs delivered as Parquet vs the same flows as
gzip text, read and mapped on one core.

Each run reads one object from a local file in 256 KiB chunks (as a streamed S3 body comes)
through the connector's own path, ``object_records`` (decompress, detect, frame; for Parquet:
spool, then rows in bounded slices) and ``RecordMapper.map_batch`` in batches of 2000 records
(as the source hands them on), onto AWSVPCFlow; the flows are those of versions 2 to 5 (29
fields, AWS's column names and types in Parquet). Both map on the line path, then on the
polars columnar path (``RecordMapper(columnar=...)``: Parquet flow log rows are handed on as
the text records of the same flows, so the columnar path reads both). Every run is a fresh process on one CPU
(``POLARS_MAX_THREADS=1``, CPU affinity), warmed up on a 2,000-row object of its kind, so
its memory figures are its own: the peak resident memory of the read above what the process
held before it (``VmHWM`` reset through ``/proc/self/clear_refs``), and Python's own heap
peak (tracemalloc, in a run of its own: it slows Python down). For contrast, the peak of only
decoding the whole Parquet file at once (``pl.read_parquet``).

    python bench/parquet.py [--rows 10000,200000] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 256 * 1024
BATCH = 2000
WARM_ROWS = 2000
"""Rows of the object each run reads first, so that the figures leave out start-up costs."""
ACCT = "111122223333"
KEY_PARQUET = (f"AWSLogs/aws-account-id={ACCT}/aws-service=vpcflowlogs/aws-region=us-east-1/"
               f"year=2026/month=01/day=02/hour=03/{ACCT}_vpcflowlogs_us-east-1_fl-0a1b2c3d"
               "_20260102T0305Z_4a5b6c7d.log.parquet")
KEY_TEXT = (f"AWSLogs/{ACCT}/vpcflowlogs/us-east-1/2026/01/02/{ACCT}_vpcflowlogs_us-east-1_"
            "fl-0a1b2c3d_20260102T0305Z_4a5b6c7d.log.gz")


def flows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """VPC flows with every field of versions 2 to 5 (None: no value), a few NODATA."""
    from operators.formats.vpcflow import FIELDS

    v5 = FIELDS[:FIELDS.index("ecs-cluster-arn")]
    rng = random.Random(seed)
    enis = [f"eni-{rng.getrandbits(60):015x}" for _ in range(200)]
    out = []
    for i in range(n):
        f: dict[str, Any] = dict.fromkeys(v5)
        f.update({"version": 5, "account-id": ACCT, "interface-id": rng.choice(enis),
                  "start": 1767323100 + i // 50, "end": 1767323160 + i // 50,
                  "vpc-id": "vpc-0a1b2c3d", "subnet-id": "subnet-0a1b2c3d",
                  "region": "us-east-1", "az-id": "use1-az2"})
        if rng.random() < 0.02:
            f["log-status"] = "NODATA"
        else:
            src = f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
            dst = f"172.31.{rng.randrange(256)}.{rng.randrange(256)}"
            f.update({"srcaddr": src, "dstaddr": dst, "pkt-srcaddr": src, "pkt-dstaddr": dst,
                      "srcport": rng.randrange(1024, 65536),
                      "dstport": rng.choice([22, 443, 53, 80, 3306]),
                      "protocol": rng.choice([6, 6, 17]), "packets": rng.randrange(1, 5000),
                      "bytes": rng.randrange(40, 10**8), "action": rng.choice(["ACCEPT", "REJECT"]),
                      "log-status": "OK", "tcp-flags": rng.choice([0, 2, 18, 19]), "type": "IPv4",
                      "instance-id": "i-0a1b2c3d4e5f60718",
                      "flow-direction": rng.choice(["ingress", "egress"]),
                      "pkt-src-aws-service": rng.choice([None, None, None, "S3"]),
                      "traffic-path": rng.choice([None, 1, 8])})
        out.append(f)
    return out


def objects(n: int, out: Path) -> dict[str, Path]:
    """The same flows as a Parquet object (as AWS writes it) and a gzip text object."""
    import polars as pl

    from operators.formats.vpcflow import INT_FIELDS

    rows = flows(n)
    names = list(rows[0])
    text = [" ".join(names)] + [" ".join("-" if r[k] is None else str(r[k]) for k in names)
                                for r in rows]
    paths = {"text": out / f"flows-{n}.log.gz", "parquet": out / f"flows-{n}.log.parquet"}
    paths["text"].write_bytes(gzip.compress(("\n".join(text) + "\n").encode(), 6))
    cols = {}
    for k in names:
        dtype = ((pl.Int64 if k in ("packets", "bytes", "start", "end") else pl.Int32)
                 if k in INT_FIELDS else pl.String)
        cols[k.replace("-", "_")] = pl.Series([r[k] for r in rows], dtype=dtype)
    buf = io.BytesIO()
    pl.DataFrame(cols).write_parquet(buf, compression="gzip", row_group_size=64 * 1024)
    paths["parquet"].write_bytes(buf.getvalue())
    return paths


# --------------------------------------------------------------------------- one run (child)


def _has_columnar() -> bool:
    import inspect

    from operators.parse import RecordMapper

    return "columnar" in inspect.signature(RecordMapper).parameters


COLUMNAR = _has_columnar()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(kind: str, path: Path, rows: int, mode: str) -> dict[str, Any]:
    import tracemalloc

    from connectors.s3.records import UnreadableRecord, object_records
    from dataflow.config import SourceConfig
    from dataflow.core.messages import ObjectRef, RawRecord, Rows
    from operators.formats.registry import text_format
    from operators.parse import RecordMapper
    from operators.schema import load_tables

    src = SourceConfig(name="vpc", bucket="bench", format="auto")
    # The text line path: with the polars columnar path for text (issue 15, item 3) where this
    # tree has it, only for the run that asks for it.
    options = ({"columnar": kind.endswith("_columnar")} if COLUMNAR else {})
    mapper = RecordMapper([src], load_tables(), 1_000_000, **options)
    kind = kind.removesuffix("_columnar")
    key = KEY_PARQUET if kind == "parquet" else KEY_TEXT

    def chunks() -> Any:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    if kind == "whole":  # the contrast: the whole Parquet file in memory at once
        import polars as pl

        def run() -> tuple[int, int]:
            df = pl.read_parquet(path)
            return df.height, 0
    else:
        def run() -> tuple[int, int]:
            fmt, items = object_records(key, chunks(), "auto", max_bytes=1 << 34,
                                        parser_for=text_format)
            ref = ObjectRef("vpc", "vpc:0/1", "bench", key, "etag", path.stat().st_size, fmt)
            good = bad = 0
            batch: list[RawRecord] = []

            def flush() -> None:
                nonlocal good, bad
                for out in mapper.map_batch(batch):
                    if isinstance(out, Rows):
                        good += len(out.rows)
                    else:
                        bad += 1
                batch.clear()

            for item in items:
                if isinstance(item, UnreadableRecord):
                    bad += 1
                    continue
                batch.append(RawRecord(ref, item[0], item[1], item[2]))
                if len(batch) >= BATCH:
                    flush()
            flush()
            return good, bad

    warm = path.with_name(path.name.replace(f"-{rows}.", "-warm."))
    if warm.exists():  # warm up (imports, parsers, polars' pools) on a small object
        path, real = warm, path
        run()
        path = real
    base_kb = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if mode == "memory":  # tracemalloc slows Python down: a run of its own
        tracemalloc.start()
    t = time.perf_counter()
    good, bad = run()
    secs = time.perf_counter() - t
    out = {"rows": good, "bad": bad, "secs": secs,
           "peak_rss_mb": round((_rss_kb("VmHWM") - base_kb) / 1024, 1)}
    if mode == "memory":
        out["py_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return out


def run_child(kind: str, path: Path, rows: int, mode: str = "time") -> dict[str, Any]:
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    got = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(rows), mode],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(got.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,200000", help="object sizes, in rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of figures")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, rows, mode = args.child
        with __import__("contextlib").suppress(AttributeError, OSError):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(json.dumps(child(kind, Path(path), int(rows), mode)))
        return 0
    figures: dict[str, Any] = {"chunk_bytes": CHUNK, "batch_records": BATCH, "runs": {}}
    print("VPC flow logs (v5 fields) read + mapped onto AWSVPCFlow, one core "
          f"(best of {args.repeat}; peak memory above the process before the read)")
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        for n in (int(x) for x in args.rows.split(",")):
            paths = objects(n, Path(tmp))
            for kind, warm in objects(WARM_ROWS, Path(tmp)).items():
                warm.rename(paths[kind].with_name(paths[kind].name.replace(f"-{n}.", "-warm.")))
            runs: dict[str, Any] = {}
            for kind in ("text", "parquet", *(("text_columnar", "parquet_columnar")
                                              if COLUMNAR else ())):
                best: dict[str, Any] | None = None
                path = paths[kind.removesuffix("_columnar")]
                for _ in range(args.repeat):
                    got = run_child(kind, path, n)
                    assert got["rows"] == n and got["bad"] == 0, got
                    if best is None or got["secs"] < best["secs"]:
                        best = got
                assert best is not None
                best["rows_per_s"] = round(n / best["secs"])
                best["py_peak_mb"] = run_child(kind, path, n, "memory")["py_peak_mb"]
                best["object_bytes"] = path.stat().st_size
                runs[kind] = best
            runs["whole_file_read_parquet"] = run_child("whole", paths["parquet"], n, "memory")
            runs["parquet_vs_text"] = round(runs["parquet"]["rows_per_s"]
                                            / runs["text"]["rows_per_s"], 2)
            if "parquet_columnar" in runs:
                runs["parquet_columnar_vs_text"] = round(
                    runs["parquet_columnar"]["rows_per_s"] / runs["text"]["rows_per_s"], 2)
            figures["runs"][str(n)] = runs
            print(f"  {n:>7,} rows")
            for kind, label in (("text", "gzip text, line path"),
                                ("parquet", "Parquet, row slices"),
                                ("text_columnar", "gzip text, columnar"),
                                ("parquet_columnar", "Parquet, columnar")):
                if kind not in runs:
                    continue
                r = runs[kind]
                print(f"    {label:<22} {r['rows_per_s']:>9,} rows/s   object "
                      f"{r['object_bytes'] / 1e6:6.2f} MB   peak RSS +{r['peak_rss_mb']:6.1f} MB"
                      f"   Python heap peak {r['py_peak_mb']:6.1f} MB")
            w = runs["whole_file_read_parquet"]
            print(f"    {'(pl.read_parquet whole)':<22} {'':>9}         {'':>6}      "
                  f"    peak RSS +{w['peak_rss_mb']:6.1f} MB   (decoding only)")
            print(f"    Parquet / text, line path: {runs['parquet_vs_text']}x"
                  + (f"; Parquet columnar / text line path: "
                     f"{runs['parquet_columnar_vs_text']}x" if "parquet_columnar" in runs
                     else ""))
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
