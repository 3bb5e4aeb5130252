"""The condition language of rules, sequences and intel, and the TOML files that hold them.

A match table maps columns to conditions, and every entry must hold (AND):

- ``Column = "x"`` (or a number, a bool): equals; ``Column = ["a", "b"]``: in;
- ``Column = { op = arg, ... }``: every operator given holds; ``Column = [ {..}, {..} ]``:
  every one of several condition tables holds;
- ``any = [ {match}, {match} ]`` inside a match table as well: OR of nested match tables.

Operators: ``equals``, ``not_equals``, ``in``, ``not_in``, ``prefix``, ``suffix``,
``contains`` (a string or a list of strings, any of them), ``regex`` (``re.search``; anchor
it yourself), ``gt``/``gte``/``lt``/``lte`` (numbers; numeric strings are converted),
``exists``, ``not_empty`` (true/false), ``equals_column``/``not_equals_column`` (another
column of the same row), ``not`` (a condition table that must not hold) and ``json_path``.
A missing (or null) value fails every operator except ``exists = false``,
``not_empty = false``, ``not_equals``, ``not_in``, ``not_equals_column`` and ``not``.

``json_path`` looks inside a column holding JSON (text, as RequestParameters is, or an
already parsed object). Dot-separated keys; ``key[]`` takes each element of an array (an
object counts as a one-element array: AWS policies allow one Statement object in place of
a list); ``key[2]`` takes one element; a selected array is matched element by element. So
``ipPermissions.items[].ipRanges.items[].cidrIp`` selects every IPv4 range of a security
group change. The condition's other operators then apply to each selected value and hold
when one does; when nothing is selected they see a missing value. Keys holding ``.`` or
``[`` cannot be addressed. The text is parsed only if it holds the path's last key.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import orjson

from operators.tabledef import load_tables

__all__ = ["Pred", "Reason", "all_of", "column_gate", "compile_json_path", "compile_match",
           "compile_reason", "event_name_gate", "load_entries", "pinned_event_names",
           "table_columns"]

Pred = Callable[[Mapping[str, Any]], bool]
"""A compiled condition over one row."""
_Test = Callable[[Any, Mapping[str, Any]], bool]  # over one value (None when missing) and its row
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_OPERATORS = frozenset({
    "equals", "not_equals", "in", "not_in", "prefix", "suffix", "contains", "regex", "gt", "gte",
    "lt", "lte", "exists", "not_empty", "equals_column", "not_equals_column", "not", "json_path"})
_MAX_FIELD_CHARS = 200
_SCALAR = (str, int, float, bool)


# --------------------------------------------------------------------------- conditions


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _nonempty(v: Any) -> bool:
    if v is None or v == "":
        return False
    return not (isinstance(v, (list, dict)) and not v)


def _strings(arg: Any) -> tuple[str, ...] | None:
    if isinstance(arg, str):
        return (arg,)
    if isinstance(arg, list) and arg and all(isinstance(a, str) for a in arg):
        return tuple(arg)
    return None


def compile_json_path(path: str) -> Callable[[Any], list[Any]]:
    """A function selecting the values at ``path`` (syntax in the module docstring).

    :raises ValueError: ``path`` is not valid, with what is wrong.
    """
    steps: list[tuple[int, Any]] = []  # (0, (key, ...)) | (1, None) each | (2, n) index
    for seg in path.split("."):
        m = re.fullmatch(r"([^.\[\]]*)((?:\[\d*\])*)", seg)
        if not m or (not m.group(1) and not m.group(2)):
            msg = f"json_path {path!r}: segment {seg!r} is not `key`, `key[]` or `key[N]`"
            raise ValueError(msg)
        if m.group(1):
            if steps and steps[-1][0] == 0:
                steps[-1] = (0, (*steps[-1][1], m.group(1)))
            else:
                steps.append((0, (m.group(1),)))
        for sub in re.findall(r"\[(\d*)\]", m.group(2)):
            steps.append((2, int(sub)) if sub else (1, None))
    keys = [k for kind, arg in steps if kind == 0 for k in arg]
    plain = bool(keys) and re.fullmatch(r"[\x20-\x7e]+", keys[-1]) and '"' not in keys[-1] \
        and "\\" not in keys[-1]
    needle = f'"{keys[-1]}"' if plain else None
    bneedle = needle.encode() if needle else None
    walk = _chain(steps)

    def select(v: Any) -> list[Any]:
        if v is None:
            return []
        if isinstance(v, msgspec.Raw):
            v = bytes(v)
        if isinstance(v, str):
            if needle is not None and needle not in v:
                return []
            v = _parse(v)
        elif isinstance(v, (bytes, bytearray)):
            if bneedle is not None and bneedle not in v:
                return []
            v = _parse(v)
        out: list[Any] = []
        walk(v, out)
        return out

    return select


def _chain(steps: list[tuple[int, Any]]) -> Callable[[Any, list[Any]], None]:
    """The path's steps as nested closures, each passing what it selects to the next."""
    def leaf(x: Any, out: list[Any]) -> None:
        if x.__class__ is list:
            out.extend(y for y in x if y is not None)
        elif x is not None:
            out.append(x)

    fn = leaf
    for kind, arg in reversed(steps):
        nxt = fn
        if kind == 0:
            def fn(x: Any, out: list[Any], nxt: Any = nxt, keys: tuple[str, ...] = arg) -> None:
                for k in keys:
                    if x.__class__ is not dict:
                        return
                    x = x.get(k)
                nxt(x, out)
        elif kind == 1:
            def fn(x: Any, out: list[Any], nxt: Any = nxt) -> None:
                if x.__class__ is list:
                    for y in x:
                        nxt(y, out)
                elif x.__class__ is dict:
                    nxt(x, out)
        else:
            def fn(x: Any, out: list[Any], nxt: Any = nxt, i: int = arg) -> None:
                if x.__class__ is list and i < len(x):
                    nxt(x[i], out)
    return fn


