"""Soak: a continuous flow fed new CloudTrail objects for minutes; does its memory grow?

``bench/throughput.py --long N`` checks that memory does not grow with the *number of
objects* a catch-up run reads. This checks growth with *time* in the mode a deployment
runs: ``runtime.mode = "continuous"``, polling, with a recovery store (``s3sentinel run``),
the upload journal, the journal view's retention, the shared listings and the enrichment
state all living as long as the process. A seeder puts a delivery of new objects every
``--tick-secs`` (one per account and region, as CloudTrail does every five minutes, here
compressed); the flow's VmRSS is read from /proc every ``--sample-secs``.

What a deployment holds for a time window fills up over that window: the listing's
look-back (900 s by default) and the upload journal's retention (7 days). The soak shortens
both (``--lookback-secs 60 --retention-secs 120``), so that a run of minutes reaches the
steady state a deployment reaches after a week; growth beyond that is a leak.

After a warm-up (the first quarter of the run), the RSS should be flat: the figures are the
slope of a least-squares line through the samples (MB per hour), and the median RSS of the
last samples against the median of the first ones after warm-up. At the end the seeder
stops, the flow is given time to deliver everything, and every seeded event must have
arrived in the emulator, once.

``--tracemalloc`` traces the flow's Python allocations (slower: ~2x its CPU) and dumps a
snapshot every minute; the soak then reports the traced memory by minute beside the RSS
(what RSS gains and the trace does not is native: Rust, SQLite, the allocator) and the
source lines whose memory grew most from the end of the warm-up to the end.

    python bench/soak.py [--minutes 10] [--enrich-all] [--tracemalloc] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import flow_config, status_mb  # noqa: E402 (after the sys.path line above)
from devstack.demo import flow_env  # noqa: E402 (after the sys.path line above)
from devstack.samples import (  # noqa: E402 (after the sys.path line above)
    DEFAULT_START,
    DELIVERY_INTERVAL,
    seed_cloudtrail,
)
from devstack.stack import LocalStack  # noqa: E402 (after the sys.path line above)
from operators.schema import load_tables  # noqa: E402 (after the sys.path line above)

BUCKET = "bench-soak"
STREAM = "Custom-AWSCloudTrail"
PAIRS = 9
"""Accounts x regions of the sample trail: one object each per delivery."""


def config(enrich: bool, poll_secs: float, lookback_secs: float, retention_secs: float) -> str:
    return flow_config(BUCKET, 4, "all" if enrich else "", mode="continuous",
                       runtime=f"journal_retention_secs = {retention_secs}",
                       source=f"poll_secs = {poll_secs}\nlookback_secs = {lookback_secs}")


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    num = sum((t - mt) * (v - mv) for t, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return 3600.0 * num / den if den else 0.0


def by_minute(samples: list[tuple[float, float]]) -> list[float]:
    """The median RSS of each minute of the run."""
    minutes: dict[int, list[float]] = {}
    for t, v in samples:
        minutes.setdefault(int(t // 60), []).append(v)
    return [round(statistics.median(vs), 1) for _, vs in sorted(minutes.items())]


_DUMPER = """\
import os, threading, time, tracemalloc

def _dump(where, every):
    n = 0
    while True:
        time.sleep(every)
        n += 1
        tracemalloc.take_snapshot().dump(os.path.join(where, f"snap-{n:04d}.tracemalloc"))

if os.environ.get("S3SENTINEL_SOAK_TRACE_DIR") and tracemalloc.is_tracing():
    threading.Thread(target=_dump, daemon=True, args=(
        os.environ["S3SENTINEL_SOAK_TRACE_DIR"], float(os.environ["S3SENTINEL_SOAK_TRACE_SECS"])
    )).start()
