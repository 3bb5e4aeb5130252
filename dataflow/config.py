"""One validated configuration for the whole connector.

The file is TOML. Every key is checked when the connector starts: unknown keys, wrong
types and bad values are all reported at once, each with its key path, before any
work begins. Environment variables override file values::

    S3SENTINEL__SENTINEL__ENDPOINT=https://my-dce.eastus-1.ingest.monitor.azure.com
    S3SENTINEL__SOURCES__cloudtrail__BUCKET=org-trail      # a source by name (or index)

A value from the environment is read as a TOML value when it parses as one
(``10``, ``true``, ``[1, 2]``) and as a plain string otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from connectors.aws import AwsConfig
from connectors.ops.config import OpsConfig, WebhookConfig
from connectors.s3.config import Format, SourceConfig
from connectors.sentinel.config import DEFAULT_TARGET, SentinelConfig, TargetConfig
from dataflow.core.errors import TerminalError
from operators.batch import BatchConfig
from operators.enrich.config import EnrichConfig
from operators.tabledef import TableColumnConfig, TableConfig
from operators.transform import RouteConfig, TransformConfig

__all__ = [
    "AwsConfig",
    "BatchConfig",
    "Config",
    "ConfigError",
    "Format",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "EnrichConfig",
    "OpsConfig",
    "RuntimeConfig",
    "SentinelConfig",
    "SourceConfig",
    "TargetConfig",
    "TableColumnConfig",
    "TableConfig",
    "RouteConfig",
    "TransformConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
]

ENV_CONFIG_PATH = "S3SENTINEL_CONFIG"
"""Environment variable holding the config file path (used by ``python -m bytewax.run``)."""

ENV_PREFIX = "S3SENTINEL__"
"""Prefix of environment overrides; ``__`` separates the key path."""

Mode = Literal["continuous", "catch_up"]



class ConfigError(TerminalError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem with its key path."""

    def __init__(self, problems: list[str], origin: str = "configuration") -> None:
        self.problems = problems
        self.origin = origin
        lines = "\n".join(f"  - {p}" for p in problems)
        msg = f"{origin} is invalid ({len(problems)} problem(s)):\n{lines}"
        super().__init__(msg)



