"""The local stack: moto (S3, SQS, STS) and the Sentinel emulator, each in its own process on
127.0.0.1; and :class:`AwsGate`, AWS's side of keyless access in front of moto.

Used by ``./run.sh``, the tests and the benchmarks. Each server runs in a child
process so that it does not share a GIL with the code under test, and talks real
HTTP(S) over loopback sockets.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devstack.deploy import deploy
from devstack.sentinel import EmulatorAdmin, wait_for_info_file

__all__ = ["DEMO_RULE_ID", "AwsGate", "Exchange", "LocalStack", "free_port", "keyless",
           "service_account_token"]

DEMO_RULE_ID = "dcr-00000000000000000000000000000000"
"""The data collection rule id the local emulator serves."""

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def keyless(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with no AWS key in it and nothing for boto3's chain to fall back on (no
    shared files, no instance metadata): AWS credentials must be obtained keylessly."""
    out = {k: v for k, v in env.items() if k not in AWS_KEYS}
    out.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true")
    return out


def service_account_token(issuer: str, subject: str, audience: str,
                          lifetime_secs: int = 3600) -> str:
    """A JWT shaped like a projected Kubernetes service account token (the federated token
    file of AKS workload identity or EKS IRSA). Its signature is a placeholder: the
    emulator and :class:`AwsGate` check its claims, not its issuer's keys."""
    def part(obj: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": issuer, "sub": subject, "aud": [audience], "iat": now, "nbf": now,
              "exp": now + lifetime_secs}
    return f"{part({'alg': 'RS256', 'kid': 'devstack'})}.{part(claims)}.c2lnbmF0dXJl"


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

    def workload_env(self, client_id: str, token_file: str | os.PathLike[str]) -> dict[str, str]:
        """What the AKS workload identity webhook sets, with Entra at the emulator."""
        return {"AZURE_AUTHORITY_HOST": self.info["authority_host"],
                "AZURE_TENANT_ID": self.info["tenant_id"], "AZURE_CLIENT_ID": client_id,
                "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}

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


@dataclass(frozen=True)
class Exchange:
    """Credentials STS issued through :class:`AwsGate`."""

    at: float
    """When (epoch seconds)."""
    action: str
    """``AssumeRoleWithWebIdentity`` or ``AssumeRole``."""
    role_arn: str
    session_name: str
    signed_by: str | None
    """The access key that signed the call (None: unsigned, as a web identity exchange is)."""
    token: str | None
    """The web identity token presented."""
    external_id: str | None
    access_key: str
    """The access key issued."""
    expires: float
    """When the issued credentials expire (epoch seconds; after ``lifetime_secs``)."""


class AwsGate:
    """AWS's side of keyless access, as an HTTP proxy on 127.0.0.1 in front of moto.

    ``AssumeRoleWithWebIdentity`` passes only when ``accept(token)`` is true, as IAM checks
    a token against the role's OIDC provider (issuer, audience, subject); otherwise STS's
    ``InvalidIdentityToken``. Credentials issued by an exchange may be made to expire
    ``lifetime_secs`` after it (by ``clock``, which a test may move), so that a test sees
    them refreshed within seconds. Every request is recorded with the access key that
    signed it (:attr:`signed`), every STS call that issued credentials in
    :attr:`exchanges`. Request bodies need Content-Length.
    """

    def __init__(self, upstream: str, accept: Callable[[str], bool], *,
                 lifetime_secs: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._upstream = urllib.parse.urlsplit(upstream)
        self._accept = accept
        self._lifetime = lifetime_secs
        self._clock = clock
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self.refused: list[str] = []
        """Tokens refused (InvalidIdentityToken)."""
        self.signed: list[tuple[float, str | None, str, str]] = []
        """(epoch seconds, signing access key or None, service, "METHOD path") of every
        request."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the gate first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> AwsGate:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's)
                pass

            def _any(self) -> None:
                gate._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 (stdlib names)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="aws-gate").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> AwsGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        auth = h.headers.get("Authorization", "") + " " + urllib.parse.unquote(h.path)
        signer = re.search(r"Credential=([A-Z0-9]+)/[^/]+/[^/]+/([a-z0-9-]+)/", auth)
        key, service = (signer.group(1), signer.group(2)) if signer else (None, "")
        form: dict[str, str] = {}
        if h.command == "POST" and "x-www-form-urlencoded" in h.headers.get("Content-Type", ""):
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        action = form.get("Action", "")
        with self._lock:
            self.signed.append((self._clock(), key, service or ("sts" if action else ""),
                                f"{h.command} {urllib.parse.urlsplit(h.path).path}"))
        if action == "AssumeRoleWithWebIdentity" and not self._accept(
                form.get("WebIdentityToken", "")):
            with self._lock:
                self.refused.append(form.get("WebIdentityToken", ""))
            return self._reply(h, 400, {"Content-Type": "text/xml"}, (
                '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                "<Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>The ID token "
                "was not accepted by the role's identity provider (issuer, audience or subject)"
                f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
            ).encode())
        conn = http.client.HTTPConnection(self._upstream.hostname, self._upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "transfer-encoding")}
            conn.request(h.command, h.path, body=body if body else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders()
                   if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                        "content-length")}
            status, length = resp.status, resp.getheader("Content-Length")
        finally:
            conn.close()
        if status == 200 and action in ("AssumeRoleWithWebIdentity", "AssumeRole"):
            data = self._record(action, form, key, data)
        if h.command == "HEAD":
            out["Content-Length"] = length or "0"
            return self._reply(h, status, out, b"", head=True)
        self._reply(h, status, out, data)

    def _record(self, action: str, form: Mapping[str, str], signer: str | None,
                data: bytes) -> bytes:
        text = data.decode()
        now = self._clock()
        if self._lifetime is not None and action == "AssumeRoleWithWebIdentity":
            when = datetime.fromtimestamp(now + self._lifetime, UTC)
            text = re.sub(r"<Expiration>[^<]*</Expiration>",
                          f"<Expiration>{when.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}</Expiration>", text)
        key = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", text)
        exp = re.search(r"<Expiration>([^<]+)</Expiration>", text)
        with self._lock:
            self.exchanges.append(Exchange(
                at=now, action=action, role_arn=form.get("RoleArn", ""),
                session_name=form.get("RoleSessionName", ""), signed_by=signer,
                token=form.get("WebIdentityToken"), external_id=form.get("ExternalId"),
                access_key=key.group(1) if key else "",
                expires=datetime.fromisoformat(exp.group(1)).timestamp() if exp else 0.0))
        return text.encode()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: Mapping[str, str],
               body: bytes, *, head: bool = False) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)
