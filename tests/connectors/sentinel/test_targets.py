"""Targets and fan-out in the sink, against the emulator through the real Azure client:
two tenants' rows each under their own identity, and a throttled DCR that does not stall
the others."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from connectors.sentinel.config import DcrConfig, SentinelConfig, TargetConfig
from connectors.sentinel.sink import SentinelSink
from dataflow.core.messages import Batch
from devstack.sentinel import SentinelEmulator

STREAM = "Custom-T_CL"
COLUMNS = {"TimeGenerated": "datetime", "i": "int", "tenant": "string", "RecordId": "string"}
A1, A2, B1 = ("dcr-" + c * 32 for c in "abc")


def _rule(name: str, identity: str, **limits: float) -> dict:
    spec = {"name": name, "streams": {STREAM: COLUMNS},
            "flows": [{"streams": [STREAM], "transformKql": "source",
                       "outputStream": "Custom-T_CL"}],
            "tables": {"T_CL": COLUMNS}, "identity": identity}
    if limits:
        spec["limits"] = limits
    return spec


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    rules = {A1: _rule("a-1", "client-a", bytes_per_min=60_000, requests_per_min=600),
             A2: _rule("a-2", "client-a"), B1: _rule("b-1", "client-b")}
    with SentinelEmulator(rules=rules, workdir=tmp_path_factory.mktemp("targets")) as em:
        yield em


@pytest.fixture(params=["lean", "sdk"])
def settings(emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch,
             request: pytest.FixtureRequest) -> SentinelConfig:
    for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(var, raising=False)
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    emulator.reset()
    return SentinelConfig(ca_file=emulator.ca_file, retry_max_secs=30, retry_base_secs=0.01,
                          retry_cap_secs=0.05, client=request.param)


def _target(name: str, client: str, em: SentinelEmulator, *dcrs: tuple[str, str]) -> TargetConfig:
    return TargetConfig(name, [DcrConfig(n, i, [STREAM]) for n, i in dcrs],
                        endpoint=em.endpoint, credential="managed_identity", client_id=client,
                        ca_file=em.ca_file)


def _batch(tenant: str, start: int, n: int, pad: int = 0) -> Batch:
    rows = tuple(orjson.dumps({"TimeGenerated": "2026-01-01T00:00:00Z", "i": i,
                               "tenant": tenant + "x" * pad, "RecordId": f"{tenant}-{i}"})
                 for i in range(start, start + n))
    return Batch(STREAM, rows, tuple(f"{tenant}obj-{i}" for i in range(start, start + n)),
                 target=tenant)


def test_each_tenants_rows_go_only_to_its_own_dcrs_under_its_own_identity(
        settings: SentinelConfig, emulator: SentinelEmulator) -> None:
    targets = [_target("a", "client-a", emulator, ("a-2", A2)),
               _target("b", "client-b", emulator, ("b-1", B1))]
    part = SentinelSink(settings, targets=targets).build("out", 0, 1)
    part.write_batch([_batch("a", 0, 5), _batch("b", 0, 7), _batch("a", 5, 5)])
    part.close()
    by_rule: dict[str, set[str]] = {}
    for req in emulator.requests():
        assert req.status == 204, req
        by_rule.setdefault(req.rule, set()).add(req.stream)
    assert set(by_rule) == {A2, B1}
    tenants = sorted(r["tenant"] for r in emulator.records(STREAM))
    assert tenants == ["a"] * 10 + ["b"] * 7
    # The emulator checks the identity per DCR: tenant b's identity is refused on a's DCR.
    crossed = [_target("b", "client-b", emulator, ("a-2", A2))]
    part = SentinelSink(settings, targets=crossed).build("out", 0, 1)
    with pytest.raises(Exception, match="403"):
        part.write_batch([_batch("b", 100, 1)])


def test_a_throttled_dcr_does_not_stall_the_others(settings: SentinelConfig,
                                                   emulator: SentinelEmulator) -> None:
    """a-1 takes 60 kB a minute, a-2 the documented 2 GB. The connector believes both take
    2 GB (nothing says otherwise), so a-1 answers 429 + Retry-After once its minute is
    spent: a-1 rests for that long, and the rows go on through a-2 meanwhile."""
    sleeps: list[float] = []
    targets = [_target("a", "client-a", emulator, ("a-1", A1), ("a-2", A2))]
    part = SentinelSink(settings, targets=targets, sleep=sleeps.append).build("out", 0, 1)
    batches = [_batch("a", i * 20, 20, pad=300) for i in range(40)]  # ~7 kB each, ~290 kB
    part.write_batch(batches)
    part.close()
    ids = sorted(r["RecordId"] for r in emulator.records(STREAM))
    assert ids == sorted(f"a-{i}" for i in range(800))  # all, once
    stats = emulator.rule_stats()
    assert stats[A1]["throttled"] >= 1  # it learnt a-1's limit from the service
    assert stats[A1]["throttled"] <= 2  # ... and did not hammer it
    assert stats[A1]["max_window_bytes"] <= 60_000
    assert stats[A2]["accepted_records"] > stats[A1]["accepted_records"]
    assert sleeps == []  # a-2 always had room: nothing waited
