"""The ``s3sentinel`` command.

- ``s3sentinel run -c CONFIG [-w N] [-r RECOVERY_DIR] [--catch-up]``: run the dataflow
  with ``python -m bytewax.run`` (other bytewax.run options may follow ``--``).
- ``s3sentinel validate-config -c CONFIG``: report every problem in the config at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dataflow.config import ENV_CONFIG_PATH, ConfigError, load_config

__all__ = ["main"]


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=os.environ.get(ENV_CONFIG_PATH),
                   help=f"config file (TOML); default ${ENV_CONFIG_PATH}")


def _validate(args: argparse.Namespace) -> int:
    from operators.parse import RecordMapper
    from operators.schema import TableError, load_tables

    try:
        cfg = load_config(args.config)
        tables = load_tables(cfg.runtime.tables_dir, cfg.tables)
        RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
    except (ConfigError, TableError, KeyError) as ex:
        print(str(ex).strip("'\""), file=sys.stderr)
        return 1
    names = ", ".join(f"{s.name} ({s.format} -> {s.table})" for s in cfg.sources)
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
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", str(args.workers)]
    if args.recovery_dir:
        if not Path(args.recovery_dir).exists():
            from bytewax.recovery import init_db_dir

            init_db_dir(Path(args.recovery_dir), args.recovery_partitions)
        cmd += ["-r", str(args.recovery_dir), "-s", str(args.snapshot_secs), "-b", "0"]
    os.execv(sys.executable, cmd + extra)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3sentinel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the dataflow")
    _config_arg(run)
    run.add_argument("-w", "--workers", type=int, default=1, help="workers in this process")
    run.add_argument("-r", "--recovery-dir", help="bytewax recovery directory (created if missing)")
    run.add_argument("--recovery-partitions", type=int, default=1)
    run.add_argument("--snapshot-secs", type=int, default=10)
    run.add_argument("--catch-up", action="store_true", help="drain the buckets, then exit")
    val = sub.add_parser("validate-config", help="check the config and table definitions")
    _config_arg(val)
    args, extra = parser.parse_known_args(argv)
    if args.command == "validate-config":
        return _validate(args)
    return _run(args, [a for a in extra if a != "--"])


if __name__ == "__main__":
    sys.exit(main())
