"""S3Source partitions against a real moto server: reading, resume state, failures.

Partitions are driven directly (build_part -> next_batch -> snapshot -> build_part
again), as bytewax does across a restart.
"""

from __future__ import annotations

import contextlib
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

import connectors.s3.reader as reader_mod
import connectors.s3.source as source_mod
from connectors.s3.discovery import shard_of
from connectors.s3.source import S3Source
from dataflow.config import SourceConfig
from dataflow.core.messages import ErrorRecord, RawRecord

BUCKET = "unit-source"


@pytest.fixture
def s3(endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return client


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def put_lines(s3: Any, key: str, lines: list[bytes], *, gz: bool = False) -> str:
    body = b"\n".join(lines) + b"\n"
    resp = s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body) if gz else body)
    return resp["ETag"].strip('"')


def src(**kw: Any) -> SourceConfig:
    base = {"name": "app", "bucket": BUCKET, "format": "ndjson", "table": "T_CL",
            "prefix": "logs/", "poll_secs": 10.0, "fetch_threads": 2}
    return SourceConfig(**{**base, **kw})


def build(s3: Any, cfg: SourceConfig, state: dict | None = None, *, index: int = 0,
          catch_up: bool = True, clock: Clock | None = None) -> Any:
    source = S3Source([cfg], lambda: s3, catch_up=catch_up, clock=clock or Clock())
    return source.build_part("s3", S3Source.part_name(cfg.name, index, cfg.partitions), state)


def drain(part: Any, limit: int = 10_000) -> list[Any]:
    out: list[Any] = []
    for _ in range(limit):
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out
    raise AssertionError("partition did not reach EOF")


def test_reads_every_record_in_key_order_with_offsets(s3: Any) -> None:
    put_lines(s3, "logs/b.ndjson", [b'{"n": 3}', b"", b'{"n": 4}'])
    put_lines(s3, "logs/a.ndjson.gz", [b'{"n": 1}', b'{"n": 2}'], gz=True)
    put_lines(s3, "other/z.ndjson", [b'{"n": 9}'])  # outside the prefix
    # Key order is the lexical listing's (look-back listing reads oldest LastModified first).
    items = drain(build(s3, src(lookback_secs=0)))
    assert [(i.obj.key, i.offset, i.data) for i in items] == [
        ("logs/a.ndjson.gz", 0, b'{"n": 1}'), ("logs/a.ndjson.gz", 1, b'{"n": 2}'),
        ("logs/b.ndjson", 0, b'{"n": 3}'), ("logs/b.ndjson", 2, b'{"n": 4}'),  # line numbers
    ]
    assert len({i.record_id for i in items}) == 4


def test_partitions_split_keys_by_stable_hash(s3: Any) -> None:
    keys = [f"logs/{i:03d}.ndjson" for i in range(24)]
    for k in keys:
        put_lines(s3, k, [b"{}"])
    cfg = src(partitions=3)
    seen = {}
    for index in range(3):
        for item in drain(build(s3, cfg, index=index)):
            assert shard_of(item.obj.key, 3) == index
            seen[item.obj.key] = index
    assert sorted(seen) == keys


def test_resume_mid_object_continues_at_the_next_record(s3: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "BATCH_RECORDS", 3)
    put_lines(s3, "logs/a.ndjson", [b'{"n": %d}' % i for i in range(10)])
    put_lines(s3, "logs/b.ndjson", [b'{"n": %d}' % i for i in range(10, 15)])
    part = build(s3, src())
    first = part.next_batch() + part.next_batch()  # 6 records of a
    snap = part.snapshot()
    assert snap["key"] == "logs/a.ndjson" and snap["offset"] == 6
    part.close()
    rest = drain(build(s3, src(), snap))
    got = [orjson_n(i) for i in first + rest]
    assert got == list(range(15))  # nothing twice, nothing skipped


