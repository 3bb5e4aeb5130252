"""The local stack: moto (S3, SQS) and the Sentinel emulator, each in its own process on 127.0.0.1.

Used by ``./run.sh``, the tests and the benchmarks. Each server runs in a child
process so that it does not share a GIL with the code under test, and talks real
HTTP(S) over loopback sockets.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.deploy import deploy
from devstack.sentinel import EmulatorAdmin, wait_for_info_file

__all__ = ["DEMO_RULE_ID", "LocalStack", "free_port"]

DEMO_RULE_ID = "dcr-00000000000000000000000000000000"
"""The data collection rule id the local emulator serves."""

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a listener, free a moment ago and never handed out before.

    The port is chosen *below* the kernel's ephemeral range. A port that ``bind(0)``
    returns comes from that range, and the kernel may give it to an outgoing connection
    (boto3's, the emulator client's) before the listener binds it; the listener then
    fails with "Address already in use". That is how a two-process bytewax flow in the
    chaos tests once exited by itself: one process could not bind its ``-a`` address.
    """
    low, _high = _ephemeral_range()
    lo, hi = (10000, low - 1) if low > 11000 else (low // 2, low - 1)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a crowded range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalStack:
    """Starts and stops the local servers; ``env()`` is what a client process needs.

    :arg workdir: Where the emulator writes its CA, certificate and info file.
    :arg streams: Stream name -> declared columns (None accepts any) for :data:`DEMO_RULE_ID`.
    :arg template: An ``s3sentinel deploy`` template to deploy (with ``tables``, the table
        definitions its streams come from): its DCRs are served beside :data:`DEMO_RULE_ID`,
        and :meth:`targets` is the ``[[targets]]`` entry that sends to them.
    """

    workdir: Path
    streams: Mapping[str, Sequence[str] | None] = field(default_factory=dict)
    moto_port: int = 0
    store_records: bool = True
    """False: the emulator only counts records (long benchmarks)."""
    template: Mapping[str, Any] | None = None
    tables: Mapping[str, Any] | None = None
    limits: Mapping[str, float] | None = None
    """Per-DCR limits of the deployed DCRs (see :mod:`devstack.dcrdef`)."""
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    """The template's deployment outputs (after start)."""
    rules: Mapping[str, Any] = field(default_factory=dict)
    """More rules for the emulator (e.g. other deployments' :attr:`Deployment.rules`)."""
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def start(self) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        info_file = self.workdir / "sentinel.json"
        info_file.unlink(missing_ok=True)
        self.moto_port = self.moto_port or free_port()
        rules: dict[str, Any] = {DEMO_RULE_ID: dict(self.streams)}
        if self.template is not None:
            rules.update(deploy(self.template, "", self.tables or {}, limits=self.limits).rules)
        rules.update(self.rules)
        self._spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(self.moto_port)], env={**os.environ, **AWS_ENV})
        self._spawn("sentinel-emulator", [
            sys.executable, "-m", "devstack.sentinel", "--workdir", str(self.workdir),
            "--rules-json", json.dumps(rules), *([] if self.store_records else ["--no-store-records"])])
        try:
            self.info = self._wait(lambda: wait_for_info_file(info_file, wait_secs=0), 60,
                                   f"the Sentinel emulator did not write {info_file}")
            self._wait(lambda: self._answers(self.s3_endpoint), 60,
                       f"moto did not answer on {self.s3_endpoint}")
            if self.template is not None:
                self.outputs = deploy(self.template, self.info["endpoint"],
                                      self.tables or {}).outputs
        except Exception:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None)
        proc.s3sentinel_name = name  # type: ignore[attr-defined]
        self._procs.append(proc)

    def _wait(self, ready: Any, secs: float, what: str) -> Any:
        """``ready()``'s value once it stops raising; fails at once, naming the process and
        its last lines, when one of the servers exits instead of starting."""
        deadline = time.monotonic() + secs
        while True:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(self._died(p))
            try:
                return ready()
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} within {secs}s; see {self.workdir}/*.log") from None
                time.sleep(0.05)

    def _died(self, p: subprocess.Popen) -> str:
        name = getattr(p, "s3sentinel_name", "a server")
        log = self.workdir / f"{name}.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        hint = ""
        text = "\n".join(tail)
        if "No module named" in text:
            hint = ("\nA module is missing: the local stack needs the devstack extra. Run "
                    "`./run.sh` (it installs it), or `pip install -e '.[devstack]'`.")
        lines = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
        return (f"local stack: {name} exited with status {p.returncode} while starting "
                f"({' '.join(p.args[1:4])} ...); last lines of {log}:\n{lines}{hint}")

    @staticmethod
    def _answers(url: str) -> None:
        urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 (loopback only)

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self._procs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for a process using the stack (AWS dummy keys, identity, CA)."""
        ca = self.info["ca_file"]
        return {
            **AWS_ENV,
            "IDENTITY_ENDPOINT": self.info["identity_endpoint"],
            "IDENTITY_HEADER": self.info["identity_header"],
            "REQUESTS_CA_BUNDLE": ca,
            "SSL_CERT_FILE": ca,
        }

    def targets(self, *, extra_streams: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The ``[[targets]]`` of the deployed template (from its outputs, as ``s3sentinel
        targets`` makes it), plus a DCR for ``extra_streams`` on :data:`DEMO_RULE_ID`."""
        dcrs = [{"name": d["name"], "id": d["immutableId"], "endpoint": d["endpoint"],
                 "streams": d["streams"]} for d in self.outputs["dcrs"]["value"]]
        if extra_streams:
            dcrs.append({"name": "extra", "id": DEMO_RULE_ID, "endpoint": self.info["endpoint"],
                         "streams": list(extra_streams)})
        return [{"name": self.outputs["target"]["value"], "credential": "managed_identity",
                 "ca_file": self.info["ca_file"], "dcrs": dcrs}]

    def admin(self) -> EmulatorAdmin:
        """Client of the emulator's admin API (records, requests, faults)."""
        return EmulatorAdmin(self.info["endpoint"], self.info["ca_file"])

    def s3(self) -> Any:
        """A boto3 S3 client for the moto server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def sqs(self) -> Any:
        """A boto3 SQS client for the moto server."""
        import boto3

        return boto3.client("sqs", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def notify_queue(self, bucket: str, queue: str) -> str:
        """Create ``bucket`` (if needed) and ``queue``, and send the bucket's ObjectCreated
        events to the queue, as an S3 event notification configuration does; returns its URL."""
        s3, sqs = self.s3(), self.sqs()
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn["Attributes"]["QueueArn"],
                                     "Events": ["s3:ObjectCreated:*"]}]})
        return url
