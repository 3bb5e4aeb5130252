"""Throughput of the real dataflow on CloudTrail, against the bare work it has to do.

Seeds N CloudTrail objects into the local stack once, then:

1. measures, on one core in this process, the bare work per event: gunzip (ISA-L),
   JSON decode, column mapping, JSON encode, gzip (ISA-L level 1) — in a tight loop
   over the same objects, with the fastest decoders we have (msgspec typed structs,
   and orjson for comparison; the faster one is the baseline);
2. runs the real flow (``python -m bytewax.run dataflow.flow:flow``) with 1 worker, and
   with 2 processes, to catch-up against moto S3 and the HTTPS Sentinel emulator.

The local servers (moto, the emulator: processes of their own) share the machine's cores
with the flow (the emulator decompresses and parses every request), so pipeline figures
are a lower bound of the connector's own. Their CPU time during each run is read from
/proc, as is this process's own (it only polls), and the two-process speed-up is given
both as measured and with the servers' CPU taken out of the two-process run's time (what
two processes would do on two cores of their own; see :func:`speedups`).

Peak RSS is each flow process's own high-water mark, VmHWM, as the process reads it at
exit (an ``atexit`` hook a ``sitecustomize`` on the flow's PYTHONPATH installs: the last one
to run), and as this process polls it every 50 ms (a fallback, should a process end
without running its hooks; the larger is taken: both are lower bounds of the one peak).
Not ``ru_maxrss``: Linux's counts the memory of the process the child was spawned from
(exec records the old address space's high-water mark, and ``subprocess`` spawns with
vfork, so that is this process's, with every seeded object in it), nor polled VmRSS, which
misses what comes and goes between two polls. The flow's CPU time is exact: each process is
reaped with ``os.wait4`` and its rusage read (the flow starts no child processes).

The checkout's modules are compiled to bytecode first, as installing the package does (pip
compiles what it installs; the image runs from a read-only root): with
``PYTHONDONTWRITEBYTECODE`` set, as it is in the image and on some machines, an editable
checkout would compile every module again in every flow process, 0.1-0.15 CPU-s of each
start-up that a deployment does not spend.

Each mode is also run over an empty bucket, in the same round: that is what starting and
stopping a flow process costs (imports, tables, rules, connecting the cluster), 0.55-0.65
CPU-s per process here, paid once however long it runs. The figures "excluding start-up"
leave it out of the CPU time: what a long-running flow spends per event. Both are reported.

``--small N`` runs the flow (one process, no enrichment) over N objects of 20-60 events, as
a quiet region's CloudTrail files or S3 server access logs are: the CPU per object beyond
the bare work of its events is what each object costs (its GET, its share of the listings,
the bookkeeping), which bounds a flow over many small objects.

``--vpc N`` (40 by default) seeds N VPC flow log objects of 5,000 rows and runs the flow over
them without transforms and with a realistic cost policy (:data:`VPC_POLICY`: health checks
dropped, accepted flows summarised per minute, rejected ones but SSH and RDP routed to an
Auxiliary table): rows per second, and the bytes sent per byte read.

``--detectors`` also runs the flow with rules and one side-step detector at a time
(sequences; anomaly scores) next to rules alone and every detector, and splits what every
detector costs per event (start-up excluded) into its parts: the rules, the side step's
shared work (sharding rows by principal, carrying them to the keyed step, its state), the
sequences' own and the anomaly scorer's own (:func:`detector_costs`). The run with rules
and sequences is also the most the every-detector run could reach if the anomaly scorer
cost nothing.

``--long N`` runs the flow again over N times the objects (the same first ones, then N - 1
times as many later deliveries) and checks that the peak RSS stays within 10% of the 1x
run's: state must not grow with run length. ``--py-spy DIR`` profiles a further (untimed)
run of each mode with py-spy (``--gil``: only the thread holding the GIL is sampled, so the
samples are the flow's Python CPU time, not its threads waiting on sockets) and prints the
functions with the most own time.

    python bench/throughput.py [--objects 400] [--enrich-all] [--detectors] [--long N]
                               [--py-spy DIR] [--json]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import gzip
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
from isal import igzip, isal_zlib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.demo import flow_env  # noqa: E402 (after the sys.path line above)
from devstack.samples import seed_cloudtrail  # noqa: E402 (after the sys.path line above)
from devstack.stack import LocalStack, free_port  # noqa: E402 (after the sys.path line above)
from operators.schema import Mapper, load_tables  # noqa: E402 (after the sys.path line above)

BUCKET = "bench-trail"
LONG_BUCKET = "bench-trail-long"
SMALL_BUCKET = "bench-trail-small"
SMALL_RECORDS = (20, 60)
"""Events per object of the ``--small`` run: a quiet region's CloudTrail file, or more."""
EMPTY_BUCKET = "bench-empty"
"""Where the flow finds nothing: a run over it is the flow's start-up and shut-down alone."""
STREAM = "Custom-AWSCloudTrail"
RSS_TOLERANCE = 0.10
"""A run N times longer must keep its peak RSS within this share of the 1x run's."""


