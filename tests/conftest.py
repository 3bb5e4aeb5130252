"""Shared fixtures: one local stack (moto + Sentinel emulator, real processes) per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.appsamples import AppSeed, seed_app_logs
from devstack.samples import Manifest, seed_cloudtrail
from devstack.stack import LocalStack
from operators.schema import load_tables

ROOT = Path(__file__).resolve().parent.parent
TRAIL_BUCKET = "e2e-trail"
APP_BUCKET = "e2e-app"


APP_STREAMS = ("Custom-AppEvents_CL", "Custom-TrailSummary_CL")
"""Streams of the tests' own tables (their columns vary by test): one DCR that takes any."""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local stack, with the DCRs `s3sentinel deploy` plans for every shipped table
    deployed to the emulator (which refuses what Azure would): the flows of the tests send
    through the [[targets]] its outputs make, as a user's would."""
    from dataflow.dcr import dcr_template

    tables = load_tables()
    with LocalStack(tmp_path_factory.mktemp("stack"), dict.fromkeys(APP_STREAMS),
                    template=dcr_template(tables.values()), tables=tables) as st:
        yield st


@dataclass(frozen=True)
class Seeded:
    trail: Manifest
    app: AppSeed


@pytest.fixture(scope="session")
def seeded(stack: LocalStack) -> Seeded:
    """A few hundred CloudTrail objects (tens of thousands of records) and an NDJSON app log."""
    s3 = stack.s3()
    trail = seed_cloudtrail(s3, TRAIL_BUCKET, objects=240, records_per_object=(20, 260), seed=3)
    app = seed_app_logs(s3, APP_BUCKET)
    return Seeded(trail, app)


APP_SOURCE = f"""
[[sources]]
name = "app"
bucket = "{APP_BUCKET}"
prefix = "app/"
format = "ndjson"
table = "AppEvents_CL"

[[tables]]
name = "AppEvents_CL"
columns = [
  {{ name = "TimeGenerated", type = "datetime", source = "ts", required = true }},
  {{ name = "Message", type = "string", source = "msg", required = true }},
  {{ name = "UserName", type = "string", source = "user.name" }},
  {{ name = "Status", type = "int", source = "status" }},
  {{ name = "Attributes", type = "dynamic", source = "attrs" }},
]
"""


def write_config(path: Path, *, mode: str = "catch_up", partitions: int = 3,
                 max_age_secs: float = 1.0, max_bytes: int = 1_000_000, app: bool = False,
                 retry_max_secs: float = 120.0) -> Path:
    """A flow config reading the seeded buckets (endpoints come from the environment)."""
    path.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_max_secs = {retry_max_secs}
retry_cap_secs = 2.0

[batch]
max_bytes = {max_bytes}
max_age_secs = {max_age_secs}

[runtime]
mode = "{mode}"

[[sources]]
name = "trail"
bucket = "{TRAIL_BUCKET}"
prefix = "AWSLogs/"
format = "cloudtrail"
table = "AWSCloudTrail"
partitions = {partitions}
""" + (APP_SOURCE if app else ""))
    return path


def wait_for(cond: Callable[[], object], secs: float = 90.0, what: str = "") -> None:
    """Poll ``cond`` until it is true, failing after ``secs`` (a loaded machine is slow)."""
    deadline = time.monotonic() + secs
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def flow_env(stack: LocalStack, config: Path, errors_dir: Path) -> dict[str, str]:
    from devstack.demo import flow_env as env

    # No ops server unless a test asks for one (flows of several tests must not collide).
    return {**env(stack, errors_dir, config), "S3SENTINEL__OPS__PORT": "0",
            "S3SENTINEL__RUNTIME__RECOVERY_DIR": str(errors_dir.parent / "recovery")}


def run_flow(stack: LocalStack, config: Path, errors_dir: Path, *args: str,
             timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real dataflow with ``python -m bytewax.run`` to completion."""
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", *args]
    proc = subprocess.run(cmd, env=flow_env(stack, config, errors_dir), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"dataflow failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture
def clean(stack: LocalStack) -> LocalStack:
    """The stack with the emulator's records, requests and faults cleared."""
    stack.admin().reset()
    return stack


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
