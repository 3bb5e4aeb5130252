"""The container image (Dockerfile, .dockerignore) against the code, and its install path.

There is no container daemon here, so the image itself is never built by the tests.
Instead the slow test follows the Dockerfile's own steps, read from it: the wheel built
with the builder stage's ``pip wheel`` command, a clean venv, the runtime stage's
``pip install`` options, then ``s3sentinel validate-config`` on the Kubernetes ConfigMap's
TOML, the entrypoint's ``--print-args`` with a StatefulSet pod's environment, and the real
flow (two processes, through the entrypoint) against the local stack.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataflow import cluster
from dataflow.config import OpsConfig
from devstack.stack import LocalStack, free_port
from tests.conftest import ROOT, Seeded, flow_env, write_config

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIGMAP_TOML = ROOT / "deploy" / "kubernetes" / "base" / "s3sentinel.toml"


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped, each
    with the stage (``FROM ... AS name``) it belongs to."""
    out: list[Instruction] = []
    stage, pending = "", ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append(Instruction(stage, keyword, " ".join(args.split())))
    return out


def one(keyword: str, stage: str = "runtime") -> str:
    found = [i.args for i in instructions() if i.keyword == keyword and i.stage == stage]
    assert len(found) == 1, f"{keyword} in stage {stage}: {found}"
    return found[0]


def image_user() -> tuple[int, int]:
    """The uid and gid the image runs as (``USER uid:gid``, numeric)."""
    uid, _, gid = one("USER").partition(":")
    return int(uid), int(gid)


def image_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for i in instructions():
        if i.keyword == "ENV" and i.stage == "runtime":
            out.update(w.split("=", 1) for w in shlex.split(i.args))
    return out


def _runs(stage: str) -> list[str]:
    return [i.args for i in instructions() if i.keyword == "RUN" and i.stage == stage]


def wheel_command() -> list[str]:
    """The builder's ``pip wheel ...`` command."""
    (cmd,) = [shlex.split(r) for r in _runs("builder") if " wheel " in f" {r} "]
    return cmd


def install_options() -> list[str]:
    """The options of the runtime stage's ``pip install`` of the wheel."""
    for run in _runs("runtime"):
        for part in run.split("&&"):
            words = shlex.split(part)
            if len(words) > 2 and words[0].endswith("/pip") and words[1] == "install":
                return [w for w in words[2:] if w.startswith("-")]
    raise AssertionError("no `pip install` of the wheel in the runtime stage")


# --------------------------------------------------------------------------- fast checks


def test_the_image_runs_the_cluster_entrypoint_as_a_fixed_non_root_user() -> None:
    assert json.loads(one("ENTRYPOINT")) == ["python", "-m", "dataflow.cluster"]
    module = importlib.import_module("dataflow.cluster")
    assert callable(module.main)
    uid, gid = image_user()
    assert uid == gid == 10001
    assert one("WORKDIR") == image_env()["HOME"] == "/var/lib/s3sentinel"
    assert json.loads(one("VOLUME")) == [one("WORKDIR")]
    # The only writable path holds TMPDIR too (the root filesystem is read-only).
    assert image_env()["TMPDIR"].startswith(one("WORKDIR") + "/")
    assert image_env()["PATH"].startswith("/opt/s3sentinel/bin:")


def test_the_image_stops_with_the_signal_bytewax_handles() -> None:
    """SIGINT: Python's handler stops bytewax; SIGTERM has no handler, and PID 1 of a
    container does not even receive it (see the Dockerfile)."""
    assert one("STOPSIGNAL") == "SIGINT"


def test_the_image_exposes_the_ports_the_code_listens_on() -> None:
    exposed = {int(p.split("/")[0]) for p in one("EXPOSE").split()}
    assert exposed == {OpsConfig().port, cluster.DEFAULT_CLUSTER_PORT}