def bare_work(objects: list[bytes], mapper: Mapper, seconds: float = 3.0) -> dict[str, float]:
    """Events/s on one core for the work every event needs, by decoder."""
    records_of = msgspec.json.Decoder(dict[str, list[msgspec.Raw]]).decode

    def with_msgspec(blob: bytes) -> int:
        rows = [mapper.map_json(r, "x-0") for r in records_of(isal_zlib.decompress(blob, 31))["Records"]]
        igzip.compress(b"[" + b",".join(rows) + b"]", compresslevel=1)
        return len(rows)

    def with_orjson(blob: bytes) -> int:
        recs = orjson.loads(isal_zlib.decompress(blob, 31))["Records"]
        rows = [mapper.map_dict(r, "x-0") for r in recs]
        igzip.compress(b"[" + b",".join(rows) + b"]", compresslevel=1)
        return len(rows)

    out = {}
    for name, fn in (("msgspec", with_msgspec), ("orjson", with_orjson)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for blob in objects:
                n += fn(blob)
        out[name] = n / (time.perf_counter() - t0)
    return out


_AT_EXIT = """\
import atexit, os


def _s3sentinel_bench_hwm():
    # Last atexit hook (registered first): the process's peak RSS as it ends.
    try:
        with open("/proc/self/status") as f:
            kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        out = os.path.join(os.environ["S3SENTINEL_BENCH_HWM_DIR"], str(os.getpid()))
        with open(out, "w") as f:
            f.write(kb)
    except Exception:
        pass


if os.environ.get("S3SENTINEL_BENCH_HWM_DIR"):
    atexit.register(_s3sentinel_bench_hwm)
"""


def status_mb(pid: int, field: str) -> float:
    """A memory figure of a running process's /proc status (``VmHWM``: peak resident set
    size so far; ``VmRSS``: now), in MB (0 once gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree_cpu_secs(pid: int) -> float:
    """CPU time of a running process, its live descendants and the children it reaped."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


def servers_cpu_secs(stack: LocalStack) -> float:
    """CPU time the local servers (moto, the emulator) used so far."""
    return sum(_tree_cpu_secs(p.pid) for p in getattr(stack, "_procs", ()))


def _machine_cpu_secs() -> float:
    """CPU time every process on the machine used so far (busy time in /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_cpu_secs() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def flow_config(bucket: str, partitions: int, enrich: str = "", *, mode: str = "catch_up",
                runtime: str = "", source: str = "") -> str:
    """The benches' CloudTrail flow config (TOML).

    :arg enrich: ``""`` (off), ``rules``, ``sequences``, ``anomaly`` or ``all`` (see
        :func:`run_flow`).
    :arg runtime: More ``[runtime]`` lines; :arg source: more lines of the source.
    """
    extra = ""
    if enrich:
        extra = "[enrich]\nenabled = true\n" + "".join(
            f"{d} = true\n" for d in ("anomaly", "sequences") if enrich in ("all", d))
    return f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 2.0
[runtime]
mode = "{mode}"
{runtime}
[[sources]]
name = "trail"
bucket = "{bucket}"
prefix = "AWSLogs/"
format = "cloudtrail"
table = "AWSCloudTrail"
partitions = {partitions}
fetch_threads = 4
{source}
{extra}"""


def run_flow(stack: LocalStack, workdir: Path, processes: int, partitions: int,
             epoch_secs: int, enrich: str = "", *, bucket: str = BUCKET, tag: str = "",
             wrap: list[str] | None = None, config: str | None = None) -> dict:
    """Run the flow to catch-up: wall time, the flow's CPU time and exact peak RSS (per
    process, from ``os.wait4``), and the CPU time the local servers and this process used
    meanwhile.

    :arg enrich: ``""`` (off), ``rules`` (rules, fast lane, findings), ``sequences`` or
        ``anomaly`` (rules and that side-step detector), or ``all`` (rules, anomaly scores
        and sequences).
    :arg bucket: Where the objects are (the seeded bucket by default).
    :arg tag: Distinguishes runs of one mode (each run has its own journal).
    :arg wrap: A command to run each flow process under (a profiler); its CPU and RSS
        figures then include the wrapper's.
    :arg config: The flow's config instead of the CloudTrail one (``records`` then counts
        only CloudTrail rows: read the emulator's requests for others).
    """
    name = f"{processes}{('-' + enrich) if enrich else ''}{('-' + tag) if tag else ''}"
    cfg = workdir / f"bench-{name}.toml"
    cfg.write_text(flow_config(bucket, partitions, enrich) if config is None else config)
    env = flow_env(stack, workdir / f"run-{name}p" / "errors", cfg)  # own journal per run
    env["S3SENTINEL__OPS__PORT"] = "0"
    hooks = workdir / f"hwm-{name}"  # the flow processes' peak RSS, written as they exit
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_AT_EXIT)
    env["S3SENTINEL_BENCH_HWM_DIR"] = str(hooks)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), *filter(None, [env.get("PYTHONPATH")])])
    base = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-s", str(epoch_secs)]
    if processes == 1:
        cmds = [base]
    else:
        addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        cmds = [base + ["-i", str(i), "-a", addrs] for i in range(processes)]
    before = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0)
    started_at = time.time()
    t0 = time.perf_counter()
    servers0, self0, machine0 = servers_cpu_secs(stack), _self_cpu_secs(), _machine_cpu_secs()
    # stdout kept to count timely's connection retries (see CONNECT_RETRY_SECS).
    outs = [(workdir / f"stdout-{name}-{i}.txt").open("wb") for i in range(len(cmds))]
    procs = [subprocess.Popen([*(wrap or ()), *c], env=env, cwd=ROOT, stdout=out,
                              stderr=subprocess.DEVNULL) for c, out in zip(cmds, outs, strict=True)]
    hwm = [0.0] * len(procs)  # VmHWM as last polled
    usage: list[resource.struct_rusage | None] = [None] * len(procs)
    while any(u is None for u in usage):
        for i, p in enumerate(procs):
            if usage[i] is not None:
                continue
            hwm[i] = max(hwm[i], status_mb(p.pid, "VmHWM"))
            # Reaped here, not by Popen.poll(), for the process's own rusage: its CPU time
            # up to its exit.
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                usage[i] = ru
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    for out in outs:
        out.close()
    retries = max(Path(out.name).read_bytes().count(b"error connecting to worker")
                  for out in outs)
    servers = servers_cpu_secs(stack) - servers0
    own = _self_cpu_secs() - self0
    machine = _machine_cpu_secs() - machine0
    cpu = [u.ru_utime + u.ru_stime for u in usage if u is not None]
    at_exit = [0.0] * len(procs)
    for i, p in enumerate(procs):
        # None for a wrapper's pid (a profiler), or when no hook ran: the polled figure stands.
        with contextlib.suppress(OSError, ValueError):
            at_exit[i] = int((hooks / str(p.pid)).read_text()) / 1024
    rss = [max(a, h) for a, h in zip(at_exit, hwm, strict=True)]
    if any(p.returncode for p in procs):
        raise SystemExit(f"the flow failed: exit statuses {[p.returncode for p in procs]}")
    delivered = stack.admin().summary()["streams"].get(STREAM, {}).get("records", 0) - before
    # Steady state: from the first accepted request to the last (start-up left out).
    reqs = [r for r in stack.admin().requests() if r["status"] == 204][-10**6:]
    reqs = [r for r in reqs if r["time"] >= started_at and r["stream"] == STREAM]
    span = reqs[-1]["time"] - reqs[0]["time"] if len(reqs) > 1 else 0.0
    steady = (sum(r["record_count"] for r in reqs[1:]) / span) if span > 0 else 0.0
    return {"wall_secs": wall, "records": delivered, "peak_rss_mb": max(rss),
            "peak_rss_mb_each": rss, "polled_hwm_mb_each": hwm, "exit_hwm_mb_each": at_exit,
            "cpu_secs": sum(cpu), "cpu_secs_each": cpu, "steady_eps": steady,
            "servers_cpu_secs": servers, "bench_cpu_secs": own,
            "connect_pause_secs": retries * CONNECT_RETRY_SECS,
            "others_cpu_secs": max(0.0, machine - servers - own - sum(cpu))}