"""
"""A ``sitecustomize`` for the flow process: a snapshot of its traced allocations every
S3SENTINEL_SOAK_TRACE_SECS (with ``PYTHONTRACEMALLOC`` set)."""


def traced(directory: Path, warm_secs: float, every: float, top: int = 12) -> dict[str, Any]:
    """Traced MB per snapshot, and the lines that grew most from the first snapshot after
    ``warm_secs`` to the last."""
    import tracemalloc  # only here: the flow's snapshots are read after the run

    paths = sorted(directory.glob("snap-*.tracemalloc"))
    if len(paths) < 2:
        return {}
    snaps = [tracemalloc.Snapshot.load(str(p)) for p in paths]
    mb = [round(sum(st.size for st in s.statistics("filename")) / 1e6, 1) for s in snaps]
    first = min(len(snaps) - 2, max(0, int(warm_secs // every) - 1))
    grew = snaps[-1].compare_to(snaps[first], "lineno")
    return {"traced_mb_by_snapshot": mb, "traced_from_snapshot": first + 1,
            "traced_growth": [(f"{d.traceback[0].filename.replace(str(ROOT) + '/', '')}:"
                               f"{d.traceback[0].lineno}", round(d.size_diff / 1e3, 1),
                               d.count_diff) for d in grew[:top]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--tick-secs", type=float, default=3.0,
                    help="a delivery (one object per account and region) this often")
    ap.add_argument("--records", type=int, nargs=2, default=(100, 300), metavar=("MIN", "MAX"))
    ap.add_argument("--poll-secs", type=float, default=2.0)
    ap.add_argument("--sample-secs", type=float, default=2.0)
    ap.add_argument("--lookback-secs", type=float, default=60.0,
                    help="the listing's look-back window (900 by default in a deployment)")
    ap.add_argument("--retention-secs", type=float, default=120.0,
                    help="runtime.journal_retention_secs (7 days by default in a deployment)")
    ap.add_argument("--enrich-all", action="store_true",
                    help="rules, intel, anomaly scores and sequences on")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="trace the flow's Python allocations, and report what grew")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = ap.parse_args(argv)
    trace_secs = 60.0

    tables = load_tables()
    with tempfile.TemporaryDirectory() as tmp, \
            LocalStack(Path(tmp) / "stack", {t.stream: None for t in tables.values()},
                       store_records=False) as stack:
        s3 = stack.s3()
        s3.create_bucket(Bucket=BUCKET)
        cfg = Path(tmp) / "soak.toml"
        cfg.write_text(config(args.enrich_all, args.poll_secs, args.lookback_secs,
                              args.retention_secs))
        env = flow_env(stack, Path(tmp) / "run" / "errors", cfg)
        env["S3SENTINEL__OPS__PORT"] = "0"
        snaps = Path(tmp) / "tracemalloc"
        if args.tracemalloc:
            snaps.mkdir()
            (snaps / "sitecustomize.py").write_text(_DUMPER)
            env |= {"PYTHONTRACEMALLOC": "1", "S3SENTINEL_SOAK_TRACE_DIR": str(snaps),
                    "S3SENTINEL_SOAK_TRACE_SECS": str(trace_secs),
                    "PYTHONPATH": os.pathsep.join([str(snaps),
                                                   *filter(None, [env.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "dataflow.cli", "run", "-c", str(cfg),
               "-r", str(Path(tmp) / "recovery")]
        log = (Path(tmp) / "flow.log").open("wb")
        flow = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        end = t0 + 60 * args.minutes
        samples: list[tuple[float, float]] = []
        seeded = ticks = 0
        next_tick = next_sample = t0
        try:
            while time.monotonic() < end:
                if flow.poll() is not None:
                    raise SystemExit(f"the flow exited ({flow.returncode}): see {log.name}")
                now = time.monotonic()
                if now >= next_tick:
                    m = seed_cloudtrail(s3, BUCKET, objects=PAIRS, digests=False, threads=2,
                                        records_per_object=tuple(args.records), seed=7 + ticks,
                                        start=DEFAULT_START + ticks * DELIVERY_INTERVAL)
                    seeded += m.record_count
                    ticks += 1
                    next_tick += args.tick_secs
                if now >= next_sample:
                    samples.append((now - t0, status_mb(flow.pid, "VmRSS")))
                    next_sample += args.sample_secs
                time.sleep(0.05)
            deadline = time.monotonic() + 120
            got = 0
            while time.monotonic() < deadline:
                got = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0)
                if got >= seeded:
                    break
                time.sleep(0.5)
            time.sleep(2 * args.poll_secs)  # anything beyond would be a duplicate
            got = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0)
            hwm = status_mb(flow.pid, "VmHWM")
        finally:
            flow.send_signal(signal.SIGINT)
            try:
                flow.wait(30)
            except subprocess.TimeoutExpired:
                flow.kill()
                flow.wait()
            log.close()
        trace = traced(snaps, 0.25 * 60 * args.minutes, trace_secs) if args.tracemalloc else {}

    warm = [p for p in samples if p[0] >= 0.25 * 60 * args.minutes]
    k = max(3, len(warm) // 10)
    first, last = statistics.median(v for _, v in warm[:k]), statistics.median(
        v for _, v in warm[-k:])
    figures = {
        "minutes": args.minutes, "enrich_all": args.enrich_all, "deliveries": ticks,
        "lookback_secs": args.lookback_secs, "retention_secs": args.retention_secs,
        "objects": ticks * PAIRS, "events_seeded": seeded, "events_delivered": got,
        "events_per_sec": round(seeded / (60 * args.minutes)),
        "rss_after_warmup_mb": round(first, 1), "rss_at_end_mb": round(last, 1),
        "rss_growth_ratio": round(last / first, 3), "rss_peak_mb": round(hwm, 1),
        "rss_slope_mb_per_hour": round(slope_per_hour(warm), 1), "samples": len(samples),
        "rss_by_minute_mb": by_minute(samples), **trace,
    }
    mode = "every detector" if args.enrich_all else "no enrichment"
    print(f"soak, {mode}: {args.minutes:g} min, {ticks} deliveries of {PAIRS} objects "
          f"({seeded:,} events, {figures['events_per_sec']:,} ev/s offered); delivered "
          f"{got:,} of {seeded:,} ({'all, once' if got == seeded else 'NOT all, once'})")
    print(f"RSS after warm-up {first:.1f} MB, at the end {last:.1f} MB "
          f"({last / first:.3f}x), slope {figures['rss_slope_mb_per_hour']:+.1f} MB/hour after "
          f"warm-up, peak {hwm:.1f} MB")
    print("RSS by minute (median, MB): "
          + " ".join(f"{v:.0f}" for v in figures["rss_by_minute_mb"]))
    if trace:
        print("traced Python memory by minute (MB): "
              + " ".join(f"{v:.0f}" for v in trace["traced_mb_by_snapshot"]))
        print(f"grew most from minute {trace['traced_from_snapshot']} to the end (KB, blocks):")
        for where, kb, blocks in trace["traced_growth"]:
            print(f"  {kb:+9.1f} {blocks:+8d}  {where}")
    if args.json:
        print(json.dumps(figures))
    return 0 if got == seeded else 1


if __name__ == "__main__":
    raise SystemExit(main())
