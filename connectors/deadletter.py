"""The dead-letter store: whatever could not be read, parsed, mapped or delivered.

Nothing the connector gives up on is dropped: it becomes an entry here, with the
reason, and ``s3sentinel replay`` can send it again once the cause is fixed.

Entries are JSON lines in files (a local directory) or objects (an ``s3://bucket/prefix/``).
Each write is one new file, made atomically: written to a temporary name, fsynced,
then renamed (a PUT is atomic by itself), so a crash never leaves half an entry. After
the write the records are marked in the dead-letter journal (see
:mod:`connectors.sentinel.journal`), which is how the SQS source knows that an
object's records are all accounted for.

An entry names the object, the offset, the stage and the reason. Records that failed
before mapping carry their bytes (UTF-8 text, or base64) and header lines, to be mapped
again; records that failed delivery carry the mapped row, the stream, and the
service's status, error code and request id.
"""

from __future__ import annotations

import base64
import itertools
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from connectors.sentinel.journal import DEAD_LETTERED, REST, UploadJournal
from dataflow import metrics
from dataflow.messages import ErrorRecord

__all__ = ["DeadLetterSink", "DeadLetterStore", "error_entry", "read_entries"]

_seq = itertools.count(1)


def error_entry(err: ErrorRecord) -> dict:
    """The JSON-able entry for one error record."""
    entry = {
        "source": err.obj.source, "bucket": err.obj.bucket, "key": err.obj.key,
        "etag": err.obj.etag, "format": err.obj.format, "offset": err.offset,
        "stage": err.stage, "code": err.code, "reason": err.reason, "time": time.time(),
        "record_id": None if err.offset is None else f"{err.obj.id}-{err.offset}",
        "object_id": err.obj.id,
    }
    if err.header:
        entry["header"] = [h.decode("utf-8", errors="replace") for h in err.header]
    try:
        entry["data"] = err.data.decode("utf-8")
    except UnicodeDecodeError:
        entry["data_b64"] = base64.b64encode(err.data).decode()
    return entry


def entry_ranges(entries: Iterable[dict]) -> dict[str, list[list[int]]]:
    """Offset ranges per object id that the entries account for.

    A read failure at offset k accounts for the rest of the object (k and after);
    a record's failure for its own offset.
    """
    out: dict[str, list[list[int]]] = {}
    for e in entries:
        rid = e.get("record_id")
        if e.get("stage") == "read" or rid is None:
            obj = e.get("object_id")
            if obj:
                out.setdefault(obj, []).append([e.get("offset") or 0, REST])
            continue
        obj, _, off = rid.rpartition("-")
        out.setdefault(obj, []).append([int(off), int(off) + 1])
    return out


