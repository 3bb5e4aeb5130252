"""The mapping of source records onto table rows.

A table definition (:mod:`operators.tabledef`: ``operators/tables/<Table>.toml``, a
``[[tables]]`` entry in the config, or a file in ``runtime.tables_dir``) lists each
column's exact name, type and source path. :class:`Mapper` compiles one into two
equivalent paths:

- a fast path for JSON records: a msgspec type generated from the source paths, so
  only the fields that are mapped are decoded; nested values bound for ``string`` or
  ``dynamic`` columns stay raw JSON text and are never built as Python objects;
- a generic path for anything else (a record that does not fit the generated type,
  or a record already parsed into a dict).

Both produce the same row: values coerced to the column type, ``datetime`` values as
ISO 8601 UTC, nested values in ``string`` columns as JSON text, null values left out,
and the record id in the table's record-id column. (One difference: the fast path
passes nested JSON text through as the source wrote it, the generic path writes it
compact; both are the same JSON value. AWS writes its logs compact.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from dataflow.core import metrics
from dataflow.core.errors import TerminalError
from operators.tabledef import (
    COLUMN_TYPES,
    Column,
    TableDef,
    TableError,
    load_tables,
)

__all__ = [
    "COLUMN_TYPES",
    "Column",
    "MappingError",
    "Mapper",
    "TableDef",
    "TableError",
    "load_tables",
]

MAX_FIELD_BYTES = 65_536
"""Log Analytics keeps at most 64 KB of a string value; longer values are cut here, visibly."""
_TRUNCATED = "...[truncated by s3sentinel]"
# ISO 8601 UTC with plausible fields passes as is (the common case, no parsing); anything
# else is parsed, and refused if it is not a real time.
_ISO_UTC = re.compile(r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
                      r"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?Z$")


class MappingError(TerminalError, ValueError):
    """A record cannot be mapped onto its table; ``code`` is a short reason for metrics."""

    def __init__(self, reason: str, code: str) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)



# --------------------------------------------------------------------------- coercion


def _json_text(v: Any) -> str:
    if isinstance(v, msgspec.Raw):
        return bytes(v).decode("utf-8")
    return orjson.dumps(v).decode("utf-8")


def _to_string(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, msgspec.Raw):
        b = bytes(v)
        if b[:1] == b'"':
            if b"\\" not in b:
                return b[1:-1].decode("utf-8")
            return msgspec.json.decode(b, type=str)
        if b == b"null":
            return None
        return b.decode("utf-8")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return _json_text(v)


def _limit(text: str, counter: Any = None) -> str:
    """``text`` cut to MAX_FIELD_BYTES of UTF-8 with a marker, when longer."""
    data = text.encode("utf-8")
    if len(data) <= MAX_FIELD_BYTES:
        return text
    if counter is not None:
        counter.inc()
    keep = MAX_FIELD_BYTES - len(_TRUNCATED)
    return data[:keep].decode("utf-8", errors="ignore") + _TRUNCATED


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise ValueError


def _to_int_cut(v: Any) -> int:
    """``_to_int``, but a finite number with a fraction is cut toward zero (KQL ``toint()``)."""
    if isinstance(v, float) and math.isfinite(v):
        return int(v)
    if isinstance(v, str):
        try:
            return _to_int(v)
        except ValueError:
            f = float(v)
            if not math.isfinite(f):
                raise
            return int(f)
    return _to_int(v)


def _to_real(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        return float(v.strip())
    raise ValueError


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError


def _to_datetime(v: Any) -> str:
    if isinstance(v, str):
        if _ISO_UTC.match(v):
            return v
        dt = datetime.fromisoformat(v.strip().replace(" ", "T", 1))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = v / 1000 if v > 1e11 else v  # epoch milliseconds or seconds
        dt = datetime.fromtimestamp(secs, UTC)
    else:
        raise ValueError
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _to_dynamic(v: Any) -> Any:
    if isinstance(v, msgspec.Raw) and bytes(v) == b"null":
        return None
    return v


_COERCE: dict[str, Callable[[Any], Any]] = {
    "string": _to_string, "int": _to_int, "long": _to_int, "real": _to_real,
    "bool": _to_bool, "datetime": _to_datetime, "dynamic": _to_dynamic,
}


# --------------------------------------------------------------------------- mapper


_SCALAR = str | int | float | bool | None
_UNPARSED = object()
_MapStruct = Callable[[Any, dict[str, Any], dict[int, Any]], dict[str, Any]]
"""The generated reader of a decoded record: (record, row to fill, parsed values) -> the row."""


class _Node:
    """A node of the tree of source paths, turned into nested msgspec types."""

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.leaf: Any = None  # msgspec.Raw or _SCALAR for leaves
        self.attrs: dict[str, str] = {}

    def struct(self, name: str, forbid_unknown: bool = False) -> type:
        """The msgspec type; with ``forbid_unknown`` a record with a member no column reads,
        at any level, does not fit it (and takes the generic path, which keeps the member)."""
        fields, rename = [], {}
        for i, (key, child) in enumerate(sorted(self.children.items())):
            attr = f"f{i}"
            rename[attr] = key
            self.attrs[key] = attr
            if child.leaf is not None:
                fields.append((attr, child.leaf, None))
            else:
                fields.append((attr, child.struct(f"{name}_{i}", forbid_unknown) | None, None))
        return msgspec.defstruct(name, fields, rename=rename, gc=False,
                                 forbid_unknown_fields=forbid_unknown)


def _walk(v: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in parsed JSON (dict keys, and list indexes given as digits)."""
    for part in path:
        if isinstance(v, dict):
            v = v.get(part)
        elif isinstance(v, list) and part.isdigit() and int(part) < len(v):
            v = v[int(part)]
        else:
            return None
        if v is None:
            return None
    return v