def test_snapshot_after_an_object_points_past_it(s3: Any) -> None:
    put_lines(s3, "logs/a.ndjson", [b"{}"])
    put_lines(s3, "logs/b.ndjson", [b"{}"])
    part = build(s3, src(lookback_secs=0))
    batch = []
    while not batch:
        batch = part.next_batch()
    assert part.snapshot() == {"v": 1, "after": "logs/a.ndjson"}
    rest = drain(build(s3, src(), part.snapshot()))
    assert [i.obj.key for i in rest] == ["logs/b.ndjson"]


def test_resume_when_object_was_overwritten_reads_the_new_version(s3: Any) -> None:
    etag = put_lines(s3, "logs/a.ndjson", [b'{"n": 1}', b'{"n": 2}'])
    state = {"v": 1, "after": "", "key": "logs/a.ndjson", "etag": etag, "offset": 1}
    put_lines(s3, "logs/a.ndjson", [b'{"n": 7}', b'{"n": 8}', b'{"n": 9}'])
    items = drain(build(s3, src(), state))
    assert [orjson_n(i) for i in items] == [7, 8, 9]
    assert items[0].obj.etag != etag


def test_resume_when_object_was_deleted_reports_it_and_moves_on(s3: Any) -> None:
    state = {"v": 1, "after": "", "key": "logs/a.ndjson", "etag": "0" * 32, "offset": 1}
    put_lines(s3, "logs/b.ndjson", [b'{"n": 5}'])
    items = drain(build(s3, src(), state))
    errors = [i for i in items if isinstance(i, ErrorRecord)]
    assert len(errors) == 1 and errors[0].obj.key == "logs/a.ndjson"
    assert "deleted or overwritten" in errors[0].reason
    assert [orjson_n(i) for i in items if isinstance(i, RawRecord)] == [5]


