"""SentinelSink against the HTTPS emulator, through the real LogsIngestionClient and
ManagedIdentityCredential: retries, Retry-After, 413 splitting, terminal errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest

from connectors.sentinel.errors import DeliveryError, DeliveryFailed
from connectors.sentinel.service import IngestionService
from connectors.sentinel.sink import SentinelSink
from dataflow.config import SentinelConfig
from dataflow.core import metrics
from dataflow.core.messages import Batch
from devstack.sentinel import SentinelEmulator

RULE = "dcr-00000000000000000000000000000009"
STREAM = "Custom-Sink_CL"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    with SentinelEmulator(rules={RULE: {STREAM: None}},
                          workdir=tmp_path_factory.mktemp("sink")) as em:
        yield em


@pytest.fixture(params=["lean", "sdk"])
def cfg(emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> SentinelConfig:
    """The sink's settings, once with each client (``[sentinel] client``)."""
    for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(var, raising=False)
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    emulator.reset()
    return SentinelConfig(endpoint=emulator.endpoint, rule_id=RULE, credential="managed_identity",
                          ca_file=emulator.ca_file, retry_max_secs=20, retry_base_secs=0.01,
                          retry_cap_secs=0.05, client=request.param)


class Sleeps(list):
    def __call__(self, secs: float) -> None:
        self.append(secs)


def batch(n: int, pad: int = 10, start: int = 0) -> Batch:
    rows = tuple(orjson.dumps({"TimeGenerated": "2026-01-01T00:00:00Z", "i": i, "pad": "x" * pad})
                 for i in range(start, start + n))
    return Batch(STREAM, rows, tuple(f"obj-{i}" for i in range(start, start + n)))


def part(cfg: SentinelConfig, sleeps: Sleeps | None = None) -> object:
    return SentinelSink(cfg, sleep=sleeps if sleeps is not None else Sleeps()).build("out", 0, 1)


def delivered(em: SentinelEmulator) -> list[int]:
    return [r["i"] for r in em.records(STREAM)]


def test_batches_arrive_whole_and_in_order(cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    before = metrics.RECORDS_DELIVERED.labels(STREAM)._value.get()
    p = part(cfg)
    p.write_batch([batch(3), batch(2, start=3)])
    assert delivered(emulator) == [0, 1, 2, 3, 4]
    assert [r.content_encoding for r in emulator.requests()] == ["gzip", "gzip"]
    assert metrics.RECORDS_DELIVERED.labels(STREAM)._value.get() - before == 5


def test_throttling_waits_for_retry_after(cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 429, "retry_after_secs": 7, "count": 2}])
    sleeps = Sleeps()
    part(cfg, sleeps).write_batch([batch(4)])
    assert delivered(emulator) == [0, 1, 2, 3]
    assert len(sleeps) == 2 and all(7 <= s <= 7.25 for s in sleeps)


def test_server_errors_and_dropped_connections_are_retried(cfg: SentinelConfig,
                                                           emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 503, "count": 1}, {"drop": True, "count": 1},
                         {"status": 500, "count": 1}])
    # Back-off long enough that each retry still has a wait left when it is sent (a busy
    # machine took more than the 0.05 s cap between a failure and its retry): the sleeps
    # are recorded, not slept.
    cfg = replace(cfg, retry_base_secs=2.0, retry_cap_secs=5.0)
    sleeps = Sleeps()
    part(cfg, sleeps).write_batch([batch(4)])
    assert delivered(emulator) == [0, 1, 2, 3]
    assert len(sleeps) == 3 and all(0 < s <= cfg.retry_cap_secs for s in sleeps)
    assert [r.status for r in emulator.requests()] == [503, 0, 500, 204]


def test_a_too_large_request_is_split(cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    # 3,000 rows of ~1 KB: 3 MB, too large for one request; the service answers 413.
    big = batch(3000, pad=1000)
    assert big.body_bytes > 3 * 1_048_576 - 100_000
    part(cfg).write_batch([big])
    assert sorted(delivered(emulator)) == list(range(3000))
    assert delivered(emulator) == list(range(3000))  # order kept across the halves
    statuses = [r.status for r in emulator.requests()]
    assert 413 in statuses and statuses.count(204) >= 4
    assert max(r.uncompressed_bytes for r in emulator.requests() if r.status == 204) <= 1_048_576


def test_terminal_errors_stop_with_a_message_naming_the_records(
        cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    p = part(replace(cfg, rule_id="dcr-does-not-exist"))
    with pytest.raises(DeliveryFailed) as info:
        p.write_batch([batch(2)])
    text = str(info.value)
    assert "2 rows" in text and "obj-0 .. obj-1" in text and "HTTP 404" in text
    assert "sentinel.rule_id" in text
    assert isinstance(info.value.__cause__, DeliveryError)
    assert emulator.records(STREAM) == []


def test_retries_give_up_after_the_deadline(cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 503, "count": None}])
    clock = [0.0]
    sleeps = Sleeps()

    def sleep(secs: float) -> None:
        sleeps(secs)
        clock[0] += secs

    sink = SentinelSink(replace(cfg, retry_max_secs=1.0, retry_cap_secs=0.3), sleep=sleep,
                        monotonic=lambda: clock[0]).build("out", 0, 1)
    with pytest.raises(DeliveryFailed, match="still failing after 1s"):
        sink.write_batch([batch(1)])
    assert sum(sleeps) <= 1.0 and len(sleeps) >= 3


