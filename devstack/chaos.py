"""Chaos runs: the real flow, killed with SIGKILL at random moments, restarted, counted.

One run seeds CloudTrail objects into a fresh bucket (half before the start, the rest
while the flow runs, as logs land), runs the flow in continuous mode with recovery on,
``kill -9``s every process of it at random moments, restarts it each time (optionally
once with another worker count), then lets it catch up and counts what the emulator
accepted against what was seeded: lost records, duplicates, dead letters.

Used by ``bench/chaos.py`` (long runs, figures) and by the test suite (short runs).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dataflow.cli import init_recovery
from dataflow.core.messages import object_id
from dataflow.locality import ClusterShape
from devstack.demo import flow_env
from devstack.faultproxy import FaultProxy
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack, free_port

__all__ = ["ChaosResult", "host_dir", "rescale_hosts", "run_chaos"]

ROOT = Path(__file__).resolve().parent.parent
STREAM = "Custom-AWSCloudTrail"


@dataclass
class ChaosResult:
    mode: str
    workers: int
    processes: int
    kills: int
    objects: int
    expected: int
    delivered: int
    lost: int
    duplicates: int
    dead_lettered: int
    unexpected: int
    seconds: float
    catch_up_seconds: float
    queue_left: int | None = None
    summaries_wrong: int | None = None
    """With ``aggregate``: summary rows missing, extra or with wrong counts (0 is right)."""
    s3_faults: dict[str, int] = field(default_factory=dict)
    sentinel_faults: int = 0

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.unexpected == 0 and not self.queue_left
                and not self.summaries_wrong)

    def line(self) -> str:
        q = "" if self.queue_left is None else f", queue left {self.queue_left}"
        if self.summaries_wrong is not None:
            q += f", summary rows wrong {self.summaries_wrong}"
        faults = ""
        if self.s3_faults or self.sentinel_faults:
            faults = f", faults injected: S3 {dict(self.s3_faults)}, Sentinel {self.sentinel_faults}"
        return (f"{self.mode:<5} w={self.workers} p={self.processes}: {self.kills} kills, "
                f"{self.objects} objects, {self.expected} records -> lost {self.lost}, "
                f"duplicates {self.duplicates}, dead-lettered {self.dead_lettered}{q}{faults}; "
                f"{self.seconds:.0f}s (catch-up after the last restart "
                f"{self.catch_up_seconds:.1f}s)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SUMMARY_STREAM = "Custom-TrailSummary_CL"
SUMMARISED = "s3.amazonaws.com"
"""With ``aggregate``, the event source whose events are summarised instead of sent."""


def _config(path: Path, bucket: str, *, mode: str, queue_url: str, partitions: int,
            retry_max_secs: float, sample: int = 1, aggregate: bool = False) -> None:
    discovery = ""
    if mode == "sqs":
        # Every kill sends the messages in flight back to the queue and counts a receive:
        # max_receive_count is about objects that keep failing, not about restarts.
        discovery = (f'discovery = "sqs"\nqueue_url = "{queue_url}"\nqueue_poll_secs = 0.2\n'
                     "visibility_timeout_secs = 6\nmax_receive_count = 1000\n")
    path.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_max_secs = {retry_max_secs}
retry_cap_secs = 2.0
[batch]
max_bytes = 200000
max_age_secs = 0.5
[runtime]
mode = "continuous"
[[sources]]
name = "trail"
bucket = "{bucket}"
prefix = "AWSLogs/"
format = "cloudtrail"
partitions = {partitions}
poll_secs = 0.5
{discovery}""" + ("" if sample == 1 else f"""
[[transforms]]
table = "AWSCloudTrail"
sample = {sample}
""") + ("" if not aggregate else f"""
[[tables]]
name = "TrailSummary_CL"
columns = [{{ name = "TimeGenerated", type = "datetime" }},
           {{ name = "EventName", type = "string" }}, {{ name = "Events", type = "long" }}]
[[transforms]]
table = "AWSCloudTrail"
[[transforms.aggregate]]
table = "TrailSummary_CL"
where = "EventSource = '{SUMMARISED}'"
by = ["EventName"]
values = ["count(*) AS Events"]
"""))


def host_dir(run_dir: Path, i: int) -> Path:
    """Process ``i``'s own volume in a hosts run."""
    return run_dir / f"host-{i}"


