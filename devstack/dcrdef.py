"""Data collection rule (DCR) definitions for the Sentinel emulator (:mod:`devstack.sentinel`).

A rule in the emulator's ``rules`` mapping is either the legacy form, ``{stream: [column
names] | None}``, or a DCR definition (recognised by a ``"streams"`` key whose values are
objects)::

    {"dcr-<32 hex>": {
        "name": "s3sentinel-dcr-1",                                  # optional, for messages
        "streams": {"Custom-AWSCloudTrail": {"TimeGenerated": "datetime", "EventName": "string"}},
        "flows": [{"streams": ["Custom-AWSCloudTrail"], "transformKql": "source",
                   "outputStream": "Microsoft-AWSCloudTrail"}],
        "tables": {"AWSCloudTrail": {"TimeGenerated": "datetime", "EventName": "string"}},  # optional
        "limits": {"bytes_per_min": 2_000_000_000, "requests_per_min": 12_000, "window_secs": 60},
        "identity": "client-id-x",                                   # optional
    }}

:meth:`DcrDef.from_spec` validates such a definition the way Azure Resource Manager refuses
a deployment (:class:`DcrDefinitionError`, naming the DCR and the offending item), and
:meth:`DcrDef.ingest` applies it to the rows of one request: stream column types, the
transformation (``source`` and ``source | extend C = f(C2), ...`` only) and the destination
table's schema. :func:`rules_from_template` builds definitions from an ARM template such as
the one ``s3sentinel dcr`` writes.

Documented limits this module enforces (Azure Monitor service limits,
https://learn.microsoft.com/azure/azure-monitor/service-limits): at most 10 data flows and 10
data streams per DCR (``includes/azure-monitor-limits-data-collection-rules.md`` in
MicrosoftDocs/azure-docs; newer revisions of that page are reported to allow 20 streams, see
:data:`MAX_STREAMS`), a transformation of at most 15,360 characters (the ``Data collection
rules`` table of the same page, section ``#data-collection-rules``), and per DCR 2 GB and
12,000 requests a minute for the Logs Ingestion API (``#logs-ingestion-api``,
``includes/azure-monitor-limits-custom-logs.md``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

__all__ = [
    "DEFAULT_LIMITS", "MAX_COLUMNS", "MAX_FLOWS", "MAX_STREAMS", "MAX_TRANSFORM_CHARS",
    "STREAM_TYPES", "TABLE_TYPES", "DataFlow", "DcrDef", "DcrDefinitionError", "DcrLimits",
    "IngestResult", "Transform", "is_dcr_spec", "parse_datetime", "rules_from_template",
]

MAX_STREAMS = 10
"""Stream declarations per DCR. The MicrosoftDocs include ``azure-monitor-limits-data-
collection-rules.md`` says "Maximum number of data streams: 10"; later revisions of the
service-limits page are quoted with 20. The stricter value is kept: an emulator that refuses
what Azure would accept costs a test edit, the other way round a failed deployment."""
MAX_FLOWS = 10
"""Data flows per DCR ("Maximum number of data flows: 10", same include)."""
MAX_COLUMNS = 500
"""Columns per stream declaration (and per table: Log Analytics' 500-column table limit)."""
MAX_TRANSFORM_CHARS = 15_360
"""Length cap of ``transformKql``: "Maximum size of transformation: 15,360 characters" in the
data collection rules limits of https://learn.microsoft.com/azure/azure-monitor/fundamentals/
service-limits#data-collection-rules (as quoted by several public DCR tools and guides)."""

STREAM_TYPES = frozenset({"string", "int", "long", "real", "boolean", "dynamic", "datetime"})
"""Column types of a DCR stream declaration."""
TABLE_TYPES = STREAM_TYPES | {"guid"}
"""Column types of a destination table (Kusto types; ``bool`` is read as ``boolean``)."""
_TYPE_ALIASES = {"bool": "boolean"}

_ID = re.compile(r"dcr-[0-9a-f]{32}")
_COLUMN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_STREAM = re.compile(r"Custom-[A-Za-z0-9_\-]+")
_OUTPUT = re.compile(r"Custom-(?P<custom>[A-Za-z][A-Za-z0-9_]*_CL)"
                     r"|Microsoft-(?P<std>[A-Za-z][A-Za-z0-9_]*)")
_SPEC_KEYS = frozenset({"name", "streams", "flows", "tables", "limits", "identity"})
_FLOW_KEYS = frozenset({"streams", "transformKql", "outputStream", "destinations"})
_LIMIT_KEYS = frozenset({"bytes_per_min", "requests_per_min", "window_secs"})

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# Which value of a column typed ``source`` a destination column of type ``dest`` takes
# unchanged. Anything else (a string into a guid, datetime or int column, dynamic into
# string...) is dropped by the service unless the transformation converts it. Where Azure's
# behaviour is not documented the emulator is strict: better a test that fails here than one
# that passes here and loses data in Azure.
_COMPATIBLE = {
    "string": {"string"}, "int": {"int", "long", "real"}, "long": {"long", "real"},
    "real": {"real"}, "boolean": {"boolean"}, "datetime": {"datetime"},
    "dynamic": {"dynamic"}, "guid": {"guid"},
}


class DcrDefinitionError(ValueError):
    """A DCR definition Azure Resource Manager would refuse to deploy (or the emulator cannot
    evaluate). The message names the DCR and the offending item."""


def is_dcr_spec(spec: Any) -> bool:
    """True for the DCR-definition form: a mapping whose ``"streams"`` is a mapping of
    mappings (the legacy form maps stream names to column lists or None)."""
    if not isinstance(spec, Mapping):
        return False
    streams = spec.get("streams")
    return isinstance(streams, Mapping) and all(isinstance(v, Mapping) for v in streams.values())


# -- values ------------------------------------------------------------------------------------
_DATETIME = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}:?\d{2})?"
)
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def parse_datetime(text: str) -> tuple[datetime, str] | None:
    """An ISO-8601 date/time (``Z``, an offset or none = UTC; fractional seconds allowed) as an
    aware UTC datetime and its fraction digits (at most 7, Kusto's 100 ns ticks), or None."""
    m = _DATETIME.fullmatch(text.strip())
    if m is None:
        return None
    tz = m["tz"]
    offset = timedelta(0)
    if tz and tz not in "Zz":
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
    try:
        value = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"] or 0),
                         int(m["mi"] or 0), int(m["s"] or 0), tzinfo=timezone(offset))
        value = value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return value, (m["f"] or "")[:7]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fits(kind: str, v: Any) -> bool:
    """Does non-null ``v`` (as JSON decoded it) fit a stream column of type ``kind``?"""
    if kind == "dynamic":
        return True
    if kind == "string":
        return isinstance(v, str)
    if kind == "int":
        return _is_int(v) and _INT32[0] <= v <= _INT32[1]
    if kind == "long":
        return _is_int(v) and _INT64[0] <= v <= _INT64[1]
    if kind == "real":
        return _is_int(v) or isinstance(v, float)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "datetime":
        return isinstance(v, str) and parse_datetime(v) is not None
    raise AssertionError(kind)


