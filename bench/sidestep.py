"""Cost of the flow's detection side step per event, with entities still learning and warm.

``bench/throughput.py --enrich-all`` runs the real flow over the sample trail. Its events
span a few hours of event time, and an anomaly entity scores only once it has three days of
history behind it (``warmup_secs``): every entity of that run is still learning, which is
the cheaper path. A deployment's entities are warm, and each of their rows is also checked
for novelty and against its volume limits. This bench runs the flow's own steps in process
over the same sample objects (the mapper, :meth:`~operators.enrich.operator.Enricher.enrich_batch`,
and :func:`~operators.enrich.operator.score_shard` with a state per shard, as in the flow):

- **cold**: the side step over the objects, from empty state (what throughput.py measures);
- **warm**: the same, after the side step has seen the same events 4 and then 2 days
  earlier (their TimeGenerated moved back), so every entity is past its warm-up and knows
  the callers, addresses and APIs: the steady state of a deployment.

It reports CPU microseconds per event of mapping, of ``enrich_batch`` (rules, intel, the
fast lane, sharding), and of the side step cold and warm, best of ``--repeat`` passes; and
the findings each pass made. Per-event CPU of the real flow is larger (reading, batching,
sending): compare the side step with the mapping, not with throughput.py's figures.

    python bench/sidestep.py [--objects 150] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataflow.config import SourceConfig  # noqa: E402 (after the sys.path line above)
from dataflow.core.messages import ObjectRef, RawRecord, Rows  # noqa: E402 (after sys.path)
from dataflow.core.timeutil import event_time  # noqa: E402 (after the sys.path line above)
from devstack.samples import cloudtrail_objects  # noqa: E402 (after the sys.path line above)
from operators.enrich.anomaly import DEFAULT_CONFIG  # noqa: E402 (after the sys.path line)
from operators.enrich.columns import (  # noqa: E402 (after the sys.path line above)
    with_enrichment_columns,
)
from operators.enrich.config import EnrichConfig  # noqa: E402 (after the sys.path line above)
from operators.enrich.operator import (  # noqa: E402 (after the sys.path line above)
    Enricher,
    Observed,
    score_shard,
)
from operators.parse import RecordMapper  # noqa: E402 (after the sys.path line above)
from operators.schema import load_tables  # noqa: E402 (after the sys.path line above)

WARMUP_SHIFTS = (timedelta(days=4), timedelta(days=2))
"""How long before the timed pass the side step sees the same events: the first is past
the anomaly warm-up (three days), the second builds the baselines closer to it."""


def _shifted(obs: Observed, by: timedelta) -> Observed:
    """The same bundle with every row's TimeGenerated moved ``by`` back."""
    secs = by.total_seconds()

    def move(row: dict) -> dict:
        ts = event_time(row.get("TimeGenerated"))
        if ts is None:
            return row
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts - secs))
        return {**row, "TimeGenerated": f"{when}.{int(ts * 1000) % 1000:03d}Z"}

    return Observed(obs.shard, tuple((rid, p, move(r)) for rid, p, r in obs.rows),
                    tuple((t, c, rid, p, move(r)) for t, c, rid, p, r in obs.grouped),
                    obs.principals)