def test_service_classifies_errors(cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    svc = IngestionService.from_config(cfg)
    emulator.set_faults([{"status": 429, "retry_after_secs": 3}])
    with pytest.raises(DeliveryError) as info:
        svc.send(STREAM, b"[]")
    assert info.value.transient and info.value.retry_after == 3 and info.value.status == 429
    with pytest.raises(DeliveryError) as info:
        svc.send(STREAM, b'{"not": "an array"}')
    assert info.value.status == 400 and not info.value.transient


# -- dead-lettering ---------------------------------------------------------------------------


def dl_part(cfg: SentinelConfig, tmp_path, sleep=None, monotonic=None) -> object:
    from connectors.deadletter import DeadLetterStore

    kwargs = {"sleep": sleep or Sleeps()}
    if monotonic is not None:
        kwargs["monotonic"] = monotonic
    return SentinelSink(cfg, journal_dir=str(tmp_path / "journal"),
                        dead_letters=lambda: DeadLetterStore(tmp_path / "errors"),
                        **kwargs).build("out", 0, 1)


def test_a_refused_row_is_isolated_and_dead_lettered(cfg: SentinelConfig,
                                                     emulator: SentinelEmulator, tmp_path) -> None:
    from connectors.deadletter import read_entries
    from connectors.ledger import LedgerView

    rows = [orjson.dumps({"TimeGenerated": "2026-01-01T00:00:00Z", "i": i,
                          "pad": "POISON" if i == 11 else "ok"}) for i in range(16)]
    emulator.set_rejects(["POISON"])
    try:
        dl_part(cfg, tmp_path).write_batch([Batch(STREAM, tuple(rows),
                                                  tuple(f"obj-{i}" for i in range(16)))])
    finally:
        emulator.set_rejects([])
    assert sorted(delivered(emulator)) == [i for i in range(16) if i != 11]
    (entry,) = read_entries(tmp_path / "errors")
    assert entry["record_id"] == "obj-11" and entry["stage"] == "deliver"
    assert entry["status"] == 400 and entry["code"] == "InvalidPayload"
    assert entry["request_id"] and orjson.loads(entry["row"])["pad"] == "POISON"
    assert entry["stream"] == STREAM and "Row 0 of the request was refused" in entry["reason"]
    view = LedgerView(tmp_path / "journal")
    view.refresh()
    assert view.covered("obj", 16)  # delivered or dead-lettered: every record accounted for


def test_exhausted_retries_dead_letter_the_batch_and_the_flow_goes_on(
        cfg: SentinelConfig, emulator: SentinelEmulator, tmp_path) -> None:
    from connectors.deadletter import read_entries

    emulator.set_faults([{"status": 503, "count": None}])
    clock = [0.0]

    def sleep(secs: float) -> None:
        clock[0] += secs

    p = dl_part(replace(cfg, retry_max_secs=1.0, retry_cap_secs=0.3), tmp_path, sleep=sleep,
                monotonic=lambda: clock[0])
    p.write_batch([batch(3)])
    entries = read_entries(tmp_path / "errors")
    assert [e["record_id"] for e in entries] == ["obj-0", "obj-1", "obj-2"]
    assert {e["status"] for e in entries} == {503} and "still failing after 1s" in entries[0]["reason"]
    emulator.set_faults([])
    p.write_batch([batch(2, start=3)])
    assert delivered(emulator) == [3, 4]
    # A replay of the same records after a crash is not dead-lettered (or sent) twice.
    p2 = dl_part(cfg, tmp_path)
    p2.write_batch([batch(5)])
    assert delivered(emulator) == [3, 4] and len(read_entries(tmp_path / "errors")) == 3


def test_configuration_errors_stop_even_with_a_dead_letter_store(
        cfg: SentinelConfig, emulator: SentinelEmulator, tmp_path) -> None:
    p = dl_part(replace(cfg, rule_id="dcr-does-not-exist"), tmp_path)
    with pytest.raises(DeliveryFailed, match="HTTP 404"):
        p.write_batch([batch(2)])
    assert not (tmp_path / "errors").exists()


# -- request ids and Retry-After -------------------------------------------------------------


def test_the_retries_of_one_request_keep_its_client_request_id(
        cfg: SentinelConfig, emulator: SentinelEmulator, caplog: pytest.LogCaptureFixture) -> None:
    emulator.set_faults([{"status": 503, "count": 2}])
    with caplog.at_level("WARNING", logger="connectors.sentinel.sink"):
        part(cfg).write_batch([batch(3), batch(2, start=3)])
    reqs = emulator.requests()
    assert [r.status for r in reqs] == [503, 503, 204, 204]
    first = reqs[0].client_request_id
    assert first and [r.client_request_id for r in reqs[:3]] == [first] * 3
    assert reqs[3].client_request_id not in (None, first)  # the next batch: a new request
    # Each failure is logged with the service's x-ms-request-id of that attempt.
    assert len({r.request_id for r in reqs}) == 4
    for failed, record in zip(reqs[:2], caplog.records, strict=True):
        text = record.getMessage()
        assert f"client request id {first}" in text
        assert f"service request id {failed.request_id}" in text


def test_each_half_of_a_split_request_has_its_own_client_request_id(
        cfg: SentinelConfig, emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 413, "count": 1}, {"status": 503, "count": 1}])
    part(cfg).write_batch([batch(4)])
    assert delivered(emulator) == [0, 1, 2, 3]
    reqs = emulator.requests()
    assert [(r.status, r.record_count) for r in reqs] == [(413, 0), (503, 0), (204, 2), (204, 2)]
    whole, half1, half1_again, half2 = (r.client_request_id for r in reqs)
    assert half1 == half1_again  # the retry of the first half
    assert len({whole, half1, half2}) == 3