def _to_int(v: Any, bounds: tuple[int, int]) -> int | None:
    if isinstance(v, bool):
        out: int | None = int(v)
    elif isinstance(v, int):
        out = v
    elif isinstance(v, float):
        out = math.trunc(v) if math.isfinite(v) else None
    elif isinstance(v, str):
        text = v.strip()
        try:
            out = int(text)
        except ValueError:
            real = _to_real(text)
            out = None if real is None else math.trunc(real)
    else:
        out = None
    return out if out is not None and bounds[0] <= out <= bounds[1] else None


def _to_real(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        out = float(v)
    elif isinstance(v, str):
        try:
            out = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None  # JSON has no NaN/inf


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return None


def _to_string(v: Any) -> str:
    if v is None:
        return ""  # Kusto: tostring(null) is the empty string
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int | float):
        return repr(v)
    return orjson.dumps(v).decode()


def _to_datetime(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    parsed = parse_datetime(v)
    if parsed is None:
        return None
    value, fraction = parsed
    fraction = fraction.rstrip("0")
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _to_guid(v: Any) -> str | None:
    return v.lower() if isinstance(v, str) and _GUID.fullmatch(v.strip()) else None


_FUNCTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # name: (result type, conversion of a non-null value; null stays null except tostring)
    "toguid": ("guid", _to_guid),
    "todatetime": ("datetime", _to_datetime),
    "tostring": ("string", _to_string),
    "toint": ("int", lambda v: _to_int(v, _INT32)),
    "tolong": ("long", lambda v: _to_int(v, _INT64)),
    "toreal": ("real", _to_real),
    "tobool": ("boolean", _to_bool),
}


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DcrLimits:
    """Per-DCR Logs Ingestion limits over a sliding window of ``window_secs``."""

    bytes_per_min: float = 2_000_000_000
    requests_per_min: float = 12_000
    window_secs: float = 60.0

    @property
    def window_bytes(self) -> float:
        """Uncompressed bytes allowed within one window."""
        return self.bytes_per_min * self.window_secs / 60

    @property
    def window_requests(self) -> float:
        """Requests allowed within one window."""
        return self.requests_per_min * self.window_secs / 60

    def as_dict(self) -> dict[str, float]:
        return {"bytes_per_min": self.bytes_per_min, "requests_per_min": self.requests_per_min,
                "window_secs": self.window_secs, "window_bytes": self.window_bytes,
                "window_requests": self.window_requests}


