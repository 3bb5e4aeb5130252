"""One stream over N DCRs with low per-DCR limits: the fan-out run of the test and the bench.

The template ``s3sentinel deploy --fanout Custom-AWSCloudTrail=K`` makes is deployed to the
emulator with per-DCR limits set low (so the service, not the connector, is the
bottleneck); :func:`run` then sends seeded CloudTrail objects through the real flow with
the first ``n`` of those DCRs in its ``[[targets]]``, and reports what each DCR took.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.sentinel.budget import BURST_SECS
from dataflow.dcr import deploy_template, plan_dcrs
from devstack.demo import flow_env
from devstack.stack import LocalStack
from operators.schema import load_tables

__all__ = ["FanoutRun", "STREAM", "fanout_stack", "run"]

STREAM = "Custom-AWSCloudTrail"
ROOT = Path(__file__).resolve().parent.parent


def fanout_stack(workdir: Path, dcrs: int, limits: dict[str, float]) -> LocalStack:
    """A stack whose emulator serves ``dcrs`` DCRs carrying CloudTrail, each with ``limits``."""
    tables = load_tables()
    template = deploy_template(tables, plan_dcrs([STREAM], fanout={STREAM: dcrs}))
    return LocalStack(workdir, template=template, tables=tables, limits=limits,
                      store_records=True)


@dataclass(frozen=True)
class FanoutRun:
    """What one run delivered, per DCR."""

    dcrs: int
    records: int
    record_ids: Counter[str]
    """Accepted record id -> times accepted."""
    rows_per_sec: float
    """Records over the span from the first to the last accepted request."""
    steady_rows_per_sec: float
    """The same, once each DCR's burst allowance (the first BURST_SECS of its minute) is
    spent: the rate the per-minute limits allow (0 when the run was shorter)."""
    per_dcr: dict[str, dict[str, Any]]
    """Emulator statistics of each DCR used (requests by status, max bytes per window, ...)."""
    elapsed: float
    log: str
    """The flow's standard error."""


def run(stack: LocalStack, n: int, bucket: str, workdir: Path, *,
        batch_bytes: int = 100_000, declare_limits: bool = True) -> FanoutRun:
    """Run the flow (catch-up) over ``bucket`` through the first ``n`` DCRs of ``stack``.

    :arg declare_limits: Tell the connector the DCRs' limits (``max_bytes_per_min``, ...),
        as a user whose DCRs have lower quotas would; otherwise it assumes the documented
        ones and learns the real ones from the service's 429s.
    """
    stack.admin().reset()
    (target,) = stack.targets()
    target["dcrs"] = target["dcrs"][:n]
    if declare_limits and stack.limits:
        for dcr in target["dcrs"]:
            dcr["max_bytes_per_min"] = int(stack.limits["bytes_per_min"])
            dcr["max_requests_per_min"] = int(stack.limits["requests_per_min"])
    config = workdir / f"fanout-{n}.toml"
    config.write_text(f"""
[batch]
max_bytes = {batch_bytes}
max_age_secs = 0.5

[runtime]
mode = "catch_up"

[[sources]]
name = "trail"
bucket = "{bucket}"
format = "cloudtrail"
partitions = 2
""")
    errors = workdir / f"run-{n}" / "errors"  # its own journal beside it
    env = {**flow_env(stack, errors, config, [target]), "S3SENTINEL__OPS__PORT": "0",
           "S3SENTINEL__RUNTIME__RECOVERY_DIR": str(workdir / f"recovery-{n}")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        msg = f"the flow failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    admin = stack.admin()
    ids = Counter(str(r["RecordId_CF"]) for r in admin.records(STREAM))
    used = {d["id"] for d in target["dcrs"]}
    stats = {rule: s for rule, s in admin.rule_stats().items() if rule in used}
    first = min((s["first_accept"] for s in stats.values() if s["first_accept"]), default=0)
    last = max((s["last_accept"] for s in stats.values() if s["last_accept"]), default=0)
    records = sum(ids.values())
    accepted = [r for r in admin.requests() if r["status"] == 204 and r["rule"] in used]
    later = [r for r in accepted if r["time"] >= first + BURST_SECS]
    steady = (sum(r["record_count"] for r in later) / (last - first - BURST_SECS)
              if later and last - first > 2 * BURST_SECS else 0.0)
    return FanoutRun(n, records, ids, records / max(last - first, 1e-6), steady, stats,
                     elapsed, proc.stderr)
