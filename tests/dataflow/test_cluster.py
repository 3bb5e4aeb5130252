"""dataflow.cluster: a StatefulSet pod's environment -> bytewax's -i/-a/-w, and the
entrypoint that execs `s3sentinel run` with them."""

from __future__ import annotations

import pickle
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from dataflow import cli, runtime
from dataflow.cluster import (
    DEFAULT_CLUSTER_PORT,
    ENV_OPS_PORT_PER_PROCESS,
    ClusterEnvError,
    ClusterPlan,
    main,
    ops_port_env,
    ordinal,
    plan_from_env,
)
from dataflow.config import OpsConfig, load_config
from dataflow.core.errors import TerminalError

POD = {
    "POD_NAME": "s3sentinel-2",
    "POD_NAMESPACE": "logs",
    "S3SENTINEL_REPLICAS": "3",
    "S3SENTINEL_CLUSTER_SERVICE": "s3sentinel-cluster",
}
"""What the StatefulSet's manifest gives pod 2 of 3 (downward API + literal env)."""

FQDN = "s3sentinel-{k}.s3sentinel-cluster.logs.svc.cluster.local:2101"


@pytest.mark.parametrize(("name", "expected"), [
    ("s3sentinel-0", ("s3sentinel", 0)),
    ("s3sentinel-2", ("s3sentinel", 2)),
    ("s3sentinel-17", ("s3sentinel", 17)),
    ("logs-eu-1-3", ("logs-eu-1", 3)),     # only the last dash-number is the ordinal
    ("s3sentinel", None),
    ("s3sentinel-", None),
    ("s3sentinel-02", None),               # StatefulSets never pad ordinals
    ("s3sentinel-x", None),
    ("-3", None),
])
def test_the_ordinal_is_the_number_after_the_last_dash(name: str,
                                                       expected: tuple[str, int] | None) -> None:
    assert ordinal(name) == expected


def test_a_pod_is_the_process_of_its_ordinal_and_its_peers_are_named_by_fqdn() -> None:
    plan = plan_from_env(POD)
    assert plan.process_id == 2
    assert plan.processes == 3
    assert plan.workers == 1
    assert plan.addresses == tuple(FQDN.format(k=k) for k in range(3))
    # It listens on every address of its own (its own DNS record may not exist yet when
    # it starts) and connects to the others by name.
    assert plan.bytewax_addresses() == [FQDN.format(k=0), FQDN.format(k=1), "0.0.0.0:2101"]
    assert plan.bytewax_args() == ["-w", "1", "-i", "2", "-a", ";".join(plan.bytewax_addresses())]


@pytest.mark.parametrize("pod", [0, 1, 2])
def test_every_ordinal_lists_the_same_peers(pod: int) -> None:
    plan = plan_from_env({**POD, "POD_NAME": f"s3sentinel-{pod}"})
    assert plan.process_id == pod
    assert plan.addresses == plan_from_env(POD).addresses
    others = [a for k, a in enumerate(plan.bytewax_addresses()) if k != pod]
    assert others == [FQDN.format(k=k) for k in range(3) if k != pod]


def test_without_a_namespace_peers_are_named_relative_to_the_pods_own() -> None:
    env = {k: v for k, v in POD.items() if k != "POD_NAMESPACE"}
    assert plan_from_env(env).addresses == tuple(f"s3sentinel-{k}.s3sentinel-cluster:2101"
                                                 for k in range(3))


def test_port_domain_workers_and_bind_come_from_the_environment() -> None:
    plan = plan_from_env({**POD, "S3SENTINEL_CLUSTER_PORT": "2202",
                          "S3SENTINEL_CLUSTER_DOMAIN": "corp.internal",
                          "S3SENTINEL_WORKERS": "3", "S3SENTINEL_CLUSTER_BIND": "::"})
    assert plan.addresses[0] == "s3sentinel-0.s3sentinel-cluster.logs.svc.corp.internal:2202"
    assert plan.workers == 3
    assert plan.bytewax_addresses()[2] == "[::]:2202"
    assert plan_from_env(POD).addresses[0].endswith(f":{DEFAULT_CLUSTER_PORT}")


