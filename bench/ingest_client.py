"""CPU per request of the Logs Ingestion client: the Azure SDK pipeline against a bare HTTPS
POST of the same body, over the same kind of pooled keep-alive connection.

The emulator runs in a process of its own (``python -m devstack.sentinel``), so this
process's CPU time (``time.process_time``) is the client's alone. Variants are measured in
alternating rounds (a noisy spell hits each alike) and reported as medians:

- ``sdk``: ``IngestionService.send`` through ``LogsIngestionClient`` (what the flow used);
- ``lean``: ``IngestionService.send`` with ``client="lean"`` (token from the credential,
  one pooled urllib3 connection) when the service has it;
- ``requests``: ``requests.Session.post`` of the same body and headers (the SDK's transport
  with no pipeline in front of it);
- ``urllib3``: ``HTTPSConnectionPool.urlopen`` (what ``requests`` itself sits on);
- ``http.client``: one ``HTTPSConnection``, the floor.

``--profile`` also runs the SDK variant under cProfile and splits its own time by where it
is spent (pipeline policies, azure-core request/response objects, requests, urllib3,
http.client and the socket/TLS work).

    python bench/ingest_client.py [--requests 500] [--rounds 5] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import pstats
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.samples import cloudtrail_event  # noqa: E402 (after the sys.path line above)
from devstack.sentinel import wait_for_info_file  # noqa: E402 (after the sys.path line above)

RULE = "dcr-00000000000000000000000000000000"
STREAM = "Custom-AWSCloudTrail"
SCOPE = "https://monitor.azure.com/.default"
API_VERSION = "2023-01-01"


def bodies() -> dict[str, tuple[bytes, int]]:
    """Gzipped request bodies (and their rows): a full one (~1 MB of mapped CloudTrail rows,
    as the sink sends) and a one-row one."""
    from isal import igzip

    from dataflow.core.messages import Batch
    from operators.schema import Mapper, load_tables

    mapper = Mapper(load_tables()["AWSCloudTrail"])
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows: list[bytes] = []
    size = 1
    while True:
        ev = cloudtrail_event(rng, account="123456789012", region="us-east-1",
                              when=start + timedelta(seconds=len(rows)))
        row = mapper.map_dict(ev, f"bench-{len(rows)}")
        if size + len(row) + 1 > 1_000_000:
            break
        rows.append(row)
        size += len(row) + 1
    out = {}
    for name, rs in (("full", rows), ("small", rows[:1])):
        batch = Batch(STREAM, tuple(rs), tuple(f"r-{i}" for i in range(len(rs))))
        out[name] = (igzip.compress(batch.body(), compresslevel=1), len(rs))
    return out


def start_emulator(workdir: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    cmd = [sys.executable, "-m", "devstack.sentinel", "--workdir", str(workdir),
           "--rules-json", json.dumps({RULE: {STREAM: None}}), "--no-store-records"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    return proc, wait_for_info_file(workdir / "sentinel.json")


Sender = Callable[[bytes], None]


def make_senders(info: dict[str, Any], credential: Any, lean: bool) -> dict[str, tuple[Sender, Any]]:
    import requests
    import urllib3

    from connectors.sentinel.service import IngestionService

    endpoint, ca = info["endpoint"], info["ca_file"]
    token = credential.get_token(SCOPE).token
    path = f"/dataCollectionRules/{RULE}/streams/{STREAM}?api-version={API_VERSION}"
    url = endpoint + path

    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "Content-Encoding": "gzip", "x-ms-client-request-id": str(uuid.uuid4()),
                "Accept": "application/json"}

    out: dict[str, tuple[Sender, Any]] = {}
    if lean:
        sdk = IngestionService(endpoint, RULE, credential, ca_file=ca, client="sdk")
        svc = IngestionService(endpoint, RULE, credential, ca_file=ca, client="lean")
        out["lean"] = (lambda body: svc.send(STREAM, body) and None, svc.close)
    else:  # before the lean client existed
        sdk = IngestionService(endpoint, RULE, credential, ca_file=ca)
    out["sdk"] = (lambda body: sdk.send(STREAM, body) and None, sdk.close)

    session = requests.Session()
    session.trust_env = False

    def via_requests(body: bytes) -> None:
        r = session.post(url, data=body, headers=headers(), verify=ca, timeout=30)
        if r.status_code != 204:
            raise RuntimeError(r.status_code)

    out["requests"] = (via_requests, session.close)

    host, port = endpoint.removeprefix("https://").split(":")
    pool = urllib3.HTTPSConnectionPool(host, int(port), maxsize=1, ca_certs=ca,
                                       cert_reqs="CERT_REQUIRED", retries=False,
                                       timeout=urllib3.Timeout(30, 30))

    def via_urllib3(body: bytes) -> None:
        r = pool.urlopen("POST", path, body=body, headers=headers(), retries=False,
                         preload_content=True)
        if r.status != 204:
            raise RuntimeError(r.status)

    out["urllib3"] = (via_urllib3, pool.close)

    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)

    def via_http_client(body: bytes) -> None:
        conn.request("POST", path, body=body, headers=headers())
        r = conn.getresponse()
        r.read()
        if r.status != 204:
            raise RuntimeError(r.status)

    out["http.client"] = (via_http_client, conn.close)
    return out


def cpu_per_request(send: Sender, body: bytes, n: int) -> float:
    """Median-free: total CPU of ``n`` sends, in µs per request."""
    t0 = time.process_time()
    for _ in range(n):
        send(body)
    return (time.process_time() - t0) / n * 1e6


POLICIES = (
    ("retry", ("policies/_retry",)),
    ("bearer token", ("policies/_authentication",)),
    ("logging, redaction", ("policies/_universal.py", "policies/_sensitive_header")),
    ("tracing", ("policies/_distributed_tracing", "azure/core/tracing",
                 "azure/core/settings", "azure/core/instrumentation")),
    ("redirect", ("policies/_redirect",)),
    ("other policies", ("policies/",)),
)
"""Own time (tottime) of the pipeline's policies, by module."""

