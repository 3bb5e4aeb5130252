"""The Sentinel content set: analytics rules, hunting queries, functions and a workbook.

Content is data, one reviewable file per item under ``operators/content/<kind>/<id>.toml`` (kinds:
``analytic``, ``hunting``, ``function``, ``workbook``); :func:`load_content` reads and checks
it (unknown keys, unique ids and names, severities, tactics, ISO-8601 frequencies and
lookbacks within what Sentinel accepts, entity identifiers, the enrichment detections a rule
mirrors), reporting every problem at once. :func:`content_resources` turns it into ARM
resources for a workspace where Microsoft Sentinel is enabled, keeping only the items whose
tables the deployment writes; :func:`content_template` wraps them in a template of their own
and :func:`with_content` adds them to a :func:`dataflow.dcr.deploy_template`.

Resource shapes (ARM template reference, learn.microsoft.com/azure/templates/...):

- ``Microsoft.SecurityInsights/alertRules`` (kind ``Scheduled``, API ``2024-09-01``), an
  extension resource scoped to the workspace, named by a GUID derived from the workspace
  and the item id (a redeployment updates the rule);
- ``Microsoft.OperationalInsights/workspaces/savedSearches`` (API ``2020-08-01``): hunting
  queries (category ``Hunting Queries``, tags description/tactics/techniques) and functions
  (``functionAlias``, ``functionParameters``);
- ``Microsoft.Insights/workbooks`` (API ``2022-04-01``, kind ``shared``, category
  ``sentinel``, ``sourceId`` the workspace).

The ATT&CK mapping of the enrichment detections lives in the analytics rules that mirror
them (``detection``, ``tactics``, ``techniques``); the function ``S3SentinelAttack`` is
generated from it, so the findings rules give each alert its detection's tactics.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from operators.enrich.rules import RuleSet
from operators.enrich.sequences import load_sequences
from operators.tabledef import TableDef, load_tables

__all__ = ["ALERT_RULES_API", "CONTENT_DIR", "SAVED_SEARCHES_API", "WORKBOOKS_API", "Content",
           "ContentError", "Item", "SOURCE_ROWS_MARK", "TABLES_MARK", "content_resources",
           "content_template", "detections", "expand", "load_content", "parse_duration",
           "with_content", "workbook_data"]

CONTENT_DIR = Path(str(resources.files("operators") / "content"))
"""The shipped content (package data of ``operators``: ``operators/content/``)."""
ALERT_RULES_API = "2024-09-01"
SAVED_SEARCHES_API = "2020-08-01"
WORKBOOKS_API = "2022-04-01"
FINDINGS_PRIORITIES = ("critical", "high", "intel", "anomalous")
TABLES_MARK = "__S3SENTINEL_TABLES__"
"""In a query: the tables the deployment writes, comma-separated (the health table left out)."""
SOURCE_ROWS_MARK = "__S3SENTINEL_SOURCE_ROWS__"
"""In a query: one union arm per data table the deployment writes, its record id column as
``SourceRecordId`` (``RecordId_CF`` on Azure's tables, ``RecordId`` on custom ones)."""

# What Sentinel accepts (learn.microsoft.com/azure/sentinel/scheduled-rules-overview,
# map-data-fields-to-entities, surface-custom-details-in-alerts, customize-alert-details; the
# enums of the 2024-09-01 REST spec, AlertRules.json and common/AlertTypes.json).
SEVERITIES = ("High", "Medium", "Low", "Informational")
TACTICS = ("Reconnaissance", "ResourceDevelopment", "InitialAccess", "Execution", "Persistence",
           "PrivilegeEscalation", "DefenseEvasion", "CredentialAccess", "Discovery",
           "LateralMovement", "Collection", "Exfiltration", "CommandAndControl", "Impact",
           "PreAttack", "ImpairProcessControl", "InhibitResponseFunction")
TRIGGER_OPERATORS = ("GreaterThan", "LessThan", "Equal", "NotEqual")
IDENTIFIERS = {
    "Account": ("Name", "FullName", "NTDomain", "DnsDomain", "UPNSuffix", "Sid", "AadTenantId",
                "AadUserId", "PUID", "IsDomainJoined", "DisplayName", "ObjectGuid"),
    "Host": ("DnsDomain", "NTDomain", "HostName", "FullName", "NetBiosName", "AzureID",
             "OMSAgentID", "OSFamily", "OSVersion", "IsDomainJoined"),
    "IP": ("Address", "AddressScope"), "URL": ("Url",), "AzureResource": ("ResourceId",),
    "CloudApplication": ("AppId", "Name", "InstanceName"), "DNS": ("DomainName",),
}
FREQUENCY = (timedelta(minutes=5), timedelta(days=14))
MAX_PERIOD = timedelta(days=14)
MAX_SUPPRESSION = timedelta(hours=24)
GROUPING_LOOKBACK = (timedelta(minutes=5), timedelta(days=7))
MAX_QUERY_CHARS = 10_000
MAX_ENTITIES, MAX_IDENTIFIERS, MAX_CUSTOM_DETAILS, MAX_FORMAT_PARAMS = 5, 3, 20, 3
MAX_NAME_CHARS = 256

_KINDS = ("analytic", "hunting", "function", "workbook")
_KEYS = {
    "analytic": {"severity", "frequency", "period", "trigger_operator", "trigger_threshold",
                 "detection", "findings", "tactics", "techniques", "aggregation", "suppression",
                 "entities", "custom_details", "alert", "grouping", "enabled"},
    "hunting": {"tactics", "techniques"},
    "function": {"alias", "parameters", "generated"},
    "workbook": {"items"},
}
_COMMON = {"kind", "id", "name", "description", "query", "tables"}
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_TECHNIQUE = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PARAM = re.compile(r"\{\{(\w+)\}\}")
_INGESTED = re.compile(r"ingestion_time\(\)\s*>\s*ago\((\d+)([mhd])\)")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "tables": list, "tactics": list, "techniques": list, "entities": list, "custom_details": dict,
    "alert": dict, "grouping": dict, "enabled": bool, "trigger_threshold": int, "items": list,
    "detection": str, "findings": str, "alias": str, "parameters": str, "generated": str,
    "frequency": str, "period": str, "suppression": str, "severity": str}