def test_corrupt_and_truncated_objects_become_error_records(s3: Any) -> None:
    good = gzip.compress(b'{"n": 1}\n{"n": 2}\n' * 50)
    s3.put_object(Bucket=BUCKET, Key="logs/a.ndjson.gz", Body=good[:10] + bytes(range(256)) * 4)
    s3.put_object(Bucket=BUCKET, Key="logs/b.ndjson.gz", Body=good[: len(good) // 2])
    put_lines(s3, "logs/c.ndjson", [b'{"n": 3}'])
    items = drain(build(s3, src()))
    errors = {i.obj.key: i for i in items if isinstance(i, ErrorRecord)}
    assert "corrupt gzip" in errors["logs/a.ndjson.gz"].reason
    assert "truncated" in errors["logs/b.ndjson.gz"].reason
    assert errors["logs/b.ndjson.gz"].offset is not None
    # Records before the truncation point were still emitted; the next object is read.
    assert any(i.obj.key == "logs/b.ndjson.gz" for i in items if isinstance(i, RawRecord))
    assert [orjson_n(i) for i in items if i.obj.key == "logs/c.ndjson"] == [3]


def test_cloudtrail_digests_are_skipped(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="logs/1/CloudTrail-Digest/us-east-1/x.json.gz",
                  Body=gzip.compress(b'{"digestStartTime": "x"}'))
    s3.put_object(Bucket=BUCKET, Key="logs/1/CloudTrail/us-east-1/y.json.gz",
                  Body=gzip.compress(b'{"Records": [{"eventName": "A"}, {"eventName": "B"}]}'))
    items = drain(build(s3, src(format="cloudtrail")))
    assert [i.data for i in items] == [b'{"eventName": "A"}', b'{"eventName": "B"}']


def test_continuous_mode_polls_with_next_awake_and_picks_up_new_objects(s3: Any) -> None:
    clock = Clock()
    put_lines(s3, "logs/a.ndjson", [b'{"n": 1}'])
    part = build(s3, src(), catch_up=False, clock=clock)
    got = []
    for _ in range(10):
        got += part.next_batch()
    assert [orjson_n(i) for i in got] == [1]
    assert part.next_awake() == clock.now + timedelta(seconds=10)
    put_lines(s3, "logs/b.ndjson", [b'{"n": 2}'])
    assert part.next_batch() == []  # not due yet: no listing before next_awake
    clock.now += timedelta(seconds=11)
    got = []
    for _ in range(10):
        got += part.next_batch()
    assert [orjson_n(i) for i in got] == [2]


class FlakyS3:
    """A real client whose first ``fail`` calls of ``op`` fail with a network error."""

    def __init__(self, client: Any, op: str, fail: int) -> None:
        self._client, self._op, self.fail = client, op, fail

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._op:
            return attr

        def call(**kw: Any) -> Any:
            if self.fail > 0:
                self.fail -= 1
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
            return attr(**kw)
        return call


def test_transient_listing_failure_backs_off_through_next_awake(s3: Any) -> None:
    clock = Clock()
    put_lines(s3, "logs/a.ndjson", [b'{"n": 1}'])
    part = build(FlakyS3(s3, "list_objects_v2", 2), src(), clock=clock)
    assert part.next_batch() == []
    wake = part.next_awake()
    assert wake is not None and wake > clock.now
    assert part.next_batch() == []  # before the wake-up time nothing is tried
    items = []
    for _ in range(2):
        clock.now = part.next_awake() or clock.now
        items += part.next_batch()
    items += drain(part)
    assert [orjson_n(i) for i in items] == [1]


def test_a_bucket_that_cannot_be_listed_stops_with_a_clear_error(s3: Any) -> None:
    part = build(s3, src(bucket="no-such-bucket-here"))
    with pytest.raises(RuntimeError, match="cannot list s3://no-such-bucket-here.*ListBucket"):
        part.next_batch()


def test_changing_the_partition_count_is_refused(s3: Any) -> None:
    source = S3Source([src(partitions=3)], lambda: s3)
    with pytest.raises(ValueError, match="fresh recovery store"):
        source.build_part("s3", "app:0/2", None)


def orjson_n(item: Any) -> int:
    import orjson

    return int(orjson.loads(item.data)["n"])


# -- look-back listing --------------------------------------------------------------------


def test_late_keys_that_sort_earlier_are_picked_up(s3: Any) -> None:
    """CloudTrail under AWSLogs/<account>/...: a new account's keys sort before the others."""
    clock = Clock()
    put_lines(s3, "logs/222/x.ndjson", [b'{"n":1}'])
    part = build(s3, src(), catch_up=False, clock=clock)
    lexical = build(s3, src(lookback_secs=0), catch_up=False, clock=clock)
    got = [i.obj.key for i in part.next_batch()]
    assert got == ["logs/222/x.ndjson"] and lexical.next_batch()
    for p in (part, lexical):
        assert p.next_batch() == []  # caught up: waits poll_secs
    put_lines(s3, "logs/111/late.ndjson", [b'{"n":2}'])
    clock.now += timedelta(seconds=11)
    assert [i.obj.key for i in part.next_batch()] == ["logs/111/late.ndjson"]
    assert lexical.next_batch() == []  # what lookback_secs = 0 would miss
    # A restart from the snapshot reads neither again.
    again = build(s3, src(), part.snapshot(), catch_up=True)
    assert drain(again) == []


def test_recent_keys_stay_bounded_and_never_pass_the_backlog() -> None:
    from connectors.s3.discovery import ListedObject, RecentKeys

    recent = RecentKeys(lookback_secs=100)
    for i in range(100_000):
        recent.add(f"k{i:06d}", 1_000_000.0 + i)  # one object a second
    assert len(recent) <= 101
    assert recent.horizon() == 1_000_000.0 + 99_999 - 100
    # A late object inside the window is wanted; one before it is not (taken as read).
    assert recent.wanted(ListedObject("late", "", 1, 1_000_000.0 + 99_950))
    assert not recent.wanted(ListedObject("old", "", 1, 1_000_000.0 + 99_000))
    # With a backlog listed but unread (oldest at t0), the horizon and the snapshot keep it.
    t0 = 1_000_000.0 + 50_000
    assert recent.horizon(pending=t0) == t0
    snap = recent.snapshot(pending=t0)
    restored = RecentKeys(100, snap=snap)
    assert restored.wanted(ListedObject("backlog", "", 1, t0))
    restored.listed()  # the backlog is queued again: the restored floor is no longer needed
    assert not restored.wanted(ListedObject("backlog", "", 1, t0))


def test_start_time_and_ignore_older_skip_old_objects(s3: Any) -> None:
    put_lines(s3, "logs/old.ndjson", [b"{}"])
    assert drain(build(s3, src(start_time="2999-01-01T00:00:00Z"))) == []
    clock = Clock()
    clock.now = datetime.now(UTC) + timedelta(days=2)
    assert drain(build(s3, src(ignore_older_secs=86400), clock=clock)) == []
    assert len(drain(build(s3, src(ignore_older_secs=86400)))) == 1


@pytest.mark.parametrize("when", ["open", "read"])
def test_any_unexpected_error_of_one_object_fails_that_object_not_the_partition(
        s3: Any, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    put_lines(s3, "logs/0-poison.ndjson", [b'{"a":1}', b'{"a":2}'])
    put_lines(s3, "logs/1-fine.ndjson", [b'{"b":1}'])
    real = reader_mod.object_records

    def records(key: str, *args: Any, **kw: Any) -> Any:
        if "poison" not in key:
            return real(key, *args, **kw)
        if when == "open":
            msg = "maximum recursion depth exceeded"
            raise RecursionError(msg)
        fmt, recs = real(key, *args, **kw)

        def broken() -> Any:
            yield next(recs)
            msg = "maximum recursion depth exceeded"
            raise RecursionError(msg)

        return fmt, broken()

    monkeypatch.setattr(reader_mod, "object_records", records)
    out = drain(build(s3, src()))
    (err,) = [x for x in out if isinstance(x, ErrorRecord)]
    assert err.obj.key == "logs/0-poison.ndjson" and "RecursionError" in err.reason
    assert err.offset == (0 if when == "open" else 1) and err.stage == "read"
    assert [(r.obj.key, r.offset) for r in out if isinstance(r, RawRecord)] == (
        [("logs/1-fine.ndjson", 0)] if when == "open"
        else [("logs/0-poison.ndjson", 0), ("logs/1-fine.ndjson", 0)])


def test_a_record_over_max_record_bytes_is_an_error_in_its_place_and_the_object_goes_on(
        s3: Any) -> None:
    put_lines(s3, "logs/big.ndjson", [b'{"a":1}', b'{"b":"' + b"x" * 5000 + b'"}', b'{"c":3}'])
    out = drain(build(s3, src(max_record_bytes=2048)))
    assert [(type(x).__name__, x.offset) for x in out] == [
        ("RawRecord", 0), ("ErrorRecord", 1), ("RawRecord", 2)]
    err = out[1]
    assert err.stage == "parse" and err.code == "record_too_large"
    assert "max_record_bytes (2048)" in err.reason and err.data.startswith(b'{"b":"xxx')


@pytest.mark.parametrize("fmt", ["cloudtrail", "auto"])
def test_cloudtrail_digest_files_are_skipped_for_cloudtrail_and_auto_sources(
        s3: Any, fmt: str) -> None:
    from connectors.s3.discovery import skip_reason

    digest = ("logs/AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/11/01/"
              "111122223333_CloudTrail-Digest_us-east-1_trail_us-east-1_20261101T010000Z.json.gz")
    assert skip_reason(src(format=fmt), digest) == "CloudTrail digest file"
    assert skip_reason(src(format="ndjson"), digest) is None  # another format: not ours to skip


def test_objects_are_marked_at_their_start_and_end_when_the_flow_summarises(
        s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With mark_ends, an object read from its first record is preceded by ObjectStart and
    followed by ObjectEnd; one resumed mid-object gets no start marker (the summaries held
    in the snapshot go on)."""
    from dataflow.core.messages import ObjectEnd, ObjectStart

    monkeypatch.setattr(source_mod, "BATCH_RECORDS", 3)
    put_lines(s3, "logs/a.ndjson", [b'{"n": %d}' % i for i in range(5)])

    def part(state: dict | None = None) -> Any:
        return S3Source([src()], lambda: s3, catch_up=True, clock=Clock(),
                        mark_ends=True).build_part("s3", S3Source.part_name("app", 0, 1), state)

    first = part()
    got = first.next_batch()
    assert type(got[0]) is ObjectStart and [type(x) for x in got[1:]] == [RawRecord] * 3
    snap = first.snapshot()
    first.close()
    rest = drain(part(snap))
    assert [type(x) for x in rest] == [RawRecord, RawRecord, ObjectEnd]
    assert rest[-1].obj.key == "logs/a.ndjson" and got[0].obj.key == "logs/a.ndjson"


def _count_listings(s3: Any) -> list[int]:
    calls = [0]

    def count(**_: Any) -> None:
        calls[0] += 1
    s3.meta.events.register("before-call.s3.ListObjectsV2", count)
    return calls


def test_the_partitions_of_a_process_share_one_listing_per_poll(s3: Any) -> None:
    """Four partitions of one process, catch-up: each used to list the whole prefix when
    it started and again when it ran out (8 listings); now one listing serves them all
    each time (2), and every object is still read once, by its own partition."""
    keys = [f"logs/{i:03d}.ndjson" for i in range(24)]
    for k in keys:
        put_lines(s3, k, [b"{}"])
    listings = _count_listings(s3)
    cfg = src(partitions=4)
    source = S3Source([cfg], lambda: s3, catch_up=True, clock=Clock())
    parts = [source.build_part("s3", S3Source.part_name("app", i, 4), None) for i in range(4)]
    seen: dict[str, int] = {}
    live = set(range(4))
    while live:
        for i in sorted(live):
            try:
                for item in parts[i].next_batch():
                    assert shard_of(item.obj.key, 4) == i
                    assert item.obj.key not in seen
                    seen[item.obj.key] = i
            except StopIteration:
                live.discard(i)
    assert sorted(seen) == keys
    assert listings[0] == 2


def test_an_object_a_shared_listing_missed_is_found_at_the_partitions_next_poll(
        s3: Any) -> None:
    """Partition 1 takes the listing partition 0 made just before an object of partition
    1's landed: it does not have the object yet, and finds it at its next poll (with its
    own listing: the shared one began before partition 1's previous request)."""
    key = next(f"logs/{i:03d}.ndjson" for i in range(40) if shard_of(f"logs/{i:03d}.ndjson", 2))
    clock = Clock()
    listings = _count_listings(s3)
    source = S3Source([src(partitions=2)], lambda: s3, catch_up=False, clock=clock)
    p0, p1 = (source.build_part("s3", S3Source.part_name("app", i, 2), None) for i in (0, 1))
    assert p0.next_batch() == []  # one listing, for both partitions
    put_lines(s3, key, [b'{"n": 1}'])
    assert p1.next_batch() == []  # partition 0's listing: made before the object landed
    assert listings[0] == 1
    # Both wait for the same next poll: a multiple of poll_secs (10 s).
    assert p0.next_awake() == p1.next_awake() == clock.now + timedelta(seconds=10)
    clock.now += timedelta(seconds=10)
    got = [orjson_n(i) for _ in range(5) for i in p1.next_batch()]
    assert got == [1]
    assert listings[0] == 3  # its own listing, and one more once it had read the object


def test_partitions_poll_on_the_same_grid_whenever_they_ran_dry(s3: Any) -> None:
    clock = Clock()
    clock.now += timedelta(seconds=3)
    source = S3Source([src(partitions=2)], lambda: s3, catch_up=False, clock=clock)
    p0, p1 = (source.build_part("s3", S3Source.part_name("app", i, 2), None) for i in (0, 1))
    assert p0.next_batch() == []
    clock.now += timedelta(seconds=4)
    assert p1.next_batch() == []
    grid = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert p0.next_awake() == p1.next_awake() == grid