@dataclass(frozen=True)
class RuntimeConfig:
    """How the flow runs."""

    mode: Mode = "continuous"
    """``continuous`` polls forever; ``catch_up`` drains what is there and exits."""
    errors_dir: str = ".s3sentinel/errors"
    """Records and objects that could not be parsed or mapped are written here (JSON lines)."""
    errors_s3_uri: str | None = None
    """``s3://bucket/prefix/``: write the error records there instead of errors_dir."""
    tables_dir: str | None = None
    """Extra directory of table definition files (*.toml)."""
    journal_dir: str = ".s3sentinel/journal"
    """The upload journal (records already accepted; keep it beside the recovery store)."""
    journal_retention_secs: float = 7 * 24 * 3600.0
    """How long delivered ranges are remembered after an object's last delivery."""
    encryption_key_file: str = ""
    """Encrypt dead-letter entries (AES-256-GCM) with the keys of this file (mode 0600:
    ``{"current": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}``)."""
    encryption_keyvault_keys: list[str] = field(default_factory=list)
    """Or: Key Vault secret names holding base64 keys (needs ops.keyvault_url); the key id is
    the secret name."""
    encryption_current_key: str = ""
    """Key id that encrypts (with encryption_keyvault_keys); the others only decrypt."""
    recovery_dir: str = ".s3sentinel/recovery"
    """bytewax recovery store, used by ``s3sentinel run`` in continuous mode (created on first
    start). Keep it, the journal and the dead-letter directory on durable storage."""
    snapshot_secs: int = 10
    """How often state is snapshotted to the recovery store."""
    recovery_partitions: int = 1
    """Partitions of a new recovery store (one SQLite file each)."""

    def validate(self, problems: list[str], where: str = "runtime") -> None:
        """Append what is wrong with this section to ``problems``."""
        uri = self.errors_s3_uri
        if uri is not None and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", uri):
            problems.append(f"{where}.errors_s3_uri: {uri!r} is not an s3://bucket/prefix/ URI")


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    sources: list[SourceConfig]
    sentinel: SentinelConfig = field(default_factory=SentinelConfig)
    targets: list[TargetConfig] = field(default_factory=list)
    aws: AwsConfig = field(default_factory=AwsConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tables: list[TableConfig] = field(default_factory=list)
    ops: OpsConfig = field(default_factory=OpsConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)
    transforms: list[TransformConfig] = field(default_factory=list)

    def source(self, name: str) -> SourceConfig:
        """The source named ``name``."""
        for src in self.sources:
            if src.name == name:
                return src
        msg = f"no source named {name!r}; configured: {[s.name for s in self.sources]}"
        raise KeyError(msg)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None, *, need_target: bool = True) -> Config:
    """Read, override from the environment, and validate the config file.

    :arg path: The TOML file; defaults to ``$S3SENTINEL_CONFIG``.
    :arg environ: Environment for overrides; defaults to ``os.environ``.
    :raises ConfigError: Listing every problem found.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(ENV_CONFIG_PATH)
        if not path:
            msg = f"no config file: pass a path or set {ENV_CONFIG_PATH}"
            raise ConfigError([msg])
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {p}"], origin=str(p)) from None
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError([f"not valid TOML: {ex}"], origin=str(p)) from None
    return parse_config(raw, environ=environ, origin=str(p), need_target=need_target)


def parse_config(raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                 origin: str = "configuration", need_target: bool = True) -> Config:
    """Validate an already-parsed config mapping (after applying env overrides).

    :arg need_target: Refuse a config with nowhere to deliver (``False`` for ``s3sentinel
        deploy``, which writes the template the targets come from).
    """
    problems: list[str] = []
    data = _apply_env(copy.deepcopy(dict(raw)), environ or {}, problems)
    cfg = _build(Config, data, "", problems)
    if cfg is not None and not problems:  # cross-field checks need the types right
        _check(cfg, problems, need_target)
    if problems:
        raise ConfigError(problems, origin=origin)
    assert isinstance(cfg, Config)
    return cfg


def _apply_env(data: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].split("__")
        try:
            parsed: Any = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    problems.append(f"{name}: no list item {part!r} (use an index or a name)")
                    break
                if last:
                    node[index] = parsed
                node = node[index]
                continue
            if not isinstance(node, dict):
                problems.append(f"{name}: {'.'.join(path[:i]).lower()} is a value, not a table")
                break
            key = part.lower()
            if last:
                node[key] = parsed
            else:
                node = node.setdefault(key, {})
    return data


_SECRET_KEY = re.compile(r"(?i)(token|secret|password|jwt_key|revoked|webhooks|url|key_file|"
                         r"keyvault_keys)")


def _shown(path: str, value: Any) -> str:
    """``value`` for a problem message; for a key that may hold a secret only its type (a
    numeric token set through the environment must not be echoed into the logs)."""
    if _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
        return f"a {type(value).__name__} (value not shown)"
    return repr(value)


def _list_index(items: list[Any], part: str) -> int | None:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    return None


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert ``value`` to type ``tp``, appending problems instead of raising."""
    origin = typing.get_origin(tp)
    where = path or "(top level)"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {type(value).__name__}")
            return None
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                problems.append(f"{_join(path, key)}: unknown key (known keys: {known})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(path, name), problems)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{_join(path, name)}: required key is missing")
        try:
            return tp(**kwargs)
        except TypeError:
            return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        label = "name" if dataclasses.is_dataclass(item_tp) else None
        out = []
        for i, item in enumerate(value):
            tag = item.get(label) if label and isinstance(item, dict) else None
            out.append(_build(item_tp, item, f"{path}[{tag or i}]", problems))
        return out
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{where}: {_shown(path, value)} is not one of "
                            f"{', '.join(map(repr, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, path, problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{where}: expected {tp.__name__}, got {_shown(path, value)}")
        return value
    problems.append(f"{where}: unsupported type {tp}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(cfg: Config, problems: list[str], need_target: bool = True) -> None:
    """Checks across fields, after types are right: each section checks itself (its own
    ``validate``), and what spans sections is checked here."""
    cfg.sentinel.validate(problems)
    cfg.aws.validate(problems)
    _check_targets(cfg, problems, need_target)
    cfg.batch.validate(problems)
    if not cfg.sources:
        problems.append("sources: at least one [[sources]] entry is needed")
    seen: set[str] = set()
    for src in cfg.sources:
        if src.name in seen:
            problems.append(f"sources[{src.name}].name: duplicate source name")
        seen.add(src.name)
        src.validate(problems)
    cfg.enrich.validate(problems)
    cfg.ops.validate(problems)
    cfg.runtime.validate(problems)
    for table in cfg.tables:
        table.validate(problems)
    for i, transform in enumerate(cfg.transforms):
        transform.validate(problems, f"transforms[{i}]")


def _check_targets(cfg: Config, problems: list[str], need_target: bool) -> None:
    """Targets: each valid, names unique, a DCR shared only under one identity, every
    source's target declared. (Which streams each target's DCRs must carry needs the
    tables: :func:`dataflow.targets.check_targets`.)"""
    if cfg.targets and cfg.sentinel.rule_id:
        problems.append("sentinel: endpoint/rule_id (one DCR) and [[targets]] exclude each "
                        "other: move the rule into a [[targets.dcrs]] entry")
    if need_target and not cfg.targets and not cfg.sentinel.rule_id:
        problems.append("targets: nowhere to deliver: declare [[targets]] (`s3sentinel deploy` "
                        "writes the template, `s3sentinel targets` the section), or the "
                        "single-DCR [sentinel] endpoint and rule_id")
    names = [t.name for t in cfg.targets] or [DEFAULT_TARGET]
    identity_of: dict[str, tuple[str, tuple[str, ...]]] = {}
    for target in cfg.targets:
        where = f"targets[{target.name}]"
        if names.count(target.name) > 1:
            problems.append(f"{where}.name: duplicate target name")
        target.validate(problems, where)
        for dcr in target.dcrs:
            seen = identity_of.setdefault(dcr.id, (target.name, target.identity()))
            if seen[0] != target.name and seen[1] != target.identity():
                problems.append(f"{where}.dcrs[{dcr.name}].id: DCR {dcr.id} is also in target "
                                f"{seen[0]!r} under another credential: one DCR belongs to one "
                                "identity (tenants must not share a rule)")
    for src in cfg.sources:
        if src.target and src.target not in names:
            problems.append(f"sources[{src.name}].target: no target {src.target!r} (targets: "
                            f"{', '.join(names)})")
