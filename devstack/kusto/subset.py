"""A small, honest interpreter of the filtering subset of KQL the shipped rules use.

The tests judge the analytic rules with it on the rows the real enrichment produces, and the
demo says which rules would raise incidents on the rows that landed. What it covers, and
what makes it refuse a query rather than guess, is in :class:`Kql`'s docstring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["UNKNOWN", "Kql", "Unsupported", "kql_string"]




class Unsupported(Exception):
    """The query uses KQL the interpreter does not evaluate."""


_TOKEN = re.compile(r"""\s+|//[^\n]*|(?P<tok>@"[^"]*"|@'[^']*'|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'
    |\d+(?:\.\d+)?(?:ms|[smhd])?\b|[A-Za-z_][\w-]*~?|![a-z_]+~?|!~|=~|==|!=|>=|<=|\.\.
    |[|()\[\],.<>=;*+-])""",
                    re.X)
_STRING_OPS = {"has", "!has", "contains", "!contains", "contains_cs", "startswith", "!startswith",
               "startswith_cs", "endswith", "!endswith", "endswith_cs", "has_any"}
_CMP = {"==", "!=", "=~", "!~", "<", "<=", ">", ">=", "in", "!in", "in~", "!in~", "between",
        "matches"} | _STRING_OPS
_PASSING = ("project", "project-away", "lookup", "order", "sort")
"""Operators that keep every row (``lookup`` only as ``kind=leftouter``, checked)."""
UNKNOWN = object()
"""The value of a column the interpreter could not compute (an unsupported extend)."""


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise Unsupported(f"cannot read {text[pos:pos + 20]!r}")
        if m.group("tok"):
            out.append(m.group("tok"))
        pos = m.end()
    return out


def kql_string(v: Any) -> str:
    """KQL's tostring()."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _has(text: str, term: str) -> bool:
    """KQL ``has``: the term at term boundaries (ASCII letters and digits), any case."""
    pattern = rf"(?<![0-9a-z]){re.escape(term.lower())}(?![0-9a-z])"
    return re.search(pattern, text.lower()) is not None


class Kql:
    """A small, honest interpreter of the filtering subset of KQL the shipped rules use.

    It evaluates one tabular expression on a table's rows (dicts): ``where`` and ``extend``
    (comparisons ``== != =~ !~ < <= > >=``, ``in``/``!in``/``in~``, ``between``, ``has``,
    ``has_any``, ``contains``, ``startswith``, ``endswith`` and their ``_cs``/``!`` forms,
    ``matches regex``, ``and``/``or``/``not()``, ``tostring``, ``parse_json``/``todynamic``,
    ``isempty``/``isnotempty``/``isnull``/``isnotnull``, ``iff``, ``strcat``, ``tolower``,
    ``coalesce``, member access and indexing of dynamic values), and ``project``,
    ``project-away``, ``lookup`` (non-filtering: its columns are unknown). A ``summarize``
    ends the filtering: the rule fires on the rows that reach it, provided nothing after it
    filters. Scalar ``let``s of literals are read. A ``where`` on ``ingestion_time() > ago()``
    or ``TimeGenerated > ago()`` alone is a time window: it is taken as true (the interpreter
    does not model when a rule runs). Anything else (``join``, ``mv-apply``, ``mv-expand``, a
    ``where`` after a ``summarize``, tabular ``let``s, unknown functions) raises
    :class:`Unsupported`, so a rule is either evaluated faithfully or not at all.

    Values follow KQL: a missing string column is ``""``, a missing column of another type is
    null, and a comparison with null is false.
    """

    def __init__(self, query: str, schemas: Mapping[str, Mapping[str, str]]) -> None:
        self.lets: dict[str, Any] = {}
        *lets, body = [s for s in _split(_tokens(query), ";") if s]
        for let in lets:
            if len(let) < 4 or let[0] != "let" or let[2] != "=":
                raise Unsupported(f"statement {' '.join(let)}")
            self.lets[let[1]] = _Expr(let[3:], self).scalar({})
        self.table, *self.ops = _split(body, "|")
        if len(self.table) != 1 or self.table[0] not in schemas:
            raise Unsupported(f"tabular source {' '.join(self.table)}")
        self.schema = schemas[self.table[0]]
        summarized = False
        for op in self.ops:
            if op[0] not in ("where", "extend", "summarize", *_PASSING) or (
                    summarized and op[0] not in ("extend", *_PASSING)):
                raise Unsupported(f"operator {op[0]}" + " after summarize" * summarized)
            if op[0] == "lookup" and "inner" in op:
                raise Unsupported("lookup kind=inner")
            summarized = summarized or op[0] == "summarize"

    def matches(self, rows: list[dict[str, Any]]) -> list[int]:
        """Indexes of ``rows`` the query fires on."""
        out = []
        for i, row in enumerate(rows):
            if self._passes({c: row.get(c, "" if t == "string" else None)
                             for c, t in self.schema.items()} | row):
                out.append(i)
        return out

    def _passes(self, row: dict[str, Any]) -> bool:
        for op in self.ops:
            name, rest = op[0], op[1:]
            if name == "summarize":  # checked in __init__: nothing after it filters
                return True
            if name in _PASSING:
                continue
            if name == "where":
                if _is_time_window(rest):
                    continue
                if _Expr(rest, self).scalar(row) is not True:
                    return False
            elif name == "extend":
                for assignment in _split(rest, ","):
                    if len(assignment) < 3 or assignment[1] != "=":
                        raise Unsupported(f"extend {' '.join(assignment)}")
                    try:
                        row[assignment[0]] = _Expr(assignment[2:], self).scalar(row)
                    except Unsupported:
                        row[assignment[0]] = UNKNOWN
        return True