DEFAULT_LIMITS = DcrLimits()


@dataclass(frozen=True)
class Assignment:
    """``column = function(source)`` of an ``extend``."""

    column: str
    function: str
    source: str


@dataclass(frozen=True)
class Transform:
    """The subset of transformation KQL the emulator evaluates: ``source``, optionally
    followed by ``| extend C = f(C2), ...`` stages with f one of toguid, todatetime,
    tostring, toint, tolong, toreal, tobool."""

    kql: str
    assignments: tuple[Assignment, ...] = ()

    @classmethod
    def parse(cls, kql: str, where: str) -> Transform:
        """Parse ``kql``; DcrDefinitionError (prefixed with ``where``) if it is too long or
        outside the subset."""
        if len(kql) > MAX_TRANSFORM_CHARS:
            raise DcrDefinitionError(
                f"{where}: transformKql is {len(kql)} characters long; the maximum is "
                f"{MAX_TRANSFORM_CHARS}")
        stages = [s.strip() for s in kql.split("|")] if kql.strip() else ["source"]
        unsupported = (f"{where}: emulator cannot evaluate transform {kql.strip()[:200]!r} "
                       "(only 'source' and 'source | extend C = f(C2), ...' with f in "
                       f"{', '.join(sorted(_FUNCTIONS))})")
        if stages[0] != "source":
            raise DcrDefinitionError(unsupported)
        assignments: list[Assignment] = []
        for stage in stages[1:]:
            m = re.fullmatch(r"extend\s+(.+)", stage, re.S)
            if m is None:
                raise DcrDefinitionError(unsupported)
            for part in m.group(1).split(","):
                a = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([a-z]+)\s*\(\s*"
                                 r"([A-Za-z][A-Za-z0-9_]*)\s*\)\s*", part)
                if a is None or a.group(2) not in _FUNCTIONS:
                    raise DcrDefinitionError(unsupported)
                assignments.append(Assignment(a.group(1), a.group(2), a.group(3)))
        return cls(kql, tuple(assignments))

    def output_types(self, columns: Mapping[str, str], where: str) -> dict[str, str]:
        """Column types of the output for input ``columns``; DcrDefinitionError when an
        ``extend`` reads a column that does not exist at that point."""
        types = dict(columns)
        for a in self.assignments:
            if a.source not in types:
                raise DcrDefinitionError(
                    f"{where}: transformKql reads column {a.source!r}, which the stream does "
                    "not declare")
            types[a.column] = _FUNCTIONS[a.function][0]
        return types

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The output row for one input row (a new dict)."""
        out = dict(row)
        for a in self.assignments:
            value = out.get(a.source)
            convert = _FUNCTIONS[a.function][1]
            out[a.column] = convert(value) if value is not None or a.function == "tostring" \
                else None
        return out


@dataclass(frozen=True)
class DataFlow:
    """One ``dataFlows`` entry: input streams, transformation and destination table."""

    streams: tuple[str, ...]
    transform: Transform
    output_stream: str
    table: str
    output_types: Mapping[str, Mapping[str, str]]
    """Input stream -> column types of the transformation's output for that stream."""


