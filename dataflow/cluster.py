"""One process of a bytewax cluster: its process id, its peers and its workers, from the
environment, and the container entrypoint that runs it.

In Kubernetes each process is a pod of a StatefulSet, and a pod knows who it is from its
name: pod ``s3sentinel-2`` of StatefulSet ``s3sentinel`` is process 2, and its peers are
``s3sentinel-0 .. s3sentinel-<replicas - 1>``, reachable by name through the StatefulSet's
headless Service (``s3sentinel-0.s3sentinel-cluster.<namespace>.svc.cluster.local``).

==============================  =========================================================
environment                     meaning
==============================  =========================================================
``POD_NAME`` or ``HOSTNAME``    ``<statefulset>-<ordinal>``: the ordinal is the process id
``S3SENTINEL_REPLICAS``         processes in the cluster (the StatefulSet's replicas);
                                unset: one, unless ``S3SENTINEL_ADDRESSES`` lists more
``S3SENTINEL_CLUSTER_SERVICE``  the headless Service (the StatefulSet's ``serviceName``)
``POD_NAMESPACE``               optional: peers are named by FQDN in this namespace
``S3SENTINEL_CLUSTER_DOMAIN``   the cluster's DNS domain (``cluster.local``)
``S3SENTINEL_CLUSTER_PORT``     the port every process listens on for its peers (2101)
``S3SENTINEL_WORKERS``          workers (threads) per process (1)
``S3SENTINEL_ADDRESSES``        outside Kubernetes: ``host:port;host:port;...``, every
                                process in process-id order (overrides the derived list)
``S3SENTINEL_PROCESS_ID``       outside Kubernetes: this process's index in that list
                                (else the ordinal at the end of the host name)
``S3SENTINEL_CLUSTER_BIND``     address this process listens on (default ``0.0.0.0`` for
                                derived addresses: a pod's own DNS record may not exist yet
                                when it starts; set ``::`` on an IPv6-only cluster)
==============================  =========================================================

The entrypoint, ``python -m dataflow.cluster [s3sentinel run options...]``, replaces itself
(``exec``, so the container's stop signal reaches the flow process directly) with
``s3sentinel run -c $S3SENTINEL_CONFIG -w W --process-id=I --addresses=...`` (one process:
no ``--process-id``/``--addresses``), run as ``python -m dataflow.cli run`` by the same
interpreter. ``--print-args`` prints that command and exits; ``--help`` prints this text.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dataflow.config import ENV_CONFIG_PATH, ConfigError, load_config
from dataflow.core.errors import TerminalError

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_CLUSTER_PORT",
    "ENV_ADDRESSES",
    "ENV_BIND",
    "ENV_CLUSTER_DOMAIN",
    "ENV_CLUSTER_PORT",
    "ENV_HOSTNAME",
    "ENV_NAMESPACE",
    "ENV_OPS_PORT_PER_PROCESS",
    "ENV_POD_NAME",
    "ENV_PROCESS_ID",
    "ENV_REPLICAS",
    "ENV_SERVICE",
    "ENV_WORKERS",
    "ClusterEnvError",
    "ClusterPlan",
    "command",
    "main",
    "ops_port_env",
    "ordinal",
    "plan_from_env",
]

ENV_POD_NAME = "POD_NAME"
ENV_HOSTNAME = "HOSTNAME"
ENV_NAMESPACE = "POD_NAMESPACE"
ENV_REPLICAS = "S3SENTINEL_REPLICAS"
ENV_SERVICE = "S3SENTINEL_CLUSTER_SERVICE"
ENV_CLUSTER_DOMAIN = "S3SENTINEL_CLUSTER_DOMAIN"
ENV_CLUSTER_PORT = "S3SENTINEL_CLUSTER_PORT"
ENV_WORKERS = "S3SENTINEL_WORKERS"
ENV_ADDRESSES = "S3SENTINEL_ADDRESSES"
ENV_PROCESS_ID = "S3SENTINEL_PROCESS_ID"
ENV_BIND = "S3SENTINEL_CLUSTER_BIND"
ENV_OPS_PORT_PER_PROCESS = "S3SENTINEL__OPS__PORT_PER_PROCESS"
"""The config override of ``ops.port_per_process`` (see :func:`ops_port_env`)."""

DEFAULT_CLUSTER_PORT = 2101
"""Below the kernel's ephemeral range (32768-60999), so no outgoing connection holds it."""
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_BIND = "0.0.0.0"