def _dumps(entries: Iterable[dict]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in entries)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeadLetterStore:
    """Dead-letter files in a local directory, or objects under an S3 prefix.

    :arg directory: Local directory (used when ``s3_uri`` is None).
    :arg s3_uri: ``s3://bucket/prefix/`` to keep the entries in S3 instead.
    :arg s3_factory: Builds the S3 client (for ``s3_uri``).
    """

    def __init__(self, directory: str | os.PathLike[str], s3_uri: str | None = None,
                 s3_factory: Callable[[], Any] | None = None, keyring: Any = None) -> None:
        self._dir = Path(directory)
        self._s3_uri = s3_uri
        self._keyring = keyring
        self._s3: Any = None
        if s3_uri:
            if s3_factory is None:
                msg = "an S3 dead-letter store needs an S3 client factory"
                raise ValueError(msg)
            self._s3 = s3_factory()
            self._bucket, _, self._prefix = s3_uri.removeprefix("s3://").partition("/")

    @property
    def location(self) -> str:
        return self._s3_uri or str(self._dir)

    def write(self, entries: list[dict], name: str) -> str:
        """Write entries as one new file named ``<name>-<time>-<seq>.jsonl``; returns its name."""
        fname = f"{name}-{time.time_ns()}-{next(_seq):06d}.jsonl"
        self._put(fname, self._encode(fname, entries))
        return fname

    def _encode(self, name: str, entries: Iterable[dict]) -> bytes:
        if self._keyring is None:
            return _dumps(entries)
        from ops.crypto import encrypt_line

        aad = name.encode()  # an entry moved to another file does not decrypt
        return b"".join(encrypt_line(self._keyring, orjson.dumps(e), aad) + b"\n"
                        for e in entries)

    def _decode(self, name: str, data: bytes) -> list[dict]:
        out = []
        for line in data.splitlines():
            if not line.strip():
                continue
            doc = orjson.loads(line)
            if isinstance(doc, dict) and "kid" in doc and "ct" in doc:
                if self._keyring is None:
                    msg = (f"{self.location}/{name}: entries are encrypted (key "
                           f"{doc['kid']!r}); configure runtime.encryption_key_file or "
                           "runtime.encryption_keyvault_keys to read them")
                    raise PermissionError(msg)
                from ops.crypto import decrypt_line

                doc = orjson.loads(decrypt_line(self._keyring, line, name.encode()))
            out.append(doc)
        return out

    def rotate(self) -> tuple[int, int]:
        """Re-encrypt every file under the current key (atomically, file by file); returns
        (files, entries). Old keys must stay in the keyring until this has finished."""
        files = entries = 0
        for name in self.names():
            got = self.read(name)
            self.replace(name, got)
            files += 1
            entries += len(got)
        return files, entries

    def names(self) -> list[str]:
        """Every entry file, oldest first (names start with their writer and time)."""
        if self._s3 is None:
            if not self._dir.exists():
                return []
            return sorted(p.name for p in self._dir.glob("*.jsonl"))
        out: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix):
            out.extend(o["Key"][len(self._prefix):] for o in page.get("Contents", ())
                       if o["Key"].endswith(".jsonl"))
        return sorted(out)

    def read(self, name: str) -> list[dict]:
        """The entries of one file."""
        if self._s3 is None:
            data = (self._dir / name).read_bytes()
        else:
            data = self._s3.get_object(Bucket=self._bucket, Key=self._prefix + name)["Body"].read()
        return self._decode(name, data)

    def replace(self, name: str, entries: list[dict]) -> None:
        """Atomically rewrite a file with the entries that remain (remove it when none)."""
        if entries:
            self._put(name, self._encode(name, entries))
        elif self._s3 is None:
            (self._dir / name).unlink(missing_ok=True)
            _fsync_dir(self._dir)
        else:
            self._s3.delete_object(Bucket=self._bucket, Key=self._prefix + name)

    def entries(self) -> list[dict]:
        """Every entry in the store."""
        return [e for n in self.names() for e in self.read(n)]

    def _put(self, name: str, body: bytes) -> None:
        if self._s3 is not None:
            self._s3.put_object(Bucket=self._bucket, Key=self._prefix + name, Body=body)
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f".{name}.tmp"
        with tmp.open("wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._dir / name)
        _fsync_dir(self._dir)


def read_entries(directory: str | os.PathLike[str], keyring: Any = None) -> list[dict]:
    """Every entry in a local dead-letter directory (for tests, reports and replay)."""
    return DeadLetterStore(directory, keyring=keyring).entries()


def record_dead_letters(store: DeadLetterStore, journal: UploadJournal | None,
                        entries: list[dict], name: str) -> None:
    """Write entries, then mark their records as accounted for; count them."""
    if not entries:
        return
    store.write(entries, name)
    if journal is not None:
        journal.record_ranges(entry_ranges(entries))
    for e in entries:
        metrics.DEADLETTER_RECORDS.labels(e.get("stage", ""), e.get("code") or "error").inc()


class _DeadLetterPartition(StatelessSinkPartition[ErrorRecord]):
    def __init__(self, store: DeadLetterStore, journal: UploadJournal | None,
                 name: str) -> None:
        self._store = store
        self._journal = journal
        self._name = name

    @override
    def write_batch(self, items: list[ErrorRecord]) -> None:
        record_dead_letters(self._store, self._journal, [error_entry(e) for e in items],
                            self._name)

    @override
    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()


class DeadLetterSink(DynamicSink[ErrorRecord]):
    """Writes error records to the dead-letter store, as files named
    ``errors-<host>-<pid>-w<worker>-<time>-<seq>.jsonl``.

    :arg directory: Local directory of the store.
    :arg s3_uri: ``s3://bucket/prefix/`` to keep them in S3 instead.
    :arg s3_factory: Builds the S3 client (for ``s3_uri``).
    :arg journal_dir: Where the dead-letter journal goes (beside the upload journal); None
        leaves it out.
    """

    def __init__(self, directory: str | os.PathLike[str], s3_uri: str | None = None,
                 s3_factory: Callable[[], Any] | None = None,
                 journal_dir: str | os.PathLike[str] | None = None,
                 keyring: Any = None) -> None:
        self._dir = Path(directory)
        self._s3_uri = s3_uri
        self._s3_factory = s3_factory
        self._journal_dir = journal_dir
        self._keyring = keyring

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        name = f"errors-{socket.gethostname()}-{os.getpid()}-w{worker_index}"
        store = DeadLetterStore(self._dir, self._s3_uri, self._s3_factory, self._keyring)
        journal = None
        if self._journal_dir is not None:
            journal = UploadJournal(self._journal_dir, worker_index, name=DEAD_LETTERED)
        return _DeadLetterPartition(store, journal, name)
