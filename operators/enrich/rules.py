"""Priority classification of rows by declarative rules kept in TOML data files.

Detections change faster than code, and the people who tune them read TOML, not Python:
the shipped rules live in ``operators/enrich/rules/default.toml``, and a user file adds
rules, replaces a shipped one (same ``id``) or removes it (``id = "..."`` with
``enabled = false``). Rules are compiled once into closures and indexed by table and by
the ``EventName`` they pin, so classifying a row costs a few dict lookups and the few
rules that could apply to it (a couple of microseconds per CloudTrail row).

A rule::

    [[rules]]
    id = "ct-kms-key-destruction"          # unique; later files replace a rule by id
    table = "AWSCloudTrail"                # a table name, or "*" for every table
    priority = "critical"                  # critical > high > error > performance > normal
    reason = "KMS {EventName} by {UserIdentityArn}"   # {Column}: the row's value ("?" if missing)
    match = { EventSource = "kms.amazonaws.com", EventName = ["DisableKey", "ScheduleKeyDeletion"] }
    any = [ { ... }, { ... } ]             # optional: at least one of these match tables holds

The match tables, operators and ``json_path`` are the condition language of
:mod:`operators.enrich.conditions`, which sequences and intel use too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflow.core.errors import TerminalError
from operators.enrich.conditions import (
    Pred,
    Reason,
    all_of,
    column_gate,
    compile_match,
    compile_reason,
    load_entries,
    pinned_event_names,
    table_columns,
)

__all__ = [
    "DEFAULT_RULES",
    "PRIORITIES",
    "Classification",
    "Rule",
    "RuleError",
    "RuleSet",
]

PRIORITIES = ("critical", "high", "error", "performance", "normal")
"""Priority classes, highest first."""
DEFAULT_RULES = Path(__file__).with_name("rules") / "default.toml"
"""The packaged rules, always loaded first unless ``include_default=False``."""


_RANK = {p: i for i, p in enumerate(PRIORITIES)}
_RULE_KEYS = frozenset({"id", "table", "priority", "reason", "match", "any", "enabled",
                        "description"})


class RuleError(TerminalError, ValueError):
    """Rule (or sequence) files are invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[str], what: str = "rule") -> None:
        self.problems = tuple(problems)
        self.what = what
        msg = (f"{what} files are invalid ({len(self.problems)} problem(s)); fix them and "
               "start again:\n" + "\n".join(f"  - {p}" for p in self.problems))
        super().__init__(msg)



@dataclass(frozen=True, slots=True)
class Classification:
    """The outcome of classifying one row: the highest priority matched and why."""

    priority: str
    reasons: tuple[str, ...] = ()
    """The reasons of every matching rule, highest priority first."""
    rule_ids: tuple[str, ...] = ()
    """The ids of every matching rule, in the order of ``reasons``."""


NORMAL = Classification("normal")


@dataclass(frozen=True, slots=True)
class Rule:
    """One loaded rule, as written (the compiled predicate is kept by :class:`RuleSet`)."""

    id: str
    table: str
    priority: str
    reason: str
    origin: str
    """The file that defined it."""


# --------------------------------------------------------------------------- rule sets


# rank, load order, id, predicate, reason, and a column the predicate needs: (column, the
# string it must equal, or None: any value) or None (conditions.column_gate)
_Compiled = tuple[int, int, str, Pred, Reason, tuple[str, str | None] | None]