def _split(tokens: list[str], sep: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    depth = 0
    for t in tokens:
        depth += t in "([" and len(t) == 1
        depth -= t in ")]" and len(t) == 1
        if t == sep and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def _is_time_window(tokens: list[str]) -> bool:
    text = " ".join(tokens)
    window = r"(ingestion_time \( \)|TimeGenerated) > ago \( \d+[smhd] \)"
    return re.fullmatch(window, text) is not None


class _Expr:
    """Recursive descent over one expression's tokens."""

    def __init__(self, tokens: list[str], kql: Kql) -> None:
        self.t, self.i, self.kql = tokens, 0, kql

    def scalar(self, row: dict[str, Any]) -> Any:
        self.row = row
        v = self.or_()
        if self.i != len(self.t):
            raise Unsupported(f"trailing {' '.join(self.t[self.i:])}")
        if v is UNKNOWN:
            raise Unsupported("a value the interpreter could not compute")
        return v

    def peek(self) -> str:
        return self.t[self.i] if self.i < len(self.t) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if want is not None and tok != want:
            raise Unsupported(f"expected {want!r}, got {tok!r}")
        self.i += 1
        return tok

    def or_(self) -> Any:
        v = self.and_()
        while self.peek() == "or":
            self.take()
            w = self.and_()
            v = v is True or w is True
        return v

    def and_(self) -> Any:
        v = self.cmp()
        while self.peek() == "and":
            self.take()
            w = self.cmp()
            v = v is True and w is True
        return v

    def cmp(self) -> Any:
        left = self.postfix()
        op = self.peek()
        if op not in _CMP:
            return left
        self.take()
        if op == "matches":
            self.take("regex")
        if op in ("in", "!in", "in~", "!in~", "has_any", "between"):
            right: Any = self.tuple_()
        else:
            right = self.postfix()
        if UNKNOWN in (left, right) or (isinstance(right, list) and UNKNOWN in right):
            raise Unsupported("a value the interpreter could not compute")
        if left is None or right is None:
            return False
        return _compare(op, left, right)

    def tuple_(self) -> list[Any]:
        self.take("(")
        items = []
        while self.peek() != ")":
            items.append(self.postfix())
            if self.peek() == "..":
                self.take()
                items.append(self.postfix())
            elif self.peek() == ",":
                self.take()
        self.take(")")
        return items

    def postfix(self) -> Any:
        v = self.atom()
        while self.peek() in (".", "["):
            if self.take() == ".":
                key: Any = self.take()
            else:
                key = self.or_()
                self.take("]")
            v = _member(v, key)
        return v

    def atom(self) -> Any:
        tok = self.take()
        if tok == "(":
            v = self.or_()
            self.take(")")
            return v
        if tok[0] in "\"'" or tok[:2] in ('@"', "@'"):
            return _literal(tok)
        if tok[0].isdigit() or (tok == "-" and self.peek()[:1].isdigit()):
            num = tok if tok != "-" else "-" + self.take()
            if num[-1].isalpha():
                raise Unsupported(f"timespan {num}")
            return float(num) if "." in num else int(num)
        if tok in ("true", "false"):
            return tok == "true"
        if self.peek() == "(":
            return self.call(tok)
        if tok in self.kql.lets:
            return self.kql.lets[tok]
        if tok not in self.row:
            raise Unsupported(f"column {tok}")
        return self.row[tok]

    def call(self, name: str) -> Any:
        self.take("(")
        args = []
        while self.peek() != ")":
            args.append(self.or_())
            if self.peek() == ",":
                self.take()
        self.take(")")
        if UNKNOWN in args:
            return UNKNOWN
        fn = _FUNCTIONS.get(name)
        if fn is None:
            raise Unsupported(f"function {name}")
        return fn(*args)


def _literal(tok: str) -> str:
    if tok[0] == "@":
        return tok[2:-1]
    escapes = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), tok[1:-1])


