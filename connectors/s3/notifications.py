"""Discovery by S3 event notifications on SQS: the scalable, low-latency mode.

The bucket sends ``ObjectCreated`` events to an SQS queue, directly, wrapped by SNS,
or through EventBridge. Every partition of the source receives from the same queue;
SQS hands each message to one receiver at a time, so the partitions share the work
without coordinating.

A message is deleted only when every record of its objects is accounted for: delivered
(the upload journal) or written to the dead-letter store (the dead-letter journal). The
partition knows which offsets it emitted; :class:`~connectors.ledger.LedgerView`
tells when all of them are in the journals. Until then the message's visibility is
extended, so no other receiver takes it. After a crash nothing is lost: a restarted
partition takes back the messages its snapshot names (their receipt handles stay valid
until their visibility runs out) and reads their objects again, and the sink skips what
its own process's journal says was delivered (the rows of an object are delivered by the
process that read it: :mod:`dataflow.locality`). A message whose visibility ran out before
the restart goes back to the queue, and whichever partition receives it reads its objects
again: on another host, what the first delivered is sent twice (keep
``visibility_timeout_secs`` well above the time a restart takes).

A message deleted after the snapshot the restart resumes from is not in the queue any
more, yet what its objects' records make downstream (summaries, findings: derived ids, which
the deletion does not wait for) may have been in flight, in state that snapshot does not
hold: each deletion is journaled first (:mod:`connectors.s3.deletions`), and a restart reads
again the objects of those deleted after its snapshot, with no message to hold.

A message that keeps coming back (``max_receive_count``) sends its objects to the
dead-letter store with the reason and is then deleted; a body that is no S3 event
becomes a dead-letter entry as well. ``s3:TestEvent`` messages and events for other
buckets, prefixes or excluded keys are deleted and counted.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import orjson
from bytewax.inputs import StatefulSourcePartition
from typing_extensions import override

from connectors.ledger import RETENTION_SECS, LedgerView
from connectors.s3.config import SourceConfig
from connectors.s3.deletions import DeletionJournal
from connectors.s3.discovery import skip_reason
from connectors.s3.objects import Prefetcher
from connectors.s3.reader import (
    BATCH_RECORDS,
    Clock,
    Finished,
    Item,
    ObjectReader,
    Pending,
    retry_later,
)
from dataflow.core import metrics, status
from dataflow.core.backoff import Backoff
from dataflow.core.failures import failed
from dataflow.core.messages import ErrorRecord, ObjectRef

__all__ = ["NotifiedObject", "parse_notification"]

log = logging.getLogger(__name__)

CHECK_EVERY_SECS = 0.5
"""How often the journals are read to find messages whose objects are done."""


@dataclass(frozen=True, slots=True)
class NotifiedObject:
    bucket: str
    key: str
    etag: str
    size: int


def parse_notification(body: str) -> tuple[list[NotifiedObject], str | None]:
    """The created objects an SQS message body names, or why it names none.

    Understands S3 event notifications (``{"Records": [...]}``), the same wrapped in an
    SNS notification, and EventBridge ``Object Created`` events. Every field read is
    checked for its type, not only its presence: a message is data from outside, and a
    number where a key should be must make this message a dead letter, not stop the flow.

    :returns: (objects, None), or ([], "test_event"), or ([], a reason it is not a usable
        S3 event notification).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as ex:
        return [], f"not JSON: {ex}"
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        if not isinstance(doc["Message"], str):
            return [], "SNS notification whose Message is not a string"
        try:
            doc = orjson.loads(doc["Message"])
        except orjson.JSONDecodeError as ex:
            return [], f"SNS message is not JSON: {ex}"
    if not isinstance(doc, dict):
        return [], "not a JSON object"
    if doc.get("Event") == "s3:TestEvent":
        return [], "test_event"
    try:
        if doc.get("detail-type") == "Object Created" and "detail" in doc:
            d = _field(doc, "detail", dict, "EventBridge event")
            obj = _field(d, "object", dict, "EventBridge detail")
            return [_notified(_field(_field(d, "bucket", dict, "EventBridge detail"), "name",
                                     str, "detail.bucket"),
                              _field(obj, "key", str, "detail.object"),
                              obj.get("etag", ""), obj.get("size", 0), "detail.object")], None
        records = doc.get("Records")
        if not isinstance(records, list):
            return [], "no Records: not an S3 event notification"
        out: list[NotifiedObject] = []
        for i, rec in enumerate(records):
            where = f"Records[{i}]"
            if not isinstance(rec, dict):
                return [], f"{where} is not an object"
            name = _field(rec, "eventName", str, where)
            if not name.startswith("ObjectCreated:"):
                continue  # ObjectRemoved, restore, replication...: nothing to read
            s3 = _field(rec, "s3", dict, where)
            obj = _field(s3, "object", dict, f"{where}.s3")
            out.append(_notified(
                _field(_field(s3, "bucket", dict, f"{where}.s3"), "name", str, f"{where}.s3.bucket"),
                unquote_plus(_field(obj, "key", str, f"{where}.s3.object")),
                obj.get("eTag", ""), obj.get("size", 0), f"{where}.s3.object"))
        return out, None
    except _BadField as ex:
        return [], str(ex)


