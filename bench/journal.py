"""Upload journal at scale: memory per object, start-up, and lookups, over a week of objects.

Writes ``--objects`` objects (300-700 records each, one accepted request per object, with
``--findings``: plus one findings object of ~9% of its offsets, as the sample trail flags)
spread over ``--hours`` of journal time into a :class:`~connectors.ledger.Ledger`, with the
process's :class:`~connectors.ledger.LedgerView` tailing it as a source does, and reports:

1. traced memory per object held by the ledger and the view (tracemalloc, after the last
   write), with idle objects packed (as shipped) and kept live (``IDLE_SECS`` set to
   infinity: how the journal held them before), in the same run;
2. the start-up of a ledger over that journal: seconds, and the peak traced memory;
3. the cost of :meth:`~connectors.ledger.Ledger.held` per batch of 500 record ids: of a
   new object (every batch in normal running asks this), and of a packed one (a replay).

A trail of 100 accounts in 17 regions delivers ~20,000 objects an hour: a 7-day journal
holds ~3.4M of them. Memory figures are per object: multiply.

    python bench/journal.py [--objects 100000] [--hours 168] [--findings] [--json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import connectors.ledger as ledger_mod  # noqa: E402 (after the sys.path line above)
from connectors.ledger import Ledger, LedgerView  # noqa: E402 (after the sys.path line)


def _oid(n: int) -> str:
    return hashlib.sha256(f"bench/{n}".encode()).hexdigest()[:16]


def _requests(objects: int, findings: bool, seed: int = 1) -> list[dict[str, list[list[int]]]]:
    """One request's ranges per object (and its findings object's, with ``findings``)."""
    rng = random.Random(seed)
    out = []
    for n in range(objects):
        count = rng.randint(300, 700)
        req = {_oid(n): [[0, count]]}
        if findings:  # merged where they touch, as Ledger.record writes them
            offs = rng.sample(range(count), count * 9 // 100)
            req[_oid(n) + ".rules"] = ledger_mod._ranges(offs)
        out.append(req)
    return out


def write_week(directory: Path, requests: list[dict[str, Any]], hours: float,
               packed: bool) -> dict[str, float]:
    """Journal ``requests`` over ``hours`` with a view tailing; traced bytes per object of
    the ledger (per request's objects) and of the view (which skips findings objects)."""
    clock = [1_700_000_000.0]
    step = hours * 3600 / len(requests)
    saved = ledger_mod.IDLE_SECS
    if not packed:
        ledger_mod.IDLE_SECS = float("inf")
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ledger = Ledger(directory, 0, clock=lambda: clock[0])
        view = LedgerView(directory)
        for i, req in enumerate(requests):
            ledger.record_ranges(req)
            clock[0] += step
            if i % 100 == 99:
                view.refresh()
        view.refresh()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        ledger.close()
        del ledger
        gc.collect()
        view_bytes = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        objects = len(view)
        del view
    finally:
        ledger_mod.IDLE_SECS = saved
    return {"ledger_b_per_object": (held - view_bytes) / len(requests),
            "view_b_per_object": view_bytes / max(1, objects)}


def start_up(directory: Path) -> tuple[Ledger, dict[str, float]]:
    """A ledger opened over the journal: seconds (untraced), then peak traced memory."""
    gc.collect()
    t0 = time.perf_counter()
    Ledger(directory, 0).close()
    secs = time.perf_counter() - t0
    gc.collect()
    tracemalloc.start()
    ledger = Ledger(directory, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return ledger, {"start_secs": secs, "start_peak_mb": peak / 1e6}


def lookups(ledger: Ledger, objects: int) -> dict[str, float]:
    """µs per :meth:`held` of 500 ids: a new object's, and a packed (old) one's."""
    new = [f"{'f' * 16}-{i}" for i in range(500)]
    old = [f"{_oid(objects // 3)}-{i}" for i in range(500)]
    out = {}
    for name, ids in (("held_new_us", new), ("held_packed_us", old)):
        reps = 2000
        t0 = time.perf_counter()
        for _ in range(reps):
            ledger.held(ids)
        out[name] = (time.perf_counter() - t0) / reps * 1e6
    got = ledger.held(old)  # 300-700 records: the first 300 at least
    if len(got) < 300 or got != list(range(len(got))):
        msg = "a packed object's records are not all held"
        raise AssertionError(msg)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--hours", type=float, default=168.0)
    ap.add_argument("--findings", action="store_true",
                    help="a findings object beside each object (~9%% of its offsets)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of figures")
    args = ap.parse_args(argv)
    requests = _requests(args.objects, args.findings)
    figures: dict[str, Any] = {"objects": args.objects, "hours": args.hours,
                               "findings": args.findings}
    with tempfile.TemporaryDirectory() as tmp:
        for packed in (False, True):
            d = Path(tmp) / ("packed" if packed else "live")
            got = write_week(d, requests, args.hours, packed)
            mode = "packed" if packed else "live"
            figures[f"{mode}_ledger_b_per_object"] = round(got["ledger_b_per_object"], 1)
            figures[f"{mode}_view_b_per_object"] = round(got["view_b_per_object"], 1)
        ledger, start = start_up(Path(tmp) / "packed")
        figures |= {k: round(v, 3) for k, v in start.items()}
        figures |= {k: round(v, 2) for k, v in lookups(ledger, args.objects).items()}
        figures["file_mb"] = round((Path(tmp) / "packed" / "journal-w0.jsonl").stat().st_size
                                   / 1e6, 1)
    per = "object" + (" (+ its findings object)" if args.findings else "")
    print(f"{args.objects:,} objects over {args.hours:g} h of journal; bytes per {per}:")
    for mode in ("live", "packed"):
        print(f"  {mode:6}  ledger {figures[f'{mode}_ledger_b_per_object']:7.1f}   "
              f"view {figures[f'{mode}_view_b_per_object']:7.1f}")
    both = {m: figures[f"{m}_ledger_b_per_object"] + figures[f"{m}_view_b_per_object"]
            for m in ("live", "packed")}
    figures["ratio_live_to_packed"] = round(both["live"] / both["packed"], 2)
    print(f"  ledger and view together: {both['live']:.0f} -> {both['packed']:.0f} bytes "
          f"({figures['ratio_live_to_packed']:.1f}x less); at 3.4M objects (a week of "
          f"20,000 an hour): {both['live'] * 3.4e6 / 1e9:.2f} -> "
          f"{both['packed'] * 3.4e6 / 1e9:.2f} GB")
    print(f"start-up over the journal ({figures['file_mb']} MB): {figures['start_secs']:.2f} s, "
          f"peak traced {figures['start_peak_mb']:.0f} MB")
    print(f"held() of 500 ids: new object {figures['held_new_us']:.1f} µs, "
          f"packed object {figures['held_packed_us']:.1f} µs")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
