"""One stream over several DCRs, each limited as the service limits it (issue 13).

The emulator enforces each DCR's data and requests per minute (set low here, so the
service is the bottleneck) with 429 + Retry-After. Through the real flow, with 1, 2 and 3
DCRs carrying Custom-AWSCloudTrail: every record arrives exactly once, no DCR is pushed
past its limits, and throughput grows with the number of DCRs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.fanout import fanout_stack, run
from devstack.samples import Manifest, seed_cloudtrail
from devstack.stack import LocalStack

BUCKET = "fanout-trail"
LIMITS = {"bytes_per_min": 4_000_000, "requests_per_min": 240, "window_secs": 60}
"""Per DCR: ~67 kB/s; the seeded objects hold ~1.4 MB of rows."""


@pytest.fixture(scope="module")
def fan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Manifest]]:
    with fanout_stack(tmp_path_factory.mktemp("fanout"), 3, LIMITS) as stack:
        manifest = seed_cloudtrail(stack.s3(), BUCKET, objects=24, records_per_object=(40, 60),
                                   seed=13, digests=False)
        yield stack, manifest


def test_records_arrive_once_within_each_dcrs_limits_and_scale_with_dcrs(
        fan: tuple[LocalStack, Manifest], tmp_path: Path) -> None:
    stack, manifest = fan
    rates = {}
    for n in (1, 3):
        got = run(stack, n, BUCKET, tmp_path)
        assert got.records == manifest.record_count, (n, got.log)
        assert max(got.record_ids.values()) == 1, n  # none twice
        assert len(got.per_dcr) == n
        for rule, st in got.per_dcr.items():
            # Every DCR took a share, and none was pushed past its per-minute limits: the
            # connector paces itself, so the service never had to throttle it.
            assert st["accepted_records"] > 0, (n, rule)
            assert st["max_window_bytes"] <= LIMITS["bytes_per_min"], (n, rule, st)
            assert st["max_window_requests"] <= LIMITS["requests_per_min"], (n, rule, st)
            assert st["throttled"] == 0, (n, rule, st)
        rates[n] = got.rows_per_sec
    # The one-DCR run is limited by its 67 kB/s; three DCRs take three times as much.
    assert rates[3] > 2 * rates[1], rates
