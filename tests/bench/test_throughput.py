"""``bench/throughput.py``: the two-process speed-up with the servers, the pauses and the
start-up each taken out."""

from __future__ import annotations

import pytest

from bench.throughput import speedups


def test_speedups_take_out_servers_pauses_and_start_up() -> None:
    # One process: the servers' 2 CPU-s fit on the free core, nothing is taken out.
    one = {"wall_secs": 20.0, "servers_cpu_secs": 2.0, "bench_cpu_secs": 0.0, "cpu_secs": 18.0,
           "others_cpu_secs": 0.0, "startup_wall_secs": 1.0, "startup_pause_secs": 0.0}
    # Two: the servers' 6 CPU-s displaced the flow by 3 s; its empty-bucket run took 2.5 s,
    # 1 s of it a connection pause; this run paused 1 s too.
    two = {"wall_secs": 12.0, "servers_cpu_secs": 6.0, "bench_cpu_secs": 0.0, "cpu_secs": 14.0,
           "others_cpu_secs": 0.0, "startup_wall_secs": 2.5, "startup_pause_secs": 1.0,
           "connect_pause_secs": 1.0}
    sp = speedups(one, two, 2)
    assert sp["flow_wall_secs_1p"] == 20.0 and sp["flow_wall_secs_2p"] == 9.0
    assert sp["speedup_2p_excl_servers"] == pytest.approx(20 / 9)
    assert sp["speedup_2p_excl_servers_pauses"] == pytest.approx(20 / 8)
    assert sp["speedup_2p_excl_servers_startup"] == pytest.approx(19 / 7.5)
    assert sp["speedup_2p_excl_servers_startup_pauses"] == pytest.approx(19 / 6.5)
