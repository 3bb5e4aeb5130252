"""``bench/throughput.py``: the two-process speed-up with the servers, the pauses and the
start-up each taken out."""

from __future__ import annotations

import tomllib

import pytest

from bench.throughput import DETECTOR_PARTS, detector_costs, flow_config, speedups


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


def test_detector_costs_split_every_detector_into_its_parts() -> None:
    # Microseconds per event: without 40, rules 50, rules and sequences 60, rules and
    # anomaly 65, every detector 70. Sequences own 70 - 65, anomaly own 70 - 60, and the
    # side step's shared work is what adding both to rules costs beyond the two.
    us = {1: 40.0, "rules": 50.0, "sequences": 60.0, "anomaly": 65.0, "all": 70.0}
    costs = detector_costs({m: {"events_per_cpu_sec_excl_startup": 1e6 / t}
                            for m, t in us.items()})
    assert costs["none_us"] == pytest.approx(40.0)
    assert costs["all_us"] == pytest.approx(30.0)
    assert costs["rules_us"] == pytest.approx(10.0)
    assert costs["sequences_us"] == pytest.approx(5.0)
    assert costs["anomaly_us"] == pytest.approx(10.0)
    assert costs["shared_us"] == pytest.approx(5.0)
    assert sum(costs[k] for k in DETECTOR_PARTS) == pytest.approx(costs["all_us"])
    assert costs["ceiling_free_anomaly"] == pytest.approx(40 / 60)


@pytest.mark.parametrize(("enrich", "anomaly", "sequences"), [
    ("rules", False, False), ("sequences", False, True), ("anomaly", True, False),
    ("all", True, True)])
def test_flow_config_turns_on_the_detectors_of_a_mode(enrich: str, anomaly: bool,
                                                      sequences: bool) -> None:
    cfg = tomllib.loads(flow_config("bucket", 4, enrich))["enrich"]
    assert cfg["enabled"] is True
    assert cfg.get("anomaly", False) is anomaly
    assert cfg.get("sequences", False) is sequences