@dataclass
class IngestResult:
    """What one request's rows became under a DCR."""

    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(destination table, stored record), one per row and data flow."""
    undeclared: Counter[str] = field(default_factory=Counter)
    """Column the stream does not declare -> rows it was dropped from."""
    dropped_values: Counter[str] = field(default_factory=Counter)
    """Declared column -> rows whose value did not fit its type (stored as null)."""
    table_drops: dict[str, Counter[str]] = field(default_factory=dict)
    """Destination table -> output column -> rows it was dropped from (not in the table, or
    of a type the table's column does not take)."""


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and _COLUMN.fullmatch(name) is not None


def _columns(where: str, what: str, spec: Any, allowed: frozenset[str]) -> dict[str, str]:
    if not isinstance(spec, Mapping) or not spec:
        raise DcrDefinitionError(f"{where}: {what} must map column names to types, got {spec!r}")
    if len(spec) > MAX_COLUMNS:
        raise DcrDefinitionError(
            f"{where}: {what} has {len(spec)} columns; the maximum is {MAX_COLUMNS}")
    out: dict[str, str] = {}
    for name, kind in spec.items():
        if not _name_ok(name):
            raise DcrDefinitionError(
                f"{where}: {what} column name {name!r} is invalid (it must start with a "
                "letter and have only letters, digits and underscores)")
        norm = _TYPE_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
        if norm not in allowed:
            raise DcrDefinitionError(
                f"{where}: {what} column {name!r} has type {kind!r}; allowed: "
                f"{', '.join(sorted(allowed))}")
        out[name] = norm
    return out


@dataclass(frozen=True)
class DcrDef:
    """A validated DCR definition (see the module docstring for the spec format)."""

    immutable_id: str
    name: str
    streams: Mapping[str, Mapping[str, str]]
    flows: tuple[DataFlow, ...]
    tables: Mapping[str, Mapping[str, str]]
    limits: DcrLimits = DEFAULT_LIMITS
    identity: str | None = None

    @property
    def label(self) -> str:
        """``DCR 'name' (dcr-...)`` for messages."""
        if self.name == self.immutable_id:
            return f"DCR {self.immutable_id!r}"
        return f"DCR {self.name!r} ({self.immutable_id})"

    @classmethod
    def from_spec(cls, immutable_id: str, spec: Mapping[str, Any]) -> DcrDef:
        """Validate ``spec`` (DcrDefinitionError naming the DCR and the offending item)."""
        name = spec.get("name", immutable_id) if isinstance(spec, Mapping) else immutable_id
        where = (f"DCR {immutable_id!r}" if name == immutable_id
                 else f"DCR {name!r} ({immutable_id})")
        if not isinstance(spec, Mapping):
            raise DcrDefinitionError(f"{where}: the definition must be an object")
        if not isinstance(name, str) or not name:
            raise DcrDefinitionError(f"{where}: name must be a non-empty string")
        if not isinstance(immutable_id, str) or not _ID.fullmatch(immutable_id):
            raise DcrDefinitionError(
                f"{where}: an immutable id is 'dcr-' and 32 lowercase hex digits")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise DcrDefinitionError(
                f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_SPEC_KEYS)})")

        raw_streams = spec.get("streams")
        if not isinstance(raw_streams, Mapping) or not raw_streams:
            raise DcrDefinitionError(f"{where}: streams must declare at least one stream")
        if len(raw_streams) > MAX_STREAMS:
            raise DcrDefinitionError(
                f"{where}: {len(raw_streams)} stream declarations; the maximum is {MAX_STREAMS}")
        streams: dict[str, dict[str, str]] = {}
        for stream, columns in raw_streams.items():
            if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
                raise DcrDefinitionError(
                    f"{where}: stream name {stream!r} must start with 'Custom-'")
            streams[stream] = _columns(where, f"stream {stream!r}", columns, STREAM_TYPES)

        raw_tables = spec.get("tables") or {}
        if not isinstance(raw_tables, Mapping):
            raise DcrDefinitionError(f"{where}: tables must map table names to schemas")
        tables = {t: _columns(where, f"table {t!r}", cols, TABLE_TYPES)
                  for t, cols in raw_tables.items()}

        raw_flows = spec.get("flows")
        if not isinstance(raw_flows, Sequence) or isinstance(raw_flows, str) or not raw_flows:
            raise DcrDefinitionError(f"{where}: flows must list at least one data flow")
        if len(raw_flows) > MAX_FLOWS:
            raise DcrDefinitionError(
                f"{where}: {len(raw_flows)} dataFlows; the maximum is {MAX_FLOWS}")
        flows = tuple(cls._flow(where, i, f, streams) for i, f in enumerate(raw_flows))
        unused = [s for s in streams if not any(s in f.streams for f in flows)]
        if unused:
            raise DcrDefinitionError(
                f"{where}: stream {unused[0]!r} is declared but no data flow sends it anywhere")

        raw_limits = spec.get("limits") or {}
        if not isinstance(raw_limits, Mapping) or set(raw_limits) - _LIMIT_KEYS:
            raise DcrDefinitionError(
                f"{where}: limits must be an object with keys among {sorted(_LIMIT_KEYS)}")
        for key, value in raw_limits.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise DcrDefinitionError(f"{where}: limits.{key} must be a positive number")
        limits = DcrLimits(**{k: float(v) for k, v in raw_limits.items()})
        if limits.window_requests < 1:
            raise DcrDefinitionError(
                f"{where}: limits allow {limits.window_requests:g} requests per "
                f"{limits.window_secs:g} s window; raise requests_per_min or window_secs")

        identity = spec.get("identity")
        if identity is not None and (not isinstance(identity, str) or not identity):
            raise DcrDefinitionError(f"{where}: identity must be a client id string")
        return cls(immutable_id=immutable_id, name=name, streams=streams, flows=flows,
                   tables=tables, limits=limits, identity=identity)

    @staticmethod
    def _flow(where: str, index: int, spec: Any, streams: Mapping[str, Mapping[str, str]],
              ) -> DataFlow:
        at = f"{where}: dataFlows[{index}]"
        if not isinstance(spec, Mapping):
            raise DcrDefinitionError(f"{at} must be an object")
        unknown = set(spec) - _FLOW_KEYS
        if unknown:
            raise DcrDefinitionError(f"{at}: unknown keys {sorted(unknown)}")
        names = spec.get("streams")
        if (not isinstance(names, Sequence) or isinstance(names, str) or not names
                or not all(isinstance(s, str) for s in names)):
            raise DcrDefinitionError(f"{at}: streams must list at least one stream name")
        for s in names:
            if s not in streams:
                raise DcrDefinitionError(f"{at}: stream {s!r} is not declared in streams")
        kql = spec.get("transformKql")
        if kql is None:
            kql = "source"
        if not isinstance(kql, str):
            raise DcrDefinitionError(f"{at}: transformKql must be a string")
        transform = Transform.parse(kql, at)
        output = spec.get("outputStream")
        if output is None:  # Azure's default: the table the custom stream is named after
            if len(names) != 1 or not names[0].endswith("_CL"):
                raise DcrDefinitionError(
                    f"{at}: outputStream is required unless the flow has one stream "
                    "named Custom-<Table>_CL")
            output = names[0]
        m = _OUTPUT.fullmatch(output) if isinstance(output, str) else None
        if m is None:
            raise DcrDefinitionError(
                f"{at}: outputStream {output!r} must be 'Custom-<Table>_CL' or "
                "'Microsoft-<Table>'")
        types = {s: transform.output_types(streams[s], f"{at} (stream {s!r})") for s in names}
        return DataFlow(streams=tuple(names), transform=transform, output_stream=output,
                        table=m["custom"] or m["std"], output_types=types)

    # -- ingestion ---------------------------------------------------------------------------
    def legacy_columns(self) -> dict[str, frozenset[str]]:
        """Stream -> declared column names (what the legacy form would say)."""
        return {s: frozenset(cols) for s, cols in self.streams.items()}

    def ingest(self, stream: str, rows: Iterable[Mapping[str, Any]]) -> IngestResult:
        """Apply the definition to the rows sent to ``stream`` (which must be declared)."""
        declared = self.streams[stream]
        flows = [f for f in self.flows if stream in f.streams]
        result = IngestResult()
        for row in rows:
            clean: dict[str, Any] = {}
            for column, value in row.items():
                kind = declared.get(column)
                if kind is None:
                    result.undeclared[column] += 1
                    continue
                if value is not None and not _fits(kind, value):
                    result.dropped_values[column] += 1
                    value = None
                clean[column] = value
            for flow in flows:
                out = flow.transform.apply(clean)
                schema = self.tables.get(flow.table)
                if schema is not None:
                    types = flow.output_types[stream]
                    bad = [c for c in out if c not in schema
                           or schema[c] not in _COMPATIBLE[types[c]]]
                    if bad:
                        drops = result.table_drops.setdefault(flow.table, Counter())
                        for c in bad:
                            del out[c]
                            drops[c] += 1
                result.outputs.append((flow.table, out))
        return result


