"""Short chaos runs in the default suite (a few kills, a short storm); the long runs are
``bench/chaos.py`` and, marked slow, the ten-kill runs here that `.ci/run` includes."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.chaos import run_chaos
from devstack.stack import LocalStack


def _check(res) -> None:
    print("\n" + res.line())
    assert res.kills >= 1
    assert res.lost == 0 and res.unexpected == 0, res.line()
    assert not res.queue_left, res.line()
    assert res.dead_lettered == 0, res.line()
    # The one window left: requests accepted but not journaled when a kill came.
    assert res.duplicates <= res.kills * res.workers * res.processes * 1000, res.line()


@pytest.mark.parametrize("mode", ["list", "sqs"])
def test_kill_9_at_random_moments_loses_nothing(stack: LocalStack, tmp_path: Path,
                                                mode: str) -> None:
    _check(run_chaos(stack, tmp_path, mode=mode, kills=3, objects=40,
                     records_per_object=(20, 120), seed=7))


def test_a_fault_storm_with_kills_loses_nothing(stack: LocalStack, tmp_path: Path) -> None:
    res = run_chaos(stack, tmp_path, mode="list", workers=2, kills=2, objects=40,
                    records_per_object=(20, 120), storm_secs=15.0, seed=9)
    _check(res)
    # The storm must have hit something, or this test proved nothing.
    assert res.sentinel_faults > 0 and sum(res.s3_faults.values()) > 0, res.line()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("mode", "workers", "processes", "rescale"), [
    ("list", 2, 1, None), ("sqs", 1, 2, None), ("sqs", 2, 1, None), ("list", 1, 1, 2)])
def test_ten_kills(stack: LocalStack, tmp_path: Path, mode: str, workers: int, processes: int,
                   rescale: int | None) -> None:
    _check(run_chaos(stack, tmp_path, mode=mode, workers=workers, processes=processes,
                     kills=10, objects=150, rescale_to=rescale, seed=11))


@pytest.mark.parametrize("mode", ["list", "sqs"])
def test_two_hosts_that_share_no_disk_lose_nothing_and_leave_no_message(
        stack: LocalStack, tmp_path: Path, mode: str) -> None:
    """Two processes, each with its own journal, dead-letter and recovery directories and
    its cluster address on its own loopback address: the SQS partitions confirm from their
    own process's journals (the rows of an object stay where they were read)."""
    _check(run_chaos(stack, tmp_path, mode=mode, processes=2, hosts=True, kills=3, objects=40,
                     records_per_object=(20, 120), seed=21))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("mode", "plan"), [
    ("list", [2]), ("sqs", [2]), ("list", [3]), ("sqs", [3]), ("sqs", [2, 3, 2])])
def test_ten_kills_on_hosts(stack: LocalStack, tmp_path: Path, mode: str,
                            plan: list[int]) -> None:
    _check(run_chaos(stack, tmp_path, mode=mode, process_plan=plan, kills=10, objects=150,
                     seed=31))


def test_sampling_keeps_the_same_rows_across_kills(stack: LocalStack, tmp_path: Path) -> None:
    """`sample = 3` keeps 1 row in 3 by record id: across kill -9 and restarts exactly the
    rows the ids select arrive, none twice (the journal guarantee holds)."""
    res = run_chaos(stack, tmp_path, mode="list", kills=3, objects=40,
                    records_per_object=(20, 120), sample=3, seed=41)
    _check(res)  # lost 0 and unexpected 0: exactly the rows the ids select
    assert res.delivered == res.expected


@pytest.mark.parametrize("mode", ["list", "sqs"])
def test_summaries_and_samples_are_exact_across_kills(stack: LocalStack, tmp_path: Path,
                                                      mode: str) -> None:
    """Summaries per object and minute (`[[transforms.aggregate]]`) and `sample`, across
    kill -9 and restarts: every summary row the objects make arrives once with its exact
    count (the per-object merge is in the snapshot with the source's position), the rows
    summarised are not sent, and with SQS the queue drains (rows taken away are journaled
    as settled)."""
    # Objects of thousands of events: read over several batches, so snapshots (and kills)
    # fall in the middle of an object's summaries.
    res = run_chaos(stack, tmp_path, mode=mode, kills=4, objects=16, min_up_secs=0.5,
                    max_up_secs=2.0, records_per_object=(1500, 4000), sample=2,
                    aggregate=True, seed=43)
    _check(res)  # rows: lost 0, unexpected 0, duplicates only in the journal's window
    assert res.summaries_wrong == 0