CONNECT_RETRY_SECS = 1.0
"""How long a process of a cluster sleeps when its connection to a lower-numbered one is
refused (timely's networking, printing "error connecting to worker"): processes started
together pause so whenever one is up before the other listens. A fixed pause of the
start, not work: the two-process speed-up is also given without it."""


VPC_BUCKET = "bench-vpc"
VPC_STREAMS = ("Custom-AWSVPCFlow", "Custom-AWSVPCFlowAux_CL", "Custom-VPCFlowSummary_CL")
VPC_HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
              "bytes start end action log-status")
VPC_POLICY = """
[[tables]]
name = "AWSVPCFlowAux_CL"
plan = "Auxiliary"
columns = [
  { name = "TimeGenerated", type = "datetime" }, { name = "SrcAddr", type = "string" },
  { name = "DstAddr", type = "string" }, { name = "SrcPort", type = "int" },
  { name = "DstPort", type = "int" }, { name = "Protocol", type = "int" },
  { name = "Action", type = "string" }, { name = "Bytes", type = "long" },
]

[[tables]]
name = "VPCFlowSummary_CL"
columns = [
  { name = "TimeGenerated", type = "datetime" }, { name = "SrcAddr", type = "string" },
  { name = "DstAddr", type = "string" }, { name = "DstPort", type = "int" },
  { name = "Protocol", type = "int" }, { name = "Bytes", type = "long" },
  { name = "Packets", type = "long" }, { name = "Flows", type = "long" },
]

# Drop the load balancer's health checks; summarise accepted flows per minute; rejected
# flows but SSH and RDP to the Auxiliary table (SSH and RDP probes stay in AWSVPCFlow).
[[transforms]]
table = "AWSVPCFlow"
where = "NOT (DstPort = 8080 AND SrcAddr LIKE '10.0.255.%')"
route = [{ table = "AWSVPCFlowAux_CL", where = "DstPort NOT IN (22, 3389)" }]
[[transforms.aggregate]]
table = "VPCFlowSummary_CL"
where = "Action = 'ACCEPT'"
by = ["SrcAddr", "DstAddr", "DstPort", "Protocol"]
values = ["sum(Bytes) AS Bytes", "sum(Packets) AS Packets", "count(*) AS Flows"]
bucket_secs = 60
"""


def seed_vpc(s3: Any, objects: int, rows: int) -> tuple[int, int]:
    """VPC flow log objects shaped like a busy VPC's: a few hundred hosts talking to a few
    dozen services, a few talkers carrying most flows (so flows repeat per minute), health
    checks from the load balancer's subnet, scans of SSH and RDP rejected.

    :returns: (rows, uncompressed bytes)."""
    rng = random.Random(7)
    s3.create_bucket(Bucket=VPC_BUCKET)
    hosts = [f"10.0.{rng.randrange(8)}.{rng.randrange(1, 255)}" for _ in range(300)]
    services = [(f"10.1.{rng.randrange(4)}.{rng.randrange(1, 255)}", port)
                for port in (443, 5432, 6379, 53, 80) for _ in range(8)]
    # A few talkers carry most flows (connection pools, busy services): Zipf-like weights.
    host_w = [1 / (i + 1) for i in range(len(hosts))]
    service_w = [1 / (i + 1) for i in range(len(services))]
    total = nbytes = 0
    for k in range(objects):
        lines = [VPC_HEADER]
        t0 = 1764547200 + k * 300
        for i in range(rows):
            start = t0 + i * 300 // rows
            roll = rng.random()
            if roll < 0.25:  # health checks
                src, dst, port, action = f"10.0.255.{rng.randrange(1, 4)}", rng.choice(
                    hosts), 8080, "ACCEPT"
            elif roll < 0.35:  # scans
                src, dst, port, action = (f"198.51.100.{rng.randrange(256)}", rng.choice(hosts),
                                          rng.choice([22, 3389, 23, 445]), "REJECT")
            else:
                (dst, port), src, action = (rng.choices(services, service_w)[0],
                                            rng.choices(hosts, host_w)[0], "ACCEPT")
            lines.append(f"2 111122223333 eni-{rng.randrange(16**8):08x} {src} {dst} "
                         f"{rng.randrange(1024, 65536)} {port} {17 if port == 53 else 6} "
                         f"{rng.randrange(1, 200)} {rng.randrange(40, 10**6)} {start} "
                         f"{start + 60} {action} OK")
        body = ("\n".join(lines) + "\n").encode()
        s3.put_object(Bucket=VPC_BUCKET, Key=f"AWSLogs/111122223333/vpcflowlogs/us-east-1/2025/"
                      f"12/01/111122223333_vpcflowlogs_us-east-1_fl-0_{k:05d}.log.gz",
                      Body=gzip.compress(body, 1))
        total += rows
        nbytes += len(body)
    return total, nbytes


def run_vpc(stack: LocalStack, workdir: Path, epoch_secs: int, policy: bool, rows: int,
            read_bytes: int, tag: str = "") -> dict:
    """The flow over the VPC flow objects, with or without the cost policy: rows read per
    second (wall and CPU) and the bytes sent (uncompressed request bodies) per byte read."""
    config = f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 2.0