_VISUALS = ("table", "timechart", "barchart", "piechart", "areachart", "linechart", "tiles")


class ContentError(ValueError):
    """The content files are invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"content is invalid ({len(problems)} problem(s)):\n"
                         + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Item:
    """One content item as written (``data`` holds the kind-specific keys)."""

    kind: str
    id: str
    name: str
    description: str
    query: str
    origin: str
    tables: tuple[str, ...] = ()
    """Tables the item needs (empty: the tables its query names)."""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Content:
    """Every item, by kind, in file order."""

    items: tuple[Item, ...]

    def of(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.kind == kind]

    def attack(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Enrichment detection id -> (tactics, techniques), from the rules that mirror them."""
        return {i.data["detection"]: (tuple(i.data.get("tactics", ())),
                                      tuple(i.data.get("techniques", ())))
                for i in self.of("analytic") if "detection" in i.data}

    def function_body(self, item: Item, tables: Mapping[str, TableDef] | None = None) -> str:
        """A function's KQL (the generated ATT&CK table for ``generated = "attack"``)."""
        if item.data.get("generated") != "attack":
            return expand(item.query, tables)
        rows = ",\n".join(f'  "{d}", "{",".join(t)}", "{",".join(q)}"'
                          for d, (t, q) in sorted(self.attack().items()))
        return ("datatable(DetectionId:string, Tactics:string, Techniques:string) [\n"
                f"{rows}\n]")

    def queries(self, tables: Mapping[str, TableDef] | None = None,
                ) -> Iterator[tuple[str, str]]:
        """(label, KQL) of every query shipped for a deployment writing ``tables`` (default:
        every defined table): rules, hunting, functions, workbook tiles."""
        for item in self.items:
            if item.kind == "workbook":
                for n, tile in enumerate(item.data["items"]):
                    if "query" in tile:
                        yield f"workbook/{item.id}#{n}", expand(tile["query"], tables)
            elif item.kind == "function":  # parameters as lets, so the body stands alone
                lets = "".join(f"let {name.strip()} = {(default or kind + '(null)').strip()};\n"
                               for name, kind, default in _parameters(item))
                yield f"function/{item.id}", lets + self.function_body(item, tables)
            else:
                yield f"{item.kind}/{item.id}", expand(item.query, tables)