class _BadField(ValueError):
    """A field of a notification is missing or of the wrong type."""


def _field(doc: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in doc:
        msg = f"{where} has no {name!r}"
        raise _BadField(msg)
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        msg = (f"{where}.{name} is {type(value).__name__} {_short(value)}, "
               f"expected {kind.__name__}")
        raise _BadField(msg)
    if isinstance(value, str) and (not value or len(value) > 8192):  # S3 names: 1..1024 bytes
        msg = f"{where}.{name} is not a usable S3 name: {_short(value)}"
        raise _BadField(msg)
    return value


def _notified(bucket: str, key: str, etag: Any, size: Any, where: str) -> NotifiedObject:
    if not isinstance(etag, str):
        msg = f"{where} etag is {type(etag).__name__} {_short(etag)}, expected str"
        raise _BadField(msg)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        msg = f"{where} size is {type(size).__name__} {_short(size)}, expected a count of bytes"
        raise _BadField(msg)
    return NotifiedObject(bucket, key, etag.strip('"'), size)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Object:
    key: str
    etag: str
    size: int
    object_id: str = ""
    emitted: list[list[int]] = field(default_factory=list)
    """Offsets emitted, as merged [start, end) ranges (they come in increasing order)."""
    done: bool = False
    """Read to the end, or failed (then ``emitted`` includes the failed offset)."""
    users: int = 0
    """Messages in flight that name this object."""
    read: bool = False
    """Read to its end, or failed while read (not given up on unread)."""


@dataclass
class _Message:
    message_id: str
    receipt: str
    sent_ts: float
    visible_until: float  # monotonic
    objects: list[_Object] = field(default_factory=list)
    deleted: bool = False
    """Deleted from the queue before a restart: its objects are read again for what their
    records derive, with no message to extend or delete."""


class SqsPartition(StatefulSourcePartition[Item, dict[str, Any]]):
    """One receiver of a source's notification queue; reads the objects it is told about
    through an :class:`~connectors.s3.reader.ObjectReader` (the one the listing uses)."""

    def __init__(self, s3: Any, sqs: Any, src: SourceConfig, name: str, journal_dir: str, *,
                 catch_up: bool, clock: Clock, monotonic: Any = time.monotonic,
                 keyring: Any = None, resume_state: dict[str, Any] | None = None,
                 journal_retention_secs: float = RETENTION_SECS,
                 mark_ends: bool = False, resumable: bool = False) -> None:
        self._src = src
        self._name = name
        self._catch_up = catch_up
        self._clock = clock
        self._sqs = sqs
        self._fetch = Prefetcher(s3, src.bucket, threads=src.fetch_threads,
                                 prefetch_max_bytes=src.prefetch_max_bytes)
        self._backoff = Backoff(base_secs=1.0, cap_secs=60.0)
        self._reader = ObjectReader(src, name, self._fetch, self._backoff, mark_ends=mark_ends)
        self._view = LedgerView.shared(journal_dir, keyring=keyring,
                                       retention_secs=journal_retention_secs)
        self._deletions = DeletionJournal(journal_dir, name, keyring)
        self._mono = monotonic
        self._wake_at: datetime | None = None
        self._errors: list[ErrorRecord] = []  # dead letters of messages that name no object
        self._messages: dict[str, _Message] = {}
        self._todo: deque[_Object] = deque()
        self._tracked: dict[str, _Object] = {}  # key -> object in flight
        self._current: _Object | None = None
        self._next_check = 0.0
        self._adopt: list[dict[str, Any]] = list((resume_state or {}).get("messages") or [])
        """Messages in flight at the snapshot, to take back before receiving new ones."""
        if resume_state is not None:  # (a snapshot of an earlier version has no mark: all)
            self._owed = self._deletions.since(resume_state.get("deleted_mark"))
        else:  # no snapshot: none committed yet, or no recovery store to commit one to
            self._owed = self._deletions.since(None) if resumable else []
        """Messages deleted after the snapshot: their objects are read again."""

    # -- bytewax interface -------------------------------------------------------------

    @override
    def next_batch(self) -> list[Item]:
        if self._adopt or self._owed:
            self._take_back(self._adopt)
            self._adopt, self._owed = [], []
        self._maintain()
        if status.is_paused(self._src.name):
            self._wake_at = self._clock() + timedelta(seconds=1)
            self._report(False)
            return []
        now = self._clock()
        if self._wake_at is not None:
            if now < self._wake_at:
                return []
            self._wake_at = None
        out: list[Item] = []
        done: Finished | None = None
        if self._reader.reading is None:
            out, done = self._open_next(now)
        if self._reader.reading is not None:
            items, done = self._reader.read(BATCH_RECORDS, now)
            out.extend(items)
        if done is not None:
            self._finished(done)
        if self._errors:
            out.extend(self._errors)
            self._errors.clear()
        if self._backoff.wake_at is not None:
            self._wake_at, self._backoff.wake_at = self._backoff.wake_at, None
        self._report(bool(out))
        return out

    @override
    def next_awake(self) -> datetime | None:
        # Idle with messages in flight: wake for visibility extensions and deletions. (None
        # means "call again at once": never delay a busy partition.)
        if self._wake_at is not None and self._messages:
            return min(self._wake_at, self._clock() + timedelta(seconds=CHECK_EVERY_SECS))
        return self._wake_at

    def _report(self, progressed: bool) -> None:
        r = self._reader.reading
        status.report(self._name, self._src.name, progressed=progressed,
                      busy=r is not None or bool(self._todo), object=r.ref.key if r else None,
                      offset=r.next_offset if r else None, queued=len(self._todo),
                      messages=len(self._messages), paused=status.is_paused(self._src.name),
                      retries=self._backoff.attempts)

    @override
    def snapshot(self) -> dict[str, Any]:
        # The messages in flight, so that a restart takes them back (with their receipt
        # handles, valid until their visibility runs out) instead of leaving them to any
        # receiver: on hosts that share no disk, another host's journal would not know
        # what this one delivered.
        return {"v": 2, "discovery": "sqs", "deleted_mark": self._deletions.mark(), "messages": [
            {"id": m.message_id, "receipt": m.receipt, "sent": m.sent_ts,
             "objects": [[o.key, o.etag, o.size] for o in m.objects],
             **({"deleted": True} if m.deleted else {})}
            for m in self._messages.values()]}

    def _take_back(self, saved: list[dict[str, Any]]) -> None:
        """Extend the visibility of the snapshot's messages; those still ours are tracked
        again (their objects read from the start: the journal skips what was delivered).
        Those deleted since the snapshot are tracked again too, with no message to hold."""
        src = self._src
        mono = self._mono()
        for e in self._owed:
            self._track_again({"id": e.m, "receipt": "", "sent": e.t, "objects": e.o}, mono,
                              deleted=True)
            metrics.SQS_MESSAGES.labels(src.name, "read_again_after_delete").inc()
        held = []
        for m in saved:
            if m["id"] in self._messages:  # deleted since the snapshot: tracked above
                continue
            if m.get("deleted"):  # being read again at the snapshot: still to finish
                self._track_again(m, mono, deleted=True)
            else:
                held.append(m)
        for i in range(0, len(held), 10):
            chunk = held[i:i + 10]
            try:
                resp = self._sqs.change_message_visibility_batch(
                    QueueUrl=src.queue_url,
                    Entries=[{"Id": str(j), "ReceiptHandle": m["receipt"],
                              "VisibilityTimeout": src.visibility_timeout_secs}
                             for j, m in enumerate(chunk)])
            except Exception as ex:  # they come back by themselves when their time runs out
                log.warning("source %s: cannot take back %d messages of the snapshot: %s",
                            src.name, len(chunk), ex)
                continue
            for entry in resp.get("Successful", []):
                self._track_again(chunk[int(entry["Id"])], mono, deleted=False)
                metrics.SQS_MESSAGES.labels(src.name, "taken_back").inc()
            # The others' visibility ran out: they are back in the queue, for any receiver.
            metrics.SQS_MESSAGES.labels(src.name, "expired_at_restart").inc(
                len(resp.get("Failed", [])))
        self._fetch.want(o.key for o in self._todo)

    def _track_again(self, m: dict[str, Any], mono: float, *, deleted: bool) -> None:
        """A message of the snapshot, tracked again: its objects are read from the start."""
        msg = _Message(m["id"], m["receipt"], float(m["sent"]),
                       mono + self._src.visibility_timeout_secs, deleted=deleted)
        for key, etag, size in m["objects"]:
            same = self._tracked.get(key)
            if same is None:
                same = self._tracked[key] = _Object(key, etag, size)
                self._todo.append(same)
            same.users += 1
            msg.objects.append(same)
        self._messages[msg.message_id] = msg

    @override
    def close(self) -> None:
        self._fetch.close()
        self._deletions.close()

    # -- receiving ----------------------------------------------------------------------

    def _open_next(self, now: datetime) -> tuple[list[Item], Finished | None]:
        retry = self._reader.retry
        if retry is not None:  # a retry of the object in progress
            return self._reader.open(retry, now)
        if not self._todo:
            self._receive(now)
            if not self._todo:
                return [], None
        obj = self._todo[0]
        self._current = obj
        return self._reader.open(Pending(obj.key, None, 0, obj.size), now)

    def _receive(self, now: datetime) -> None:
        src = self._src
        if len(self._messages) >= src.max_in_flight_messages:
            return
        try:
            resp = self._sqs.receive_message(
                QueueUrl=src.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                VisibilityTimeout=src.visibility_timeout_secs,
                AttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
        except Exception as ex:
            retry_later(src, self._name, self._backoff, "receive", ex, now)
            return
        messages = resp.get("Messages", [])
        if not messages:
            if self._catch_up and not self._messages and self._current is None:
                raise StopIteration
            self._wake_at = now + timedelta(seconds=src.queue_poll_secs)
            return
        mono = self._mono()
        for m in messages:
            metrics.SQS_MESSAGES.labels(src.name, "received").inc()
            try:
                self._accept(m, mono)
            except Exception as ex:  # one message must never stop the partition
                log.exception("source %s: cannot handle SQS message %s", src.name,
                              m.get("MessageId"))
                self._dead_letter_message(
                    _Message(str(m.get("MessageId", "")), str(m.get("ReceiptHandle", "")),
                             time.time(), mono + src.visibility_timeout_secs),
                    str(m.get("Body", "")), f"cannot handle it: {type(ex).__name__}: {ex}",
                    code="sqs_message_error")
        self._fetch.want(o.key for o in self._todo)
        metrics.IN_FLIGHT_OBJECTS.labels(src.name, self._name).set(
            sum(len(m.objects) for m in self._messages.values()))

    def _accept(self, m: dict[str, Any], now: float) -> None:
        """Take one received message: track its objects, or delete or dead-letter it."""
        src = self._src
        attrs = m.get("Attributes") or {}
        msg = _Message(m["MessageId"], m["ReceiptHandle"],
                       _int(attrs.get("SentTimestamp"), int(time.time() * 1000)) / 1000,
                       now + src.visibility_timeout_secs)
        objects, why = parse_notification(m["Body"])
        if why == "test_event":
            self._delete(msg, "test_event")
            return
        if why is not None:
            self._dead_letter_message(msg, m["Body"], why)
            return
        wanted = [o for o in objects if self._wanted(o)]
        if not wanted:
            self._delete(msg, "ignored")
            return
        receives = _int(attrs.get("ApproximateReceiveCount"), 1)
        if receives > src.max_receive_count:
            msg.objects = [_Object(o.key, o.etag, o.size) for o in wanted]
            self._messages[msg.message_id] = msg
            self._give_up(msg, receives)
            return
        for o in wanted:
            # A second notification of an object this partition already has (S3 and SQS
            # deliver at least once): share it, so it is read once for both messages.
            same = self._tracked.get(o.key)
            if same is None or (o.etag and same.etag and o.etag != same.etag):
                same = self._tracked[o.key] = _Object(o.key, o.etag, o.size)
                self._todo.append(same)
                metrics.OBJECTS_LISTED.labels(src.name).inc()
            else:
                metrics.SQS_MESSAGES.labels(src.name, "duplicate").inc()
            same.users += 1
            msg.objects.append(same)
        self._messages[msg.message_id] = msg

    def _wanted(self, o: NotifiedObject) -> bool:
        src = self._src
        return (o.bucket == src.bucket and o.key.startswith(src.prefix)
                and skip_reason(src, o.key) is None)

    def _give_up(self, msg: _Message, receives: int) -> None:
        """The message keeps coming back: its objects go to the dead-letter store."""
        src = self._src
        metrics.SQS_MESSAGES.labels(src.name, "dead_lettered").inc()
        for obj in msg.objects:
            ref = ObjectRef(src.name, self._name, src.bucket, obj.key, obj.etag, obj.size)
            reason = (f"SQS message {msg.message_id} was received {receives} times (more than "
                      f"max_receive_count = {src.max_receive_count}) without every record of "
                      "this object being delivered; look for earlier errors about this object, "
                      "then run `s3sentinel replay`")
            self._errors.append(failed(ref, 0, "read", reason, "max_receives",
                                       level=logging.ERROR))
            self._identify(obj, ref.id)
            obj.emitted = [[0, 1]]
            obj.done = True

    def _dead_letter_message(self, msg: _Message, body: str, why: str,
                             code: str = "not_s3_event") -> None:
        """A message that names no usable object: kept in the dead-letter store, then deleted."""
        src = self._src
        ref = ObjectRef(src.name, self._name, src.bucket, f"sqs-message/{msg.message_id}", "", 0)
        self._errors.append(failed(ref, 0, "read", f"SQS message body: {why}", code,
                                   body.encode(errors="replace"), level=logging.ERROR))
        msg.objects = [_Object(ref.key, "", 0, "", [[0, 1]], True)]
        self._identify(msg.objects[0], ref.id)
        self._messages[msg.message_id] = msg

    def _identify(self, obj: _Object, object_id: str) -> None:
        """Name the object its records have, and have the journal view keep them until the
        object's last message is deleted (:meth:`_delete` forgets it)."""
        if obj.object_id != object_id:
            if obj.object_id:
                self._view.forget(obj.object_id)
            self._view.watch(object_id)
            obj.object_id = object_id

    # -- completion ---------------------------------------------------------------------

    def _finished(self, done: Finished) -> None:
        """The object in work is read to its end, or given up on: its message(s) may be
        deleted once the journals account for every offset it emitted."""
        obj = self._current
        if obj is not None and obj.key == done.ref.key:
            self._identify(obj, done.ref.id)
            obj.emitted = done.emitted
            obj.done = obj.read = True
            if self._todo and self._todo[0] is obj:
                self._todo.popleft()
            self._current = None
        self._fetch.want(o.key for o in self._todo)

    def _maintain(self) -> None:
        now = self._mono()
        if not self._messages or now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_SECS
        self._view.refresh()
        src = self._src
        extend: list[_Message] = []
        covered: list[_Message] = []
        oldest = 0.0
        for msg in list(self._messages.values()):
            if all(o.done and self._view.covered_ranges(o.object_id, o.emitted)
                   for o in msg.objects):
                covered.append(msg)
                continue
            oldest = max(oldest, time.time() - msg.sent_ts)
            if not msg.deleted and msg.visible_until - now < src.visibility_timeout_secs / 3:
                extend.append(msg)
        # Journaled before they are deleted: a restart from a snapshot that still names one
        # reads its objects again (what their records derive may not have been delivered).
        self._deletions.record((m.message_id, [(o.key, o.etag, o.size) for o in m.objects])
                               for m in covered
                               if not m.deleted and all(o.read for o in m.objects))
        for msg in covered:
            if not msg.deleted:  # (one read again has no arrival time: its lag was set)
                metrics.LAG_SECONDS.labels(src.name, self._name).set(
                    max(0.0, time.time() - msg.sent_ts))
            self._delete(msg, "deleted")
        metrics.OLDEST_UNDELIVERED_SECONDS.labels(src.name, self._name).set(oldest)
        metrics.IN_FLIGHT_OBJECTS.labels(src.name, self._name).set(
            sum(len(m.objects) for m in self._messages.values()))
        for i in range(0, len(extend), 10):
            chunk = extend[i:i + 10]
            try:
                resp = self._sqs.change_message_visibility_batch(
                    QueueUrl=src.queue_url,
                    Entries=[{"Id": str(j), "ReceiptHandle": m.receipt,
                              "VisibilityTimeout": src.visibility_timeout_secs}
                             for j, m in enumerate(chunk)])
            except Exception as ex:  # the next check tries again
                log.warning("source %s: cannot extend the visibility of %d messages: %s",
                            src.name, len(chunk), ex)
                continue
            for j in (int(e["Id"]) for e in resp.get("Successful", [])):
                chunk[j].visible_until = now + src.visibility_timeout_secs
                metrics.SQS_MESSAGES.labels(src.name, "extended").inc()

    def _delete(self, msg: _Message, action: str) -> None:
        src = self._src
        if msg.deleted:  # read again after a restart: the queue has it no more
            action = "read_again_done"
        else:
            try:
                self._sqs.delete_message(QueueUrl=src.queue_url, ReceiptHandle=msg.receipt)
            except Exception as ex:  # it comes back; its records are in the journal by then
                log.warning("source %s: cannot delete SQS message %s: %s", src.name,
                            msg.message_id, ex)
        metrics.SQS_MESSAGES.labels(src.name, action).inc()
        self._messages.pop(msg.message_id, None)
        for obj in msg.objects:
            obj.users -= 1
            if obj.users <= 0:
                if self._tracked.get(obj.key) is obj:
                    del self._tracked[obj.key]
                if obj.object_id:
                    self._view.forget(obj.object_id)