_ORDINAL = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)$")


class ClusterEnvError(TerminalError, ValueError):
    """The environment does not describe a process of a cluster; ``problems`` names each
    variable that is missing or wrong, and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        msg = f"the cluster environment is invalid ({len(problems)} problem(s)):\n{lines}"
        super().__init__(msg)


@dataclass(frozen=True)
class ClusterPlan:
    """Where one process stands in its cluster.

    :arg workers: Worker threads of this process (bytewax ``-w``).
    :arg process_id: Its index in ``addresses`` (bytewax ``-i``); 0 when alone.
    :arg addresses: ``host:port`` of every process, in process-id order, as its peers
        reach it; empty for a single process.
    :arg bind: The address this process listens on instead of its own entry of
        ``addresses``, or "" to listen on that entry.
    """

    workers: int = 1
    process_id: int = 0
    addresses: tuple[str, ...] = ()
    bind: str = ""

    @property
    def processes(self) -> int:
        """Processes in the cluster."""
        return max(1, len(self.addresses))

    def bytewax_addresses(self) -> list[str]:
        """The ``-a`` list this process gives bytewax: a process listens on its own entry
        (timely binds ``addresses[process_id]``) and connects to the others'."""
        out = list(self.addresses)
        if out and self.bind:
            port = _split_address(out[self.process_id])[1]
            out[self.process_id] = f"[{self.bind}]:{port}" if ":" in self.bind \
                else f"{self.bind}:{port}"
        return out

    def bytewax_args(self) -> list[str]:
        """Options of ``python -m bytewax.run`` (``-w``, and ``-i``/``-a`` for a cluster)."""
        args = ["-w", str(self.workers)]
        if self.addresses:
            args += ["-i", str(self.process_id), "-a", ";".join(self.bytewax_addresses())]
        return args

    def run_args(self) -> list[str]:
        """Options of ``s3sentinel run``: ``-w``, and the process id and addresses in their
        ``--name=value`` form, which ``run`` hands to bytewax unchanged (a separate value
        such as ``-i 2`` would be read by ``run`` as its positional config path)."""
        args = ["-w", str(self.workers)]
        if self.addresses:
            args += [f"--process-id={self.process_id}",
                     f"--addresses={';'.join(self.bytewax_addresses())}"]
        return args


def ordinal(name: str) -> tuple[str, int] | None:
    """The StatefulSet name and the ordinal of a pod name (``s3sentinel-2`` ->
    ``("s3sentinel", 2)``), or None when ``name`` does not end with one."""
    m = _ORDINAL.match(name)
    return (m["set"], int(m["ordinal"])) if m else None


