"""Decompression of object bodies: gzip (multi-member), zstd, plain; corrupt, truncated, bombs."""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard

from connectors.s3.errors import ObjectReadError
from connectors.s3.objects import decompress

DATA = os.urandom(50_000) + b"\n".join(b"line %d" % i for i in range(20_000))


def chunks(blob: bytes, size: int) -> list[bytes]:
    return [blob[i:i + size] for i in range(0, len(blob), size)]


@pytest.mark.parametrize("size", [1, 333, 65_536, 10**9])
@pytest.mark.parametrize("kind", ["gzip", "gzip2", "zstd", "plain"])
def test_round_trip(kind: str, size: int) -> None:
    if size == 1 and kind != "plain":
        size = 97  # one-byte chunks work too but are slow for 200 KB
    blob = {"gzip": lambda: gzip.compress(DATA),
            "gzip2": lambda: gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:]),
            "zstd": lambda: zstandard.ZstdCompressor().compress(DATA),
            "plain": lambda: DATA}[kind]()
    assert b"".join(decompress(chunks(blob, size), max_bytes=10**9)) == DATA


def test_empty_input_yields_nothing() -> None:
    assert list(decompress([], max_bytes=10)) == []
    assert list(decompress([b""], max_bytes=10)) == []


def test_corrupt_and_truncated_gzip() -> None:
    good = gzip.compress(DATA)
    with pytest.raises(ObjectReadError, match="corrupt gzip") as info:
        list(decompress([good[:10] + bytes(range(256)) * 8], max_bytes=10**9))
    assert info.value.transient is False
    with pytest.raises(ObjectReadError, match="truncated"):
        list(decompress(chunks(good[: len(good) // 2], 4096), max_bytes=10**9))


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    seen = 0
    with pytest.raises(ObjectReadError, match="exceeds the limit of 1000000 bytes"):
        for out in decompress(chunks(bomb, 65_536), max_bytes=1_000_000):
            seen += len(out)
    assert seen <= 1_000_000


def test_gzip_output_comes_in_bounded_steps() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)
    sizes = [len(out) for out in decompress([bomb], max_bytes=10**9)]
    assert sum(sizes) == 20_000_000 and max(sizes) <= 1024 * 1024


def test_a_compression_ratio_over_the_limit_is_a_bomb() -> None:
    bomb = gzip.compress(b"\0" * 40_000_000)  # ~1000:1
    with pytest.raises(ObjectReadError, match="decompression bomb"):
        for _ in decompress(chunks(bomb, 65_536), max_bytes=10**10, max_ratio=100):
            pass
    # Ordinary log data (~10:1) passes the same limit.
    logs = gzip.compress(b"".join(b'{"n": %d, "msg": "user %d logged in"}\n' % (i, i % 97)
                                  for i in range(600_000)))
    assert sum(map(len, decompress(chunks(logs, 65_536), max_bytes=10**10, max_ratio=100))) > 0
