"""The dead-letter store: records and objects that could not be read, parsed or mapped.

Each worker appends JSON lines to its own file in the configured directory, flushed
and fsynced before the epoch completes, so an error record is never lost on a crash.
With an S3 prefix configured, each batch of error records is written as one object
under it instead (the PUT completes before the epoch does).
Each line names the object, the offset, the stage and the reason, and carries the
offending bytes (UTF-8 text when they are text, base64 otherwise) for later replay.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from dataflow.messages import ErrorRecord

__all__ = ["DeadLetterSink", "error_entry", "read_entries"]


def error_entry(err: ErrorRecord) -> dict:
    """The JSON-able entry for one error record."""
    entry = {
        "source": err.obj.source, "bucket": err.obj.bucket, "key": err.obj.key,
        "etag": err.obj.etag, "format": err.obj.format, "offset": err.offset,
        "stage": err.stage, "reason": err.reason,
        "record_id": None if err.offset is None else f"{err.obj.id}-{err.offset}",
    }
    if err.header:
        entry["header"] = [h.decode("utf-8", errors="replace") for h in err.header]
    try:
        entry["data"] = err.data.decode("utf-8")
    except UnicodeDecodeError:
        entry["data_b64"] = base64.b64encode(err.data).decode()
    return entry


def read_entries(directory: str | os.PathLike[str]) -> list[dict]:
    """Every entry in a dead-letter directory (for tests, reports and replay)."""
    out: list[dict] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        with path.open("rb") as f:
            out.extend(orjson.loads(line) for line in f if line.strip())
    return out


class _DeadLetterPartition(StatelessSinkPartition[ErrorRecord]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")

    @override
    def write_batch(self, items: list[ErrorRecord]) -> None:
        self._file.write(b"".join(orjson.dumps(error_entry(e)) + b"\n" for e in items))
        self._file.flush()
        os.fsync(self._file.fileno())

    @override
    def close(self) -> None:
        self._file.close()


class _S3DeadLetterPartition(StatelessSinkPartition[ErrorRecord]):
    def __init__(self, s3: Any, bucket: str, prefix: str, name: str) -> None:
        self._s3, self._bucket, self._prefix, self._name = s3, bucket, prefix, name
        self._seq = 0

    @override
    def write_batch(self, items: list[ErrorRecord]) -> None:
        self._seq += 1
        key = f"{self._prefix}{self._name}-{time.time_ns()}-{self._seq:06d}.jsonl"
        body = b"".join(orjson.dumps(error_entry(e)) + b"\n" for e in items)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body)


class DeadLetterSink(DynamicSink[ErrorRecord]):
    """Writes error records to ``<directory>/errors-<host>-<pid>-w<worker>.jsonl``, or as
    objects under an ``s3://bucket/prefix/`` when ``s3_uri`` is given.

    :arg s3_factory: Builds the S3 client (for ``s3_uri``).
    """

    def __init__(self, directory: str | os.PathLike[str], s3_uri: str | None = None,
                 s3_factory: Callable[[], Any] | None = None) -> None:
        self._dir = Path(directory)
        self._s3_uri = s3_uri
        self._s3_factory = s3_factory

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        name = f"errors-{socket.gethostname()}-{os.getpid()}-w{worker_index}"
        if self._s3_uri:
            assert self._s3_factory is not None
            bucket, _, prefix = self._s3_uri.removeprefix("s3://").partition("/")
            return _S3DeadLetterPartition(self._s3_factory(), bucket, prefix, name)
        return _DeadLetterPartition(self._dir / f"{name}.jsonl")
