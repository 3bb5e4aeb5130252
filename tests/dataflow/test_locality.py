"""LocalKeys keeps keyed items on the process that made them: checked against bytewax's own
routing, in a real cluster of processes (a bytewax that routes otherwise fails here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dataflow.locality import ClusterShape, LocalKeys, siphash13, worker_of
from devstack.stack import free_port

ROOT = Path(__file__).resolve().parents[2]

FLOW = '''
import os, sys
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink
from dataflow.locality import ClusterShape, LocalKeys

LOCAL = LocalKeys(ClusterShape.from_argv(sys.argv))
SALTED = os.environ["SALTED"] == "1"

class Part(StatefulSourcePartition):
    def __init__(self, name):
        self.name, self.done = name, False
    def next_batch(self):
        if self.done:
            raise StopIteration
        self.done = True
        return [(f"{self.name}|{i}", os.getpid()) for i in range(50)]
    def snapshot(self):
        return None

class Src(FixedPartitionedSource):
    def list_parts(self):
        return [f"src:{i}/8" for i in range(8)]
    def build_part(self, step_id, for_part, resume_state):
        return Part(for_part)

flow = Dataflow("locality")
items = op.input("in", flow, Src())
keyed = op.key_on("key", items, lambda x: LOCAL(x[0]) if SALTED else x[0])
seen = op.stateful_map("seen", keyed, lambda s, x: (None, x[1] == os.getpid()))
# One write per line (atomic on a pipe): print() from two worker threads can interleave.
op.inspect("out", seen, lambda step, x: os.write(1, f"LOCAL {x[1]}\\n".encode()))
op.output("sink", seen, TestingSink([]))
'''


def _run(tmp_path: Path, salted: bool, processes: int = 2, workers: int = 2) -> list[bool]:
    (tmp_path / "locflow.py").write_text(FLOW)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
           "SALTED": "1" if salted else "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "locflow:flow", "-w",
                               str(workers), "-i", str(i), "-a", addresses],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
             for i in range(processes)]
    out = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), out
    return [line.split()[1] == "True" for o in out for line in o.splitlines()
            if line.startswith("LOCAL")]


def test_salted_keys_stay_on_their_process_and_plain_ones_do_not(tmp_path: Path) -> None:
    plain = _run(tmp_path, salted=False)
    assert len(plain) == 400 and not all(plain)  # bytewax does move plain keys around
    salted = _run(tmp_path, salted=True)
    assert len(salted) == 400 and all(salted)


def test_siphash13_and_the_shape() -> None:
    # The reference SipHash-1-3 vector of the empty input with zero keys (Rust's
    # DefaultHasher::new().finish() after hashing nothing).
    assert siphash13(b"") == 0xD1FBA762150C532C
    shape = ClusterShape.from_argv(["-w", "3", "-i", "1", "-a", "h0:1;h1:1;h2:1"], {})
    assert shape == ClusterShape(process=1, processes=3, workers=3)
    assert ClusterShape.from_argv([], {"BYTEWAX_PROCESS_ID": "2", "BYTEWAX_ADDRESSES": "a;b;c",
                                       "BYTEWAX_WORKERS_PER_PROCESS": "2"}) == \
        ClusterShape(2, 3, 2)
    keys = LocalKeys(shape)
    for base in ("a|b|c", "x", "Custom-AWSCloudTrail|trail:3/4"):
        assert 3 <= worker_of(keys(base), 9) < 6
    assert LocalKeys(ClusterShape())("same") == "same"  # one process: keys untouched
