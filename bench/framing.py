"""Framing throughput: MB/s of the CloudTrail framer for records of any size.

Splits ``{"Records": [...]}`` documents held in memory, fed in 1 MiB chunks (the size
decompression hands on), on one core:

1. records of 1 KB, 64 KB, 1 MB and 16 MB, each a CloudTrail-like event whose
   ``requestParameters`` holds a long nested list of objects (the shape that made the
   old framer re-decode from the record's start at every ``},{``); framing is linear
   when these figures are flat (the acceptance bound is 2× between sizes);
2. typical CloudTrail objects (``devstack.samples``, ~1.5 KB per event).

With ``--compare REV`` the framer of git revision REV runs on the same data where it
finishes in reasonable time (sizes above ``--compare-max-kb`` are skipped for it).

    python bench/framing.py [--compare HEAD] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.s3 import jsonarray  # noqa: E402 (after the sys.path line above)
from devstack.samples import cloudtrail_event  # noqa: E402 (after the sys.path line above)

CHUNK = 1024 * 1024
SIZES = {"1KB": 1024, "64KB": 64 * 1024, "1MB": 1024 * 1024, "16MB": 16 * 1024 * 1024}
DOC_BYTES = 32 * 1024 * 1024


def nested_record(i: int, size: int) -> dict[str, Any]:
    """A RunInstances-like event of about ``size`` bytes: its size is in a list of objects."""
    rec: dict[str, Any] = {
        "eventVersion": "1.08", "eventTime": "2024-05-01T12:00:00Z", "eventID": f"ev-{i}",
        "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances",
        "awsRegion": "us-east-1", "sourceIPAddress": "203.0.113.7",
        "userIdentity": {"type": "AssumedRole", "accountId": "123456789012",
                         "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}},
        "requestParameters": {"instancesSet": {"items": []}},
        "responseElements": None,
    }
    items = rec["requestParameters"]["instancesSet"]["items"]
    base = len(json.dumps(rec, separators=(",", ":")))
    item = {"instanceId": "i-0123456789abcdef0", "state": {"code": 16, "name": "running"},
            "tagSet": {"items": [{"key": "Name", "value": "web},{\"1"}]}}
    one = len(json.dumps(item, separators=(",", ":"))) + 1
    items.extend(item for _ in range(max(1, (size - base) // one)))
    return rec


def document(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"Records": records}, separators=(",", ":")).encode()


def typical_document(n: int) -> bytes:
    rng = random.Random(7)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    return document([cloudtrail_event(rng, account="123456789012", region="us-east-1",
                                      when=t0 + timedelta(seconds=i)) for i in range(n)])


def frame_mbps(mod: ModuleType, doc: bytes, repeat: int = 3) -> tuple[float, int]:
    """Best MB/s of framing ``doc`` in CHUNK pieces, and the records found."""
    best, count = 0.0, 0
    for _ in range(repeat):
        f = mod.JsonArrayFramer("Records", max_record_bytes=64 * 1024 * 1024)
        t = time.perf_counter()
        n = 0
        for i in range(0, len(doc), CHUNK):
            n += len(f.feed(doc[i:i + CHUNK]))
        n += len(f.finish())
        best = max(best, len(doc) / (time.perf_counter() - t) / 1e6)
        count = n
    return best, count


def load_framer(rev: str) -> ModuleType:
    """The JsonArrayFramer's module as of git revision ``rev`` (connectors/s3/jsonarray.py,
    or framing.py before the split), as a module of its own."""
    for path in ("connectors/s3/jsonarray.py", "connectors/s3/framing.py"):
        got = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True)
        if got.returncode == 0:
            src = got.stdout
            break
    else:
        raise SystemExit(f"no JsonArrayFramer at {rev}")
    with tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False) as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(f"framing_{rev}", fh.name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", metavar="REV", help="also run the framer of git revision REV")
    ap.add_argument("--compare-max-kb", type=int, default=64,
                    help="largest record size the compared framer is run on")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of figures")
    args = ap.parse_args()
    old = load_framer(args.compare) if args.compare else None
    figures: dict[str, Any] = {"chunk_bytes": CHUNK, "nested_mbps": {}, "compare": args.compare}
    if old is not None:
        figures["nested_mbps_compare"] = {}
    print(f"framing, {CHUNK // 1024} KiB chunks, one core (MB/s; best of 3)")
    for name, size in SIZES.items():
        count = max(2, DOC_BYTES // size)
        doc = document([nested_record(i, size) for i in range(count)])
        mbps, n = frame_mbps(jsonarray, doc)
        assert n == count, (n, count)
        figures["nested_mbps"][name] = round(mbps, 1)
        line = f"  nested list records of {name:>5}: {mbps:7.1f} MB/s ({count} records)"
        if old is not None:
            if size <= args.compare_max_kb * 1024:
                one = document([nested_record(i, size) for i in range(min(count, 64))])
                was = frame_mbps(old, one, repeat=1)[0]
                figures["nested_mbps_compare"][name] = round(was, 2)
                line += f"   {args.compare}: {was:8.2f} MB/s"
            else:
                line += f"   {args.compare}: skipped (too slow)"
        print(line)
    flat = figures["nested_mbps"]
    figures["nested_spread"] = round(max(flat.values()) / min(flat.values()), 2)
    print(f"  spread across sizes: {figures['nested_spread']}x (must stay under 2x)")
    doc = typical_document(20_000)
    mbps, n = frame_mbps(jsonarray, doc)
    figures["cloudtrail_mbps"] = round(mbps, 1)
    figures["cloudtrail_events_per_s"] = round(mbps * 1e6 / (len(doc) / n))
    line = (f"  typical CloudTrail ({len(doc) / n:.0f} B/event): {mbps:7.1f} MB/s, "
            f"{figures['cloudtrail_events_per_s']:,} events/s")
    if old is not None:
        was = frame_mbps(old, doc)[0]
        figures["cloudtrail_mbps_compare"] = round(was, 1)
        line += f"   {args.compare}: {was:7.1f} MB/s"
    print(line)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
