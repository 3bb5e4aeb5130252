"""The dead-letter store: whatever could not be read, parsed, mapped or delivered.

Nothing the connector gives up on is dropped: it becomes an entry here, with the
reason, and ``s3sentinel replay`` can send it again once the cause is fixed.

Entries are JSON lines in files (a local directory) or objects (an ``s3://bucket/prefix/``).
Each write is one new file, made atomically: written to a temporary name, fsynced,
then renamed (a PUT is atomic by itself), so a crash never leaves half an entry; local
files are ``0600`` in a ``0700`` directory. After the write the records are marked in the
dead-letter journal (see :mod:`connectors.ledger`), which is how the SQS
source knows that an object's records are all accounted for.

With a keyring, a file is sealed (:func:`connectors.ops.crypto.seal_lines`): every entry is
encrypted, and its place, the file's entry count and the write's generation are
authenticated with the file name, so a deleted, duplicated, reordered or foreign line is
noticed. :meth:`DeadLetterStore.load` returns the entries that verified and every issue
with its line number (a plain line under a key is refused); it never raises on content.
Files written before sequence numbers (one envelope a line) are read as ``legacy``:
each entry is still authenticated, but a deleted one cannot be noticed; ``rotate-key``,
or any rewrite of the file by ``replay``, seals them. Plain files (written before
encryption was turned on) are refused under a key until ``rotate-key`` encrypts them.

An entry names the object, the offset, the stage and the reason. Records that failed
before mapping carry their bytes (UTF-8 text, or base64) and header lines, to be mapped
again; records that failed delivery carry the mapped row, the stream, and the
service's status, error code and request id.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from connectors.ledger import DEAD_LETTERED, REST, Ledger
from connectors.ops.crypto import DecryptError
from connectors.ops.sealed import (
    IssueList,
    LineIssue,
    RotationReport,
    open_lines,
    reseal,
    seal_lines,
)
from dataflow.core import metrics
from dataflow.core.errors import TerminalError
from dataflow.core.files import atomic_write, fsync_dir, private_dir
from dataflow.core.messages import ErrorRecord

__all__ = ["DeadLetterFileError", "DeadLetterSink", "DeadLetterStore", "EntryFile",
           "error_entry", "read_entries"]

log = logging.getLogger(__name__)

_seq = itertools.count(1)


def error_entry(err: ErrorRecord) -> dict[str, Any]:
    """The JSON-able entry for one error record."""
    entry: dict[str, Any] = {
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


def entry_ranges(entries: Iterable[dict[str, Any]]) -> dict[str, list[list[int]]]:
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


def _dumps(entries: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in entries)


class DeadLetterFileError(TerminalError, ValueError):
    """A dead-letter file has lines that were refused, or lines missing (see
    :meth:`DeadLetterStore.load`); ``issues`` lists them."""

    def __init__(self, message: str, issues: tuple[LineIssue, ...] = ()) -> None:
        self.issues = issues
        super().__init__(message)



@dataclass
class EntryFile(IssueList):
    """One dead-letter file as read: the entries that verified, and every issue."""

    name: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """The line number of each entry."""
    issues: list[LineIssue] = field(default_factory=list)
    legacy: bool = False
    """Sealed before sequence numbers: entries authenticated one by one only."""


class DeadLetterStore:
    """Dead-letter files in a local directory, or objects under an S3 prefix.

    :arg directory: Local directory (used when ``s3_uri`` is None).
    :arg s3_uri: ``s3://bucket/prefix/`` to keep the entries in S3 instead.
    :arg s3_factory: Builds the S3 client (for ``s3_uri``).
    :arg keyring: Seals the files written and verifies those read (see the module
        docstring); None writes plain JSON lines.
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

    @property
    def keyring(self) -> Any:
        """The keyring that seals the entries (None: plain JSON lines)."""
        return self._keyring

    def write(self, entries: list[dict[str, Any]], name: str) -> str:
        """Write entries as one new file named ``<name>-<time>-<seq>.jsonl``; returns its name."""
        fname = f"{name}-{time.time_ns()}-{next(_seq):06d}.jsonl"
        self._put(fname, self._encode(fname, entries))
        return fname

    def _encode(self, name: str, entries: Iterable[dict[str, Any]]) -> bytes:
        if self._keyring is None:
            return _dumps(entries)
        # An entry moved to another file, or to another place, does not verify.
        return seal_lines(self._keyring, (orjson.dumps(e) for e in entries), name.encode())

    def load(self, name: str) -> EntryFile:
        """The entries of one file that verified, and every issue with its line number
        (plain lines under a key, encrypted ones without, undecryptable, duplicated,
        foreign, reordered or missing lines); never raises on the content."""
        opened = open_lines(self._keyring, self._get(name), name.encode())
        out = EntryFile(name, issues=list(opened.issues), legacy=opened.legacy)
        for line in opened.lines:
            try:
                entry = orjson.loads(line.plaintext)
            except orjson.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                out.issues.append(LineIssue(line.number, "malformed", "not a JSON object"))
                continue
            out.entries.append(entry)
            out.lines.append(line.number)
        out.issues.sort(key=lambda i: (i.line == 0, i.line))
        return out

    def read(self, name: str) -> list[dict[str, Any]]:
        """The entries of one file; raises :class:`PermissionError` when it is encrypted and
        no key is configured, :class:`DeadLetterFileError` when anything else is wrong
        (a legacy file is read as it is)."""
        got = self.load(name)
        no_key = [i for i in got.issues if i.kind == "no_key"]
        if no_key:
            msg = (f"{self.location}/{name}: entries are encrypted ({no_key[0].detail}); "
                   "configure runtime.encryption_key_file or runtime.encryption_keyvault_keys "
                   "to read them")
            raise PermissionError(msg)
        if not got.intact:
            bad = [i for i in got.issues if i.kind != "legacy"]
            msg = (f"{self.location}/{name}: {len(bad)} problems: "
                   + "; ".join(str(i) for i in bad))
            raise DeadLetterFileError(msg, tuple(bad))
        return got.entries

    def rotate(self) -> RotationReport:
        """Re-seal every file under the current key, atomically file by file: legacy files
        get sequence numbers, plain files (written before encryption was turned on) are
        encrypted and named in the log. A file with a wrong line is left as it is and
        named in ``failures``. Old keys must stay in the keyring until no file fails."""
        if self._keyring is None:
            msg = "rotation needs a keyring (runtime.encryption_key_file or _keyvault_keys)"
            raise ValueError(msg)
        report = RotationReport()
        for name in self.names():
            where = f"{self.location}/{name}"
            try:
                body, done = reseal(self._get(name), name.encode(), self._keyring,
                                    encrypt_plaintext=True, where=where)
            except DecryptError as ex:
                report.files += 1
                report.failures[name] = str(ex)
                continue
            if done.encrypted_plaintext:
                log.warning("%s: %d plain entries (written without a key) encrypted; check "
                            "that the file is one this connector wrote", where,
                            done.encrypted_plaintext)
            if body is not None:
                self._put(name, body)
            report.add(done)
        return report

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

    def _get(self, name: str) -> bytes:
        if self._s3 is None:
            return (self._dir / name).read_bytes()
        body: bytes = self._s3.get_object(Bucket=self._bucket, Key=self._prefix + name)["Body"].read()
        return body

    def replace(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Atomically rewrite a file with the entries that remain (remove it when none)."""
        if entries:
            self._put(name, self._encode(name, entries))
        elif self._s3 is None:
            (self._dir / name).unlink(missing_ok=True)
            fsync_dir(self._dir)
        else:
            self._s3.delete_object(Bucket=self._bucket, Key=self._prefix + name)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry in the store (see :meth:`read`)."""
        return [e for n in self.names() for e in self.read(n)]

    def _put(self, name: str, body: bytes) -> None:
        if self._s3 is not None:
            self._s3.put_object(Bucket=self._bucket, Key=self._prefix + name, Body=body)
            return
        atomic_write(private_dir(self._dir) / name, body)


def read_entries(directory: str | os.PathLike[str], keyring: Any = None) -> list[dict[str, Any]]:
    """Every entry in a local dead-letter directory (for tests, reports and replay)."""
    return DeadLetterStore(directory, keyring=keyring).entries()


def record_dead_letters(store: DeadLetterStore, journal: Ledger | None,
                        entries: list[dict[str, Any]], name: str) -> None:
    """Write entries, then mark their records as accounted for; count them."""
    if not entries:
        return
    store.write(entries, name)
    if journal is not None:
        journal.record_ranges(entry_ranges(entries))
    for e in entries:
        metrics.DEADLETTER_RECORDS.labels(e.get("stage", ""), e.get("code") or "error").inc()


class _DeadLetterPartition(StatelessSinkPartition[ErrorRecord]):
    def __init__(self, store: DeadLetterStore, journal: Ledger | None,
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
    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> StatelessSinkPartition[ErrorRecord]:
        name = f"errors-{socket.gethostname()}-{os.getpid()}-w{worker_index}"
        store = DeadLetterStore(self._dir, self._s3_uri, self._s3_factory, self._keyring)
        journal = None
        if self._journal_dir is not None:
            journal = Ledger(self._journal_dir, worker_index, name=DEAD_LETTERED,
                                    keyring=self._keyring)
        return _DeadLetterPartition(store, journal, name)