def test_the_runtime_stage_installs_the_wheel_alone_binary_only() -> None:
    assert wheel_command()[:3] == ["pip", "wheel", "--no-deps"]
    assert "--only-binary=:all:" in install_options()
    runtime = " ".join(_runs("runtime"))
    for absent in ("[test]", "[devstack]", "gcc", "build-essential", "apt-get install"):
        assert absent not in runtime
    labels = one("LABEL")
    for key in ("title", "description", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    args = dict(a.args.partition("=")[::2] for a in instructions()
                if a.keyword == "ARG" and a.stage == "runtime")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert args["VERSION"] == version
    assert "PYTHON_IMAGE" in args  # re-declared: a global ARG is empty inside a stage


def test_the_build_context_is_the_packages_and_nothing_else() -> None:
    """.dockerignore excludes everything, then lets in what the wheel is made of: the
    packages pyproject.toml installs, pyproject.toml and the README it names."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert allowed == packages | {"pyproject.toml", project["project"]["readme"]}
    copied = {w for i in instructions() if i.keyword == "COPY" and i.stage == "builder"
              for w in i.args.split()[:-1]}
    assert copied == allowed


# --------------------------------------------------------------------------- the install path


def _clean_env(**extra: str) -> dict[str, str]:
    """No trace of the repository's venv: PATH without it, no PYTHONPATH."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("S3SENTINEL")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return {**env, **extra}


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the project installed the way the Dockerfile installs it."""
    tmp = tmp_path_factory.mktemp("image")
    wheels, venv = tmp / "wheels", tmp / "venv"
    cmd = wheel_command()
    assert cmd[-1] == "." and "--wheel-dir" in cmd
    cmd[cmd.index("--wheel-dir") + 1] = str(wheels)
    subprocess.run([sys.executable, "-m", *cmd[:-1], str(ROOT)], check=True, cwd=tmp,
                   env=_clean_env(), capture_output=True, timeout=600)
    (wheel,) = wheels.glob("s3sentinel-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *install_options(), str(wheel)],
                   check=True, cwd=tmp, env=_clean_env(), capture_output=True, timeout=900)
    return venv


def _venv_run(venv: Path, *args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd or venv,
                          env=env or _clean_env(), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_the_installed_wheel_is_the_project_and_only_what_it_needs(image_venv: Path) -> None:
    where = _venv_run(image_venv, "python", "-c",
                      "import dataflow, operators, connectors, importlib.util as u; "
                      "print(dataflow.__file__); print(u.find_spec('devstack'))")
    assert where.returncode == 0, where.stderr
    module, devstack = where.stdout.split()
    assert module.startswith(str(image_venv)), "the repository was imported, not the wheel"
    assert devstack == "None"
    installed = _venv_run(image_venv, "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"s3sentinel", "bytewax"} <= names
    assert not names & {"moto", "pytest", "hypothesis", "ruff", "mypy"}, names


@pytest.mark.slow
def test_the_installed_wheel_validates_the_configmap_and_plans_a_pod(image_venv: Path) -> None:
    ok = _venv_run(image_venv, "s3sentinel", "validate-config", "-c", str(CONFIGMAP_TOML))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    pod = {"POD_NAME": "s3sentinel-1", "POD_NAMESPACE": "s3sentinel",
           "S3SENTINEL_REPLICAS": "3", "S3SENTINEL_CLUSTER_SERVICE": "s3sentinel-cluster",
           "S3SENTINEL_CONFIG": str(CONFIGMAP_TOML)}
    printed = _venv_run(image_venv, "python", "-m", "dataflow.cluster", "--print-args",
                        env=_clean_env(**pod))
    assert printed.returncode == 0, printed.stderr
    words = shlex.split(printed.stdout)
    plan = cluster.plan_from_env(pod)
    assert f"--addresses={';'.join(plan.bytewax_addresses())}" in words
    assert "--process-id=1" in words
    assert f"{cluster.ENV_OPS_PORT_PER_PROCESS}=false" in words
    assert words[words.index("-m") + 1:words.index("-m") + 3] == ["dataflow.cli", "run"]
    bad = _venv_run(image_venv, "python", "-m", "dataflow.cluster", "--print-args",
                    env=_clean_env(**{**pod, "POD_NAME": "s3sentinel-3"}))
    assert bad.returncode == 2 and "ordinal 3" in bad.stderr


@pytest.mark.slow
def test_the_installed_wheel_runs_the_flow_as_a_two_process_cluster(
        image_venv: Path, clean: LocalStack, seeded: Seeded, tmp_path: Path) -> None:
    """The entrypoint of each process execs `s3sentinel run` with its process id and the
    peers' addresses; together they deliver every seeded record exactly once."""
    config = write_config(tmp_path / "flow.toml", partitions=4)
    stack_env = flow_env(clean, config, tmp_path / "errors")
    # What flow_env adds for the local stack (endpoints, CA, identity), on a clean base.
    env = _clean_env(**{k: v for k, v in stack_env.items() if os.environ.get(k) != v})
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    procs = [subprocess.Popen([str(image_venv / "bin" / "python"), "-m", "dataflow.cluster"],
                              cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env={**env, "S3SENTINEL_ADDRESSES": addresses,
                                   "S3SENTINEL_PROCESS_ID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    records = clean.admin().records("Custom-AWSCloudTrail")
    counts = collections.Counter(r["AwsEventId"] for r in records)
    assert counts.keys() == seeded.trail.event_ids
    assert max(counts.values()) == 1


def test_the_configmap_toml_is_the_one_the_manifests_mount() -> None:
    kustomization = (CONFIGMAP_TOML.parent / "kustomization.yaml").read_text()
    assert re.search(rf"^\s*-\s*{re.escape(CONFIGMAP_TOML.name)}\s*$", kustomization, re.M)