class RuleSet:
    """Compiled rules, indexed by table and pinned EventName; build with :meth:`load`."""

    def __init__(self, rules: list[Rule], compiled: list[_Compiled],
                 pins: list[frozenset[str] | None]) -> None:
        self.rules = tuple(rules)
        self._compiled = compiled
        self._pins = pins
        self._index: dict[str, tuple[dict[Any, tuple[_Compiled, ...]], tuple[_Compiled, ...]]] = {}

    @classmethod
    def load(cls, paths: Iterable[str | Path] | None = None, *,
             include_default: bool = True) -> RuleSet:
        """The packaged rules plus ``paths`` (each adds rules and replaces or removes by id).

        :raises RuleError: With every problem of every file, naming file and rule.
        """
        files = ([DEFAULT_RULES] if include_default else []) + list(paths or ())
        problems: list[str] = []
        rules: list[Rule] = []
        compiled: list[_Compiled] = []
        pins: list[frozenset[str] | None] = []
        for order, (origin, e) in enumerate(load_entries(files, "rules", problems)):
            where = f"{origin}: rule {e['id']!r}"
            n = len(problems)
            for k in sorted(set(e) - _RULE_KEYS):
                problems.append(f"{where}: unknown key {k!r}; rules take "
                                f"{', '.join(sorted(_RULE_KEYS))}")
            table, priority = e.get("table"), e.get("priority")
            if not isinstance(table, str) or not table:
                problems.append(f"{where}: 'table' must be a table name or \"*\"")
                table = "*"
            if priority not in _RANK:
                problems.append(f"{where}: priority {priority!r} is not one of "
                                f"{', '.join(PRIORITIES)}")
            render = compile_reason(e.get("reason"), where, problems)
            match = e.get("match", {})
            if not isinstance(match, dict):
                problems.append(f"{where}: 'match' must be a table of column conditions")
                match = {}
            if not match and "any" not in e:
                problems.append(f"{where}: no conditions; a rule needs 'match' or 'any'")
            cols = table_columns(table)
            pred = compile_match(match, where, problems, cols)
            pin = pinned_event_names(match)
            if "any" in e:  # a rule-level OR group, AND-ed with the match table
                pred = all_of([(0, pred), (4, compile_match({"any": e["any"]}, where, problems,
                                                          cols))])
                pin = pin if pin is not None else pinned_event_names({"any": e["any"]})
            if len(problems) > n:
                continue
            # No new problem: the priority is one of PRIORITIES and the reason compiled.
            assert isinstance(priority, str) and render is not None
            rules.append(Rule(e["id"], table, priority, e["reason"], origin))
            compiled.append((_RANK[priority], order, e["id"], pred, render, column_gate(match)))
            pins.append(pin)
        if problems:
            raise RuleError(problems)
        return cls(rules, compiled, pins)

    def __len__(self) -> int:
        return len(self.rules)

    def _build(self, table: str) -> tuple[dict[Any, tuple[_Compiled, ...]], tuple[_Compiled, ...]]:
        mine = [(c, pin) for c, pin, r in zip(self._compiled, self._pins, self.rules, strict=False)
                if r.table in (table, "*")]
        generic = tuple(c for c, pin in mine if pin is None)
        names = {n for _, pin in mine if pin for n in pin}
        by_event = {n: tuple(c for c, pin in mine if pin is None or n in pin) for n in names}
        self._index[table] = (by_event, generic)
        return by_event, generic

    def covers(self, table: str) -> bool:
        """Whether any rule can apply to rows of ``table``."""
        return any(r.table in (table, "*") for r in self.rules)

    def classify(self, table: str, row: Mapping[str, Any]) -> Classification:
        """The highest priority of the rules ``row`` matches, with every matching reason."""
        index = self._index.get(table)
        by_event, candidates = index if index is not None else self._build(table)
        if by_event:
            name = row.get("EventName")
            if name.__class__ is str:
                candidates = by_event.get(name, candidates)
        hits = None
        for c in candidates:
            gate = c[5]
            if gate is not None:  # checked here: most rows fail it, and a call costs more
                v = row.get(gate[0])
                if v is None or (gate[1] is not None and v != gate[1]):
                    continue
            if c[3](row):
                if hits is None:
                    hits = [c]
                else:
                    hits.append(c)
        if hits is None:
            return NORMAL
        if len(hits) > 1:
            hits.sort()
        reasons = tuple(c[4](row) for c in hits)
        return Classification(PRIORITIES[hits[0][0]], reasons, tuple(c[2] for c in hits))