def expand(query: str, tables: Mapping[str, TableDef] | None = None) -> str:
    """``query`` with :data:`TABLES_MARK` and :data:`SOURCE_ROWS_MARK` written out for a
    deployment writing ``tables`` (default: every defined table)."""
    if TABLES_MARK not in query and SOURCE_ROWS_MARK not in query:
        return query
    tables = tables if tables is not None else load_tables()
    data = sorted((t for t in tables.values() if not t.name.startswith("S3Sentinel")),
                  key=lambda t: t.name)
    listed = [t.name for t in data] + [n for n in ("S3SentinelFindings_CL",) if n in tables]
    arms = [f'({t.name} | extend SourceRecordId = tostring(column_ifexists('
            f'"{t.record_id_column}", "")))' for t in data]
    empty = "(datatable(TimeGenerated:datetime, SourceRecordId:string) [])"
    return (query.replace(TABLES_MARK, ", ".join(listed) or empty)
            .replace(SOURCE_ROWS_MARK, ",\n        ".join(arms) or empty))


def _parameters(item: Item) -> list[tuple[str, str, str]]:
    """A function's parameters as (name, type, default or "")."""
    out = []
    for part in filter(None, (p.strip() for p in item.data.get("parameters", "").split(","))):
        decl, _, default = part.partition("=")
        name, _, kind = decl.partition(":")
        out.append((name.strip(), kind.strip(), default.strip()))
    return out