# -- ARM templates -----------------------------------------------------------------------------
_DCR_TYPE = "microsoft.insights/datacollectionrules"
_TABLE_TYPE = "microsoft.operationalinsights/workspaces/tables"


def _template_columns(columns: Any, what: str) -> dict[str, str]:
    if not isinstance(columns, list):
        raise DcrDefinitionError(f"{what}: columns must be a list of {{name, type}} objects")
    out: dict[str, str] = {}
    for c in columns:
        if not isinstance(c, Mapping) or "name" not in c or "type" not in c:
            raise DcrDefinitionError(f"{what}: column {c!r} needs a name and a type")
        out[c["name"]] = c["type"]
    return out


def rules_from_template(template: Mapping[str, Any], ids: Mapping[str, str],
                        tables: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, Any]]:
    """Emulator rules (immutable id -> definition spec) for the DCRs of an ARM template.

    Reads the ``Microsoft.Insights/dataCollectionRules`` resources (``name`` is taken
    literally, expression or not, and looked up in ``ids``: KeyError when missing) and the
    ``Microsoft.OperationalInsights/workspaces/tables`` resources: the schema of a custom
    ``_CL`` table, or columns added to a standard table. ``tables`` gives standard tables'
    schemas (for output streams ``Microsoft-<Table>``); the template's added columns are
    merged into them. A custom table the template does not create takes its schema from
    ``tables`` too. A flow whose table has no known schema is not type-checked. Every
    definition is validated (DcrDefinitionError).
    """
    resources = template.get("resources")
    if not isinstance(resources, list):
        raise DcrDefinitionError("the template has no resources list")
    declared: dict[str, dict[str, str]] = {}  # table resources, by schema name
    for res in resources:
        if not isinstance(res, Mapping) or str(res.get("type", "")).lower() != _TABLE_TYPE:
            continue
        schema = (res.get("properties") or {}).get("schema") or {}
        table = schema.get("name")
        if not isinstance(table, str):
            raise DcrDefinitionError(f"table resource {res.get('name')!r} has no schema.name")
        cols = _template_columns(schema.get("columns"), f"table {table!r}")
        # Log Analytics' table API spells types like "dateTime" and "Boolean".
        declared.setdefault(table, {}).update({k: v.lower() if isinstance(v, str) else v
                                               for k, v in cols.items()})

    rules: dict[str, dict[str, Any]] = {}
    for res in resources:
        if not isinstance(res, Mapping) or str(res.get("type", "")).lower() != _DCR_TYPE:
            continue
        name = res.get("name")
        if not isinstance(name, str) or name not in ids:
            raise KeyError(
                f"no immutable id given for data collection rule {name!r} of the template "
                f"(ids has {sorted(ids)})")
        props = res.get("properties") or {}
        decls = props.get("streamDeclarations") or {}
        if not isinstance(decls, Mapping):
            raise DcrDefinitionError(f"DCR {name!r}: streamDeclarations must be an object")
        streams = {s: _template_columns((d or {}).get("columns"), f"DCR {name!r} stream {s!r}")
                   for s, d in decls.items()}
        flows: list[dict[str, Any]] = []
        out_tables: dict[str, dict[str, str]] = {}
        for f in props.get("dataFlows") or []:
            flow = {k: f[k] for k in ("streams", "transformKql", "outputStream") if k in f}
            flows.append(flow)
            output = f.get("outputStream")
            if output is None and len(f.get("streams") or []) == 1:
                output = f["streams"][0]
            m = _OUTPUT.fullmatch(output) if isinstance(output, str) else None
            if m is None:
                continue  # DcrDef.from_spec names the problem
            if m["custom"]:  # the template's table resource, else the caller's schema
                schema = declared.get(m["custom"]) or tables.get(m["custom"])
                if schema:
                    out_tables[m["custom"]] = dict(schema)
            elif m["std"] in tables:
                out_tables[m["std"]] = {**tables[m["std"]], **declared.get(m["std"], {})}
        spec: dict[str, Any] = {"name": name, "streams": streams, "flows": flows}
        if out_tables:
            spec["tables"] = out_tables
        rule_id = ids[name]
        DcrDef.from_spec(rule_id, spec)
        rules[rule_id] = spec
    return rules