def _member(v: Any, key: Any) -> Any:
    if v is UNKNOWN:
        return UNKNOWN
    if isinstance(v, dict):
        return v.get(key)
    if isinstance(v, list) and isinstance(key, int) and -len(v) <= key < len(v):
        return v[key]
    return None


def _parse_json(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


_FUNCTIONS: dict[str, Any] = {
    "tostring": kql_string, "parse_json": _parse_json, "todynamic": _parse_json,
    "isempty": lambda v: v is None or v == "", "isnotempty": lambda v: v is not None and v != "",
    "isnull": lambda v: v is None, "isnotnull": lambda v: v is not None,
    "iff": lambda c, a, b: a if c is True else b, "not": lambda v: v is not True,
    "strcat": lambda *a: "".join(kql_string(x) for x in a),
    "tolower": lambda v: kql_string(v).lower(),
    "coalesce": lambda *a: next((x for x in a if x is not None and x != ""), None),
}


def _compare(op: str, left: Any, right: Any) -> bool:
    neg = op.startswith("!") and op not in ("!=", "!~")
    op = op.lstrip("!") if neg else op
    ls = kql_string(left)
    if op in ("in", "in~"):
        hit = any((ls.lower() == kql_string(r).lower()) if op == "in~" else left == r
                  for r in right)
    elif op == "between":
        hit = right[0] <= left <= right[1]
    elif op == "matches":
        hit = re.search(right, ls) is not None
    elif op == "has_any":
        hit = any(_has(ls, kql_string(r)) for r in right)
    elif op in _STRING_OPS:
        rs = kql_string(right)
        a, b = (ls, rs) if op.endswith("_cs") else (ls.lower(), rs.lower())
        hit = {"has": lambda: _has(ls, rs), "contains": lambda: b in a,
               "contains_cs": lambda: b in a, "startswith": lambda: a.startswith(b),
               "startswith_cs": lambda: a.startswith(b), "endswith": lambda: a.endswith(b),
               "endswith_cs": lambda: a.endswith(b)}[op]()
    elif op in ("=~", "!~"):
        hit = (ls.lower() == kql_string(right).lower()) == (op == "=~")
    else:
        if isinstance(left, str) != isinstance(right, str):
            raise Unsupported(f"{left!r} {op} {right!r}: types differ")
        hit = {"==": left == right, "!=": left != right, "<": left < right,
               "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    return hit != neg