[runtime]
mode = "catch_up"
[[sources]]
name = "vpc"
bucket = "{VPC_BUCKET}"
prefix = "AWSLogs/"
format = "vpcflow"
partitions = 4
fetch_threads = 4
""" + (VPC_POLICY if policy else "")
    started_at = time.time()
    r = run_flow(stack, workdir, 1, 4, epoch_secs, tag=f"vpc-{'policy' if policy else 'all'}{tag}",
                 config=config)
    reqs = [q for q in stack.admin().requests() if q["status"] == 204
            and q["time"] >= started_at and q["stream"] in VPC_STREAMS]
    sent = {s: sum(q["record_count"] for q in reqs if q["stream"] == s) for s in VPC_STREAMS}
    r["rows_sent"] = sent
    r["bytes_sent"] = sum(q["uncompressed_bytes"] for q in reqs)
    r["bytes_ratio"] = r["bytes_sent"] / read_bytes
    r["rows_per_sec"] = rows / r["wall_secs"]
    r["rows_per_cpu_sec"] = rows / r["cpu_secs"]
    return r


def speedups(one: dict, two: dict, cores: int) -> dict[str, float]:
    """The two-process run against the one-process run, with the local servers' CPU (and
    this process's) excluded from the time of each: during a run the servers took ``S``
    CPU-seconds; what they took beyond the cores the flow left free (``cores - processes``)
    displaced the flow, by ``excess / cores`` seconds of wall time on a busy machine, so the
    flow's own time is ``wall - excess / cores`` (never below its CPU time spread over the
    cores it can use). With one process the servers mostly run on the other core and little
    is taken out; with two, nearly all of ``S / cores`` is: the denominator of the speed-up.

    Also the machine's busy share during the two-process run (near 1: CPU-bound, so the
    exclusion is sound), the cores the servers used then, the cores unrelated processes
    used then (a shared machine: not excluded), and the flow's CPU time, one process
    against two (1.0: the second process adds no work). And the speed-up once timely's
    connection pauses are also taken out of the two-process run's time
    (:data:`CONNECT_RETRY_SECS`: both processes idle, the one asleep, the other waiting for
    it). And both once start-up is also taken out of each, as for the other targets: the
    wall time of the same flow over an empty bucket (``startup_wall_secs``, less the pauses
    that run had), paid once per process start however long the flow runs; the steady
    rate is what a flow that runs for days gets from a second process."""
    def own_wall(r: dict, processes: int, pause: float = 0.0) -> float:
        wall = r["wall_secs"] - pause
        others = r["servers_cpu_secs"] + r["bench_cpu_secs"]
        excess = max(0.0, others - (cores - min(processes, cores)) * wall)
        floor = r["cpu_secs"] / min(processes, cores)
        return min(wall, max(wall - excess / cores, floor, 1e-9))

    def steady(r: dict, processes: int, pause: float = 0.0) -> float:
        # Start-up as the same flow over an empty bucket took it, less its own pauses: paid
        # once per process start, however long the flow then runs.
        startup = r.get("startup_wall_secs", 0.0) - r.get("startup_pause_secs", 0.0)
        return max(own_wall(r, processes, pause) - startup, 1e-9)

    others2 = two["servers_cpu_secs"] + two["bench_cpu_secs"]
    return {
        "speedup_2p_excl_servers": own_wall(one, 1) / own_wall(two, 2),
        "speedup_2p_excl_servers_pauses": own_wall(one, 1) / own_wall(
            two, 2, two["connect_pause_secs"]),
        "speedup_2p_excl_servers_startup": steady(one, 1) / steady(two, 2),
        "speedup_2p_excl_servers_startup_pauses": steady(one, 1) / steady(
            two, 2, two["connect_pause_secs"]),
        "connect_pause_secs_2p": two["connect_pause_secs"],
        "flow_wall_secs_1p": own_wall(one, 1), "flow_wall_secs_2p": own_wall(two, 2),
        "servers_cores_2p": others2 / two["wall_secs"],
        "machine_busy_2p": (two["cpu_secs"] + others2) / (cores * two["wall_secs"]),
        "unrelated_cores_2p": two["others_cpu_secs"] / two["wall_secs"],
        "cpu_efficiency_2p": one["cpu_secs"] / two["cpu_secs"],
    }


_WAITS = frozenset({
    "_worker (concurrent/futures/thread.py)",  # an idle pool thread, in queue.get()
    "Condition.wait (threading.py)", "Event.wait (threading.py)",
    "Thread._wait_for_tstate_lock (threading.py)", "Thread.join (threading.py)",
    "EpollSelector.select (selectors.py)", "PollSelector.select (selectors.py)"})
"""Leaf frames of threads blocked in C (py-spy's idle detection misses futex waits): their
samples are counted apart, not as CPU."""


DETECTOR_PARTS = ("rules_us", "shared_us", "sequences_us", "anomaly_us")
"""The parts :func:`detector_costs` splits what every detector adds into (they sum to it)."""


def detector_costs(runs: dict) -> dict[str, float]:
    """What every detector costs per event, split into its parts, from the runs of one round
    (start-up excluded, ``events_per_cpu_sec_excl_startup``): CPU microseconds per event of
    the flow without enrichment (``none_us``) and what each part adds to it.

    Rules alone cost ``rules``. Adding a side-step detector to rules costs its own work and
    the side step's shared work (sharding rows by principal, carrying them to the keyed
    step, its state), paid once whichever detectors it carries; adding both costs the two
    own parts and the shared work once. So, with ``t(m)`` the microseconds per event of mode
    ``m``: ``sequences = t(all) - t(anomaly)``, ``anomaly = t(all) - t(sequences)`` and
    ``shared = t(all) - t(rules) - sequences - anomaly``. Each is a difference of noisy
    runs: compare them over rounds.

    ``ceiling_free_anomaly``: the every-detector run's share of the flow without enrichment
    (by CPU) if the anomaly scorer cost nothing, which is the rules-and-sequences run's.
    """
    t = {m: 1e6 / runs[m]["events_per_cpu_sec_excl_startup"]
         for m in (1, "rules", "sequences", "anomaly", "all")}
    seq, anom = t["all"] - t["anomaly"], t["all"] - t["sequences"]
    return {"none_us": t[1], "all_us": t["all"] - t[1], "rules_us": t["rules"] - t[1],
            "shared_us": t["all"] - t["rules"] - seq - anom, "sequences_us": seq,
            "anomaly_us": anom, "ceiling_free_anomaly": t[1] / t["sequences"]}


def profile_summary(raw: Path, top: int = 15) -> tuple[int, int, list[tuple[str, int, int]]]:
    """Samples in a ``py-spy record --format raw --nolineno`` file (but those of threads
    waiting, :data:`_WAITS`), those waiting, and the ``top`` functions by own samples:
    (function (file), own samples, samples with it on the stack)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = waits = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if frames[-1] in _WAITS:
            waits += n
            continue
        samples += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return samples, waits, [(f, n, total[f]) for f, n in ranked]


def _short(frame: str) -> str:
    """A py-spy frame with its file relative to the checkout or to site-packages."""
    for cut in (str(ROOT) + "/", "site-packages/", "/lib/python3"):
        at = frame.find(cut)
        if at >= 0:
            return frame[:frame.rfind("(", 0, at) + 1] + frame[at + len(cut):]
    return frame


def _py_spy_version() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        return subprocess.run([spy, "--version"], capture_output=True, text=True,
                              check=True).stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


