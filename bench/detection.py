"""Detection quality of the CloudTrail enrichment on a labelled workload, against targets.

Runs :func:`bench.workload.generate` (two weeks of noisy normal traffic with six attack
classes injected at the end) through the anomaly scorer, and through the priority rules and
multi-step sequences when those modules import (otherwise anomaly-only, said in the output).
A record is *flagged* when a rule classifies it critical or high, when it completes a
critical or high sequence (the completing row is the one the enrichment can mark; the
earlier rows have gone by), or when its anomaly score is at least ``ANOMALOUS``. Then it
reports:

- per scenario class: instances detected (at least one record flagged), the share of its
  records flagged, and how many instances each detector found;
- precision: flagged records that are labelled malicious / all flagged records;
- false positives per million normal events (overall and per detector);
- the same figures for each detector alone, so a detector's false positives are its own;
- events per CPU-second of each detector and of the whole enrichment (one core; CPU time,
  as the machine may be shared).

Targets: every scenario class detected, precision >= 0.8, < 50 false positives per million
normal events. ``--json`` makes the last line of output one JSON object with every figure.

    python bench/detection.py [--events 200000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.workload import (  # noqa: E402 (after the sys.path line above)
    SCENARIOS,
    Workload,
    generate,
)
from dataflow.config import EnrichConfig  # noqa: E402 (after the sys.path line above)
from operators.enrich.anomaly import (  # noqa: E402 (after the sys.path line above)
    ANOMALOUS,
    AnomalyConfig,
    AnomalyScorer,
)

__all__ = ["TARGET_FP_PER_MILLION", "TARGET_PRECISION", "evaluate", "load_detectors", "main"]

TABLE = "AWSCloudTrail"
TARGET_PRECISION = 0.8
TARGET_FP_PER_MILLION = 50.0
FLAG_PRIORITIES = frozenset({"critical", "high"})


def load_detectors() -> tuple[Any, Any, list[str]]:
    """The shipped rules and sequences, or None for each that cannot be loaded (and why)."""
    notes: list[str] = []
    rules = detector = None
    try:
        from operators.enrich.rules import RuleSet

        rules = RuleSet.load()
    except Exception as exc:  # noqa: BLE001 - any failure means: run without rules, say why
        notes.append(f"rules not loaded ({type(exc).__name__}: {exc}); running without rules")
    try:
        from operators.enrich.sequences import SequenceDetector, load_sequences

        detector = SequenceDetector(load_sequences())
    except Exception as exc:  # noqa: BLE001 (reported, never raised)
        notes.append(f"sequences not loaded ({type(exc).__name__}: {exc}); running without "
                     "sequences")
    if rules is None and detector is None:
        notes.append("anomaly-only run: the figures are the anomaly scorer's alone")
    return rules, detector, notes


def evaluate(wl: Workload, rules: Any = None, detector: Any = None,
             scorer: AnomalyScorer | None = None) -> dict[str, Any]:
    """Every figure of the report for one workload (see the module docstring)."""
    rows = wl.rows
    n = len(rows)
    scorer = scorer if scorer is not None else AnomalyScorer()  # an empty one is falsy
    names = [k for k, on in (("rules", rules), ("sequences", detector), ("anomaly", scorer))
             if on is not None]
    by: dict[str, list[bool]] = {k: [False] * n for k in names}
    why: dict[str, dict[int, str]] = {k: {} for k in names}
    gc.collect()
    gc.freeze()  # the workload is long-lived: keep the collector from walking it
    secs: dict[str, list[float]] = {}

    def timed(name: str, t0: float, c0: float) -> None:
        secs[name] = [time.perf_counter() - t0, time.process_time() - c0]

    t0, c0 = time.perf_counter(), time.process_time()
    flags, reasons = by["anomaly"], why["anomaly"]
    for i, row in enumerate(rows):
        sc = scorer.score(row)
        if sc.value >= ANOMALOUS:
            flags[i] = True
            reasons[i] = sc.reasons[0] if sc.reasons else "?"
    timed("anomaly", t0, c0)
    if rules is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        flags, reasons = by["rules"], why["rules"]
        for i, row in enumerate(rows):
            c = rules.classify(TABLE, row)
            if c.priority in FLAG_PRIORITIES:
                flags[i] = True
                reasons[i] = c.reasons[0] if c.reasons else c.priority
        timed("rules", t0, c0)
    if detector is not None:
        from operators.enrich.sequences import event_time

        t0, c0 = time.perf_counter(), time.process_time()
        flags, reasons = by["sequences"], why["sequences"]
        for i, row in enumerate(rows):
            for m in detector.observe(TABLE, row, event_time(row.get("TimeGenerated"))):
                if m.priority in FLAG_PRIORITIES:  # the row completing it carries the alert
                    flags[i] = True
                    reasons[i] = m.reason
        timed("sequences", t0, c0)
    gc.unfreeze()

    combos = {k: (k,) for k in names}
    if len(names) > 1:
        combos["all"] = tuple(names)
    figures = {label: _figures(wl, [by[k] for k in ks]) for label, ks in combos.items()}
    main = figures["all" if len(names) > 1 else names[0]]
    for name, d in main["scenarios"].items():
        d["detected_by"] = {k: figures[k]["scenarios"][name]["detected"] for k in names}
    fp_examples = {k: Counter(why[k][i][:160] for i in why[k] if wl.labels[i] is None
                              ).most_common(5) for k in names}
    cpu = {k: n / v[1] for k, v in secs.items() if v[1] > 0}
    return {
        "seed": wl.seed, "events": n, "normal_events": wl.normal_events,
        "malicious_events": n - wl.normal_events, "detectors": names, **main,
        "by_detectors": {k: {f: v[f] for f in ("classes_detected", "precision", "fp_per_million",
                                               "false_positives", "true_positives")}
                         for k, v in figures.items()},
        "events_per_sec": {k: n / v[0] for k, v in secs.items()},
        "events_per_cpu_sec": cpu,
        "enrich_events_per_cpu_sec": n / sum(v[1] for v in secs.values()),
        "entities": len(scorer),
        "fp_examples": fp_examples,
    }


def _figures(wl: Workload, flag_lists: list[list[bool]]) -> dict[str, Any]:
    """Recall, precision and false positives of records flagged by any of ``flag_lists``."""
    labels, n = wl.labels, len(wl.rows)
    flagged = [any(f[i] for f in flag_lists) for i in range(n)]
    tp = sum(1 for i in range(n) if flagged[i] and labels[i] is not None)
    fp = sum(1 for i in range(n) if flagged[i] and labels[i] is None)
    scen: dict[str, dict[str, Any]] = {}
    for s in wl.scenarios:
        d = scen.setdefault(s.name, {"instances": 0, "detected": 0, "records": 0, "flagged": 0})
        hit = sum(1 for i in s.indices if flagged[i])
        d["instances"] += 1
        d["detected"] += hit > 0
        d["records"] += len(s.indices)
        d["flagged"] += hit
    per = {name: {"instances": d["instances"], "detected": d["detected"],
                  "recall": d["detected"] / d["instances"], "records": d["records"],
                  "record_recall": d["flagged"] / d["records"]}
           for name in SCENARIOS if (d := scen.get(name))}
    return {"scenarios": per, "classes": len(SCENARIOS),
            "classes_detected": sum(1 for d in per.values() if d["detected"]),
            "flagged": tp + fp, "true_positives": tp, "false_positives": fp,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "fp_per_million": fp / wl.normal_events * 1e6}


def _report(r: dict[str, Any], notes: list[str], gen_secs: float) -> None:
    print(f"workload: seed {r['seed']}, {r['events']} events ({r['normal_events']} normal, "
          f"{r['malicious_events']} malicious), generated in {gen_secs:.1f}s")
    print(f"detectors: {', '.join(r['detectors'])}")
    for note in notes:
        print(f"note: {note}")
    print(f"\n{'scenario':22} {'detected':>9} {'records':>8} {'record recall':>14}  "
          "instances detected by")
    for name in SCENARIOS:
        d = r["scenarios"].get(name)
        if d is None:
            print(f"{name:22} {'not injected':>9}")
            continue
        by = ", ".join(f"{k} {v}/{d['instances']}" for k, v in d["detected_by"].items())
        print(f"{name:22} {d['detected']:>5}/{d['instances']:<3} {d['records']:>8} "
              f"{d['record_recall']:>13.1%}  {by}")
    print(f"\n{'detectors':22} {'classes':>8} {'precision':>10} {'FP':>5} {'FP/million':>11}")
    for k, v in r["by_detectors"].items():
        print(f"{k:22} {v['classes_detected']:>6}/6 {v['precision']:>10.3f} "
              f"{v['false_positives']:>5} {v['fp_per_million']:>11.1f}")
    for k, examples in r["fp_examples"].items():
        for text, count in examples:
            print(f"  {k} false positive x{count}: {text}")
    rates = ", ".join(f"{k} {v:,.0f}" for k, v in r["events_per_cpu_sec"].items())
    print(f"\nevents per CPU-second (one core): {rates}; all together "
          f"{r['enrich_events_per_cpu_sec']:,.0f}; {r['entities']} anomaly entities")
    checks = [
        ("every scenario class detected", r["classes_detected"] == r["classes"],
         f"{r['classes_detected']}/{r['classes']}"),
        (f"precision >= {TARGET_PRECISION}", r["precision"] >= TARGET_PRECISION,
         f"{r['precision']:.3f}"),
        (f"< {TARGET_FP_PER_MILLION:g} false positives per million normal events",
         r["fp_per_million"] < TARGET_FP_PER_MILLION, f"{r['fp_per_million']:.1f}"),
    ]
    print(f"\ntargets, all detectors together ({', '.join(r['detectors'])}):")
    for what, passed, figure in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {figure}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="normal events (default 200000)")
    ap.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    ap.add_argument("--entities", default=",".join(EnrichConfig().anomaly_entities),
                    help="anomaly entity kinds (default: the flow's, enrich.anomaly_entities)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.entities.split(",") if k)
    t0 = time.perf_counter()
    wl = generate(args.events, args.seed)
    gen_secs = time.perf_counter() - t0
    rules, detector, notes = load_detectors()
    r = evaluate(wl, rules, detector, AnomalyScorer(AnomalyConfig(entity_kinds=kinds)))
    r["anomaly_entities"] = list(kinds)
    notes.append(f"anomaly entities: {', '.join(kinds)}")
    r["notes"] = notes
    r["generate_secs"] = gen_secs
    r["targets"] = {"classes_detected": r["classes"], "precision": TARGET_PRECISION,
                    "fp_per_million": TARGET_FP_PER_MILLION}
    r["passed"] = (r["classes_detected"] == r["classes"] and r["precision"] >= TARGET_PRECISION
                   and r["fp_per_million"] < TARGET_FP_PER_MILLION)
    _report(r, notes, gen_secs)
    if args.json:
        print(json.dumps(r, default=str))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
