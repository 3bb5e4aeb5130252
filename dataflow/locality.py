"""Keys that keep rows on the process that read them, so hosts need share no disk.

An SQS partition deletes a message once the upload and dead-letter journals account for
every record of its object, and each process keeps its journals on its own volume. So the
rows of an object must be batched and delivered by the process that read it: then that
process's own journal is enough, and no row crosses the network between processes.

bytewax routes a keyed item to worker ``siphash13(key + b"\\xff") % workers`` (Rust's
``DefaultHasher`` over the key's ``str`` hash, across every worker of every process; the
workers of process ``i`` are ``i * w .. i * w + w - 1``). :class:`LocalKeys` appends to a
key the first salt that routes it to a worker of this process. ``tests/dataflow/
test_locality.py`` checks that against bytewax itself, in a cluster of processes, so a
bytewax that routes otherwise fails the suite rather than the SQS confirmations.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ClusterShape", "LocalKeys", "siphash13", "worker_of"]

_M = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of ``data`` (Rust's ``DefaultHasher`` with its zero keys)."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    rounds(1)
    v0 ^= last
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker (of ``workers`` in the whole cluster) bytewax routes ``key`` to."""
    return siphash13(key.encode() + b"\xff") % workers


@dataclass(frozen=True)
class ClusterShape:
    """This process's place in the bytewax cluster."""

    process: int = 0
    processes: int = 1
    workers: int = 1
    """Workers per process."""

    @classmethod
    def from_argv(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None,
                  ) -> ClusterShape:
        """The shape ``python -m bytewax.run`` was started with (its ``-i``, ``-a``, ``-w``
        or their ``BYTEWAX_*`` variables)."""
        env = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("-w", "--workers-per-process", type=int)
        parser.add_argument("-i", "--process-id", type=int)
        parser.add_argument("-a", "--addresses")
        args, _ = parser.parse_known_args(list(argv))
        workers = args.workers_per_process or int(env.get("BYTEWAX_WORKERS_PER_PROCESS") or 1)
        process = args.process_id
        if process is None and env.get("BYTEWAX_PROCESS_ID"):
            process = int(env["BYTEWAX_PROCESS_ID"])
        addresses = args.addresses or env.get("BYTEWAX_ADDRESSES") or ""
        if not addresses and env.get("BYTEWAX_HOSTFILE_PATH"):
            with open(env["BYTEWAX_HOSTFILE_PATH"], encoding="utf-8") as f:
                addresses = ";".join(line.strip() for line in f if line.strip())
        processes = len([a for a in addresses.split(";") if a.strip()]) or 1
        return cls(process or 0, processes, workers)

    def is_local(self, worker: int) -> bool:
        """Whether ``worker`` (a cluster-wide index) runs in this process."""
        return self.process * self.workers <= worker < (self.process + 1) * self.workers


class LocalKeys:
    """``key(base)``: ``base``, salted when needed so that bytewax routes it to a worker
    of this process (the same base gives the same key for the life of the process)."""

    def __init__(self, shape: ClusterShape) -> None:
        self._shape = shape
        self._total = shape.processes * shape.workers
        self._cache: dict[str, str] = {}

    def __call__(self, base: str) -> str:
        if self._shape.processes == 1:
            return base
        key = self._cache.get(base)
        if key is None:
            salt = 0
            key = base
            while not self._shape.is_local(worker_of(key, self._total)):
                salt += 1
                key = f"{base}~{salt}"
            if len(self._cache) < 100_000:
                self._cache[base] = key
        return key