_last_parse: tuple[Any, Any] = (None, None)


def _parse(text: str | bytes | bytearray) -> Any:
    """``text`` parsed (None if not JSON), remembering the last one: the several json_path
    conditions of one rule usually look into the same column of the same row. The cache
    holds a reference to the text, so an identical ``is`` means the very same object."""
    global _last_parse
    last = _last_parse
    if last[0] is text:
        return last[1]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    _last_parse = (text, value)
    return value


def _operator(op: str, arg: Any, where: str, problems: list[str]) -> _Test | None:
    """One operator as a test over a value (None when missing) and its row."""
    bad = f"{where}: {op} = {arg!r}: "
    if op in ("equals", "not_equals"):
        if not isinstance(arg, _SCALAR):
            problems.append(bad + "expected a string, number or bool")
            return None
        if isinstance(arg, bool):  # true/false are not 1/0
            eq: _Test = lambda v, r: v is arg  # noqa: E731 (a small test in a table of them)
        elif isinstance(arg, str):
            eq = lambda v, r: v == arg  # noqa: E731 (a small test in a table of them)
        else:
            eq = lambda v, r: v == arg and v.__class__ is not bool  # noqa: E731 (a small test in a table of them)
        return eq if op == "equals" else (lambda v, r: not eq(v, r))
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg or not all(isinstance(a, _SCALAR) for a in arg):
            problems.append(bad + "expected a non-empty list of strings or numbers")
            return None
        values = frozenset(arg)

        def isin(v: Any, r: Any) -> bool:
            try:
                return v in values
            except TypeError:  # an object or array value
                return False
        return isin if op == "in" else (lambda v, r: not isin(v, r))
    if op in ("prefix", "suffix", "contains"):
        subs = _strings(arg)
        if subs is None:
            problems.append(bad + "expected a string or a non-empty list of strings")
            return None
        if op == "prefix":
            return lambda v, r: isinstance(v, str) and v.startswith(subs)
        if op == "suffix":
            return lambda v, r: isinstance(v, str) and v.endswith(subs)
        if len(subs) == 1:
            sub = subs[0]
            return lambda v, r: isinstance(v, str) and sub in v
        return lambda v, r: isinstance(v, str) and any(s in v for s in subs)
    if op == "regex":
        try:
            rx = re.compile(arg) if isinstance(arg, str) else None
        except re.error as ex:
            problems.append(bad + f"not a valid regular expression ({ex})")
            return None
        if rx is None:
            problems.append(bad + "expected a regular expression as a string")
            return None
        search = rx.search

        def test(v: Any, r: Any) -> bool:
            if isinstance(v, str):
                return search(v) is not None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return search(str(v)) is not None
            return False
        return test
    if op in ("exists", "not_empty"):
        if not isinstance(arg, bool):
            problems.append(bad + "expected true or false")
            return None
        if op == "exists":
            return (lambda v, r: v is not None) if arg else (lambda v, r: v is None)
        return (lambda v, r: _nonempty(v)) if arg else (lambda v, r: not _nonempty(v))
    if op in ("equals_column", "not_equals_column"):
        if not isinstance(arg, str) or not arg:
            problems.append(bad + "expected a column name")
            return None
        if op == "equals_column":
            return lambda v, r: v is not None and v == r.get(arg)
        return lambda v, r: v != r.get(arg)
    if op == "not":
        if not isinstance(arg, dict):
            problems.append(bad + "expected a condition table, e.g. not = { prefix = \"x\" }")
            return None
        if "json_path" in arg:
            problems.append(f"{where}: json_path cannot be inside 'not'; put it beside 'not'")
            return None
        inner = _tests(arg, where, problems)
        return lambda v, r: not inner(v, r)
    problems.append(f"{where}: unknown operator {op!r}; use one of {', '.join(sorted(_OPERATORS))}")
    return None


