"""Two tenants in one flow (issue 13): each tenant's rows land only in its own workspace's
DCRs, sent under its own identity.

Each tenant's template is deployed to the emulator on its own (other immutable ids), and
its DCRs accept only tokens of that tenant's managed identity (the emulator refuses any
other with 403, as the service does for an identity without Monitoring Metrics Publisher
on the DCR). The real flow reads two buckets, one per tenant, and the sources name their
targets.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from dataflow.dcr import dcr_template, targets_from_outputs, targets_toml
from devstack.demo import flow_env
from devstack.deploy import deploy
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack
from operators.schema import load_tables

ROOT = Path(__file__).resolve().parents[2]


def test_each_tenants_rows_reach_only_its_own_dcrs_under_its_own_identity(tmp_path: Path) -> None:
    tables = load_tables()
    template = dcr_template([tables["AWSCloudTrail"], tables["S3SentinelHealth_CL"]])
    tenants = {name: deploy(template, "", tables, salt=name, identity=f"client-{name}")
               for name in ("contoso", "fabrikam")}
    rules = {rid: spec for d in tenants.values() for rid, spec in d.rules.items()}
    with LocalStack(tmp_path / "stack", rules=rules) as stack:
        s3 = stack.s3()
        seeded = {name: seed_cloudtrail(s3, f"trail-{name}", objects=6, seed=i, digests=False)
                  for i, name in enumerate(tenants)}
        sections = []
        for name in tenants:
            outputs = deploy(template, stack.info["endpoint"], tables, salt=name).outputs
            target = targets_from_outputs(outputs)
            section = targets_toml(target).replace('name = "default"', f'name = "{name}"')
            sections.append(section.replace(
                'credential = "default"',
                f'credential = "managed_identity"\nclient_id = "client-{name}"\n'
                f'ca_file = "{stack.info["ca_file"]}"'))
        config = tmp_path / "tenants.toml"
        config.write_text("""
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
""" + "".join(f"""
[[sources]]
name = "{name}"
bucket = "trail-{name}"
format = "cloudtrail"
target = "{name}"
""" for name in tenants) + "\n" + "\n".join(sections))
        env = flow_env(stack, tmp_path / "errors", config)
        for key in ("S3SENTINEL__SENTINEL__ENDPOINT", "S3SENTINEL__SENTINEL__CA_FILE"):
            env.pop(key)
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow",
                               "-w", "2"], env=env | {"S3SENTINEL__OPS__PORT": "0"}, cwd=ROOT,
                              capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

        admin = stack.admin()
        requests = admin.requests()
        assert requests and all(r["status"] == 204 for r in requests)  # no 403: own identity
        owner = {rid: name for name, d in tenants.items() for rid in d.rules}
        by_tenant: dict[str, Counter[str]] = {name: Counter() for name in tenants}
        for r in requests:
            by_tenant[owner[r["rule"]]][r["stream"]] += r["record_count"]
        for name, manifest in seeded.items():
            assert by_tenant[name]["Custom-AWSCloudTrail"] == manifest.record_count, name
        # (The two buckets hold different numbers of records, so a swap cannot pass.)
        assert len({m.record_count for m in seeded.values()}) == 2
        assert len(admin.records("Custom-AWSCloudTrail")) == sum(
            m.record_count for m in seeded.values())