def rescale_hosts(run_dir: Path, old: int, new: int) -> None:
    """The README's rescale procedure for processes that share no disk, all stopped:

    1. every journal file goes to every volume of the new cluster (a source partition
       may move to another process, whose journal must know what was delivered); of
       several copies of a file, the newest;
    2. every recovery partition file stays on exactly one volume of the new cluster: the
       partitions of a volume that goes away move to the remaining ones;
    3. dead-letter files stay where they are (replay reads each volume's store).
    """
    journals: dict[str, Path] = {}  # of copies of one file (from an earlier rescale), the
    for i in range(max(old, new)):  # newest: the one its worker kept writing
        for f in (host_dir(run_dir, i) / "journal").glob("*.jsonl"):
            if f.name not in journals or f.stat().st_mtime > journals[f.name].stat().st_mtime:
                journals[f.name] = f
    for i in range(new):
        target = host_dir(run_dir, i) / "journal"
        target.mkdir(parents=True, exist_ok=True)
        for name, f in journals.items():
            if f.parent != target:
                shutil.copy2(f, target / name)
    for i in range(new, old):  # volumes going away: their partitions move
        for k, part in enumerate(sorted((host_dir(run_dir, i) / "recovery").glob("part-*"))):
            dest = host_dir(run_dir, k % new) / "recovery"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part), dest / part.name)


class _Flow:
    """The flow's processes: start, kill -9, wait."""

    def __init__(self, env: dict[str, str], recovery: Path, log: Path,
                 hosts: Path | None = None) -> None:
        self._env = env
        self._recovery = recovery
        self._log = log
        self._hosts = hosts
        self.procs: list[subprocess.Popen] = []

    def start(self, workers: int, processes: int) -> None:
        base = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", str(workers),
                "-s", "1", "-b", "0"]
        port = free_port()  # the same port on each host's own loopback address
        hosts = self._hosts
        addresses = ";".join(f"127.0.0.{i + 2}:{port}" if hosts else f"127.0.0.1:{free_port()}"
                             for i in range(processes))
        with self._log.open("ab") as log:
            for i in range(processes):
                extra = ["-i", str(i), "-a", addresses] if processes > 1 else []
                env, recovery = self._env, self._recovery
                if hosts is not None:
                    own = host_dir(hosts, i)
                    recovery = own / "recovery"
                    init_recovery(recovery, 1, ClusterShape(i, processes, workers),
                                  own / "journal")
                    env = env | {"S3SENTINEL__RUNTIME__ERRORS_DIR": str(own / "errors"),
                                 "S3SENTINEL__RUNTIME__JOURNAL_DIR": str(own / "journal")}
                self.procs.append(subprocess.Popen(base + ["-r", str(recovery)] + extra,
                                                   env=env, cwd=ROOT, stdout=log, stderr=log))

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def exit_report(self, lines: int = 40) -> str:
        """Which process exited with what, and the end of the log (CI keeps only the output)."""
        codes = ", ".join(f"process {i}: {'running' if p.poll() is None else f'exit {p.returncode}'}"
                          for i, p in enumerate(self.procs))
        tail = self._log.read_text(errors="replace").splitlines()[-lines:]
        return f"{codes}; the last lines of {self._log}:\n" + "\n".join(tail)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []


def _summaries(s3: Any, bucket: str, manifests: list[Any], sample: int
               ) -> tuple[collections.Counter[tuple[str, str, int]], set[str]]:
    """The summary rows the objects make (TimeGenerated, EventName, Events), read back from
    S3, and the ids of the events they summarise (of those ``sample`` keeps: it comes
    first in the config)."""
    import gzip
    import json

    rows: collections.Counter[tuple[str, str, int]] = collections.Counter()
    ids: set[str] = set()
    for m in manifests:
        for o in m.objects:
            body = s3.get_object(Bucket=bucket, Key=o.key)["Body"].read()
            per: collections.Counter[tuple[str, str]] = collections.Counter()
            oid = object_id(bucket, o.key, o.etag)
            for offset, e in enumerate(json.loads(gzip.decompress(body))["Records"]):
                if zlib.crc32(f"{oid}-{offset}".encode()) % sample:
                    continue
                if e["eventSource"] == SUMMARISED:
                    t = datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00"))
                    minute = t.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
                    per[(minute, e["eventName"])] += 1
                    ids.add(e["eventID"])
            rows.update((when, name, n) for (when, name), n in per.items())
    return rows, ids