def _tests(spec: Mapping[str, Any], where: str, problems: list[str]) -> _Test:
    """Every operator of a condition table but json_path, AND-ed."""
    numeric = {op: spec[op] for op in ("gt", "gte", "lt", "lte") if op in spec}
    tests: list[_Test] = []
    for op, arg in spec.items():
        if op in numeric or op == "json_path":
            continue
        test = _operator(op, arg, where, problems)
        if test is not None:
            tests.append(test)
    if numeric:
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                   for a in numeric.values()):
            problems.append(f"{where}: {', '.join(numeric)} take numbers, got {numeric!r}")
        else:
            lo = max((numeric.get("gt", -float("inf")), numeric.get("gte", -float("inf"))))
            hi = min((numeric.get("lt", float("inf")), numeric.get("lte", float("inf"))))
            lo_open, hi_open = "gt" in numeric and lo == numeric["gt"], \
                "lt" in numeric and hi == numeric["lt"]

            def bounds(v: Any, r: Any) -> bool:
                x = v if type(v) in (int, float) else _num(v)
                if x is None:
                    return False
                return (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
            tests.append(bounds)
    if not tests:
        if not spec:
            problems.append(f"{where}: the condition is empty; give an operator such as equals")
        return lambda v, r: v is not None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda v, r: a(v, r) and b(v, r)
    all_tests = tuple(tests)
    return lambda v, r: all(t(v, r) for t in all_tests)


def _condition(column: str, spec: Any, where: str, problems: list[str]) -> tuple[int, Pred] | None:
    """One column's condition as a (cost, predicate) pair."""
    where = f"{where}: {column}"
    if isinstance(spec, list) and spec and all(isinstance(s, dict) for s in spec):
        parts = [c for s in spec if (c := _condition(column, s, where, problems)) is not None]
        return (max(c for c, _ in parts), all_of(parts)) if parts else None
    if isinstance(spec, list):
        spec = {"in": spec}
    elif not isinstance(spec, dict):
        spec = {"equals": spec}
    if len(spec) == 1 and isinstance(value := spec.get("equals"), str):
        # the commonest condition (UserIdentityType = "Root"): one call per row, not two
        return 1, lambda row: row.get(column) == value
    test = _tests(spec, where, problems)
    if "json_path" not in spec:
        cost = 2 if "regex" in spec or "not" in spec else 1
        return cost, lambda row: test(row.get(column), row)
    path = spec["json_path"]
    try:
        select = compile_json_path(path) if isinstance(path, str) else None
    except ValueError as ex:
        problems.append(f"{where}: {ex}")
        return None
    if select is None:
        problems.append(f"{where}: json_path = {path!r}: expected a path like \"a.b[].c\"")
        return None

    def pred(row: Mapping[str, Any]) -> bool:
        values = select(row.get(column))
        if not values:
            return test(None, row)
        return any(test(x, row) for x in values)
    return 3, pred


def all_of(parts: list[tuple[int, Pred]]) -> Pred:
    preds = [p for _, p in sorted(parts, key=lambda cp: cp[0])]  # cheap checks first
    if not preds:
        return lambda row: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda row: a(row) and b(row)
    if len(preds) == 3:
        a, b, c = preds
        return lambda row: a(row) and b(row) and c(row)
    all_preds = tuple(preds)

    def every(row: Mapping[str, Any]) -> bool:
        for p in all_preds:  # noqa: SIM110 (all(genexpr) makes a generator per row)
            if not p(row):
                return False
        return True
    return every


def compile_match(match: Mapping[str, Any], where: str, problems: list[str],
                  columns: frozenset[str] | None = None) -> Pred:
    """A match table (syntax in the module docstring) compiled into one predicate.

    Problems are appended to ``problems`` (prefixed with ``where``) instead of raised, so a
    file's problems are all reported at once. ``columns``, when known, catches misspelt
    column names (a rule naming a column its table lacks could never match).
    """
    parts: list[tuple[int, Pred]] = []
    for key, spec in match.items():
        if key == "any":
            if not isinstance(spec, list) or not spec or not all(isinstance(m, dict) for m in spec):
                problems.append(f"{where}: any must be a non-empty list of match tables")
                continue
            branches = [compile_match(m, f"{where}: any[{i}]", problems, columns)
                        for i, m in enumerate(spec)]
            parts.append((4, _or(branches)))
            continue
        if columns is not None and key not in columns:
            near = difflib.get_close_matches(key, columns, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"{where}: the table has no column {key!r}{hint}")
            continue
        cond = _condition(key, spec, where, problems)
        if cond is not None:
            parts.append(cond)
    return all_of(parts)


def _or(preds: list[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    branches = tuple(preds)
    return lambda row: any(p(row) for p in branches)


def pinned_event_names(match: Mapping[str, Any]) -> frozenset[str] | None:
    """The EventName values a match table requires, or None when it takes any."""
    spec = match.get("EventName")
    if isinstance(spec, dict) and set(spec) == {"equals"}:
        spec = spec["equals"]
    elif isinstance(spec, dict) and set(spec) == {"in"}:
        spec = spec["in"]
    if isinstance(spec, str):
        return frozenset((spec,))
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return frozenset(spec)
    branches = match.get("any")
    if isinstance(branches, list) and branches and all(isinstance(b, dict) for b in branches):
        names = [pinned_event_names(b) for b in branches]
        if all(n is not None for n in names):
            return frozenset().union(*names)  # type: ignore[arg-type]
    return None


_NEEDS_A_VALUE = frozenset({"equals", "in", "prefix", "suffix", "contains", "regex", "gt",
                            "gte", "lt", "lte", "equals_column"})
"""Operators that no missing value (None) passes."""


def column_gate(match: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """A check of one column but EventName that every row ``match`` takes passes: ``(column, value)``,
    the column equal to the string ``value``, or ``(column, None)``, the column present;
    None when ``match`` has no such condition. A string equality is preferred (it lets
    fewer rows through). A caller checks it inline before calling the rule's predicate:
    most rows fail a rule on its first condition, and the call is most of the cost."""
    present = None
    for column, spec in match.items():
        if column in ("any", "not", "EventName") or not isinstance(column, str):
            continue  # EventName: callers index rules by it already
        if isinstance(spec, str):
            return column, spec
        if isinstance(spec, dict) and set(spec) == {"equals"} and isinstance(spec["equals"], str):
            return column, spec["equals"]
        if present is None and (
                isinstance(spec, (int, float))  # bool too: equals
                or (isinstance(spec, list) and spec and not any(isinstance(x, dict) for x in spec))
                or (isinstance(spec, dict) and "json_path" not in spec
                    and spec.keys() & _NEEDS_A_VALUE)):
            present = (column, None)
    return present


def event_name_gate(match: Mapping[str, Any]) -> Callable[[Any], bool] | None:
    """A test over a row's EventName alone that every row ``match`` takes passes, or None
    when the match table takes any EventName. It lets a caller index conditions by the
    EventName: what a regex, prefix or list of names cannot pass is never evaluated.

    Conditions that read other columns than EventName itself (``equals_column``,
    ``json_path``) give no gate: they cannot be decided from the name alone."""
    gate = None
    spec = match.get("EventName")
    if spec is not None and not _reads_beyond(spec):
        problems: list[str] = []
        cond = _condition("EventName", spec, "", problems)
        if cond is not None and not problems:
            pred = cond[1]

            def gate(name: Any) -> bool:
                return pred({"EventName": name})
    branches = match.get("any")
    if isinstance(branches, list) and branches and all(isinstance(b, dict) for b in branches):
        ors = [event_name_gate(b) for b in branches]
        if all(g is not None for g in ors):
            either = tuple(ors)

            def any_gate(name: Any) -> bool:
                return any(g(name) for g in either)  # type: ignore[misc]
            if gate is None:
                return any_gate
            direct = gate
            return lambda name: direct(name) and any_gate(name)
    return gate


def _reads_beyond(spec: Any) -> bool:
    """Whether a column's condition reads anything but the column's own value."""
    if isinstance(spec, list):
        return any(_reads_beyond(s) for s in spec)
    if isinstance(spec, dict):
        return bool({"equals_column", "not_equals_column", "json_path"} & set(spec)) or (
            _reads_beyond(spec["not"]) if "not" in spec else False)
    return False


# --------------------------------------------------------------------------- reasons


def _text(v: Any) -> str:
    if v is None:
        return "?"
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= _MAX_FIELD_CHARS else s[:_MAX_FIELD_CHARS - 3] + "..."


Reason = Callable[..., str]
"""A compiled reason template: ``render(row, extra=None) -> str``."""


def compile_reason(reason: Any, where: str, problems: list[str]) -> Reason | None:
    """A reason template (``{Column}`` placeholders) compiled into a render function.

    Missing values render as ``?`` and values are cut to 200 characters; ``extra`` (a
    dict) supplies names that are not columns, such as a sequence's ``{principal}``.
    """
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"{where}: 'reason' must be a non-empty string")
        return None
    try:
        parsed = list(string.Formatter().parse(reason))
    except ValueError as ex:
        problems.append(f"{where}: reason {reason!r} is not a valid template ({ex}); "
                        "write literal braces as {{ and }}")
        return None
    parts: list[tuple[str, str | None]] = []
    for lit, field, spec, conv in parsed:
        if field is not None and (not field.isidentifier() or spec or conv):
            problems.append(f"{where}: reason placeholder {{{field}{'!' + conv if conv else ''}"
                            f"{':' + spec if spec else ''}}} must be a plain column name like "
                            "{EventName}")
            return None
        parts.append((lit, field))
    if all(field is None for _, field in parts):
        text = "".join(lit for lit, _ in parts)
        return lambda row, extra=None: text

    def render(row: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
        out = []
        for lit, field in parts:
            out.append(lit)
            if field is not None:
                out.append(_text(extra[field] if extra and field in extra else row.get(field)))
        return "".join(out)
    return render


# --------------------------------------------------------------------------- files


def load_entries(paths: Iterable[str | Path], key: str, problems: list[str]) -> list[
        tuple[str, dict[str, Any]]]:
    """The ``[[key]]`` entries of TOML files, later files replacing earlier ones by ``id``.

    An entry ``{ id = "...", enabled = false }`` removes an earlier entry. Returns the
    surviving entries in first-definition order, each with the file that defined it.
    """
    merged: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in paths:
        origin = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as ex:
            problems.append(f"{origin}: cannot be read ({ex.strerror or ex}); check the path")
            continue
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as ex:
            problems.append(f"{origin}: not valid TOML ({ex})")
            continue
        for extra in sorted(set(data) - {key}):
            problems.append(f"{origin}: unknown top-level key {extra!r}; entries go in [[{key}]]")
        entries = data.get(key, [])
        if not isinstance(entries, list):
            problems.append(f"{origin}: {key} must be an array of tables ([[{key}]])")
            continue
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            eid = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(eid, str) or not _ID.match(eid):
                problems.append(f"{origin}: {key}[{i}]: 'id' is missing or not a short name "
                                "(letters, digits, _ . : -)")
                continue
            if eid in seen:
                problems.append(f"{origin}: {key[:-1]} {eid!r}: defined twice in this file")
            seen.add(eid)
            if entry.get("enabled", True) is False:
                if merged.pop(eid, None) is None:
                    problems.append(f"{origin}: {key[:-1]} {eid!r}: enabled = false, but no "
                                    "earlier file defines this id (check the spelling)")
                continue
            merged[eid] = (origin, entry)
    return list(merged.values())


@functools.lru_cache(maxsize=1)
def _shipped_columns() -> dict[str, frozenset[str]]:

    return {name: frozenset({c.name for c in t.columns} | {t.record_id_column})
            for name, t in load_tables().items()}


def table_columns(table: str) -> frozenset[str] | None:
    """The columns of a shipped table, or None (for ``*`` and tables defined elsewhere)."""
    return None if table == "*" else _shipped_columns().get(table)