def test_pod_name_wins_over_hostname_and_hostname_is_the_fallback() -> None:
    env = {k: v for k, v in POD.items() if k != "POD_NAME"}
    assert plan_from_env({**env, "HOSTNAME": "s3sentinel-1"}).process_id == 1
    assert plan_from_env({**env, "HOSTNAME": "s3sentinel-1", "POD_NAME": "s3sentinel-0"}) \
        .process_id == 0


@pytest.mark.parametrize("env", [
    {},
    {"HOSTNAME": "build-host-7"},         # a host name that merely ends in a number
    {"S3SENTINEL_REPLICAS": "1", "POD_NAME": "s3sentinel-0"},
    {"S3SENTINEL_REPLICAS": "1", "HOSTNAME": "laptop"},
    {"S3SENTINEL_ADDRESSES": "10.0.0.5:2101"},
])
def test_one_process_runs_alone_without_cluster_arguments(env: dict[str, str]) -> None:
    plan = plan_from_env(env)
    assert plan == ClusterPlan()
    assert plan.run_args() == ["-w", "1"]
    assert plan.bytewax_args() == ["-w", "1"]


def test_explicit_addresses_override_the_derived_ones() -> None:
    addresses = "10.0.0.5:2101;10.0.0.6:2101;[fd00::7]:2101"
    plan = plan_from_env({**POD, "S3SENTINEL_ADDRESSES": addresses})
    assert plan.addresses == tuple(addresses.split(";"))
    assert plan.process_id == 2                           # still the pod's ordinal
    assert plan.bytewax_addresses() == addresses.split(";")  # listens on its entry as given

    outside = plan_from_env({"S3SENTINEL_ADDRESSES": addresses, "S3SENTINEL_PROCESS_ID": "1",
                             "HOSTNAME": "logs-host"})
    assert (outside.process_id, outside.processes) == (1, 3)
    bound = plan_from_env({"S3SENTINEL_ADDRESSES": addresses, "S3SENTINEL_PROCESS_ID": "0",
                           "S3SENTINEL_CLUSTER_BIND": "0.0.0.0"})
    assert bound.bytewax_addresses()[0] == "0.0.0.0:2101"