def plan_from_env(environ: Mapping[str, str]) -> ClusterPlan:
    """This process's place in its cluster, from its environment (see the module docs).

    :raises ClusterEnvError: Naming every variable that is missing or wrong.
    """
    problems: list[str] = []
    workers = _int(environ, ENV_WORKERS, 1, 1024, problems) or 1
    port = _int(environ, ENV_CLUSTER_PORT, 1, 65535, problems) or DEFAULT_CLUSTER_PORT
    replicas = _int(environ, ENV_REPLICAS, 1, 10_000, problems)
    explicit = _addresses(environ.get(ENV_ADDRESSES, ""), problems)
    bind = environ.get(ENV_BIND, "").strip().strip("[]")
    if bind and not _HOST.match(f"[{bind}]" if ":" in bind else bind):
        problems.append(f"{ENV_BIND}: {bind!r} is not an address to listen on (0.0.0.0, ::, "
                        "or an address of this host)")
    if explicit and replicas is not None and replicas != len(explicit):
        problems.append(f"{ENV_REPLICAS}: {replicas} processes, but {ENV_ADDRESSES} lists "
                        f"{len(explicit)}; they must agree (or set only one)")
    if problems:
        raise ClusterEnvError(problems)
    processes = len(explicit) if explicit else (replicas or 1)
    name_var, name = _pod_name(environ)
    pod = ordinal(name) if name else None
    process_id = _process_id(environ, name_var, name, pod, processes, replicas is not None,
                             bool(explicit), problems)
    if processes == 1 or explicit:
        if problems:
            raise ClusterEnvError(problems)
        return ClusterPlan(workers, process_id, tuple(explicit) if processes > 1 else (), bind)

    # Derived: <statefulset>-<k>.<service>[.<namespace>.svc.<domain>]:<port>, k < replicas.
    service = environ.get(ENV_SERVICE, "").strip()
    namespace = environ.get(ENV_NAMESPACE, "").strip()
    domain = environ.get(ENV_CLUSTER_DOMAIN, "").strip() or DEFAULT_CLUSTER_DOMAIN
    if not service:
        problems.append(f"{ENV_SERVICE} is not set: {processes} processes ({ENV_REPLICAS}) "
                        "reach each other through the StatefulSet's headless Service; set it "
                        f"to that Service's name, or list the processes in {ENV_ADDRESSES}")
    elif not _DNS_LABEL.match(service):
        problems.append(f"{ENV_SERVICE}: {service!r} is not a Service name (a DNS label: "
                        "lower-case letters, digits and '-', at most 63)")
    if namespace and not _DNS_LABEL.match(namespace):
        problems.append(f"{ENV_NAMESPACE}: {namespace!r} is not a namespace name")
    if not all(_DNS_LABEL.match(label) for label in domain.split(".")):
        problems.append(f"{ENV_CLUSTER_DOMAIN}: {domain!r} is not a DNS domain")
    if pod is None and environ.get(ENV_PROCESS_ID, "").strip():
        # The process id was given, but the peers' names come from the pod name.
        problems.append(f"{name_var or ENV_POD_NAME}: {name!r} is not a StatefulSet pod name "
                        "(<statefulset>-<ordinal>), which the peers' addresses are derived "
                        f"from; outside Kubernetes list them in {ENV_ADDRESSES}")
    if problems or pod is None:
        raise ClusterEnvError(problems)
    suffix = f".{service}.{namespace}.svc.{domain}" if namespace else f".{service}"
    addresses = tuple(f"{pod[0]}-{k}{suffix}:{port}" for k in range(processes))
    return ClusterPlan(workers, process_id, addresses, bind or DEFAULT_BIND)


def _pod_name(environ: Mapping[str, str]) -> tuple[str, str]:
    """The variable that names this pod (``POD_NAME``, else ``HOSTNAME``) and its value."""
    for var in (ENV_POD_NAME, ENV_HOSTNAME):
        value = environ.get(var, "").strip()
        if value:
            return var, value
    return "", ""


def _process_id(environ: Mapping[str, str], name_var: str, name: str,
                pod: tuple[str, int] | None, processes: int, replicas_set: bool,
                explicit: bool, problems: list[str]) -> int:
    """``S3SENTINEL_PROCESS_ID``, else the pod's ordinal, checked against the number of
    processes whenever one is given (a pod beyond it was not planned for)."""
    if environ.get(ENV_PROCESS_ID, "").strip():
        pid = _int(environ, ENV_PROCESS_ID, 0, processes - 1, problems)
        return pid or 0
    if processes == 1 and not replicas_set:
        return 0  # alone, and nothing says this host is a pod: its name does not matter
    if pod is None:
        if processes == 1:
            return 0
        if not name:
            problems.append(f"{ENV_POD_NAME} (or {ENV_HOSTNAME}) is not set: the process id of "
                            f"one of {processes} processes is the ordinal at the end of the "
                            f"pod name (set {ENV_POD_NAME} from metadata.name, or "
                            f"{ENV_PROCESS_ID} outside Kubernetes)")
        else:
            problems.append(f"{name_var}: {name!r} does not end with an ordinal: a StatefulSet "
                            "pod is named <statefulset>-<ordinal> (e.g. s3sentinel-2); outside "
                            f"Kubernetes set {ENV_PROCESS_ID}")
        return 0
    if pod[1] >= processes:
        what = f"{ENV_ADDRESSES} lists {processes}" if explicit else \
            f"{ENV_REPLICAS} is {processes}"
        problems.append(f"{name_var}: ordinal {pod[1]} of {name!r} is not below the number of "
                        f"processes ({what}): the StatefulSet has more pods than "
                        f"{ENV_REPLICAS} says; change both together")
        return 0
    return pod[1]


