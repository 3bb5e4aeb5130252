"""``./run.sh``: the whole connector against the local stack, end to end.

Starts moto and the Sentinel emulator, seeds realistic CloudTrail logs (several
accounts and regions, the real key layout, digest files that must be skipped) and
an NDJSON application log with a few bad lines, runs the real dataflow with
``python -m bytewax.run`` until it has caught up, and prints what landed where.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from connectors.deadletter import read_entries
from dataflow.config import load_config
from dataflow.tables import tables_for
from devstack.appsamples import seed_app_logs
from devstack.formatsamples import seed_mixed
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack

__all__ = ["flow_env", "inline_toml", "main"]


def flow_env(stack: LocalStack, errors_dir: Path, config: Path,
             targets: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Environment for a dataflow process pointed at ``stack``: ``targets`` in place of the
    config's (an inline TOML override; by default, when the stack has deployed a template,
    its DCRs and the stack's single DCR for its other streams), or else its single DCR
    through ``[sentinel]``."""
    if targets is None and stack.template is not None:
        targets = stack.targets(extra_streams=list(stack.streams))
    env = {
        **os.environ,
        **stack.env(),
        "S3SENTINEL_CONFIG": str(config),
        "S3SENTINEL__AWS__ENDPOINT_URL": stack.s3_endpoint,
        "S3SENTINEL__SENTINEL__ENDPOINT": stack.info["endpoint"],
        "S3SENTINEL__SENTINEL__CA_FILE": stack.info["ca_file"],
        "S3SENTINEL__RUNTIME__ERRORS_DIR": str(errors_dir),
        "S3SENTINEL__RUNTIME__JOURNAL_DIR": str(errors_dir.parent / "journal"),
    }
    if targets is not None:
        env.update({"S3SENTINEL__SENTINEL__ENDPOINT": "", "S3SENTINEL__SENTINEL__RULE_ID": "",
                    "S3SENTINEL__TARGETS": inline_toml(targets)})
    return env


def inline_toml(value: Any) -> str:
    """``value`` (dicts, lists, strings, numbers) as one line of TOML."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {inline_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(inline_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _cli(*args: str) -> str:
    """Run ``s3sentinel ARGS`` (as a user would) and return what it printed."""
    proc = subprocess.run([sys.executable, "-m", "dataflow.cli", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        msg = f"s3sentinel {' '.join(args)} failed:\n{proc.stderr}"
        raise RuntimeError(msg)
    return proc.stdout


def _incidents(admin: Any, tables: dict[str, Any]) -> None:
    """Per table that received rows: how many landed, and which of the shipped analytic rules
    would raise incidents on them (judged by devstack.kusto.subset, the interpreter the
    content tests use; rules it cannot evaluate are counted apart)."""
    from dataflow.content import expand, load_content
    from devstack.deploy import table_schemas
    from devstack.kusto import WORKSPACE_COLUMNS
    from devstack.kusto.subset import Kql, Unsupported

    schemas = {n: cols | {c: t for c, t in WORKSPACE_COLUMNS if c not in cols}
               for n, cols in table_schemas(tables).items()}
    rules: dict[str, list[tuple[str, Kql]]] = {}
    skipped = 0
    for item in load_content().of("analytic"):
        try:
            kql = Kql(expand(item.query, tables), schemas)
        except Unsupported:
            skipped += 1
            continue
        rules.setdefault(kql.table[0], []).append((item.name, kql))
    print("per table, rows landed and the analytic rules that would raise incidents on them:")
    for table in sorted(tables.values(), key=lambda t: t.name):
        rows = admin.records(table.stream)
        if not rows:
            continue
        fired = [f"{name} ({len(hits)})" for name, kql in rules.get(table.name, [])
                 if (hits := kql.matches(rows))]
        print(f"  {table.name}: {len(rows)} rows; " + ("; ".join(fired) if fired else
                                                       "no incident"))
    print(f"  ({skipped} rules use KQL the demo's interpreter does not evaluate: sequences, "
          "bursts, health; see README, Sentinel content)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("examples/demo.toml"))
    parser.add_argument("--workdir", type=Path, default=Path(".devstack"))
    parser.add_argument("--objects", type=int, default=120, help="CloudTrail objects to seed")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    cfg = load_config(args.config, environ={}, need_target=False)
    tables = tables_for(cfg)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    errors_dir = args.workdir / "errors"
    # Deploy -> configure, as in Azure: the config's template, "deployed" to the emulator
    # (which refuses what ARM would), and its outputs turned into the [[targets]] section.
    template_file = args.workdir / "template.json"
    _cli("deploy", "-c", str(args.config), "-o", str(template_file))
    template = json.loads(template_file.read_text())
    with LocalStack(args.workdir, template=template, tables=tables) as stack:
        print(f"local stack: S3/SQS (moto) at {stack.s3_endpoint}, "
              f"Sentinel emulator at {stack.info['endpoint']}")
        outputs = args.workdir / "outputs.json"
        outputs.write_text(json.dumps(stack.outputs))
        section = _cli("targets", str(outputs))
        config = args.workdir / "demo.toml"
        single = re.compile(r"^(endpoint|rule_id|credential) = .*$", re.M)  # the [[targets]]
        config.write_text(single.sub("", args.config.read_text()) + "\n" + section.replace(
            'credential = "managed_identity"',
            f'credential = "managed_identity"\nca_file = {json.dumps(stack.info["ca_file"])}'))
        dcrs = stack.outputs["dcrs"]["value"]
        print(f"deployed {template_file}: {len(dcrs)} DCRs ("
              + "; ".join(f"{d['name']}: {len(d['streams'])} streams" for d in dcrs)
              + f"); `s3sentinel targets` wrote their [[targets]] section into {config}")
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
        env = flow_env(stack, errors_dir, config)
        for key in ("S3SENTINEL__SENTINEL__ENDPOINT", "S3SENTINEL__SENTINEL__RULE_ID",
                    "S3SENTINEL__SENTINEL__CA_FILE", "S3SENTINEL__TARGETS"):
            env.pop(key)  # the generated [[targets]] of the config say where to deliver
        proc = subprocess.run(cmd, env=env, check=False)
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
        per_dcr = [f"{st['name']}={st['accepted_records']} records in "
                   f"{st['accepted_requests']} requests" for st in admin.rule_stats().values()
                   if st["accepted_requests"]]
        print("per DCR: " + ", ".join(per_dcr))
        dropped = {s: st["dropped_values"] for s, st in summary["streams"].items()
                   if st.get("dropped_values") or st.get("dropped_columns")}
        print(f"values the service would have dropped (type or column not declared): "
              f"{dropped or 'none'}")
        if findings:
            print(f"enrichment: {findings} findings in S3SentinelFindings_CL (priority rules and "
                  "anomaly scores; see README, Enrichment)")
        _incidents(admin, tables)
        for table in sorted((t for t in tables.values() if t.added), key=lambda t: t.name):
            prio = table.added[0].name  # EnrichmentPriority(_CF)
            counts = Counter(r.get(prio) for r in admin.records(table.stream))
            if counts:
                shown = ", ".join(f"{k}={v}" for k, v in counts.most_common())
                print(f"enrichment columns: {table.name} rows by {prio}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