@pytest.mark.parametrize(("env", "names"), [
    ({**POD, "S3SENTINEL_REPLICAS": "two"}, ["S3SENTINEL_REPLICAS", "'two'"]),
    ({**POD, "S3SENTINEL_REPLICAS": "0"}, ["S3SENTINEL_REPLICAS", "out of range"]),
    ({**POD, "POD_NAME": "s3sentinel-3"}, ["POD_NAME", "ordinal 3", "S3SENTINEL_REPLICAS is 3"]),
    ({**POD, "S3SENTINEL_REPLICAS": "1", "POD_NAME": "s3sentinel-1"}, ["ordinal 1"]),
    ({**POD, "POD_NAME": "s3sentinel"}, ["POD_NAME", "does not end with an ordinal"]),
    ({k: v for k, v in POD.items() if k != "POD_NAME"} | {"HOSTNAME": "worker"},
     ["HOSTNAME", "'worker'", "does not end with an ordinal"]),
    ({k: v for k, v in POD.items() if k != "POD_NAME"}, ["POD_NAME (or HOSTNAME) is not set"]),
    ({k: v for k, v in POD.items() if k != "S3SENTINEL_CLUSTER_SERVICE"},
     ["S3SENTINEL_CLUSTER_SERVICE is not set"]),
    ({**POD, "S3SENTINEL_CLUSTER_SERVICE": "S3_Cluster"},
     ["S3SENTINEL_CLUSTER_SERVICE", "'S3_Cluster'"]),
    ({**POD, "POD_NAMESPACE": "Logs!"}, ["POD_NAMESPACE", "'Logs!'"]),
    ({**POD, "S3SENTINEL_CLUSTER_DOMAIN": "cluster..local"}, ["S3SENTINEL_CLUSTER_DOMAIN"]),
    ({**POD, "S3SENTINEL_CLUSTER_PORT": "99999"}, ["S3SENTINEL_CLUSTER_PORT", "out of range"]),
    ({**POD, "S3SENTINEL_CLUSTER_PORT": "http"}, ["S3SENTINEL_CLUSTER_PORT", "'http'"]),
    ({**POD, "S3SENTINEL_WORKERS": "0"}, ["S3SENTINEL_WORKERS"]),
    ({**POD, "S3SENTINEL_CLUSTER_BIND": "not an address"}, ["S3SENTINEL_CLUSTER_BIND"]),
    ({"S3SENTINEL_ADDRESSES": "a:2101;b"}, ["S3SENTINEL_ADDRESSES", "'b'"]),
    ({"S3SENTINEL_ADDRESSES": "a:2101;a:2101"}, ["S3SENTINEL_ADDRESSES", "listed twice"]),
    ({"S3SENTINEL_ADDRESSES": "a:2101;b:2101", "S3SENTINEL_REPLICAS": "3"},
     ["S3SENTINEL_REPLICAS", "S3SENTINEL_ADDRESSES lists 2"]),
    ({"S3SENTINEL_ADDRESSES": "a:2101;b:2101", "S3SENTINEL_PROCESS_ID": "2"},
     ["S3SENTINEL_PROCESS_ID", "out of range"]),
    ({"S3SENTINEL_ADDRESSES": "a:2101;b:2101", "HOSTNAME": "logs-host"},
     ["HOSTNAME", "S3SENTINEL_PROCESS_ID"]),
    ({**POD, "POD_NAME": "worker", "S3SENTINEL_PROCESS_ID": "1"},
     ["POD_NAME", "not a StatefulSet pod name"]),
])
def test_bad_or_missing_environment_is_an_error_naming_it(env: dict[str, str],
                                                          names: list[str]) -> None:
    with pytest.raises(ClusterEnvError) as caught:
        plan_from_env(env)
    for name in names:
        assert name in str(caught.value)
    assert caught.value.problems


def test_every_problem_is_reported_at_once_and_the_error_is_terminal_and_picklable() -> None:
    with pytest.raises(ClusterEnvError) as caught:
        plan_from_env({"S3SENTINEL_REPLICAS": "3", "S3SENTINEL_CLUSTER_PORT": "0",
                       "S3SENTINEL_WORKERS": "many"})
    text = str(caught.value)
    assert "S3SENTINEL_CLUSTER_PORT" in text and "S3SENTINEL_WORKERS" in text
    assert isinstance(caught.value, TerminalError)
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.problems == caught.value.problems


# --------------------------------------------------------------------------- entrypoint


def _config(tmp_path: Path, ops_port: int = 9464) -> Path:
    path = tmp_path / "s3sentinel.toml"
    path.write_text(f"""
[sentinel]
endpoint = "https://dce.example.ingest.monitor.azure.com"
rule_id = "dcr-00000000000000000000000000000000"
[runtime]
mode = "catch_up"
errors_dir = "{tmp_path}/errors"
journal_dir = "{tmp_path}/journal"
[ops]
port = {ops_port}
[[sources]]
name = "trail"
bucket = "trail"
format = "cloudtrail"
""")
    return path