def measure(objects: int, records: tuple[int, int], repeat: int) -> dict[str, Any]:
    """The figures of the module docstring."""
    batches = []
    for i, recs in enumerate(cloudtrail_objects(objects, records)):
        obj = ObjectRef("trail", "trail:0/1", "bench", f"o{i}", "e", 1, "cloudtrail")
        batches.append([RawRecord(obj, j, orjson.dumps(r)) for j, r in enumerate(recs)])
    events = sum(map(len, batches))
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True)
    tables = with_enrichment_columns(load_tables(), cfg)
    enricher = Enricher(cfg, tables)
    source = [SourceConfig(name="trail", bucket="bench", format="cloudtrail",
                           table="AWSCloudTrail")]
    mapper = RecordMapper(source, tables, 1_000_000, keep_parsed=enricher.reads)
    gc.freeze()  # as the flow does (dataflow/flow.py)
    gc.set_threshold(20_000, 20, 20)
    t_map = t_enrich = float("inf")
    observed: list[Observed] = []
    for _ in range(repeat):
        c0 = time.process_time()
        mapped = [[x for x in mapper.map_batch(b) if isinstance(x, Rows)] for b in batches]
        c1 = time.process_time()
        out = [enricher.enrich_batch(m) for m in mapped]
        c2 = time.process_time()
        t_map, t_enrich = min(t_map, c1 - c0), min(t_enrich, c2 - c1)
        observed = [o for batch in out for o in batch if isinstance(o, Observed)]
    earlier = {by: [_shifted(o, by) for o in observed] for by in WARMUP_SHIFTS}

    def side(states: dict[str, Any], bundles: list[Observed]) -> tuple[float, int]:
        found = 0
        c0 = time.process_time()
        for o in bundles:
            states[o.shard], rows = score_shard(enricher, cfg, states.get(o.shard), o)
            found += sum(len(r.rows) for r in rows)
        return time.process_time() - c0, found

    def warmed(states: dict[str, Any]) -> tuple[int, int]:
        """(entities past the warm-up, entities) of the side step's scorers."""
        ents = [data for st in states.values()
                for _, data in st.scorer.snapshot()["entities"]]
        return sum(e["n"] > DEFAULT_CONFIG.warmup_events
                   and e["last_ts"] - e["first_ts"] >= DEFAULT_CONFIG.warmup_secs
                   for e in ents), len(ents)

    cold = warm = float("inf")
    found_cold = found_warm = 0
    for _ in range(repeat):
        cold_states: dict[str, Any] = {}
        secs, found_cold = side(cold_states, observed)
        cold = min(cold, secs)
        states: dict[str, Any] = {}
        for by in WARMUP_SHIFTS:
            side(states, earlier[by])
        secs, found_warm = side(states, observed)
        warm = min(warm, secs)
    us = 1e6 / events
    return {"objects": objects, "events": events, "side_rows": sum(len(o.rows) for o in observed),
            "map_us": round(t_map * us, 2), "enrich_batch_us": round(t_enrich * us, 2),
            "side_cold_us": round(cold * us, 2), "side_warm_us": round(warm * us, 2),
            "warm_over_cold": round(warm / cold, 3),
            "findings_cold": found_cold, "findings_warm": found_warm,
            "entities_warm_cold": warmed(cold_states), "entities_warm_warm": warmed(states),
            "repeat": repeat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=150)
    ap.add_argument("--records", type=int, nargs=2, default=(300, 700), metavar=("MIN", "MAX"))
    ap.add_argument("--repeat", type=int, default=3, help="passes of each; the best is kept")
    ap.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = ap.parse_args(argv)
    r = measure(args.objects, tuple(args.records), max(1, args.repeat))
    print(f"{r['events']:,} CloudTrail events in {r['objects']} sample objects, "
          f"{r['side_rows']:,} to the side step; CPU per event, best of {r['repeat']}:")
    print(f"  mapping                 {r['map_us']:6.2f} us")
    print(f"  enrich_batch            {r['enrich_batch_us']:6.2f} us  (rules, intel, sharding)")
    wc, wn = r["entities_warm_cold"]
    ww, nw = r["entities_warm_warm"]
    print(f"  side step, cold         {r['side_cold_us']:6.2f} us  (what throughput.py "
          f"--enrich-all runs: {wc} of {wn} anomaly entities past the warm-up; "
          f"{r['findings_cold']} findings)")
    print(f"  side step, warm         {r['side_warm_us']:6.2f} us  (as deployed: {ww} of {nw} "
          f"entities past the warm-up; {r['findings_warm']} findings)  "
          f"= {r['warm_over_cold']:.2f}x cold")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