def parse_duration(text: str) -> timedelta:
    """An ISO-8601 duration of days, hours, minutes and seconds (``PT5M``, ``P1DT6H``)."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m or text in ("P", "PT") or text.endswith("T"):
        msg = f"{text!r} is not an ISO-8601 duration such as PT5M, PT1H or P1D"
        raise ValueError(msg)
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return timedelta(days=d, hours=h, minutes=mi, seconds=s)


@functools.cache
def detections() -> dict[str, tuple[str, str]]:
    """Shipped enrichment detections: id -> (``rule``, ``sequence`` or ``burst``, priority).

    Read once (the shipped files do not change while the process runs); do not modify."""
    out = {r.id: ("rule", r.priority) for r in RuleSet.load().rules}
    for s in load_sequences():
        out[s.id] = ("burst" if len(s.counts) == 1 and s.counts[0] > 1 else "sequence",
                     s.priority)
    return out


def load_content(root: str | Path | None = None) -> Content:
    """Every ``<kind>/<id>.toml`` under ``root`` (default: the shipped content), checked.

    :raises ContentError: With every problem of every file.
    """
    root = Path(root) if root is not None else CONTENT_DIR
    problems: list[str] = []
    if not root.is_dir():
        raise ContentError([f"{root} is not a directory of content (operators/content/<kind>/<id>.toml)"])
    items: list[Item] = []
    for path in sorted(root.glob("*/*.toml")):
        where = str(path.relative_to(root))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as ex:
            problems.append(f"{where}: cannot read it as TOML: {ex}")
            continue
        item = _item(data, path.parent.name, path.stem, where, problems)
        if item is not None:
            items.append(item)
    for key, what in ((lambda i: i.id, "id"), (lambda i: (i.kind, i.name), "name")):
        seen: dict[Any, str] = {}
        for i in items:
            if key(i) in seen:
                problems.append(f"{i.origin}: {what} {key(i)!r} is also {seen[key(i)]}'s")
            seen.setdefault(key(i), i.origin)
    content = Content(tuple(items))
    _check_detections(content, problems)
    if problems:
        raise ContentError(problems)
    return content


def _item(data: dict[str, Any], folder: str, stem: str, where: str,
          problems: list[str]) -> Item | None:
    n = len(problems)
    kind = data.get("kind")
    if kind not in _KINDS or kind != folder:
        problems.append(f"{where}: kind {kind!r} must be one of {', '.join(_KINDS)} and name "
                        "its folder")
        return None
    for k in sorted(set(data) - _COMMON - _KEYS[kind]):
        problems.append(f"{where}: unknown key {k!r}; {kind} items take "
                        f"{', '.join(sorted(_COMMON | _KEYS[kind]))}")
    typed = len(problems)
    for k, want in _TYPES.items():
        if k in data and (not isinstance(data[k], want) or isinstance(data[k], bool) != (
                want is bool)):
            problems.append(f"{where}: {k!r} must be a {getattr(want, '__name__', want)}")
    for k in ("entities", "items"):
        if isinstance(data.get(k), list) and not all(isinstance(e, dict) for e in data[k]):
            problems.append(f"{where}: each of {k!r} must be a table")
    for k in ("custom_details", "alert"):
        if isinstance(data.get(k), dict) and not all(isinstance(v, str)
                                                      for v in data[k].values()):
            problems.append(f"{where}: the values of {k!r} must be strings (column names)")
    if len(problems) > typed:
        return None
    if data.get("id") != stem or not _ID.match(stem):
        problems.append(f"{where}: id {data.get('id')!r} must be the file name ({stem!r}): "
                        "lower-case letters, digits, '-' and '_'")
    for k in ("name", "description"):
        if not isinstance(data.get(k), str) or not data[k].strip():
            problems.append(f"{where}: {k!r} must be a non-empty string")
    query = data.get("query", "")
    needs_query = kind in ("analytic", "hunting") or (kind == "function"
                                                       and "generated" not in data)
    if needs_query and (not isinstance(query, str) or not query.strip()):
        problems.append(f"{where}: 'query' (KQL) is missing")
    {"analytic": _check_analytic, "hunting": _check_attack, "function": _check_function,
     "workbook": _check_workbook}[kind](data, where, problems)
    if len(problems) > n:
        return None
    return Item(kind, stem, data["name"], _unwrap(data["description"]), str(query).strip(),
                where, tuple(data.get("tables", ())),
                {k: v for k, v in data.items() if k not in _COMMON})


def _unwrap(text: str) -> str:
    """Hard-wrapped TOML text as paragraphs (blank and indented lines are kept)."""
    out: list[str] = []
    for line in text.strip().split("\n"):
        if out and out[-1] and line and not line[0].isspace() and not out[-1][0].isspace():
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def _duration(data: Mapping[str, Any], key: str, where: str, problems: list[str],
              default: str | None = None) -> timedelta | None:
    try:
        return parse_duration(data.get(key, default))
    except ValueError as ex:
        problems.append(f"{where}: {key}: {ex}")
        return None


def _check_attack(data: Mapping[str, Any], where: str, problems: list[str]) -> None:
    bad = [t for t in data.get("tactics", ()) if t not in TACTICS]
    if bad:
        problems.append(f"{where}: tactics {bad} are not ATT&CK tactics Sentinel knows "
                        f"({', '.join(TACTICS)})")
    bad = [t for t in data.get("techniques", ()) if not _TECHNIQUE.match(str(t))]
    if bad:
        problems.append(f"{where}: techniques {bad} must be ATT&CK ids (T1078 or T1078.004)")


def _check_analytic(data: Mapping[str, Any], where: str, problems: list[str]) -> None:
    _check_attack(data, where, problems)
    if data.get("severity") not in SEVERITIES:
        problems.append(f"{where}: severity {data.get('severity')!r} is not one of "
                        f"{', '.join(SEVERITIES)}")
    freq = _duration(data, "frequency", where, problems)
    period = _duration(data, "period", where, problems)
    if freq is not None and not FREQUENCY[0] <= freq <= FREQUENCY[1]:
        problems.append(f"{where}: frequency {data['frequency']} is outside 5 minutes..14 days")
    if period is not None and not FREQUENCY[0] <= period <= MAX_PERIOD:
        problems.append(f"{where}: period {data['period']} is outside 5 minutes..14 days")
    if freq is not None and period is not None and period < freq:
        problems.append(f"{where}: period {data['period']} is shorter than frequency "
                        f"{data['frequency']}: events between runs would never be looked at")
    query = data.get("query", "")
    if isinstance(query, str) and freq is not None:
        for num, unit in _INGESTED.findall(query):
            since = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: int(num)})
            if since != freq:
                problems.append(f"{where}: the query takes rows ingested in the last {num}{unit} "
                                f"but runs every {data['frequency']}: rows would be missed or "
                                "alerted twice")
        if len(query) > MAX_QUERY_CHARS:
            problems.append(f"{where}: the query has {len(query)} characters; rules take at most "
                            f"{MAX_QUERY_CHARS}")
        if re.search(r"\b(search|union)\s+\*", query):
            problems.append(f"{where}: rules cannot use 'search *' or 'union *'")
    if data.get("trigger_operator", "GreaterThan") not in TRIGGER_OPERATORS:
        problems.append(f"{where}: trigger_operator must be one of {', '.join(TRIGGER_OPERATORS)}")
    if not isinstance(data.get("trigger_threshold", 0), int):
        problems.append(f"{where}: trigger_threshold must be a whole number")
    if data.get("aggregation", "AlertPerResult") not in ("AlertPerResult", "SingleAlert"):
        problems.append(f"{where}: aggregation must be AlertPerResult or SingleAlert")
    if "suppression" in data:
        s = _duration(data, "suppression", where, problems)
        if s is not None and not timedelta(minutes=5) <= s <= MAX_SUPPRESSION:
            problems.append(f"{where}: suppression {data['suppression']} is outside 5m..24h")
    if data.get("findings") not in (None, *FINDINGS_PRIORITIES):
        problems.append(f"{where}: findings {data.get('findings')!r} is not one of "
                        f"{', '.join(FINDINGS_PRIORITIES)}")
    _check_enrichment(data, where, problems)


def _check_enrichment(data: Mapping[str, Any], where: str, problems: list[str]) -> None:
    """Entities, custom details, alert details and grouping of an analytics rule."""
    entities = data.get("entities", [])
    if len(entities) > MAX_ENTITIES:
        problems.append(f"{where}: {len(entities)} entity mappings; a rule takes {MAX_ENTITIES}")
    for e in entities:
        fields = {k: v for k, v in e.items() if k != "type"}
        known = IDENTIFIERS.get(e.get("type"), ())
        if not known or not fields or len(fields) > MAX_IDENTIFIERS or set(fields) - set(known):
            problems.append(f"{where}: entity {e!r}: a type of {', '.join(IDENTIFIERS)} with 1 to "
                            f"{MAX_IDENTIFIERS} of its identifiers ({', '.join(known) or '-'})")
    details = data.get("custom_details", {})
    if len(details) > MAX_CUSTOM_DETAILS:
        problems.append(f"{where}: {len(details)} custom details; a rule takes "
                        f"{MAX_CUSTOM_DETAILS}")
    alert = data.get("alert", {})
    for k in sorted(set(alert) - {"name", "description", "tactics_column", "severity_column"}):
        problems.append(f"{where}: alert.{k} is unknown")
    for k in ("name", "description"):
        if len(_PARAM.findall(alert.get(k, ""))) > MAX_FORMAT_PARAMS:
            problems.append(f"{where}: alert.{k} has more than {MAX_FORMAT_PARAMS} {{{{columns}}}}")
    if len(alert.get("name", "")) > MAX_NAME_CHARS or len(data.get("name", "")) > MAX_NAME_CHARS:
        problems.append(f"{where}: names take at most {MAX_NAME_CHARS} characters")
    grouping = data.get("grouping")
    if grouping is None:
        return
    for k in sorted(set(grouping) - {"by_entities", "by_custom_details", "lookback", "reopen",
                                     "matching"}):
        problems.append(f"{where}: grouping.{k} is unknown")
    look = _duration(grouping, "lookback", where, problems, "PT5H")
    if look is not None and not GROUPING_LOOKBACK[0] <= look <= GROUPING_LOOKBACK[1]:
        problems.append(f"{where}: grouping.lookback is outside 5 minutes..7 days")
    mapped = {e.get("type") for e in entities}
    if set(grouping.get("by_entities", ())) - mapped or \
            set(grouping.get("by_custom_details", ())) - set(details):
        problems.append(f"{where}: grouping names entities or custom details the rule lacks")
    matching = grouping.get("matching", "Selected")
    if matching not in ("Selected", "AllEntities", "AnyAlert") or (matching == "Selected" and not (
            grouping.get("by_entities") or grouping.get("by_custom_details"))):
        problems.append(f"{where}: grouping.matching Selected needs by_entities or "
                        "by_custom_details (or use AllEntities, AnyAlert)")


def _check_function(data: Mapping[str, Any], where: str, problems: list[str]) -> None:
    if not re.match(r"^[A-Za-z_]\w*$", str(data.get("alias", ""))):
        problems.append(f"{where}: alias must be a KQL identifier")
    for part in filter(None, (p.strip() for p in str(data.get("parameters", "")).split(","))):
        decl = part.partition("=")[0]
        if not re.match(r"^\s*[A-Za-z_]\w*\s*:\s*(string|int|long|real|bool|datetime|timespan|"
                        r"dynamic)\s*$", decl):
            problems.append(f"{where}: parameter {part!r} must be 'name:type' or "
                            "'name:type = default'")
    if data.get("generated") not in (None, "attack") or ("generated" in data and "query" in data):
        problems.append(f"{where}: generated = \"attack\" (and no query) is the only generator")


def _check_workbook(data: Mapping[str, Any], where: str, problems: list[str]) -> None:
    tiles = data.get("items")
    if not isinstance(tiles, list) or not tiles:
        problems.append(f"{where}: 'items' must list text and query tiles")
        return
    for n, tile in enumerate(tiles):
        ok = (set(tile) <= {"text"} and tile) or (
            {"query", "title"} <= set(tile) <= {"query", "title", "visualization", "width"}
            and tile.get("visualization", "table") in _VISUALS)
        if not ok:
            problems.append(f"{where}: items[{n}] must be {{text}} or {{title, query, "
                            f"visualization ({', '.join(_VISUALS)}), width}}")


def _check_detections(content: Content, problems: list[str]) -> None:
    known = detections()
    for item in content.of("analytic"):
        det = item.data.get("detection")
        if det is None:
            continue
        if det not in known or known[det][1] not in ("critical", "high"):
            problems.append(f"{item.origin}: detection {det!r} is not a shipped critical or high "
                            "enrichment rule, sequence or burst")
        elif item.data["severity"] != {"critical": "High", "high": "Medium"}[known[det][1]]:
            problems.append(f"{item.origin}: a {known[det][1]} detection raises "
                            f"{'High' if known[det][1] == 'critical' else 'Medium'} alerts")
    mirrored = [i.data["detection"] for i in content.of("analytic") if "detection" in i.data]
    for det in sorted({d for d in mirrored if mirrored.count(d) > 1}):
        problems.append(f"detection {det!r} is mirrored by more than one rule")


# --------------------------------------------------------------------------- ARM resources


def _lit(text: str) -> str:
    """``text`` as a literal ARM string (a leading ``[`` would make it an expression)."""
    return "[" + text if text.startswith("[") else text


def referenced_tables(query: str, known: Collection[str]) -> set[str]:
    """The names of ``known`` tables ``query`` mentions."""
    return {t for t in known if re.search(rf"(?<![\w.$]){re.escape(t)}(?!\w)", query)}


def _wanted(item: Item, content: Content, tables: Mapping[str, TableDef], known: set[str],
            skip: Collection[str]) -> bool:
    if item.kind == "workbook":
        return True
    query = content.function_body(item, tables) if item.kind == "function" else item.query
    needs = set(item.tables) or referenced_tables(query, known)
    det = item.data.get("detection")
    return needs <= set(tables) and det not in skip


def _attack_of(item: Item, content: Content) -> tuple[list[str], list[str]]:
    """An analytics rule's tactics and techniques; a findings rule has those of every
    detection of its priority."""
    tactics, techniques = set(item.data.get("tactics", ())), set(item.data.get("techniques", ()))
    prio = item.data.get("findings")
    if prio in ("critical", "high"):
        known = detections()
        for det, (t, q) in content.attack().items():
            if known[det][1] == prio:
                tactics |= set(t)
                techniques |= set(q)
    return sorted(tactics, key=TACTICS.index), sorted(techniques)


def _alert_rule(item: Item, content: Content, ws_name: str, ws_id: str, depends: list[str],
                tables: Mapping[str, TableDef]) -> dict[str, Any]:
    d = item.data
    tactics, techniques = _attack_of(item, content)
    desc = item.description + f"\n\nShipped by s3sentinel (operators/content/{item.origin})."
    if techniques:
        desc += f" ATT&CK: {', '.join(techniques)}."
    group = d.get("grouping")
    g = group or {}
    props: dict[str, Any] = {
        "displayName": _lit(item.name), "description": _lit(desc), "severity": d["severity"],
        "enabled": d.get("enabled", True), "query": _lit(expand(item.query, tables)),
        "queryFrequency": d["frequency"], "queryPeriod": d["period"],
        "triggerOperator": d.get("trigger_operator", "GreaterThan"),
        "triggerThreshold": d.get("trigger_threshold", 0),
        "suppressionEnabled": "suppression" in d,
        "suppressionDuration": d.get("suppression", "PT5H"),
        "tactics": tactics, "techniques": sorted({t.split(".")[0] for t in techniques}),
        "eventGroupingSettings": {"aggregationKind": d.get("aggregation", "AlertPerResult")},
        "entityMappings": [{"entityType": e["type"], "fieldMappings": [
            {"identifier": k, "columnName": v} for k, v in e.items() if k != "type"]}
            for e in d.get("entities", ())],
        "incidentConfiguration": {"createIncident": True, "groupingConfiguration": {
            "enabled": group is not None, "reopenClosedIncident": g.get("reopen", False),
            "lookbackDuration": g.get("lookback", "PT5H"),
            "matchingMethod": g.get("matching", "Selected" if group else "AllEntities"),
            "groupByEntities": list(g.get("by_entities", ())), "groupByAlertDetails": [],
            "groupByCustomDetails": list(g.get("by_custom_details", ()))}},
    }
    if d.get("custom_details"):
        props["customDetails"] = dict(d["custom_details"])
    alert = d.get("alert", {})
    override = {k: _lit(alert[a]) for k, a in (
        ("alertDisplayNameFormat", "name"), ("alertDescriptionFormat", "description"),
        ("alertTacticsColumnName", "tactics_column"),
        ("alertSeverityColumnName", "severity_column")) if a in alert}
    if override:
        props["alertDetailsOverride"] = override
    return {"type": "Microsoft.SecurityInsights/alertRules", "apiVersion": ALERT_RULES_API,
            "name": f"[guid({ws_id}, 's3sentinel', '{item.id}')]",
            "scope": f"[concat('Microsoft.OperationalInsights/workspaces/', {ws_name})]",
            "kind": "Scheduled", "dependsOn": depends, "properties": props}


def _saved_search(item: Item, content: Content, ws_name: str,
                  tables: Mapping[str, TableDef]) -> dict[str, Any]:
    props: dict[str, Any] = {"displayName": _lit(item.name), "version": 2}
    if item.kind == "hunting":
        props |= {"category": "Hunting Queries", "query": _lit(expand(item.query, tables)),
                  "tags": [
            {"name": "description", "value": _lit(item.description)},
            {"name": "tactics", "value": ",".join(item.data.get("tactics", ()))},
            {"name": "techniques", "value": ",".join(item.data.get("techniques", ()))}]}
    else:
        props |= {"category": "s3sentinel", "query": _lit(content.function_body(item, tables)),
                  "functionAlias": item.data["alias"]}
        if item.data.get("parameters"):
            props["functionParameters"] = item.data["parameters"]
    return {"type": "Microsoft.OperationalInsights/workspaces/savedSearches",
            "apiVersion": SAVED_SEARCHES_API,
            "name": f"[concat({ws_name}, '/s3sentinel-{item.id}')]", "properties": props}


def workbook_data(item: Item, tables: Mapping[str, TableDef]) -> dict[str, Any]:
    """The workbook's ``serializedData`` (Notebook/1.0) before it is written as text."""
    day_ms = 86_400_000
    tiles: list[dict[str, Any]] = [{"type": 9, "name": "parameters", "content": {
        "version": "KqlParameterItem/1.0", "style": "pills", "queryType": 0,
        "resourceType": "microsoft.operationalinsights/workspaces", "parameters": [{
            "id": "9b1f8a52-6d2c-4a8e-b3a1-5c3f0e7d2a41", "version": "KqlParameterItem/1.0",
            "name": "TimeRange", "label": "Time range", "type": 4, "isRequired": True,
            "value": {"durationMs": day_ms}, "typeSettings": {"selectableValues": [
                {"durationMs": ms} for ms in (3_600_000, 14_400_000, day_ms, 7 * day_ms,
                                              14 * day_ms, 30 * day_ms)]}}]}}]
    for n, tile in enumerate(item.data["items"]):
        if "text" in tile:
            tiles.append({"type": 1, "name": f"text - {n}", "content": {"json": tile["text"]}})
            continue
        tiles.append({"type": 3, "name": f"query - {n}", "customWidth": str(tile.get("width", 100)),
                      "content": {"version": "KqlItem/1.0", "query": expand(tile["query"], tables),
                                  "size": 0,
                                  "title": tile["title"], "timeContext": {"durationMs": day_ms},
                                  "timeContextFromParameter": "TimeRange", "queryType": 0,
                                  "resourceType": "microsoft.operationalinsights/workspaces",
                                  "visualization": tile.get("visualization", "table")}})
    return {"version": "Notebook/1.0", "items": tiles, "fallbackResourceIds": [],
            "fromTemplateId": f"s3sentinel-{item.id}",
            "$schema": "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/"
                       "schema/workbook.json"}


def _workbook(item: Item, ws_id: str, tables: Mapping[str, TableDef]) -> dict[str, Any]:
    return {"type": "Microsoft.Insights/workbooks", "apiVersion": WORKBOOKS_API,
            "name": f"[guid({ws_id}, 's3sentinel', 'workbook', '{item.id}')]",
            "location": "[parameters('location')]", "kind": "shared", "properties": {
                "displayName": _lit(item.name), "category": "sentinel", "version": "1.0",
                "sourceId": f"[{ws_id}]",
                "serializedData": json.dumps(workbook_data(item, tables),
                                             separators=(",", ":"))}}


def content_resources(tables: Mapping[str, TableDef], *, content: Content | None = None,
                      workspace_param: str = "workspaceName", workspace_is_id: bool = False,
                      detectors: Collection[str] | None = None,
                      table_ids: Mapping[str, str] | None = None,
                      ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The ARM resources of the content for a deployment writing ``tables``, and the template
    parameters they use (the workspace's, ``location``).

    An item is left out when a table it needs is not in ``tables``, and so is a rule that
    mirrors an enrichment detection whose findings reach ``S3SentinelFindings_CL``
    (``detectors``: ``rules``, ``sequences``; default both; none when the table is not
    written): those findings already raise through the findings rules.

    :arg workspace_param: The parameter naming the workspace, or holding its resource id
        when ``workspace_is_id`` (as ``workspaceResourceId`` in :func:`deploy_template`).
    :arg table_ids: Table name -> resource id expression of the tables the same template
        creates: the rules reading them wait for them.
    """
    content = content if content is not None else load_content()
    if "S3SentinelFindings_CL" not in tables:  # no findings can raise: mirror everything
        detectors = ()
    elif detectors is None:
        detectors = ("rules", "sequences")
    known = detections()
    skip = {d for d, (kind, _) in known.items() if {"rule": "rules"}.get(kind, "sequences")
            in detectors}
    universe = set(load_tables()) | set(tables)
    p = f"parameters('{workspace_param}')"
    ws_name, ws_id = (f"split({p}, '/')[8]", p) if workspace_is_id else (
        p, f"resourceId('Microsoft.OperationalInsights/workspaces', {p})")
    chosen = [i for i in content.items if _wanted(i, content, tables, universe, skip)]
    aliases = {i.data["alias"]: f"[resourceId('Microsoft.OperationalInsights/workspaces/"
                                f"savedSearches', {ws_name}, 's3sentinel-{i.id}')]"
               for i in chosen if i.kind == "function"}
    out: list[dict[str, Any]] = []
    for item in chosen:
        if item.kind == "analytic":
            depends = sorted({ref for a, ref in aliases.items()
                              if re.search(rf"\b{a}\b", item.query)} |
                             {f"[{ref}]" for t, ref in (table_ids or {}).items()
                              if t in referenced_tables(item.query, universe)})
            out.append(_alert_rule(item, content, ws_name, ws_id, depends, tables))
        elif item.kind in ("hunting", "function"):
            out.append(_saved_search(item, content, ws_name, tables))
        else:
            out.append(_workbook(item, ws_id, tables))
    what = "Resource id" if workspace_is_id else "Name"
    params: dict[str, dict[str, Any]] = {
        workspace_param: {"type": "string", "metadata": {"description": (
            f"{what} of the Log Analytics workspace where Microsoft Sentinel is enabled (in "
            "this resource group)")}},
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]"}}
    return out, params


def content_template(tables: Mapping[str, TableDef], *, workspace_param: str = "workspaceName",
                     content: Content | None = None,
                     detectors: Collection[str] | None = None) -> dict[str, Any]:
    """An ARM template of its own with the content for a deployment writing ``tables``."""
    resources, params = content_resources(tables, content=content, detectors=detectors,
                                          workspace_param=workspace_param)
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                       "deploymentTemplate.json#",
            "contentVersion": "1.0.0.0", "metadata": {"generator": "s3sentinel content"},
            "parameters": params, "resources": resources}


def with_content(template: dict[str, Any], tables: Mapping[str, TableDef], *,
                 content: Content | None = None,
                 detectors: Collection[str] | None = None) -> dict[str, Any]:
    """``template`` (from :func:`dataflow.dcr.deploy_template`, with the same ``tables``) with
    the content for the tables its DCRs write; rules wait for the tables it creates."""
    streams = {s for r in template["resources"]
               if r["type"] == "Microsoft.Insights/dataCollectionRules"
               for s in r["properties"]["streamDeclarations"]}
    written = {n: t for n, t in tables.items() if t.stream in streams}
    created = {r["properties"]["schema"]["name"] for r in template["resources"]
               if r["type"] == "Microsoft.OperationalInsights/workspaces/tables"}
    ids = {t: "resourceId('Microsoft.OperationalInsights/workspaces/tables', "
              f"split(parameters('workspaceResourceId'), '/')[8], '{t}')" for t in created}
    resources, params = content_resources(
        written, content=content, detectors=detectors, workspace_param="workspaceResourceId",
        workspace_is_id=True, table_ids=ids)
    return {**template, "parameters": {**params, **template["parameters"]},
            "resources": [*template["resources"], *resources]}
