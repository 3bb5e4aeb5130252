"""Modules imported on first use: polars stays out of flows that never need a frame."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataflow.core.lazy import lazy_import

ROOT = Path(__file__).resolve().parents[3]


def test_a_module_runs_on_first_attribute_access_not_before(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s3s_lazy_probe.py").write_text(textwrap.dedent("""
        import builtins
        builtins.S3S_LAZY_RAN = getattr(builtins, "S3S_LAZY_RAN", 0) + 1
        VALUE = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "s3s_lazy_probe", raising=False)
    import builtins
    monkeypatch.setattr(builtins, "S3S_LAZY_RAN", 0, raising=False)
    mod = lazy_import("s3s_lazy_probe")
    assert builtins.S3S_LAZY_RAN == 0  # type: ignore[attr-defined]
    assert mod.VALUE == 42
    assert builtins.S3S_LAZY_RAN == 1  # type: ignore[attr-defined]
    assert mod.VALUE == 42 and builtins.S3S_LAZY_RAN == 1  # type: ignore[attr-defined]
    # Imported already: the module itself.
    assert lazy_import("s3s_lazy_probe") is sys.modules["s3s_lazy_probe"]
    assert builtins.S3S_LAZY_RAN == 1  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "s3s_lazy_probe")


def test_threads_that_first_use_a_module_at_once_import_it_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers are threads of one process: the first look-ups may come at the same time."""
    import builtins
    import threading

    (tmp_path / "s3s_lazy_slow.py").write_text(textwrap.dedent("""
        import builtins, time
        builtins.S3S_LAZY_SLOW_RAN = getattr(builtins, "S3S_LAZY_SLOW_RAN", 0) + 1
        time.sleep(0.2)  # a window for the other threads
        VALUE = 7
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "s3s_lazy_slow", raising=False)
    monkeypatch.setattr(builtins, "S3S_LAZY_SLOW_RAN", 0, raising=False)
    mod = lazy_import("s3s_lazy_slow")
    got: list[int] = []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        got.append(mod.VALUE)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [7] * 8
    assert builtins.S3S_LAZY_SLOW_RAN == 1  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "s3s_lazy_slow")


def test_a_missing_module_fails_at_once() -> None:
    with pytest.raises(ModuleNotFoundError, match="s3s_no_such_module"):
        lazy_import("s3s_no_such_module")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def test_a_flow_without_frames_never_imports_polars(tmp_path: Path) -> None:
    """Importing the flow and building a CloudTrail flow leave polars unloaded (it costs
    ~0.1 CPU-second of every process's start-up); a VPC flow log run loads it when mapped."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [sentinel]
        endpoint = "https://127.0.0.1:1"
        rule_id = "dcr-00000000000000000000000000000000"
        credential = "managed_identity"
        [[sources]]
        name = "trail"
        bucket = "b"
        format = "cloudtrail"
        [[sources]]
        name = "vpc"
        bucket = "b"
        format = "vpcflow"
    """))
    got = _run(f"""
        import sys
        from dataflow.config import load_config
        from dataflow.flow import build_flow
        build_flow(load_config({str(cfg)!r}))
        print("polars.dataframe" in sys.modules)
    """)
    assert got == "False"
    # Frames still work where they are needed: the columnar path of VPC flow logs (objects
    # with a header line).
    got = _run("""
        import sys
        from dataflow.core.messages import ObjectRef, RawRecord
        from dataflow.config import SourceConfig
        from operators.parse import RecordMapper
        from operators.schema import load_tables
        obj = ObjectRef("vpc", "vpc:0/1", "b", "k", "e", 1, "vpcflow")
        line = b"2 123456789012 eni-1 10.0.0.1 10.0.0.2 443 49152 6 10 840 1700000000 1700000060 ACCEPT OK"
        head = (b"version account-id interface-id srcaddr dstaddr srcport dstport protocol "
                b"packets bytes start end action log-status",)
        recs = [RawRecord(obj, i, line, head) for i in range(1, 201)]
        out = RecordMapper([SourceConfig(name="vpc", bucket="b", format="vpcflow")],
                           load_tables(), 1_000_000).map_batch(recs)
        print(sum(len(r.rows) for r in out), "polars.dataframe" in sys.modules)
    """)
    assert got == "200 True"
