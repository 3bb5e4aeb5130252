"""Request bodies: a batch as a JSON array, gzipped with ISA-L (level 1 is ~10x zlib -6)."""

from __future__ import annotations

from isal import igzip

from dataflow.core.messages import Batch

__all__ = ["MAX_WIRE_BYTES", "encode"]

MAX_WIRE_BYTES = 1_048_576
"""The service refuses bodies larger than this (413 ContentLengthLimitExceeded)."""


def encode(batch: Batch, level: int = 1) -> bytes:
    """The gzipped JSON body of ``batch``."""
    return igzip.compress(batch.body(), compresslevel=level)