def profile(stack: LocalStack, workdir: Path, out_dir: Path, enrich: str, epoch_secs: int,
            rate: int = 250) -> dict:
    """One more single-process run of the flow under ``py-spy record --gil`` (not timed):
    its samples and top functions by own time.

    Only the thread holding the GIL is sampled. Without ``--gil``, a thread blocked in a
    socket read (waiting for the servers) counts as running: it put the Logs Ingestion
    client's wait for responses among the top functions, as if it were CPU."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"flow-{enrich or 'plain'}.txt"
    run_flow(stack, workdir, 1, 4, epoch_secs, enrich=enrich, tag="profile",
             wrap=[spy, "record", "--gil", "--format", "raw", "--nolineno", "-r", str(rate),
                   "-o", str(raw), "--"])
    samples, waits, top = profile_summary(raw)
    return {"file": str(raw), "samples": samples, "waits": waits, "top": top}


def _median_run(rs: list[dict]) -> dict:
    """One run's figures from several: the median of each number (lists: the first run's)."""
    out = dict(rs[0])
    for k, v in rs[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in rs)
    out["rounds"] = len(rs)
    return out


def _run_text(mode: int | str, r: dict, ref: dict | None) -> str:
    """The summary line of a run (``ref``: the one-process run without enrichment)."""
    if isinstance(mode, int):
        return (f"pipeline, {mode} process{'es' if mode > 1 else ''} "
                f"({'1 worker' if mode == 1 else '1 worker each'}): "
                f"{r['events_per_sec']:,.0f} ev/s, {r['mb_per_sec']:.1f} MB/s, "
                f"{r['wall_secs']:.1f}s wall (incl. start-up), "
                f"steady state {r['steady_eps']:,.0f} ev/s, "
                f"{r['events_per_cpu_sec']:,.0f} ev per CPU-second of the flow, "
                f"peak RSS {_rss_text(r)}; local servers {r['servers_cpu_secs']:.1f} "
                f"CPU-s, this process {r['bench_cpu_secs']:.1f} CPU-s, unrelated processes "
                f"{r['others_cpu_secs']:.1f} CPU-s")
    assert ref is not None
    return (f"pipeline, 1 process, enrichment {mode}: {r['events_per_sec']:,.0f} ev/s "
            f"({r['events_per_sec'] / ref['events_per_sec']:.2f} of without), "
            f"steady state {r['steady_eps']:,.0f} ev/s, "
            f"{r['events_per_cpu_sec']:,.0f} ev per CPU-second "
            f"({r['events_per_cpu_sec'] / ref['events_per_cpu_sec']:.2f} of without), "
            f"peak RSS {_rss_text(r)}  (target >= 0.75 of without, by CPU)")


def _mode_name(mode: int | str) -> str:
    return (f"{mode} process{'es' if mode != 1 else ''}" if isinstance(mode, int)
            else f"enrichment {mode}")


def _mode_key(mode: int | str) -> str:
    return f"{mode}p" if isinstance(mode, int) else f"enrich_{mode}"


def _rss_text(r: dict) -> str:
    each = r["peak_rss_mb_each"]
    return (f"{r['peak_rss_mb']:.0f} MB" if len(each) == 1
            else f"{r['peak_rss_mb']:.0f} MB (each: {', '.join(f'{x:.0f}' for x in each)})")


def compile_bytecode() -> None:
    """Compile the checkout's packages to ``.pyc`` (quietly; writes only what is stale)."""
    for package in ("dataflow", "connectors", "operators"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--records", type=int, nargs=2, default=(300, 700), metavar=("MIN", "MAX"))
    ap.add_argument("--epoch-secs", type=int, default=1,
                    help="bytewax epoch length (-s): bounds how much is read ahead of delivery")
    ap.add_argument("--enrich-all", action="store_true",
                    help="also run with anomaly scores and sequences (slow: see the README)")
    ap.add_argument("--detectors", action="store_true",
                    help="also run with rules and sequences, and with rules and anomaly "
                    "scores, and split what every detector costs per event into its parts "
                    "(implies --enrich-all)")
    ap.add_argument("--long", type=int, default=0, metavar="N",
                    help="also run the flow (and with --enrich-all, the flow with every "
                    "detector) over N times the objects, and check its peak RSS against "
                    "the 1x run's")
    ap.add_argument("--py-spy", type=Path, metavar="DIR",
                    help="profile one more run of each mode with py-spy (raw files in DIR)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every mode this many times, alternating, and report medians")
    ap.add_argument("--vpc", type=int, default=40, metavar="N",
                    help="VPC flow objects (5,000 rows each) for the cost-policy run (0: none)")
    ap.add_argument("--small", type=int, default=0, metavar="N",
                    help="also run the flow over N objects of 20-60 events (what each object "
                    "costs beyond its events: S3 requests, listing, bookkeeping)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds needs at least 1")
    if args.long == 1 or args.long < 0:
        ap.error("--long needs N >= 2")
    args.enrich_all = args.enrich_all or args.detectors  # the split needs every detector's run
    cores = len(os.sched_getaffinity(0))
    profiles: dict[str, dict] = {}
    compile_bytecode()

    tables = load_tables()
    streams = {t.stream: None for t in tables.values()} | dict.fromkeys(VPC_STREAMS)
    with tempfile.TemporaryDirectory() as tmp, \
            LocalStack(Path(tmp) / "stack", streams, store_records=False) as stack:
        s3 = stack.s3()
        t0 = time.perf_counter()
        manifest = seed_cloudtrail(s3, BUCKET, objects=args.objects,
                                   records_per_object=tuple(args.records), digests=False)
        seed_secs = time.perf_counter() - t0
        blobs = [s3.get_object(Bucket=BUCKET, Key=o.key)["Body"].read()
                 for o in manifest.objects]
        raw_bytes = sum(len(isal_zlib.decompress(b, 31)) for b in blobs)
        events = manifest.record_count
        mb = raw_bytes / 1e6
        print(f"seeded {events} CloudTrail events in {len(blobs)} objects "
              f"({mb:.1f} MB uncompressed, {raw_bytes / events:.0f} B/event) in {seed_secs:.1f}s")

        bare = bare_work(blobs[:40], Mapper(tables["AWSCloudTrail"]))
        baseline = max(bare.values())
        print(f"bare work, one core: msgspec {bare['msgspec']:,.0f} ev/s, "
              f"orjson {bare['orjson']:,.0f} ev/s (baseline: the faster)")

        modes: list[int | str] = [1, 2, "rules",
                                  *(["sequences", "anomaly"] if args.detectors else []),
                                  *(["all"] if args.enrich_all else [])]
        s3.create_bucket(Bucket=EMPTY_BUCKET)
        rounds: list[dict] = []
        for rnd in range(args.rounds):  # modes alternate: a noisy spell hits every mode alike
            this: dict = {}
            for mode in modes:
                procs, enrich = (mode, "") if isinstance(mode, int) else (1, mode)
                # The same flow over an empty bucket: what starting and stopping cost (imports,
                # tables, rules, the cluster's connections), paid once per process however
                # long it runs, left out of the "excluding start-up" figures.
                idle = run_flow(stack, Path(tmp), procs, 4, args.epoch_secs, enrich=enrich,
                                bucket=EMPTY_BUCKET, tag=f"idle{rnd}")
                r = run_flow(stack, Path(tmp), procs, 4, args.epoch_secs, enrich=enrich,
                             tag=f"r{rnd}" if args.rounds > 1 else "")
                assert r["records"] == events, f"{mode}: {r['records']} of {events}"
                r["events_per_sec"] = events / r["wall_secs"]
                r["mb_per_sec"] = mb / r["wall_secs"]
                r["events_per_cpu_sec"] = events / r["cpu_secs"]
                r["startup_cpu_secs"], r["startup_wall_secs"] = idle["cpu_secs"], idle["wall_secs"]
                r["startup_pause_secs"] = idle["connect_pause_secs"]
                r["events_per_cpu_sec_excl_startup"] = events / max(
                    r["cpu_secs"] - idle["cpu_secs"], 1e-9)
                this[mode] = r
                print(("" if args.rounds == 1 else f"round {rnd + 1}: ")
                      + _run_text(mode, r, this.get(1)))
            rounds.append(this)
        runs: dict = {m: _median_run([rd[m] for rd in rounds]) for m in modes}
        if args.rounds > 1:
            print(f"medians of {args.rounds} rounds:")
            for mode in modes:
                print("  " + _run_text(mode, runs[mode], runs[1]))

        if args.long:
            t0 = time.perf_counter()
            long_manifest = seed_cloudtrail(s3, LONG_BUCKET, objects=args.objects * args.long,
                                            records_per_object=tuple(args.records),
                                            digests=False)
            long_events = long_manifest.record_count
            print(f"seeded {long_events} events in {args.objects * args.long} objects for "
                  f"the {args.long}x run in {time.perf_counter() - t0:.1f}s")
            for mode in ("", "all") if args.enrich_all else ("",):
                ref = runs[mode or 1]
                r = run_flow(stack, Path(tmp), 1, 4, args.epoch_secs, enrich=mode,
                             bucket=LONG_BUCKET, tag=f"long{args.long}")
                assert r["records"] == long_events, \
                    f"{args.long}x {mode or 'plain'}: {r['records']} of {long_events}"
                r["events"] = long_events
                r["events_per_sec"] = long_events / r["wall_secs"]
                r["events_per_cpu_sec"] = long_events / r["cpu_secs"]
                r["rss_ratio"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
                r["rss_ok"] = abs(r["rss_ratio"] - 1) <= RSS_TOLERANCE
                runs[f"long-{mode or 'plain'}"] = r
                print(f"pipeline, 1 process, {mode and 'enrichment ' + mode or 'no enrichment'}"
                      f", {args.long}x the objects: {r['events_per_sec']:,.0f} ev/s, "
                      f"{r['events_per_cpu_sec']:,.0f} ev per CPU-second, "
                      f"{r['wall_secs']:.1f}s wall; peak RSS {_rss_text(r)} = "
                      f"{r['rss_ratio']:.2f} of the 1x run's "
                      f"({'within' if r['rss_ok'] else 'NOT within'} "
                      f"{RSS_TOLERANCE:.0%}: target, no growth with run length)")

        small: dict = {}
        if args.small:
            sm = seed_cloudtrail(s3, SMALL_BUCKET, objects=args.small,
                                 records_per_object=SMALL_RECORDS, digests=False)
            got_small = []
            for rnd in range(args.rounds):
                r = run_flow(stack, Path(tmp), 1, 4, args.epoch_secs, bucket=SMALL_BUCKET,
                             tag=f"small{rnd}")
                assert r["records"] == sm.record_count, f"small: {r['records']}"
                got_small.append(r)
            small = _median_run(got_small)
            own = small["cpu_secs"] - runs[1]["startup_cpu_secs"]
            small.update(events=sm.record_count, objects=args.small,
                         events_per_cpu_sec=sm.record_count / small["cpu_secs"],
                         ms_per_object=1000 * own / args.small,
                         bare_ms_per_object=1000 * sm.record_count / args.small / baseline)
            print(f"small objects, 1 process: {args.small} objects of {SMALL_RECORDS[0]}-"
                  f"{SMALL_RECORDS[1]} events ({sm.record_count} events): "
                  f"{small['events_per_cpu_sec']:,.0f} ev per CPU-second; "
                  f"{small['ms_per_object']:.2f} ms of CPU per object excluding start-up, of "
                  f"which the bare work of its events is {small['bare_ms_per_object']:.2f} ms")

        vpc: dict = {}
        if args.vpc:
            vpc_rows, vpc_bytes = seed_vpc(s3, args.vpc, 5000)
            print(f"seeded {vpc_rows} VPC flow rows in {args.vpc} objects "
                  f"({vpc_bytes / 1e6:.1f} MB uncompressed)")
            got: dict[bool, list[dict]] = {False: [], True: []}
            for rnd in range(args.rounds):
                for policy in (False, True):
                    got[policy].append(run_vpc(stack, Path(tmp), args.epoch_secs, policy,
                                               vpc_rows, vpc_bytes, tag=f"r{rnd}"))
            for policy in (False, True):
                r = vpc["policy" if policy else "plain"] = _median_run(got[policy])
                r["rows_sent"] = got[policy][0]["rows_sent"]
                print(f"VPC flow, 1 process, {'cost policy' if policy else 'no transforms'}: "
                      f"{r['rows_per_sec']:,.0f} rows/s, {r['rows_per_cpu_sec']:,.0f} rows per "
                      f"CPU-second, bytes sent / bytes read {r['bytes_ratio']:.2f}; rows sent "
                      + ", ".join(f"{s.removeprefix('Custom-')} {n:,}"
                                  for s, n in r["rows_sent"].items() if n))

        if args.py_spy:
            for mode in ("", "rules", "all") if args.enrich_all else ("",):
                pr = profiles[mode or "plain"] = profile(stack, Path(tmp), args.py_spy, mode,
                                                         args.epoch_secs)
                print(f"profile, 1 process, {mode and 'enrichment ' + mode or 'no enrichment'}"
                      f" (py-spy {_py_spy_version()} --gil, {pr['samples']} samples of the "
                      f"thread holding the GIL, {pr['waits']} more of threads waiting left out; "
                      f"{pr['file']}); top functions by own time: own% total% function")
                for fn, own_n, total_n in pr["top"]:
                    print(f"  {100 * own_n / pr['samples']:5.1f} "
                          f"{100 * total_n / pr['samples']:6.1f}  {fn}")

    ratio = runs[1]["events_per_sec"] / baseline
    steady_ratio = runs[1]["steady_eps"] / baseline
    cpu_ratio = runs[1]["events_per_cpu_sec"] / baseline
    speedup = statistics.median(rd[2]["events_per_sec"] / rd[1]["events_per_sec"]
                                for rd in rounds)  # each round's own pair, then the median
    steady_speedup = statistics.median(rd[2]["steady_eps"] / rd[1]["steady_eps"]
                                       for rd in rounds)
    print(f"pipeline / bare work (1 process): {ratio:.2f} by wall time incl. start-up, "
          f"{steady_ratio:.2f} in steady state, {cpu_ratio:.2f} by the flow's own CPU time "
          "(target >= 0.5)")
    print(f"2 processes / 1 process: {speedup:.2f}x by wall time, {steady_speedup:.2f}x in steady "
          "state  (target >= 1.3)")
    each = [speedups(rd[1], rd[2], cores) for rd in rounds]
    sp = {k: statistics.median(e[k] for e in each) for k in each[0]}
    one = runs[1]
    print("start-up and shut-down (the same flow over an empty bucket): "
          + ", ".join(f"{_mode_name(m)} {runs[m]['startup_cpu_secs']:.2f} CPU-s "
                      f"({runs[m]['startup_wall_secs']:.1f}s wall)" for m in modes))
    cpu_ratio_steady = one["events_per_cpu_sec_excl_startup"] / baseline
    print(f"excluding start-up: pipeline / bare work (1 process) {cpu_ratio_steady:.2f} by the "
          f"flow's own CPU time  (target >= 0.65)")
    for m in modes[2:]:
        print(f"excluding start-up: enrichment {m} {runs[m]['events_per_cpu_sec_excl_startup']:,.0f}"
              f" ev per CPU-second, "
              f"{runs[m]['events_per_cpu_sec_excl_startup'] / one['events_per_cpu_sec_excl_startup']:.2f}"
              " of without  (target >= 0.75, by CPU)")
    costs: dict[str, float] = {}
    each_costs: list[dict[str, float]] = []
    if args.detectors:
        each_costs = [detector_costs(rd) for rd in rounds]
        costs = {k: statistics.median(c[k] for c in each_costs) for k in each_costs[0]}
        if len(each_costs) > 1:  # the parts are differences of noisy runs: show the spread
            for k in DETECTOR_PARTS:
                print(f"  {k.removesuffix('_us')} by round: "
                      + ", ".join(f"{c[k]:.1f}" for c in each_costs) + " µs per event")
        print("excluding start-up, CPU microseconds per event: without enrichment "
              f"{costs['none_us']:.1f}; every detector adds {costs['all_us']:.1f}: rules "
              f"{costs['rules_us']:.1f}, the side step's shared work {costs['shared_us']:.1f}, "
              f"sequences {costs['sequences_us']:.1f}, anomaly scores {costs['anomaly_us']:.1f}"
              f" (medians over rounds); with rules and sequences and an anomaly scorer that "
              f"cost nothing, every detector would be {costs['ceiling_free_anomaly']:.2f} of "
              "without")
        if any(c[k] < 0 for c in each_costs for k in DETECTOR_PARTS):
            print("  (a part below 0: the runs' noise is larger than that part here; use more "
                  "objects or --rounds)")
    # Only CPU time: the wall time of a start-up varies by more than the figure (the second
    # process retries its connection to the first after a pause of its own).
    cpu_eff_steady = statistics.median(
        (rd[1]["cpu_secs"] - rd[1]["startup_cpu_secs"])
        / max(rd[2]["cpu_secs"] - rd[2]["startup_cpu_secs"], 1e-9) for rd in rounds)
    print(f"excluding start-up: flow CPU time 1 process / 2 processes {cpu_eff_steady:.2f} "
          "(1.0: the second process adds no work of its own)")
    print(f"2 processes / 1 process, the local servers' CPU excluded: "
          f"{sp['speedup_2p_excl_servers']:.2f}x (flow's own time {sp['flow_wall_secs_1p']:.1f}s "
          f"vs {sp['flow_wall_secs_2p']:.1f}s; the servers and this process used "
          f"{sp['servers_cores_2p']:.2f} of the {cores} cores during the 2-process run, "
          f"the flow and they kept the machine {sp['machine_busy_2p']:.0%} busy, unrelated "
          f"processes used {sp['unrelated_cores_2p']:.2f} cores; flow CPU time 1p/2p "
          f"{sp['cpu_efficiency_2p']:.2f})  (target >= 1.8)")
    print(f"... and without timely's connection pauses at start (a process whose first connect "
          f"is refused sleeps {CONNECT_RETRY_SECS:.0f}s; {sp['connect_pause_secs_2p']:.0f}s in "
          f"the median round): {sp['speedup_2p_excl_servers_pauses']:.2f}x")
    print(f"excluding start-up too (each mode's run over an empty bucket, less its pauses): "
          f"{sp['speedup_2p_excl_servers_startup']:.2f}x; and without the pauses "
          f"{sp['speedup_2p_excl_servers_startup_pauses']:.2f}x  (target >= 1.8)")
    figures = {
        "events": events, "objects": len(blobs), "uncompressed_mb": round(mb, 1),
        "bare_msgspec_eps": round(bare["msgspec"]), "bare_orjson_eps": round(bare["orjson"]),
        "pipeline_1p_eps": round(runs[1]["events_per_sec"]),
        "pipeline_1p_mbps": round(runs[1]["mb_per_sec"], 2),
        "pipeline_1p_peak_rss_mb": round(runs[1]["peak_rss_mb"]),
        "pipeline_2p_eps": round(runs[2]["events_per_sec"]),
        "pipeline_2p_mbps": round(runs[2]["mb_per_sec"], 2),
        "pipeline_2p_peak_rss_mb": round(runs[2]["peak_rss_mb"]),
        "pipeline_1p_eps_per_cpu": round(runs[1]["events_per_cpu_sec"]),
        "pipeline_2p_eps_per_cpu": round(runs[2]["events_per_cpu_sec"]),
        "pipeline_1p_steady_eps": round(runs[1]["steady_eps"]),
        "pipeline_2p_steady_eps": round(runs[2]["steady_eps"]),
        "ratio_pipeline_to_bare": round(ratio, 3), "ratio_steady_to_bare": round(steady_ratio, 3),
        "ratio_cpu_to_bare": round(cpu_ratio, 3),
        "speedup_2p": round(speedup, 3), "speedup_2p_steady": round(steady_speedup, 3),
        "enrich_rules_1p_eps": round(runs["rules"]["events_per_sec"]),
        "enrich_rules_ratio": round(runs["rules"]["events_per_sec"] / runs[1]["events_per_sec"], 3),
        "enrich_rules_eps_per_cpu": round(runs["rules"]["events_per_cpu_sec"]),
        # The enrichment targets are by CPU time (the machine may be shared): per CPU-second
        # of the flow, against the flow without enrichment and against the bare work.
        "enrich_rules_ratio_cpu": round(runs["rules"]["events_per_cpu_sec"]
                                        / runs[1]["events_per_cpu_sec"], 3),
        "enrich_rules_peak_rss_mb": round(runs["rules"]["peak_rss_mb"]),
        **({f"vpc_{k}_{m}": round(vpc[m][k], 3 if k == "bytes_ratio" else 0)
            for m in vpc for k in ("rows_per_sec", "rows_per_cpu_sec", "bytes_ratio")}),
        **({f"vpc_rows_sent_{m}": vpc[m]["rows_sent"] for m in vpc}),
        **({f"small_{k}": round(small[k], 3 if "ms" in k else 0)
            for k in ("objects", "events", "events_per_cpu_sec", "ms_per_object",
                      "bare_ms_per_object")} if small else {}),
        "cores": cores,
        "pipeline_2p_peak_rss_mb_each": [round(x) for x in runs[2]["peak_rss_mb_each"]],
        "servers_cpu_secs_1p": round(runs[1]["servers_cpu_secs"], 2),
        "servers_cpu_secs_2p": round(runs[2]["servers_cpu_secs"], 2),
        "bench_cpu_secs_1p": round(runs[1]["bench_cpu_secs"], 2),
        "bench_cpu_secs_2p": round(runs[2]["bench_cpu_secs"], 2),
        "pipeline_1p_cpu_secs": round(runs[1]["cpu_secs"], 2),
        "pipeline_2p_cpu_secs": round(runs[2]["cpu_secs"], 2),
        "pipeline_1p_wall_secs": round(runs[1]["wall_secs"], 2),
        "pipeline_2p_wall_secs": round(runs[2]["wall_secs"], 2),
        "speedup_2p_excl_servers": round(sp["speedup_2p_excl_servers"], 3),
        "speedup_2p_excl_servers_pauses": round(sp["speedup_2p_excl_servers_pauses"], 3),
        "speedup_2p_excl_servers_startup": round(sp["speedup_2p_excl_servers_startup"], 3),
        "speedup_2p_excl_servers_startup_pauses": round(
            sp["speedup_2p_excl_servers_startup_pauses"], 3),
        "connect_pause_secs_2p": sp["connect_pause_secs_2p"],
        "servers_cores_2p": round(sp["servers_cores_2p"], 3),
        "machine_busy_2p": round(sp["machine_busy_2p"], 3),
        "unrelated_cores_2p": round(sp["unrelated_cores_2p"], 3),
        "cpu_efficiency_2p": round(sp["cpu_efficiency_2p"], 3),
        # The same with each process's start-up and shut-down left out (a flow over an empty
        # bucket, measured in the same round): what a long-running flow does.
        **{f"startup_cpu_secs_{_mode_key(m)}": round(runs[m]["startup_cpu_secs"], 2)
           for m in modes},
        **{f"startup_wall_secs_{_mode_key(m)}": round(runs[m]["startup_wall_secs"], 2)
           for m in modes},
        "ratio_cpu_to_bare_excl_startup": round(cpu_ratio_steady, 3),
        "cpu_efficiency_2p_excl_startup": round(cpu_eff_steady, 3),
        **{f"enrich_{m}_ratio_cpu_excl_startup": round(
            runs[m]["events_per_cpu_sec_excl_startup"] / one["events_per_cpu_sec_excl_startup"], 3)
           for m in modes[2:]},
    }
    if costs:  # CPU microseconds per event, start-up excluded (see detector_costs)
        figures.update({f"detector_cost_{k}": round(v, 2) if k.endswith("_us") else round(v, 3)
                        for k, v in costs.items()})
        figures["detector_cost_rounds"] = [{k: round(v, 3) for k, v in c.items()}
                                           for c in each_costs]
    if "all" in runs:
        figures["enrich_all_1p_eps"] = round(runs["all"]["events_per_sec"])
        figures["enrich_all_ratio"] = round(runs["all"]["events_per_sec"]
                                            / runs[1]["events_per_sec"], 3)
        figures["enrich_all_eps_per_cpu"] = round(runs["all"]["events_per_cpu_sec"])
        figures["enrich_all_ratio_cpu"] = round(runs["all"]["events_per_cpu_sec"]
                                                / runs[1]["events_per_cpu_sec"], 3)
        figures["enrich_all_ratio_cpu_to_bare"] = round(runs["all"]["events_per_cpu_sec"]
                                                        / baseline, 3)
        figures["enrich_all_peak_rss_mb"] = round(runs["all"]["peak_rss_mb"])
    for mode in ("plain", "all"):
        r = runs.get(f"long-{mode}")
        if r is None:
            continue
        key = f"long_{'1p' if mode == 'plain' else 'enrich_all'}"
        figures["long_factor"] = args.long
        figures[f"{key}_events"] = r["events"]
        figures[f"{key}_eps"] = round(r["events_per_sec"])
        figures[f"{key}_eps_per_cpu"] = round(r["events_per_cpu_sec"])
        figures[f"{key}_peak_rss_mb"] = round(r["peak_rss_mb"])
        figures[f"{key}_rss_ratio"] = round(r["rss_ratio"], 3)
        figures[f"{key}_rss_within_10pct"] = r["rss_ok"]
    if profiles:
        figures["profiles"] = {mode: {"samples": pr["samples"], "waits": pr["waits"], "top_own": [
            {"function": fn, "own_pct": round(100 * o / pr["samples"], 1),
             "total_pct": round(100 * t / pr["samples"], 1)} for fn, o, t in pr["top"]]}
            for mode, pr in profiles.items()}
    figures["rounds"] = args.rounds
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