def _int(environ: Mapping[str, str], var: str, low: int, high: int,
         problems: list[str]) -> int | None:
    """The integer in ``var``; None when unset or wrong (and then the problem is added)."""
    raw = environ.get(var, "").strip()
    if not raw:
        return None
    try:
        value = int(raw, 10)
    except ValueError:
        problems.append(f"{var}: {raw!r} is not an integer ({low}..{high})")
        return None
    if not low <= value <= high:
        problems.append(f"{var}: {value} is out of range ({low}..{high})")
        return None
    return value


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _addresses(raw: str, problems: list[str]) -> list[str]:
    """``host:port;host:port`` (``[v6]:port`` too), checked; [] when empty."""
    items = [a.strip() for a in raw.split(";") if a.strip()]
    for a in items:
        host, sep, port = a.rpartition(":")
        if not sep or not _HOST.match(host) or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            problems.append(f"{ENV_ADDRESSES}: {a!r} is not host:port (port 1..65535; an IPv6 "
                            "address in brackets)")
    if len(set(items)) != len(items):
        problems.append(f"{ENV_ADDRESSES}: an address is listed twice (every process needs "
                        "its own)")
    return items


# --------------------------------------------------------------------------- entrypoint


def ops_port_env() -> dict[str, str]:
    """The override that keeps every pod's ops server on ``ops.port``: the flow serves on
    ``ops.port + process id`` so that processes sharing one host do not collide
    (:mod:`dataflow.runtime`), but a pod has a network namespace of its own, and its probes
    and scrape target name one port for every pod of the StatefulSet."""
    return {ENV_OPS_PORT_PER_PROCESS: "false"}


def command(plan: ClusterPlan, config: str, extra: Sequence[str] = (),
            python: str = sys.executable) -> list[str]:
    """The ``s3sentinel run`` command line of one process (``python -m dataflow.cli``: the
    same function as the ``s3sentinel`` script, run by this interpreter whatever PATH is).
    ``extra`` (the entrypoint's arguments) follows, so an explicit ``-w`` wins."""
    return [python, "-m", "dataflow.cli", "run", "-c", config, *plan.run_args(), *extra]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The container entrypoint: derive the cluster arguments, then ``exec`` the flow.

    Returns only on an error (2: the environment, 1: the config) or with ``--print-args``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if args[:1] in (["-h"], ["--help"]):
        print(f"usage: python -m dataflow.cluster [--print-args] [s3sentinel run options...]\n"
              f"\n{__doc__}")
        return 0
    print_only = "--print-args" in args
    extra = [a for a in args if a != "--print-args"]
    try:
        plan = plan_from_env(env)
        config = env.get(ENV_CONFIG_PATH, "").strip()
        if not config:
            msg = (f"{ENV_CONFIG_PATH} is not set: the path of the config file (the mounted "
                   "ConfigMap, e.g. /etc/s3sentinel/s3sentinel.toml)")
            raise ClusterEnvError([msg])
        load_config(config, env)  # a bad config stops here, with every problem named
        overrides = ops_port_env()
    except ClusterEnvError as ex:
        print(f"s3sentinel cluster: {ex}", file=sys.stderr)
        return 2
    except ConfigError as ex:
        print(f"s3sentinel cluster: {ex}", file=sys.stderr)
        return 1
    cmd = command(plan, config, extra)
    if print_only:
        print(shlex.join([f"{k}={v}" for k, v in sorted(overrides.items())] + cmd))
        return 0
    tmp = env.get("TMPDIR", "")
    if tmp:
        # The image points TMPDIR into the data volume (the root filesystem is read-only);
        # a fresh volume does not have the directory yet.
        os.makedirs(tmp, mode=0o700, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**env, **overrides})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