def test_dead_letters_carry_the_client_and_service_request_ids(
        cfg: SentinelConfig, emulator: SentinelEmulator, tmp_path) -> None:
    from connectors.deadletter import read_entries

    emulator.set_faults([{"status": 503, "count": None}])
    clock = [0.0]

    def sleep(secs: float) -> None:
        clock[0] += secs

    p = dl_part(replace(cfg, retry_max_secs=1.0, retry_cap_secs=0.3), tmp_path, sleep=sleep,
                monotonic=lambda: clock[0])
    p.write_batch([batch(2)])
    reqs = emulator.requests()
    assert len(reqs) >= 3 and len({r.client_request_id for r in reqs}) == 1
    entries = read_entries(tmp_path / "errors")
    assert [e["record_id"] for e in entries] == ["obj-0", "obj-1"]
    for e in entries:
        assert e["request_id"] == reqs[0].client_request_id
        assert e["service_request_id"] == reqs[-1].request_id  # the attempt that gave up
        assert e["correlation_id"] == ""  # the emulator sends none


def test_retry_after_as_an_http_date_is_honoured(cfg: SentinelConfig,
                                                 emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 429, "retry_after_secs": 7, "retry_after_date": True,
                          "count": 2}])
    sleeps = Sleeps()
    part(cfg, sleeps).write_batch([batch(2)])
    assert delivered(emulator) == [0, 1]
    # The date is rounded up to a whole second: 6 to 8 seconds from when it is read.
    assert len(sleeps) == 2 and all(5.5 <= s <= 8.25 for s in sleeps), sleeps


def test_retry_after_secs_reads_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    from dataflow.core.backoff import retry_after_secs

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_secs("7", now) == 7.0
    assert retry_after_secs("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_secs("Thu, 01 Jan 2026 12:00:30 -0000", now) == 30.0
    assert retry_after_secs("Thu, 01 Jan 2026 11:59:00 GMT", now) == 0.0  # already past
    assert retry_after_secs("soon", now) is None
    assert retry_after_secs(None, now) is None and retry_after_secs("", now) is None


def test_a_token_endpoint_refusal_is_a_credential_error_not_a_verdict_on_the_rows() -> None:
    """Entra answers a bad federated assertion with 400 (AADSTS70021) from its token URL:
    that is the credential failing, retried, not rows refused (which a 400 from the DCR
    would be)."""
    from types import SimpleNamespace

    from azure.core.exceptions import ClientAuthenticationError

    from connectors.sentinel.service import _classify

    def refusal(url: str) -> ClientAuthenticationError:
        response = SimpleNamespace(status_code=400, headers={}, reason="Bad Request",
                                   request=SimpleNamespace(url=url), text=lambda: "")
        return ClientAuthenticationError(message="AADSTS70021: no matching federated identity",
                                         response=response)

    token = _classify(refusal("https://login.example/t/oauth2/v2.0/token"), "rid")
    assert (token.code, token.transient, token.status) == ("credential", True, None)
    rows = _classify(refusal("https://dce.example/dataCollectionRules/dcr-1/streams/S"), "rid")
    assert rows.status == 400 and not rows.transient