LAYERS = (
    ("upload", "azure/monitor/ingestion/_operations/_patch.py", "upload"),
    ("pipeline", "azure/core/pipeline/_base.py", "run"),
    ("transport", "azure/core/pipeline/transport/_requests_basic.py", "send"),
    ("requests", "requests/sessions.py", "request"),
    ("urllib3", "urllib3/connectionpool.py", "urlopen"),
)
"""Entry points of the SDK send, outermost first: each one's cumulative time includes the
next one's."""


def profile_split(send: Sender, body: bytes, n: int) -> dict[str, float]:
    """The SDK send under cProfile, µs per request (profiler overhead included): by layer
    (cumulative times of each entry point less the next's) and the policies' own time."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for _ in range(n):
        send(body)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(st[2] for st in stats.values()) / n * 1e6
    cum: dict[str, float] = {}
    policies: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tottime, cumtime, _callers) in stats.items():
        for layer, path, name in LAYERS:
            if filename.endswith(path) and func == name:
                cum[layer] = cum.get(layer, 0.0) + cumtime / n * 1e6
        for group, needles in POLICIES:
            if any(nd in filename for nd in needles):
                policies[group] = policies.get(group, 0.0) + tottime / n * 1e6
                break
    out = {"total (profiled)": total,
           "IngestionService.send + upload() + request building":
               total - cum["pipeline"],
           "azure-core pipeline (policies, response handling)":
               cum["pipeline"] - cum["transport"],
           "azure-core RequestsTransport glue": cum["transport"] - cum["requests"],
           "requests (Session.request: prepare, env merge, adapter)":
               cum["requests"] - cum["urllib3"],
           "urllib3 + http.client + TLS (the POST itself)": cum["urllib3"]}
    out.update({f"  of which policy own time: {k}": v for k, v in policies.items()})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500, help="requests per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from connectors.sentinel.service import IngestionService

    lean = "client" in IngestionService.__init__.__code__.co_varnames  # before/after
    with tempfile.TemporaryDirectory() as tmp:
        proc, info = start_emulator(Path(tmp))
        try:
            os.environ.update({"IDENTITY_ENDPOINT": info["identity_endpoint"],
                               "IDENTITY_HEADER": info["identity_header"],
                               "REQUESTS_CA_BUNDLE": info["ca_file"],
                               "SSL_CERT_FILE": info["ca_file"], "NO_PROXY": "127.0.0.1",
                               "no_proxy": "127.0.0.1"})
            for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT",
                        "MSI_SECRET"):
                os.environ.pop(var, None)
            from azure.identity import ManagedIdentityCredential

            credential = ManagedIdentityCredential()
            senders = make_senders(info, credential, lean)
            bods = bodies()
            for name, (body, rows) in bods.items():
                print(f"body {name}: {rows} rows, {len(body):,} B gzipped")
            results: dict[str, dict[str, list[float]]] = {b: {v: [] for v in senders}
                                                          for b in bods}
            for send, _ in senders.values():  # warm up: connections, token, imports
                for body, _ in bods.values():
                    send(body)
            for rnd in range(args.rounds):
                order = list(senders) if rnd % 2 == 0 else list(reversed(senders))
                for bname, (body, _) in bods.items():
                    for v in order:
                        results[bname][v].append(cpu_per_request(senders[v][0], body,
                                                                 args.requests))
                print(f"round {rnd + 1}: " + "; ".join(
                    f"{b} " + ", ".join(f"{v} {results[b][v][-1]:.0f}" for v in senders)
                    for b in bods), flush=True)
            med = {b: {v: statistics.median(xs) for v, xs in r.items()} for b, r in results.items()}
            print("\nCPU µs per request, medians of", args.rounds, "rounds of", args.requests)
            print(f"{'variant':<14}" + "".join(f"{b:>12}" for b in bods))
            for v in senders:
                print(f"{v:<14}" + "".join(f"{med[b][v]:>12.0f}" for b in bods))
            figures: dict[str, Any] = {"medians_us": med,
                                       "rows": {b: r for b, (_, r) in bods.items()},
                                       "wire_bytes": {b: len(x) for b, (x, _) in bods.items()}}
            if args.profile:
                figures["profile_us"] = {}
                for bname, (body, _) in bods.items():
                    split = profile_split(senders["sdk"][0], body, args.requests)
                    figures["profile_us"][bname] = split
                    print(f"\ncProfile of sdk, {bname} body: CPU µs per request "
                          "(profiler overhead included)")
                    for k, x in split.items():
                        print(f"  {x:8.1f}  {k}")
            for _, close in senders.values():
                close()
            if args.json:
                print(json.dumps(figures))
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