_Cover = dict[str, "_Cover | None"]
"""What the columns read of a record: for each key, None when a column holds its whole value,
else the same for its members (keys of an object, indexes of a list given as digits)."""


def _cover(sources: list[tuple[str, ...]]) -> _Cover:
    root: _Cover = {}
    for path in sources:
        node: _Cover | None = root
        for part in path[:-1]:
            if node is None:
                break
            node = node.setdefault(part, {})
        if node is not None:
            node[path[-1]] = None
    return root


def _leftovers(cover: _Cover, v: Any, path: str, out: dict[str, Any]) -> None:
    """Put into ``out`` every member of ``v`` no column reads, under its dotted path
    (``path`` is the prefix, "" or ending in a dot).

    Top-level fields are kept whatever their value; a nested member only when it has one
    (not null, ``{}`` or ``[]``: most AssumedRole events carry an empty
    ``sessionContext.webIdFederationData``).
    """
    if isinstance(v, dict):
        items: Any = v.items()
    elif isinstance(v, list) and any(k.isdigit() for k in cover):
        items = ((str(j), x) for j, x in enumerate(v))
    else:  # a value where the columns expect members: kept whole
        if path and v is not None and v != []:
            out[path[:-1]] = v
        return
    for key, x in items:
        if key not in cover:
            if not path or (x is not None and x != {} and x != []):
                out[path + key] = x
        elif (sub := cover[key]) is not None:
            _leftovers(sub, x, f"{path}{key}.", out)


_NO_VALUE = (b"{}", b"[]", b"null")


def _has_value(raw: msgspec.Raw) -> bool:
    """Whether raw JSON text (longer than 8 bytes: the caller checks) is something other
    than null, ``{}`` or ``[]``."""
    b = bytes(raw)
    return b not in _NO_VALUE and orjson.loads(b) not in (None, {}, [])


def _split_path(path: tuple[str, ...], leaves: set[tuple[str, ...]]) -> int:
    """How much of ``path`` the generated type decodes; the rest is walked in parsed JSON.

    The cut comes before a list index, or after a prefix that is itself a column's source
    (that value is kept raw, so paths under it are read from it).
    """
    for i in range(1, len(path)):
        if path[i].isdigit() or path[:i] in leaves:
            return i
    return len(path)


# Inline fast cases per column type in the generated code; anything else calls _c(i, v).
_FAST_CASE = {
    "string": "type(v) is str and len(v) <= 16384",  # <= 64 KB whatever the characters
    "datetime": "type(v) is str and _iso(v) is not None",
    "bool": "type(v) is bool",
    "int": "type(v) is int",
    "long": "type(v) is int",
    "real": "type(v) is float",
    "dynamic": "bytes(v) != b'null'",
}


