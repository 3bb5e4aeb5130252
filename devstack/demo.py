"""``./run.sh``: the whole connector against the local stack, end to end.

Starts moto and the Sentinel emulator, seeds realistic CloudTrail logs (several
accounts and regions, the real key layout, digest files that must be skipped) and
an NDJSON application log with a few bad lines, runs the real dataflow with
``python -m bytewax.run`` until it has caught up, and prints what landed where.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from connectors.deadletter import read_entries
from dataflow.config import load_config
from dataflow.tables import tables_for
from devstack.appsamples import seed_app_logs
from devstack.formatsamples import seed_mixed
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack

__all__ = ["flow_env", "main"]


def flow_env(stack: LocalStack, errors_dir: Path, config: Path) -> dict[str, str]:
    """Environment for a dataflow process pointed at ``stack``."""
    return {
        **os.environ,
        **stack.env(),
        "S3SENTINEL_CONFIG": str(config),
        "S3SENTINEL__AWS__ENDPOINT_URL": stack.s3_endpoint,
        "S3SENTINEL__SENTINEL__ENDPOINT": stack.info["endpoint"],
        "S3SENTINEL__SENTINEL__CA_FILE": stack.info["ca_file"],
        "S3SENTINEL__RUNTIME__ERRORS_DIR": str(errors_dir),
        "S3SENTINEL__RUNTIME__JOURNAL_DIR": str(errors_dir.parent / "journal"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("examples/demo.toml"))
    parser.add_argument("--workdir", type=Path, default=Path(".devstack"))
    parser.add_argument("--objects", type=int, default=120, help="CloudTrail objects to seed")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    cfg = load_config(args.config, environ={})
    tables = tables_for(cfg)
    streams = {t.stream: None for t in tables.values()}
    shutil.rmtree(args.workdir, ignore_errors=True)
    errors_dir = args.workdir / "errors"
    with LocalStack(args.workdir, streams) as stack:
        print(f"local stack: S3/SQS (moto) at {stack.s3_endpoint}, "
              f"Sentinel emulator at {stack.info['endpoint']}")
        s3 = stack.s3()
        t0 = time.monotonic()
        trail = seed_cloudtrail(s3, cfg.source("cloudtrail").bucket, objects=args.objects)
        app = seed_app_logs(s3, cfg.source("app").bucket)
        mixed = seed_mixed(s3, cfg.source("aws").bucket)
        print(f"seeded {trail.record_count} CloudTrail records in {len(trail.objects)} objects "
              f"(+{len(trail.digests)} digest files) and {app.good + app.bad} app log lines "
              f"({app.bad} bad) in {len(app.keys)} objects, and {sum(mixed.expected.values())} "
              f"records of {len(mixed.expected)} other AWS formats (with {mixed.bad_records} bad "
              f"line and {mixed.bad_objects} corrupt object), in {time.monotonic() - t0:.1f}s")

        cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", str(args.workers)]
        print("running:", " ".join(cmd[1:]))
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=flow_env(stack, errors_dir, args.config), check=False)
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            print(f"the dataflow failed with exit status {proc.returncode}", file=sys.stderr)
            return proc.returncode

        admin = stack.admin()
        summary = admin.summary()
        # Findings ids are "<object id>.<detector>-<offset>": count source objects only.
        objects = {str(r.get("RecordId_CF") or r.get("RecordId")).rsplit("-", 1)[0].split(".")[0]
                   for r in admin.records()}
        findings = summary["streams"].get("Custom-S3SentinelFindings_CL", {}).get("records", 0)
        errors = read_entries(errors_dir) if errors_dir.exists() else []
        for e in errors[:3]:
            print(f"dead-letter: s3://{e['bucket']}/{e['key']} record {e['offset']}: {e['reason']}")
        streams = ", ".join(f"{name}={s['records']}" for name, s in sorted(summary["streams"].items()))
        print(f"landed in Sentinel (emulator) in {elapsed:.1f}s: {summary['total_records']} records "
              f"from {len(objects)} objects -> {streams}; failed: {len(errors)} "
              f"(dead-letter entries in {errors_dir})")
        if findings:
            print(f"enrichment: {findings} findings in S3SentinelFindings_CL (priority rules and "
                  "anomaly scores; see README, Enrichment)")
        for table in sorted((t for t in tables.values() if t.added), key=lambda t: t.name):
            prio = table.added[0].name  # EnrichmentPriority(_CF)
            counts = Counter(r.get(prio) for r in admin.records(table.stream))
            if counts:
                shown = ", ".join(f"{k}={v}" for k, v in counts.most_common())
                print(f"enrichment columns: {table.name} rows by {prio}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
