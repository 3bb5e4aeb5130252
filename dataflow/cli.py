"""The ``s3sentinel`` command.

- ``s3sentinel run -c CONFIG [-w N] [-r RECOVERY_DIR] [--catch-up]``: run the dataflow
  with ``python -m bytewax.run`` (other bytewax.run options may follow ``--``).
- ``s3sentinel validate-config -c CONFIG``: report every problem in the config at once.
- ``s3sentinel preview FILE_OR_S3_URI [--format F] [--table T]``: the rows a file would
  become (NDJSON on stdout), errors on stderr; exit 0 only when every record mapped. With
  ``-c CONFIG`` declaring ``[[transforms]]``: per table, rows and bytes before and after and
  the first rows after (``--json``, ``--rows N``, ``--source S``, ``--no-transforms``).
- ``s3sentinel dcr [--tables T,...] [-o FILE]``: the Data Collection Rule (ARM template)
  for the table definitions, so the DCR declares exactly what the connector sends.
- ``s3sentinel replay -c CONFIG [--since 6h] [--stream S] [--dry-run]``: send the
  dead-letter store's records again; what is delivered leaves the store.
- ``s3sentinel rotate-key -c CONFIG``: re-encrypt the dead-letter store under the current
  key (keep the old keys configured until it has finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

from connectors.aws import s3_client
from connectors.deadletter import DeadLetterStore
from connectors.sentinel.config import DEFAULT_TARGET, TargetConfig
from dataflow.config import ENV_CONFIG_PATH, Config, ConfigError, SourceConfig, load_config
from dataflow.content import ContentError, content_template, load_content, with_content
from dataflow.core.files import FILE_MODE, private_dir
from dataflow.dcr import (
    PlannedDcr,
    deploy_template,
    plan_dcrs,
    targets_from_outputs,
    targets_toml,
)
from dataflow.estimate import PRICES, estimate, print_estimate
from dataflow.keys import keyring_for
from dataflow.locality import ClusterShape
from dataflow.preview import preview
from dataflow.replay import parse_since, replay
from dataflow.tables import tables_for
from dataflow.targets import check_targets, legacy_warning, sent_streams
from operators.formats.registry import DEFAULT_TABLES
from operators.parse import RecordMapper
from operators.schema import TableError, load_tables
from operators.transform import check as check_transforms

__all__ = ["main"]

DESCRIPTION = ("Ship security logs from AWS S3 (CloudTrail, VPC Flow Logs, GuardDuty, WAF, "
               "load balancers, CloudFront, your own) into Microsoft Sentinel through the Logs "
               "Ingestion API, mapped onto Sentinel's tables, with retries, dead letters and "
               "metrics.")
"""What ``s3sentinel --help`` says the tool is."""

EPILOG = "Run 's3sentinel COMMAND --help' for a command's options."


def version() -> str:
    """The installed distribution's version ("unknown" when run from a source tree that was
    never installed)."""
    try:
        return importlib.metadata.version("s3sentinel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _config_arg(p: argparse.ArgumentParser, *, default_env: bool = True) -> None:
    """``-c CONFIG``, or the config file as the first positional argument."""
    p.add_argument("-c", "--config", type=Path,
                   default=os.environ.get(ENV_CONFIG_PATH) if default_env else None,
                   help=f"config file (TOML); default ${ENV_CONFIG_PATH}" if default_env
                   else "config file (TOML)")
    p.add_argument("config_file", nargs="?", type=Path, metavar="CONFIG",
                   help="the config file, as an alternative to -c")


def _config_path(args: argparse.Namespace) -> None:
    """Take a positional config path as ``args.config`` (``-c`` wins when both are given)."""
    positional = getattr(args, "config_file", None)
    if positional is not None and (args.config is None
                                   or str(args.config) == os.environ.get(ENV_CONFIG_PATH)):
        args.config = positional


def _describe(src: SourceConfig) -> str:
    """A source as ``validate-config`` prints it: where its records go."""
    if src.format == "auto":
        return (f"{src.name} (auto: format detected per object from the key layout or first "
                f"bytes -> {src.table or 'that format`s standard table'})")
    return f"{src.name} ({src.format} -> {src.table or DEFAULT_TABLES.get(src.format)})"


def _validate(args: argparse.Namespace) -> int:

    try:
        cfg = load_config(args.config)
        tables = tables_for(cfg)
        RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
        problems = check_targets(cfg, tables) + check_transforms(
            cfg.transforms, tables, [s.name for s in cfg.sources])
        if problems:
            raise ConfigError(problems, origin=str(args.config))
        if cfg.ops.health_table and cfg.ops.health_table not in tables:
            msg = (f"ops.health_table: no table {cfg.ops.health_table!r}; use the shipped "
                   "S3SentinelHealth_CL or declare it under [[tables]]")
            raise KeyError(msg)
    except (ConfigError, TableError, KeyError) as ex:
        print(str(ex).strip("'\""), file=sys.stderr)
        return 1
    names = ", ".join(_describe(s) for s in cfg.sources)
    warning = legacy_warning(cfg, tables)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid; sources: {names}")
    return 0


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.config is None:
        print(f"s3sentinel run: pass -c CONFIG or set {ENV_CONFIG_PATH}", file=sys.stderr)
        return 2
    if _validate(args) != 0:
        return 1
    os.environ[ENV_CONFIG_PATH] = str(args.config)
    if args.catch_up:
        os.environ["S3SENTINEL__RUNTIME__MODE"] = "catch_up"
    rt = load_config(args.config).runtime
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", str(args.workers)]
    if args.process_id is not None or args.addresses:
        if args.process_id is None or not args.addresses:
            print("s3sentinel run: -i/--process-id and -a/--addresses go together",
                  file=sys.stderr)
            return 2
        extra = ["--process-id", str(args.process_id), "--addresses", args.addresses, *extra]
    # Recovery is on by default in continuous mode: a restart resumes where it stopped.
    recovery = args.recovery_dir or (rt.recovery_dir if rt.mode == "continuous"
                                     and not args.no_recovery else None)
    if recovery:
        per_process = args.recovery_partitions or rt.recovery_partitions
        init_recovery(Path(recovery), per_process, ClusterShape.from_argv(extra),
                      Path(rt.journal_dir))
        _private_recovery(Path(recovery))
        snapshot = args.snapshot_secs or rt.snapshot_secs
        cmd += ["-r", str(recovery), "-s", str(snapshot), "-b", "0"]
    os.execv(sys.executable, cmd + extra)
    return 0  # not reached


def init_recovery(directory: Path, per_process: int, shape: ClusterShape,
                  journal_dir: Path | None = None) -> bool:
    """Create this process's recovery partitions on a new volume; whether it did.

    Each process keeps its own on its own volume (hosts share no disk): of a set of
    ``per_process x processes`` partitions, process ``i`` holds those whose number is ``i``
    modulo the process count, and bytewax finds the whole set across the processes. A
    directory that already holds partitions is left as it is (a restart, or a rescale that
    moved partition files by the README's procedure), and so is a volume of a cluster of
    several processes whose journal directory holds journals: it joined an existing
    cluster, whose partitions already exist elsewhere."""
    private_dir(directory)  # bytewax wants the directory, even with no partition in it
    if any(directory.glob("part-*.sqlite3")):
        return False
    if shape.processes > 1 and journal_dir is not None and any(journal_dir.glob("*.jsonl")):
        return False
    from bytewax.recovery import init_db_dir

    count = per_process * shape.processes
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        init_db_dir(Path(tmp), count)
        for k in range(count):
            if k % shape.processes == shape.process:
                os.replace(Path(tmp) / f"part-{k}.sqlite3", directory / f"part-{k}.sqlite3")
    return True


def _private_recovery(directory: Path) -> None:
    """The recovery store holds record data (pending rows, enrichment state): its directory
    ``0700`` and the SQLite files bytewax made in it ``0600``, whatever the umask (SQLite
    gives a database's -wal/-shm/-journal files the database file's mode)."""

    private_dir(directory)
    for f in directory.iterdir():
        st = f.lstat()
        if f.is_file() and not f.is_symlink() and st.st_uid == os.getuid() \
                and st.st_mode & 0o077:
            f.chmod(FILE_MODE)


def _non_negative(text: str) -> int:
    """``--rows``: a whole number of at least 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        msg = f"{text!r}: a whole number of at least 0"
        raise argparse.ArgumentTypeError(msg)
    return n


def _preview(args: argparse.Namespace) -> int:

    cfg = None
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as ex:
            print(ex, file=sys.stderr)
            return 2
    fields = [f for f in (args.fields or "").split(",") if f]
    try:
        return preview(args.target, fmt=args.format, table=args.table, cfg=cfg, fields=fields,
                       delimiter=args.delimiter, enrich=args.enrich, source=args.source,
                       transforms=not args.no_transforms, as_json=args.json, show=args.rows)
    except BrokenPipeError:  # `s3sentinel preview x | head`
        sys.stderr.close()
        return 1


def _deploy(args: argparse.Namespace) -> int:
    """The ARM template of one target: the config's declared DCRs, or a plan of them."""
    try:
        cfg = load_config(args.config, need_target=False) if args.config is not None else None
        tables = tables_for(cfg) if cfg else load_tables()
        fanout = dict(_fanout(f) for f in args.fanout or ())
    except (ConfigError, TableError, ValueError) as ex:
        print(f"deploy: {ex}", file=sys.stderr)
        return 2
    declared = [t for t in cfg.targets if args.target in (None, t.name)] if cfg else []
    if cfg and cfg.targets and args.target is None and len(cfg.targets) > 1:
        print("deploy: the config has several targets (one template each: they may be other "
              f"tenants); pick one with --target: {', '.join(t.name for t in cfg.targets)}",
              file=sys.stderr)
        return 2
    if declared and not args.replan:
        target = declared[0].name
        plan = [PlannedDcr(d.name, tuple(d.streams)) for d in declared[0].dcrs]
    else:
        if args.tables:
            wanted = [t for t in args.tables.split(",") if t]
        elif cfg is not None:
            sent = sent_streams(cfg, tables)
            streams = sent.get(args.target, {}) if args.target else set().union(*sent.values())
            wanted = [t.name for t in tables.values() if t.stream in streams]
        else:
            wanted = sorted(tables)
        unknown = [t for t in wanted if t not in tables]
        if unknown:
            print(f"deploy: unknown tables {unknown}; defined: {', '.join(sorted(tables))}",
                  file=sys.stderr)
            return 2
        target = args.target or (declared[0].name if declared else DEFAULT_TARGET)
        plan = plan_dcrs((tables[t].stream for t in wanted), prefix=args.prefix, fanout=fanout)
    try:
        template = deploy_template(tables, plan, target=target)
        if args.content:
            template = with_content(template, tables, content=load_content(args.content_dir),
                                    detectors=_detectors(cfg))
    except KeyError as ex:
        print(f"deploy: {ex.args[0]}", file=sys.stderr)
        return 2
    except ContentError as ex:
        print(f"deploy: {ex}", file=sys.stderr)
        return 2
    text = json.dumps(template, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"deploy: {len(plan)} DCR(s) for target {target!r} -> {args.output}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _detectors(cfg: Config | None) -> tuple[str, ...] | None:
    """Detectors whose findings reach S3SentinelFindings_CL (None: infer from the tables):
    with them, the content's rules on findings raise the incidents, and its rules on the
    standard tables (for flows without enrichment) are left out."""
    if cfg is None:
        return None
    e = cfg.enrich
    return tuple(d for d, on in (
        ("rules", e.enabled and e.rules and e.standard_tables == "findings"),
        ("sequences", e.enabled and e.sequences)) if on)


def _content(args: argparse.Namespace) -> int:
    """The ARM template of the Sentinel content for the tables the config sends."""
    try:
        cfg = load_config(args.config, need_target=False) if args.config is not None else None
        tables = tables_for(cfg) if cfg else load_tables()
        if args.tables:
            wanted = [t for t in args.tables.split(",") if t]
        elif cfg is not None:
            streams = set().union(*sent_streams(cfg, tables).values())
            wanted = [t.name for t in tables.values() if t.stream in streams]
        else:
            wanted = sorted(tables)
        template = content_template({n: tables[n] for n in wanted},
                                    content=load_content(args.content_dir),
                                    detectors=_detectors(cfg))
    except (ConfigError, TableError, ContentError, KeyError) as ex:
        print(f"content: {str(ex).strip(chr(39))}", file=sys.stderr)
        return 2
    text = json.dumps(template, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _estimate(args: argparse.Namespace) -> int:
    """The Sentinel bill of a config, before and after its transforms."""
    try:
        cfg = load_config(args.config, need_target=False)
        prices = dict(PRICES)
        for spec in args.price or ():
            plan, _, usd = spec.partition("=")
            if plan not in PRICES:
                msg = f"--price {spec!r}: the plan is one of {', '.join(PRICES)}"
                raise ValueError(msg)
            prices[plan] = float(usd)
        est = estimate(cfg, sample=args.sample, days=args.days,
                       files=[Path(f) for f in args.files] or None, source=args.source)
    except (ConfigError, TableError, ValueError, KeyError) as ex:
        print(f"estimate: {str(ex).strip(chr(39))}", file=sys.stderr)
        return 2
    print_estimate(est, tables_for(cfg), prices)
    return 0


def _fanout(spec: str) -> tuple[str, int]:
    stream, _, n = spec.partition("=")
    if not stream or not n.isdigit() or int(n) < 1:
        msg = f"--fanout {spec!r}: expected STREAM=N (N >= 1), e.g. Custom-AWSCloudTrail=3"
        raise ValueError(msg)
    return stream, int(n)


def _targets(args: argparse.Namespace) -> int:
    """The [[targets]] section for a deployment's outputs."""
    try:
        outputs = json.loads(Path(args.outputs).read_text())
        base = TargetConfig(args.name or "default", [], credential=args.credential,
                            client_id=args.client_id or "", tenant_id=args.tenant_id or "",
                            client_secret=args.client_secret or "")
        target = targets_from_outputs(outputs, base)
        if args.name:
            target = dataclasses.replace(target, name=args.name)
        problems: list[str] = []
        target.validate(problems, f"targets[{target.name}]")
    except (OSError, ValueError, KeyError, TypeError) as ex:
        print(f"targets: {ex}", file=sys.stderr)
        return 2
    if problems:
        print("targets: the outputs make an invalid section:\n" +
              "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    sys.stdout.write(targets_toml(target))
    return 0


def _replay(args: argparse.Namespace) -> int:

    try:
        cfg = load_config(args.config)
        since = parse_since(args.since) if args.since else None
    except (ConfigError, ValueError) as ex:
        print(ex, file=sys.stderr)
        return 2
    summary = replay(cfg, since=since, stream=args.stream, dry_run=args.dry_run)
    print(summary)
    return 0 if summary.ok else 1


def _rotate_key(args: argparse.Namespace) -> int:

    try:
        cfg = load_config(args.config)
        keyring = keyring_for(cfg)
    except (ConfigError, ValueError) as ex:
        print(ex, file=sys.stderr)
        return 2
    if keyring is None:
        print("rotate-key: no key configured (runtime.encryption_key_file or "
              "runtime.encryption_keyvault_keys)", file=sys.stderr)
        return 2
    import functools

    rt = cfg.runtime
    store = DeadLetterStore(rt.errors_dir, rt.errors_s3_uri, functools.partial(s3_client, cfg.aws),
                            keyring)
    report = store.rotate()
    print(f"rotate-key: {store.location}: {report}")
    if not report.ok:
        print("rotate-key: some files were left as they are (see above): keep every key "
              "until they are fixed or removed", file=sys.stderr)
        return 1
    old = ", ".join(k for k in keyring.key_ids if k != keyring.current) or "none"
    print(f"rotate-key: {report.entries} entries in {report.files} files now under key "
          f"{keyring.current!r}; keys {old} may be retired")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3sentinel", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the dataflow")
    _config_arg(run)
    run.add_argument("-w", "--workers", type=int, default=1, help="workers in this process")
    run.add_argument("-r", "--recovery-dir",
                     help="bytewax recovery directory (created if missing; default "
                          "runtime.recovery_dir in continuous mode)")
    run.add_argument("--no-recovery", action="store_true", help="run without a recovery store")
    run.add_argument("--recovery-partitions", type=int, default=0)
    run.add_argument("--snapshot-secs", type=int, default=0)
    run.add_argument("--catch-up", action="store_true", help="drain the buckets, then exit")
    run.add_argument("-i", "--process-id", type=int,
                     help="this process's index in a cluster of processes (bytewax -i)")
    run.add_argument("-a", "--addresses", help='"host:port;host:port;..." of every process, '
                     "in process-id order (bytewax -a)")
    val = sub.add_parser("validate-config", help="check the config and table definitions")
    _config_arg(val)
    pre = sub.add_parser("preview", help="show the rows a file or s3:// object would become")
    pre.add_argument("target", help="a local file or s3://bucket/key")
    pre.add_argument("--format", default="auto", help="record format (default: detect)")
    pre.add_argument("--table", help="table definition (default: the format's own)")
    pre.add_argument("--fields", help="comma-separated field names (delimited, csv)")
    pre.add_argument("--delimiter", default="", help="field separator (delimited, csv)")
    pre.add_argument("-c", "--config", type=Path, help="config with custom tables and AWS access")
    pre.add_argument("--enrich", metavar="RULES", help="also show each row's priority and "
                     "reasons under a rules file (or 'default' for the shipped rules)")
    pre.add_argument("--source", help="the config's source the object stands for: its "
                     "[[transforms]] apply, its format, table and fields are the defaults "
                     "(default: for s3://, the source whose bucket and prefix hold it)")
    pre.add_argument("--no-transforms", action="store_true", help="show the rows as mapped, "
                     "without the config's [[transforms]]")
    pre.add_argument("--json", action="store_true", help="print, per table, rows and bytes "
                     "before and after the transforms and the first rows after, as one JSON "
                     "document")
    pre.add_argument("--rows", type=_non_negative, default=5, metavar="N",
                     help="rows shown per table with transforms or --json (default 5)")
    for spelling in ("deploy", "dcr"):  # `dcr`: the spelling of earlier versions
        dep = sub.add_parser(spelling, help="write the ARM template of a target: its tables, "
                             "DCRs and role assignments")
        dep.add_argument("--tables", help="comma-separated tables (default: what the config "
                         "sends, or every defined table)")
        dep.add_argument("--target", help="the target (of a config with several)")
        dep.add_argument("--fanout", action="append", metavar="STREAM=N",
                         help="give STREAM N DCRs of its own (past one DCR's 2 GB/min)")
        dep.add_argument("--prefix", default="s3sentinel", help="DCR name prefix")
        dep.add_argument("--replan", action="store_true",
                         help="plan the DCRs even when the config declares them")
        dep.add_argument("--content", action="store_true", help="add the Sentinel content "
                         "(analytics rules, hunting queries, functions, workbook) for the "
                         "tables the template writes; the workspace must have Sentinel enabled")
        dep.add_argument("--content-dir", type=Path, help="content to deploy instead of the "
                         "shipped set")
        dep.add_argument("-o", "--output", help="file to write (default: stdout)")
        _config_arg(dep, default_env=False)
    est = sub.add_parser("estimate", help="events and GB a day per table, before and after the "
                         "transforms, and the monthly cost per table plan")
    _config_arg(est)
    est.add_argument("--files", nargs="+", default=[], metavar="FILE",
                     help="local files standing for --days days of one source's objects "
                     "(default: list each source's bucket)")
    est.add_argument("--source", help="the source the files belong to (default: the first)")
    est.add_argument("--sample", type=int, default=20, help="objects read per source")
    est.add_argument("--days", type=float, default=1.0,
                     help="the period listed (objects that arrived in the last DAYS days)")
    est.add_argument("--price", action="append", metavar="PLAN=USD",
                     help="USD per GB of a plan (Analytics, Basic, Auxiliary)")
    con = sub.add_parser("content", help="write the ARM template of the Sentinel content "
                         "(rules, hunting queries, functions, workbook) for what the config sends")
    con.add_argument("--tables", help="comma-separated tables (default: what the config sends)")
    con.add_argument("--content-dir", type=Path, help="content instead of the shipped set")
    con.add_argument("-o", "--output", help="file to write (default: stdout)")
    _config_arg(con, default_env=False)
    tgt = sub.add_parser("targets", help="turn a deployment's outputs into the [[targets]] "
                         "section")
    tgt.add_argument("outputs", help="JSON of the deployment's outputs (az deployment group "
                     "show -n NAME -g RG --query properties.outputs)")
    tgt.add_argument("--name", help="target name (default: the template's)")
    tgt.add_argument("--credential", default="managed_identity",
                     choices=["default", "managed_identity", "workload_identity",
                              "service_principal"])
    tgt.add_argument("--client-id", help="the identity's client id")
    tgt.add_argument("--tenant-id", help="the identity's tenant (workload identity, service "
                     "principal)")
    tgt.add_argument("--client-secret", help="keyvault:<name> of a service principal's secret")
    rep = sub.add_parser("replay", help="send dead-lettered records again")
    _config_arg(rep)
    rep.add_argument("--since", help="only entries newer than this (30m, 6h, 2d, or ISO-8601)")
    rep.add_argument("--stream", help="only rows bound for this DCR stream")
    rep.add_argument("--dry-run", action="store_true", help="count what would be sent")
    rot = sub.add_parser("rotate-key", help="re-encrypt the dead-letter store under the current key")
    _config_arg(rot)
    args, extra = parser.parse_known_args(argv)
    _config_path(args)
    if args.command == "validate-config":
        return _validate(args)
    if args.command == "preview":
        return _preview(args)
    if args.command in ("deploy", "dcr"):
        return _deploy(args)
    if args.command == "targets":
        return _targets(args)
    if args.command == "content":
        return _content(args)
    if args.command == "estimate":
        return _estimate(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "rotate-key":
        return _rotate_key(args)
    return _run(args, [a for a in extra if a != "--"])


if __name__ == "__main__":
    sys.exit(main())