class Mapper:
    """Maps records of one source onto one table's rows (encoded JSON objects)."""

    def __init__(self, table: TableDef) -> None:
        self.table = table
        self._id_column = table.record_id_column
        # A column with source "*" holds every field no other column reads: top-level ones,
        # and members of objects other columns read from (userIdentity.onBehalfOf, beside
        # userIdentity.arn), under their dotted path.
        self._rest_column = next((c.name for c in table.columns if c.source == ("*",)), None)
        cols = self._cols = tuple(c for c in table.columns if c.source != ("*",))
        self._used_top = frozenset(c.source[0] for c in cols)
        self._cover = _cover([c.source for c in cols])
        star = next((c for c in table.columns if c.source == ("*",)), None)
        known = star.known if star else ()
        self._known_rest = [k for k in known if "." not in k and k not in self._used_top]
        self._truncated = [metrics.FIELDS_TRUNCATED.labels(table.name, c.name) for c in cols]
        self._index = {c.name: i for i, c in enumerate(cols)}
        leaves = {c.source for c in cols}
        cuts = [_split_path(c.source, leaves) for c in cols]
        root = _Node()
        for col, cut in zip(cols, cuts, strict=False):
            node = root
            for part in col.source[:cut]:
                node = node.children.setdefault(part, _Node())
            raw = cut < len(col.source) or col.json or col.type == "dynamic" or node.children
            node.leaf = msgspec.Raw if raw or node.leaf is msgspec.Raw else _SCALAR
        for col, cut in zip(cols, cuts, strict=False):  # a node that is also a parent must be raw
            node = root
            for part in col.source[:cut]:
                node = node.children[part]
            if node.children:
                node.leaf = msgspec.Raw
        for key in self._known_rest:  # read raw, gathered into the "*" column
            root.children.setdefault(key, _Node()).leaf = msgspec.Raw
        self._known_nested: list[tuple[str, ...]] = []
        for k in known if self._rest_column is not None else ():
            path = tuple(k.split("."))
            parent = self._struct_node(root, path[:-1]) if len(path) > 1 else None
            if parent is not None and path[-1] not in parent.children:
                parent.children[path[-1]] = leaf = _Node()
                leaf.leaf = msgspec.Raw
                self._known_nested.append(path)
        # Objects kept raw (cut before a list index) whose members columns read in part:
        # the members no column reads are found in the parsed value.
        self._raw_parents: list[tuple[tuple[str, ...], _Cover]] = []
        for col, cut in zip(cols, cuts, strict=False):
            sub = self._cover_at(col.source[:cut])
            if self._rest_column is not None and sub is not None and all(
                    h != col.source[:cut] for h, _ in self._raw_parents):
                self._raw_parents.append((col.source[:cut], sub))
        # With a "*" column, a record with a field no column reads (at any level, bar the
        # known ones) takes the generic path, which collects it; on the fast path there is
        # then nothing else to collect.
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            root.struct(f"{table.name}Record", forbid_unknown=self._rest_column is not None))
        self._rest = [c.source[cut:] for c, cut in zip(cols, cuts, strict=False)]
        self._rest_keys = [[f'"{p}"'.encode() for p in rest if not p.isdigit()]
                           for rest in self._rest]
        self._coercers = [_to_int_cut if c.truncate else _COERCE[c.type] for c in cols]
        self._generic = [(c.name, c.source, coerce, c.required)
                         for c, coerce in zip(cols, self._coercers, strict=False)]
        self._cut = {c.name: ".".join(c.source) for c in cols if c.truncate}
        self._types = {c.name: c.type for c in cols}
        self._allowed = {c.name: frozenset(c.allowed) for c in cols if c.allowed}
        self._sources = {c.name: ".".join(c.source) for c in cols}
        self._encode = msgspec.json.Encoder().encode
        self._map_struct = self._compile(root, cuts)

    @staticmethod
    def _struct_node(root: _Node, path: tuple[str, ...]) -> _Node | None:
        """The node at ``path`` when it is decoded as a struct (not kept raw), else None."""
        node: _Node | None = root
        for part in path:
            node = node.children.get(part) if node is not None else None
            if node is None or node.leaf is not None:
                return None
        return node

    def _cover_at(self, path: tuple[str, ...]) -> _Cover | None:
        """What columns read of the value at ``path`` (None: all of it)."""
        node: _Cover | None = self._cover
        for part in path:
            if node is None:
                return None
            node = node.get(part)
        return node

    def _compile(self, root: _Node, cuts: list[int]) -> _MapStruct:
        """Generate the function that reads every column from a decoded record.

        Parents are read once and checked for None (no exceptions for absent objects);
        the common case of each type is handled inline, the rest by ``_c``.
        """
        lines = ["def _map(rec, row, parsed):"]
        parents: dict[tuple[str, ...], str] = {(): "rec"}
        for i, (col, cut) in enumerate(zip(self._cols, cuts, strict=False)):
            head = col.source[:cut]
            node, var = root, "rec"
            for depth, part in enumerate(head):
                attr = node.attrs[part]
                node = node.children[part]
                key = head[:depth + 1]
                if key not in parents:
                    parents[key] = f"p{len(parents)}"
                    lines.append(f"    {parents[key]} = {var}.{attr} "
                                 f"if {var} is not None else None")
                var = parents[key]
            lines.append(f"    v = {var}")
            deferred = node.leaf is msgspec.Raw and (
                bool(self._rest[i]) or col.type not in ("string", "dynamic"))
            if deferred:  # v becomes a parsed Python value
                lines.append(f"    v = _deferred({i}, v, parsed) if v is not None else None")
            lines.append("    if v is not None:")
            if node.leaf is msgspec.Raw and col.type == "string" and not deferred \
                    and not col.allowed:
                # Raw JSON text for a string column: never fails (it is valid JSON).
                lines.append(f"        if (x := _s(v)) is not None: "
                             f"row[{col.name!r}] = x if len(x) <= 16384 else _lim({i}, x)")
                if col.required:
                    lines.append(f"        else: _missing({col.name!r})")
            else:
                fast = "True" if deferred and col.type == "dynamic" else _FAST_CASE[col.type]
                if col.allowed:
                    fast = "False"  # checked in _coerce
                lines += [f"        if {fast}: row[{col.name!r}] = v",
                          f"        elif (x := _c({i}, v)) is not None: row[{col.name!r}] = x"]
                if col.truncate:
                    lines.append(f"        if type(v) is not int: _exact({i}, v, x, row)")
            if col.required:
                lines.append(f"    else: _missing({col.name!r})")
        known = [(("rec", root.attrs[top]), top) for top in self._known_rest]
        for path in self._known_nested:
            node, var = root, "rec"
            for depth, part in enumerate(path[:-1]):
                var = parents[path[:depth + 1]]  # a struct some column reads from
                node = node.children[part]
            known.append(((var, node.attrs[path[-1]]), ".".join(path)))
        if known or self._raw_parents:
            lines.append("    r = None")
            for (var, attr), name in known:  # nested members only when they have a value
                test = (f"(x := rec.{attr}) is not None" if var == "rec" else
                        f"{var} is not None and (x := {var}.{attr}) is not None "
                        "and (len(x) > 8 or _has(x))")
                lines += [f"    if {test}:",
                          "        if r is None: r = {}",
                          f"        r[{name!r}] = x"]
            for k, (head, _) in enumerate(self._raw_parents):
                var = parents[head]
                lines.append(f"    if {var} is not None: r = _raw_rest({k}, {var}, parsed, r)")
            lines.append(f"    if r is not None: row.setdefault({self._rest_column!r}, {{}})"
                         ".update(r)")
        lines.append("    return row")
        ns: dict[str, Any] = {
            "_iso": _ISO_UTC.match, "_c": self._coerce_i, "_s": _to_string,
            "_lim": lambda i, x: _limit(x, self._truncated[i]), "_missing": self._missing,
            "_deferred": self._deferred, "_exact": self._exact, "_raw_rest": self._raw_rest,
            "_has": _has_value}
        exec("\n".join(lines), ns)  # noqa: S102 (code generated from validated column names)
        return ns["_map"]

    def map_json(self, data: bytes, record_id: str) -> bytes:
        """Map one JSON-encoded record; returns the row as JSON.

        :raises MappingError: The record is not JSON, or a value does not fit its column.
        """
        return self._encode(self.row_json(data, record_id))

    def row_json(self, data: bytes, record_id: str) -> dict[str, Any]:
        """:meth:`map_json`'s row before it is encoded (:meth:`encode`). Values of
        ``dynamic`` columns may be :class:`msgspec.Raw` (JSON text kept as it came)."""
        try:
            rec = self._decoder.decode(data)
        except msgspec.ValidationError:
            return self.row_dict(self._loads(data), record_id)  # unusual shape: generic path
        except msgspec.DecodeError as ex:
            msg = f"not valid JSON: {ex}"
            raise MappingError(msg, "invalid_json") from None
        row = self._map_struct(rec, {}, {})
        row[self._id_column] = record_id
        return row

    def encode(self, row: dict[str, Any]) -> bytes:
        """A row of :meth:`row_json` or :meth:`row_dict` as compact JSON."""
        return self._encode(row)

    def _deferred(self, i: int, raw: msgspec.Raw, parsed: dict[int, Any]) -> Any:
        """A value kept raw: parsed (once per record), then the rest of the path walked.

        Most records lack the deeper keys (``requestParameters.ipPermissions`` is only in
        security-group calls), so a substring test skips the parse when a key is absent.
        """
        key = id(raw)
        entry = parsed.get(key)
        if entry is None:
            entry = parsed[key] = [bytes(raw), _UNPARSED]
        text, value = entry
        for part in self._rest_keys[i]:
            if part not in text:
                return None
        if value is _UNPARSED:
            value = entry[1] = orjson.loads(text)
        return _walk(value, self._rest[i])

    def _raw_rest(self, k: int, raw: msgspec.Raw, parsed: dict[int, Any],
                  r: dict[str, Any] | None) -> dict[str, Any] | None:
        """The members of a raw object (``_raw_parents[k]``) no column reads, added to ``r``."""
        head, cover = self._raw_parents[k]
        entry = parsed.get(id(raw))
        if entry is None:
            entry = parsed[id(raw)] = [bytes(raw), _UNPARSED]
        if entry[1] is _UNPARSED:
            entry[1] = orjson.loads(entry[0])
        out: dict[str, Any] = {}
        _leftovers(cover, entry[1], ".".join(head) + ".", out)
        if out:
            r = {} if r is None else r
            r.update(out)
        return r

    def _exact(self, i: int, v: Any, cut: Any, row: dict[str, Any]) -> None:
        """Keep a value that a ``truncate`` column cut, as it came, in the ``*`` column."""
        try:
            whole = float(v) == cut
        except (TypeError, ValueError):
            whole = False
        if not whole and self._rest_column is not None:
            row.setdefault(self._rest_column, {})[self._cut[self._cols[i].name]] = v

    def _coerce_i(self, i: int, v: Any) -> Any:
        col = self._cols[i]
        out = self._coerce(col.name, self._coercers[i], v)
        if out is None and col.required:
            self._missing(col.name)
        return out

    def map_dict(self, rec: Any, record_id: str) -> bytes:
        """Map one record already parsed into Python values; returns the row as JSON."""
        return self._encode(self.row_dict(rec, record_id))

    def row_dict(self, rec: Any, record_id: str) -> dict[str, Any]:
        """:meth:`map_dict`'s row before it is encoded (:meth:`encode`)."""
        if not isinstance(rec, dict):
            kind = type(rec).__name__
            msg = f"expected a JSON object, got {kind}"
            raise MappingError(msg, "not_an_object")
        row: dict[str, Any] = {}
        for name, path, coerce, required in self._generic:
            v = _walk(rec, path)
            if v is None:
                if required:
                    self._missing(name)
                continue
            out = self._coerce(name, coerce, v)
            if out is not None:
                row[name] = out
                if name in self._cut and type(v) is not int:
                    self._exact(self._index[name], v, out, row)
            elif required:
                self._missing(name)
        if self._rest_column is not None:
            rest: dict[str, Any] = {}
            _leftovers(self._cover, rec, "", rest)
            if rest:
                row.setdefault(self._rest_column, {}).update(rest)
        row[self._id_column] = record_id
        return row

    def _coerce(self, name: str, coerce: Callable[[Any], Any], v: Any) -> Any:
        try:
            out = coerce(v)
        except (ValueError, TypeError, OverflowError, OSError, msgspec.DecodeError):
            shown = _json_text(v)[:80]
            msg = (f"field {self._sources[name]!r} = {shown} does not fit column {name} "
                   f"({self._types[name]})")
            raise MappingError(msg, "wrong_type") from None
        if type(out) is str and len(out) > 16384:
            out = _limit(out, self._truncated[self._index[name]])
        allowed = self._allowed.get(name)
        if allowed is not None and out is not None and out not in allowed:
            msg = (f"field {self._sources[name]!r} = {_json_text(out)[:80]} is not an allowed "
                   f"value of column {name} ({', '.join(map(str, allowed))})")
            raise MappingError(msg, "not_allowed")
        return out

    def _missing(self, name: str) -> None:
        msg = f"required field {self._sources[name]!r} (column {name}) is missing or null"
        raise MappingError(msg, "missing_required")

    @staticmethod
    def _loads(data: bytes) -> Any:
        try:
            return orjson.loads(data if isinstance(data, (bytes, str)) else bytes(data))
        except orjson.JSONDecodeError as ex:
            msg = f"not valid JSON: {ex}"
            raise MappingError(msg, "invalid_json") from None