def _queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def run_chaos(stack: LocalStack, workdir: Path, *, mode: str = "list", workers: int = 1,
              processes: int = 1, kills: int = 10, objects: int = 200,
              records_per_object: tuple[int, int] = (20, 200), rescale_to: int | None = None,
              min_up_secs: float = 1.0, max_up_secs: float = 4.0, seed: int = 1,
              storm_secs: float = 0.0, timeout_secs: float = 150.0, hosts: bool = False,
              process_plan: list[int] | None = None, sample: int = 1,
              aggregate: bool = False, log: Any = None) -> ChaosResult:
    """One chaos run (see the module docstring); ``storm_secs`` adds a fault storm.

    :arg rescale_to: Restart once (the middle restart) with this many workers per process.
    :arg storm_secs: For this long from the start, the emulator answers with 429 +
        Retry-After, 500/503, dropped connections and slow responses, and S3/SQS (through
        :class:`FaultProxy`) with 503 SlowDown, 500 and dropped connections.
    :arg hosts: Each process as its own host: its own journal, dead-letter and recovery
        directories (nothing shared), its cluster address on its own loopback address
        (127.0.0.2, 127.0.0.3, ...).
    :arg sample: Keep 1 CloudTrail row in ``sample`` (a ``[[transforms]]`` entry): the
        rows expected are exactly those the record ids select, whatever the kills.
    :arg aggregate: Summarise the S3 data events per object, minute and event name into
        ``TrailSummary_CL`` (``[[transforms.aggregate]]``): the summaries that arrive must be
        exactly those the objects make, each once, whatever the kills (the stack must take
        :data:`SUMMARY_STREAM`).
    :arg process_plan: Process counts the kills go through in order (e.g. ``[2, 3, 2]``:
        the first third of the restarts with 2, the middle with 3, the rest and the
        catch-up with 2); between two counts the state is moved by :func:`rescale_hosts`,
        the README's procedure. Implies ``hosts``.
    """
    rng = random.Random(seed)
    say = log or (lambda *_: None)
    hosts = hosts or process_plan is not None
    plan = process_plan or [processes]
    processes = plan[-1]
    tag = "h" if hosts else "p"
    run_dir = workdir / f"chaos-{mode}-w{workers}-{tag}{'-'.join(map(str, plan))}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    bucket = f"chaos-{mode}-w{workers}-{tag}{'-'.join(map(str, plan))}-{seed}"
    s3 = stack.s3()
    queue_url = ""
    if mode == "sqs":
        queue_url = stack.notify_queue(bucket, bucket)
    else:
        s3.create_bucket(Bucket=bucket)
    admin = stack.admin()
    admin.reset()

    from bytewax.recovery import init_db_dir

    recovery = run_dir / "recovery"
    if not hosts:
        recovery.mkdir()
        init_db_dir(recovery, 1)
    config = run_dir / "flow.toml"
    _config(config, bucket, mode=mode, queue_url=queue_url, partitions=4,
            retry_max_secs=600.0 if storm_secs else 120.0, sample=sample,
            aggregate=aggregate)
    proxy = None
    env = flow_env(stack, run_dir / "errors", config) | {"S3SENTINEL__OPS__PORT": "0"}
    if storm_secs:
        proxy = FaultProxy(stack.s3_endpoint, seed=seed).start()
        env["S3SENTINEL__AWS__ENDPOINT_URL"] = proxy.endpoint
        proxy.set(slowdown=0.08, internal=0.04, drop=0.02)
        admin.set_faults([
            {"status": 429, "retry_after_secs": 1, "probability": 0.15, "seed": seed,
             "duration_secs": storm_secs},
            {"status": 503, "probability": 0.08, "seed": seed + 1, "duration_secs": storm_secs},
            {"status": 500, "probability": 0.05, "seed": seed + 2, "duration_secs": storm_secs},
            {"drop": True, "probability": 0.05, "seed": seed + 3, "duration_secs": storm_secs},
            {"delay_secs": 2.0, "probability": 0.05, "seed": seed + 4,
             "duration_secs": storm_secs},
        ])

    # Half the objects before the start; the rest land while the flow runs and is killed.
    first = objects // 2
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=seed % 20)
    manifests = [seed_cloudtrail(s3, bucket, objects=first, records_per_object=records_per_object,
                                 seed=seed, start=start, digests=False)]
    landing_done = threading.Event()

    def land() -> None:
        rest, n = objects - first, 0
        while n < rest:
            batch = min(rest - n, max(1, rest // 10))
            manifests.append(seed_cloudtrail(
                s3, bucket, objects=batch, records_per_object=records_per_object,
                seed=seed * 1000 + n + 1, start=start + timedelta(hours=6 + n), digests=False))
            n += batch
            time.sleep(rng.uniform(0.3, 1.2))
        landing_done.set()

    flow = _Flow(env, recovery, run_dir / "flow.log", run_dir if hosts else None)
    began = time.monotonic()
    lander = threading.Thread(target=land, daemon=True)
    lander.start()
    done_kills = 0
    try:
        current = plan[0]
        for k in range(kills):
            w = rescale_to if rescale_to and k == kills // 2 else workers
            n = plan[k * len(plan) // kills]
            if n != current:
                say(f"  rescale {current} -> {n} processes")
                rescale_hosts(run_dir, current, n)
                current = n
            flow.start(w, n)
            up = rng.uniform(min_up_secs, max_up_secs)
            time.sleep(up)
            if not flow.alive():
                raise RuntimeError(f"the flow exited by itself before kill {k + 1}; "
                                   f"{flow.exit_report()}")
            flow.kill()
            done_kills += 1
            say(f"  kill {done_kills}/{kills} after {up:.1f}s (workers {w}): "
                f"{admin.summary()['total_records']} records accepted so far")
        landing_done.wait(timeout=120)
        if proxy is not None:
            proxy.set()  # S3 is healthy again; the emulator's storm ends by its duration
        expected_ids = {e for m in manifests for o in m.objects
                        for offset, e in enumerate(o.event_ids)
                        if zlib.crc32(f"{object_id(bucket, o.key, o.etag)}-{offset}".encode())
                        % sample == 0}
        summaries: collections.Counter[tuple[str, str, int]] = collections.Counter()
        if aggregate:
            summaries, summarised = _summaries(s3, bucket, manifests, sample)
            expected_ids -= summarised
        expected = len(expected_ids)
        if hosts and current != processes:
            rescale_hosts(run_dir, current, processes)
        last_start = time.monotonic()
        flow.start(workers, processes)
        deadline = last_start + timeout_secs
        caught_up = None
        sqs = stack.sqs() if mode == "sqs" else None
        while time.monotonic() < deadline:
            if not flow.alive():
                raise RuntimeError(f"the flow exited by itself; {flow.exit_report()}")
            total = admin.summary()["total_records"]
            if total >= expected:
                got = {r["AwsEventId"] for r in admin.records(STREAM)}
                done = expected_ids <= got and (sqs is None or _queue_depth(sqs, queue_url) == 0)
                if done and aggregate:
                    done = len(admin.records(SUMMARY_STREAM)) >= sum(summaries.values())
                if done:
                    caught_up = time.monotonic() - last_start
                    break
            time.sleep(0.5)
        time.sleep(2.0)  # anything still in flight would show up as a duplicate
        flow.kill()
    finally:
        flow.kill()
        if proxy is not None:
            proxy.stop()
        admin.set_faults([])
    records = admin.records(STREAM)
    counts = collections.Counter(r["AwsEventId"] for r in records)
    from connectors.deadletter import read_entries

    dead = sum(len(read_entries(e)) for e in [run_dir / "errors", *run_dir.glob("host-*/errors")]
               if e.exists())
    storm_faults = sum(1 for r in admin.requests() if r.get("fault"))
    wrong = None
    if aggregate:
        # A summary row sent again in the journal's window (accepted, not yet journaled when
        # a kill came) is a duplicate under the same id, as for any row: compared once.
        once = {r["RecordId"]: r for r in admin.records(SUMMARY_STREAM)}
        got = collections.Counter((r["TimeGenerated"], r["EventName"], r["Events"])
                                  for r in once.values())
        wrong = sum(((got - summaries) + (summaries - got)).values())
    return ChaosResult(
        mode=mode, workers=workers, processes=processes, kills=done_kills,
        objects=sum(len(m.objects) for m in manifests), expected=len(expected_ids),
        delivered=len(records), lost=len(expected_ids - counts.keys()),
        duplicates=sum(counts.values()) - len(counts), dead_lettered=dead,
        unexpected=len(counts.keys() - expected_ids), seconds=time.monotonic() - began,
        summaries_wrong=wrong,
        catch_up_seconds=caught_up if caught_up is not None else float("nan"),
        queue_left=_queue_depth(stack.sqs(), queue_url) if mode == "sqs" else None,
        s3_faults=dict(proxy.injected) if proxy is not None else {},
        sentinel_faults=storm_faults)