def _printed(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(capsys.readouterr().out)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    return env, [w for w in words if w.split("=", 1)[0] not in env]


def test_the_entrypoint_runs_s3sentinel_run_with_the_cluster_arguments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    env = {**POD, "S3SENTINEL_CONFIG": str(config), "S3SENTINEL_WORKERS": "2"}
    assert main(["--print-args", "--snapshot-secs", "30"], env) == 0
    overrides, cmd = _printed(capsys)
    plan = plan_from_env(env)
    assert cmd == [sys.executable, "-m", "dataflow.cli", "run", "-c", str(config),
                   "-w", "2", "--process-id=2", f"--addresses={';'.join(plan.bytewax_addresses())}",
                   "--snapshot-secs", "30"]
    # The ops server of process i listens on ops.port + i (dataflow.runtime) unless
    # ops.port_per_process is off; the pod's probes name one port for every pod, so the
    # entrypoint turns it off.
    ops = load_config(config, {**env, **overrides}).ops
    served = ops.port + (runtime.process_index(cmd) if ops.port_per_process else 0)
    assert served == load_config(config).ops.port == OpsConfig().port


def test_one_replica_runs_single_process(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    env = {"POD_NAME": "s3sentinel-0", "S3SENTINEL_REPLICAS": "1",
           "S3SENTINEL_CONFIG": str(config)}
    assert main(["--print-args"], env) == 0
    overrides, cmd = _printed(capsys)
    assert overrides == {ENV_OPS_PORT_PER_PROCESS: "false"}
    assert "--process-id=0" not in cmd
    assert cmd[-2:] == ["-w", "1"]


def test_s3sentinel_run_hands_the_process_id_and_addresses_to_bytewax(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `s3sentinel run` execs with the entrypoint's arguments, parsed by bytewax.run's
    own parser: the same process id, addresses and workers (a separate `-i 2` would have
    been taken by `run` as its positional config path)."""
    import bytewax.run

    config = _config(tmp_path)
    plan = plan_from_env({**POD, "S3SENTINEL_WORKERS": "2"})
    execed: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        execed.append(argv)

    monkeypatch.setattr(cli.os, "execv", fake_execv)
    monkeypatch.setenv("S3SENTINEL_CONFIG", str(config))  # run sets it; restored afterwards
    assert cli.main(["run", "-c", str(config), *plan.run_args()]) == 0
    (argv,) = execed
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv[3:]])
    for var in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_WORKERS_PER_PROCESS"):
        monkeypatch.delenv(var, raising=False)
    parsed = bytewax.run._parse_args()
    assert parsed.import_str == "dataflow.flow:flow"
    assert parsed.process_id == plan.process_id == runtime.process_index(argv) == 2
    assert parsed.addresses.split(";") == plan.bytewax_addresses()
    assert parsed.workers_per_process == 2


def test_the_entrypoint_execs_in_place_with_the_offset_and_makes_tmpdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    tmp = tmp_path / "data" / "tmp"
    env = {**POD, "POD_NAME": "s3sentinel-1", "S3SENTINEL_CONFIG": str(config),
           "TMPDIR": str(tmp)}
    calls: list[tuple[str, list[str], dict[str, Any]]] = []
    monkeypatch.setattr("dataflow.cluster.os.execvpe",
                        lambda file, args, environ: calls.append((file, args, environ)))
    main([], env)
    ((file, args, environ),) = calls
    assert file == args[0] == sys.executable
    assert "--process-id=1" in args
    assert environ[ENV_OPS_PORT_PER_PROCESS] == "false"  # every pod on the probed port
    assert environ["POD_NAME"] == "s3sentinel-1"      # the rest of the environment goes on
    assert tmp.is_dir() and (tmp.stat().st_mode & 0o777) == 0o700


def test_the_entrypoint_names_what_is_missing(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-args"], {**POD}) == 2
    assert "S3SENTINEL_CONFIG is not set" in capsys.readouterr().err
    assert main(["--print-args"], {**POD, "POD_NAME": "s3sentinel-5",
                                   "S3SENTINEL_CONFIG": str(_config(tmp_path))}) == 2
    assert "ordinal 5" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[sentinel]\nendpoint = 'http://x'\n")
    assert main(["--print-args"], {**POD, "S3SENTINEL_CONFIG": str(bad)}) == 1
    assert "sources: required key is missing" in capsys.readouterr().err


def test_pods_serve_ops_on_the_configured_port() -> None:
    assert ops_port_env() == {ENV_OPS_PORT_PER_PROCESS: "false"}


def test_help_describes_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    out = capsys.readouterr().out
    for var in ("POD_NAME", "S3SENTINEL_REPLICAS", "S3SENTINEL_CLUSTER_SERVICE",
                "S3SENTINEL_ADDRESSES", "--print-args"):
        assert var in out
