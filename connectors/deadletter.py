"""The dead-letter store: records and objects that could not be read, parsed or mapped.

Each worker appends JSON lines to its own file in the configured directory, flushed
and fsynced before the epoch completes, so an error record is never lost on a crash.
Each line names the object, the offset, the stage and the reason, and carries the
offending bytes (UTF-8 text when they are text, base64 otherwise) for later replay.
"""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path
from typing import IO

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from dataflow.messages import ErrorRecord

__all__ = ["DeadLetterSink", "error_entry", "read_entries"]


def error_entry(err: ErrorRecord) -> dict:
    """The JSON-able entry for one error record."""
    entry = {
        "source": err.obj.source, "bucket": err.obj.bucket, "key": err.obj.key,
        "etag": err.obj.etag, "offset": err.offset, "stage": err.stage, "reason": err.reason,
        "record_id": None if err.offset is None else f"{err.obj.id}-{err.offset}",
    }
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


class DeadLetterSink(DynamicSink[ErrorRecord]):
    """Appends error records to ``<directory>/errors-<host>-<pid>-w<worker>.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        name = f"errors-{socket.gethostname()}-{os.getpid()}-w{worker_index}.jsonl"
        return _DeadLetterPartition(self._dir / name)
