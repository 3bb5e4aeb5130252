"""The deletion journal of an SQS partition: the messages it deleted, and what they named.

A message is deleted once every record its objects gave is accounted for: delivered,
dead-lettered or settled (:mod:`connectors.s3.notifications`). What those records make
downstream has derived ids no source waits for: an object's summary rows
(``[[transforms.aggregate]]``), findings. When the message is deleted they may still be in
flight, in state only the next snapshot will hold. A ``kill -9`` before that snapshot
commits resumes from an earlier one, whose state does not have them, and the message,
gone from the queue, never brings its objects back.

So a deletion is journaled first, durably, with the objects it named, and a restart
reads again the objects of every deletion journaled after the snapshot it resumes from
(:meth:`DeletionJournal.mark`, kept in the source's snapshot): the sink skips the rows
already delivered, and what they derive is made again, with the same ids. A start with no
snapshot (a new recovery store, or a kill before the first snapshot committed) reads again
what the journal still holds; a flow without a recovery store, whose every start has no
snapshot, reads nothing again (``resumable``).

The journal keeps the deletions of the last :data:`KEEP_SECS` before its newest one. A
flow whose snapshots commit further apart than that (or a restart from a recovery store
older than that) may miss summaries and findings of the messages deleted in between.
Lines are authenticated with the keyring, as the upload journal's are.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from connectors.ledger import line_rejected, signed_line
from dataflow.core import metrics
from dataflow.core.files import atomic_write, open_private, private_dir

__all__ = ["KEEP_SECS", "DeletionJournal", "Deleted"]

log = logging.getLogger(__name__)

KEEP_SECS = 3600.0
"""How long before the newest deletion a deletion is kept."""

COMPACT_EVERY = 1000
"""Appends between two rewrites of the file without what is older than :data:`KEEP_SECS`."""

_MAC_PURPOSE = b"sqs-deletions"

DELETIONS = "sqsdeleted"
"""The journal's name: its files' prefix, and its label in ``journal_rejected_lines``."""


class Deleted(msgspec.Struct, frozen=True):
    """One deleted message: its sequence number in the journal, when, and its objects."""

    n: int
    """Its number: increasing, never used again."""
    t: float
    m: str
    """The message id."""
    o: list[tuple[str, str, int]]
    """The objects it named: (key, etag, size)."""


class _Line(Deleted, frozen=True):
    kid: Any = None
    mac: Any = None


_decode = msgspec.json.Decoder(_Line).decode
_encode = msgspec.json.Encoder().encode


class DeletionJournal:
    """The deletions of one source partition (``sqsdeleted-<partition>.jsonl``).

    :arg directory: The journals' directory.
    :arg partition: The partition's name (stable across restarts).
    :arg keyring: Authenticates the lines written and checks those read; None writes and
        accepts lines without a MAC.
    """

    def __init__(self, directory: str | os.PathLike[str], partition: str, keyring: Any = None,
                 *, clock: Callable[[], float] = time.time, keep_secs: float = KEEP_SECS) -> None:
        label = re.sub(r"[^\w.-]", "_", partition)
        self._path = private_dir(directory) / f"{DELETIONS}-{label}.jsonl"
        self._keyring = keyring
        self._clock = clock
        self._keep = keep_secs
        self._entries: list[Deleted] = []
        self._last = 0  # the newest sequence number ever written (kept across rewrites)
        if self._path.exists():
            self._load()
        self._rewrite()
        self._file = open_private(self._path, "ab")
        self._appends = 0

    def mark(self) -> int:
        """Where the journal is: a snapshot keeps it, and a restart from that snapshot reads
        again what was deleted after it (:meth:`since`)."""
        return self._last

    def since(self, mark: int | None) -> list[Deleted]:
        """The deletions journaled after ``mark``; with None (no snapshot), all it holds."""
        return [e for e in self._entries if mark is None or e.n > mark]

    def record(self, messages: Iterable[tuple[str, list[tuple[str, str, int]]]]) -> None:
        """Journal deleted messages: (message id, its objects); durable when this returns."""
        now = self._clock()
        lines = []
        for message_id, objects in messages:
            # Numbered from the clock as well as the last number: a file that lost its
            # lines (rejected under another keyring) never numbers anew from 1, below the
            # marks that snapshots hold.
            self._last = max(self._last + 1, int(now * 1000))
            entry = Deleted(self._last, now, message_id, objects)
            self._entries.append(entry)
            lines.append(self._line(entry))
        if not lines:
            return
        self._file.write(b"".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._appends += 1
        if self._appends % COMPACT_EVERY == 0:
            self._file.close()
            self._rewrite()
            self._file = open_private(self._path, "ab")

    def close(self) -> None:
        self._file.close()

    def _line(self, entry: Deleted) -> bytes:
        body = _encode(entry)
        return signed_line(body, body, self._keyring, _MAC_PURPOSE)

    def _load(self) -> None:
        rejected: dict[str, int] = {}
        with self._path.open("rb") as f:
            for line in f:
                try:
                    got = _decode(line)
                except msgspec.ValidationError:
                    rejected["malformed"] = rejected.get("malformed", 0) + 1
                    continue
                except msgspec.DecodeError:  # torn by a crash: its message was not deleted
                    continue
                entry = Deleted(got.n, got.t, got.m, got.o)
                why = line_rejected(got.kid, got.mac, _encode(entry), self._keyring,
                                    _MAC_PURPOSE)
                if why:
                    rejected[why] = rejected.get(why, 0) + 1
                    continue
                self._last = max(self._last, got.n)
                self._entries.append(entry)
        for why, count in rejected.items():
            metrics.JOURNAL_REJECTED_LINES.labels(DELETIONS, why).inc(count)
        if rejected:
            log.warning("%s: lines ignored (%s): their messages' objects are not read again "
                        "after a restart", self._path,
                        ", ".join(f"{why}: {n}" for why, n in sorted(rejected.items())))

    def _rewrite(self) -> None:
        """Drop what is older than the keep window (before the newest entry); the newest
        entry always stays, so its sequence number is never used again."""
        if self._entries:
            horizon = self._entries[-1].t - self._keep
            self._entries = [e for e in self._entries[:-1] if e.t >= horizon] + self._entries[-1:]
        atomic_write(self._path, b"".join(self._line(e) for e in self._entries))
