"""Fan-out past one DCR's ceiling: rows/s through 1, 2 and 3 DCRs carrying one stream.

The emulator limits each DCR (``--mb-per-min`` of data and ``--requests-per-min``, as the
service limits each DCR to 2 GB and 12,000 a minute), low enough that the DCRs, not the
connector, are the bottleneck. The real flow (one process, catch-up) sends the same seeded
CloudTrail objects through the first N DCRs of a ``s3sentinel deploy --fanout`` template.
The connector may spend a sixth of a DCR's minute at once (its pacing bucket) and then
the per-minute rate; the steady rate is records accepted after those first seconds over
the time they took (the overall rate, burst included, is printed too). The target is
steady rows/s(N) >= 0.9 x N x steady rows/s(1).

    python bench/dcr_fanout.py [--objects 60] [--mb-per-min 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.fanout import fanout_stack, run  # noqa: E402 (after the sys.path line above)
from devstack.samples import seed_cloudtrail  # noqa: E402 (after the sys.path line above)

BUCKET = "bench-fanout"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=60, help="CloudTrail objects (~100 rows each)")
    ap.add_argument("--mb-per-min", type=float, default=6.0, help="data limit per DCR")
    ap.add_argument("--requests-per-min", type=int, default=600)
    ap.add_argument("--max-dcrs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="end with one JSON object of figures")
    args = ap.parse_args(argv)
    limits = {"bytes_per_min": int(args.mb_per_min * 1e6),
              "requests_per_min": args.requests_per_min, "window_secs": 60}
    figures: dict[str, object] = {"limits": limits, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp, \
            fanout_stack(Path(tmp) / "stack", args.max_dcrs, limits) as stack:
        manifest = seed_cloudtrail(stack.s3(), BUCKET, objects=args.objects,
                                   records_per_object=(80, 120), seed=5, digests=False)
        print(f"{manifest.record_count} CloudTrail records in {args.objects} objects; each DCR "
              f"takes {args.mb_per_min} MB and {args.requests_per_min} requests a minute")
        base = None
        for n in range(1, args.max_dcrs + 1):
            got = run(stack, n, BUCKET, Path(tmp), batch_bytes=200_000)
            dup = sum(c - 1 for c in got.record_ids.values())
            lost = manifest.record_count - len(got.record_ids)
            throttled = sum(s["throttled"] for s in got.per_dcr.values())
            over = [r for r, s in got.per_dcr.items()
                    if s["max_window_bytes"] > limits["bytes_per_min"]]
            base = base or got.steady_rows_per_sec
            ratio = got.steady_rows_per_sec / base if base else 0.0
            print(f"{n} DCR(s): steady {got.steady_rows_per_sec:7.0f} rows/s ({ratio:.2f}x one "
                  f"DCR, target >= {0.9 * n:.1f}x), overall {got.rows_per_sec:7.0f} rows/s; lost "
                  f"{lost}, duplicates {dup}, 429s {throttled}, DCRs over their limit "
                  f"{len(over)}; flow wall time {got.elapsed:.1f}s")
            figures["runs"][str(n)] = {  # type: ignore[index]
                "steady_rows_per_sec": round(got.steady_rows_per_sec, 1),
                "rows_per_sec": round(got.rows_per_sec, 1), "ratio": round(ratio, 3),
                "target_ratio": round(0.9 * n, 2), "met": ratio >= 0.9 * n, "lost": lost,
                "duplicates": dup, "throttled": throttled, "over_limit": len(over),
                "elapsed_secs": round(got.elapsed, 2)}
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
