"""Chaos: kill -9 the running flow at random moments, restart it, count losses and duplicates.

Starts the local stack (moto S3/SQS, the HTTPS Sentinel emulator) and, for each
scenario, seeds CloudTrail objects into a fresh bucket (half while the flow runs), runs
the flow continuously with recovery on, kills every process of it with SIGKILL
``--kills`` times at random moments (1-4 s apart), restarts it each time, lets it catch
up, and checks the emulator: every seeded record present (lost must be 0), duplicates
counted (the documented window: requests accepted but not yet journaled at a kill).

Scenarios: listing, SQS notifications, ``-w 2``, two processes, a restart with another
worker count, a fault storm (429/5xx/drops/slow responses from the emulator, 503
SlowDown/500/drops from S3 and SQS) with kills, and processes as separate hosts (two and
three, each with its own directories and loopback address, in both modes, and a rescale
2 -> 3 -> 2 processes by the README's procedure).

    python bench/chaos.py [--kills 10] [--objects 300] [--only list,sqs,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.chaos import run_chaos  # noqa: E402 (after the sys.path line above)
from devstack.stack import LocalStack  # noqa: E402 (after the sys.path line above)
from operators.schema import load_tables  # noqa: E402 (after the sys.path line above)

SCENARIOS = {
    "list": {"mode": "list"},
    "sqs": {"mode": "sqs"},
    "list-w2": {"mode": "list", "workers": 2},
    "sqs-w2": {"mode": "sqs", "workers": 2},
    "list-p2": {"mode": "list", "processes": 2},
    "sqs-p2": {"mode": "sqs", "processes": 2},
    "rescale": {"mode": "list", "workers": 1, "rescale_to": 2},
    "storm": {"mode": "sqs", "workers": 2, "storm_secs": 60.0},
    # Processes as hosts that share no disk: each its own journal, dead-letter and recovery
    # directories, its cluster address on its own loopback address (127.0.0.2, ...).
    "hosts-list-p2": {"mode": "list", "process_plan": [2]},
    "hosts-sqs-p2": {"mode": "sqs", "process_plan": [2]},
    "hosts-list-p3": {"mode": "list", "process_plan": [3]},
    "hosts-sqs-p3": {"mode": "sqs", "process_plan": [3]},
    "hosts-rescale": {"mode": "sqs", "process_plan": [2, 3, 2]},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--only", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--storm-secs", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    args = parser.parse_args()
    names = [n for n in (args.only or ",".join(SCENARIOS)).split(",") if n]
    unknown = set(names) - SCENARIOS.keys()
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    streams = {t.stream: None for t in load_tables().values()}
    results = {}
    with tempfile.TemporaryDirectory(prefix="s3sentinel-chaos-") as tmp, \
            LocalStack(Path(tmp) / "stack", streams) as stack:
        for i, name in enumerate(names):
            kw = dict(SCENARIOS[name])
            if "storm_secs" in kw:
                kw["storm_secs"] = args.storm_secs
            print(f"{name}: {args.kills} kills, {args.objects} objects ...", flush=True)
            res = run_chaos(stack, Path(tmp), kills=args.kills, objects=args.objects,
                            seed=args.seed + i, log=lambda m: print(m, flush=True), **kw)
            results[name] = res
            print(f"{name}: {res.line()}", flush=True)
    print("\nsummary")
    for name, res in results.items():
        flag = "ok " if res.ok else "LOST"
        print(f"  [{flag}] {name:<8} {res.line()}")
    ok = all(r.ok for r in results.values())
    if args.json:
        print(json.dumps({name: r.as_dict() for name, r in results.items()} | {"ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
