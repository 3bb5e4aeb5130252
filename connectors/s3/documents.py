"""Concatenated JSON documents, each expanded into the records it holds: what Amazon Data
Firehose writes for CloudWatch Logs subscriptions and EventBridge events.

See :mod:`connectors.s3.framing` for the framer contract. Firehose writes the documents it
receives one after the other, ``{...}{...}``, with no separator (or a newline, when the
stream is set to add one); a document holds several records (a CloudWatch Logs document,
hundreds of log events; an EventBridge event, Security Hub findings). The framer finds where
each document ends, with the bracket and string scanner of
:mod:`connectors.s3.jsonarray` (linear, across chunks, holding only what it must), and hands
it to the format's expander (:data:`operators.formats.Expand`), whose records it returns. So
offsets count records, not documents: a row's record id, its place in the journals and the
dead letters, and the position a restart resumes from are those of one log event or finding,
and the same on every read, since the expansion of a document depends on its bytes alone.

In the place of a record, an :class:`~connectors.s3.framing.UnreadableRecord` (one offset,
and the object goes on):

- a document the expander refuses (not the format's envelope, not JSON, nested too deep),
  with the expander's reason and code;
- a document longer than ``max_document_bytes`` (walked to its end holding only its head);
- a record longer than ``max_record_bytes``.

A stream whose shape is broken raises :class:`~connectors.s3.framing.FramingError`: bytes
between documents that do not start one, or a stream that ends inside a document.
"""

from __future__ import annotations

import re

from connectors.s3.framing import (
    _BOM,
    DEFAULT_MAX_RECORD_BYTES,
    SAMPLE_BYTES,
    Framed,
    FramingError,
    UnreadableRecord,
)
from connectors.s3.jsonarray import _Scan
from operators.formats import Expand, ParseError

__all__ = ["MAX_DOCUMENT_BYTES", "JsonDocumentsFramer"]

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
"""Default size bound of one document (decompressed): a Firehose record is at most 1,000 KiB
compressed, and a CloudWatch Logs document compresses well."""

_WS = re.compile(rb"[ \t\r\n]*")
_GZIP = b"\x1f\x8b"


class JsonDocumentsFramer:
    """The records of concatenated JSON documents, each expanded by ``expand``.

    :arg expand: The format's expander: one document -> its records.
    :arg max_record_bytes: Size bound of one record.
    :arg max_document_bytes: Size bound of one document (at least ``max_record_bytes``).
    """

    def __init__(self, expand: Expand, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES) -> None:
        self._expand = expand
        self._max = max_record_bytes
        self._max_doc = max(max_document_bytes, max_record_bytes)
        self._scan: _Scan | None = None  # the document being walked, when one is
        self._pieces: list[bytes] = []  # its bytes so far (none once it is too large)
        self._held = 0
        self._skipping = False
        self._emitted = 0
        self._consumed = 0  # bytes of the stream before the current chunk
        self._bom = b""  # the start of the stream, until it cannot be a BOM any more
        self._started = False

    @property
    def emitted(self) -> int:
        return self._emitted

    def feed(self, chunk: bytes) -> list[Framed]:
        if not self._started:
            chunk = self._bom + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._bom = chunk
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        out: list[Framed] = []
        pos, n = 0, len(chunk)
        while pos < n:
            if self._scan is None:
                pos = _WS.match(chunk, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    break
                if chunk[pos] != 0x7B:  # '{'
                    msg = (f"expected a JSON object at byte {self._consumed + pos} of the "
                           f"decompressed object, found {chunk[pos:pos + 24]!r}: the documents "
                           "from here on cannot be found")
                    if chunk[pos:pos + 2] == _GZIP:
                        msg += ("; it is gzip data inside the gzip data: CloudWatch Logs gzips "
                                "what it sends, so the Firehose stream must not compress it "
                                "again (set its compression to none, or turn its "
                                "decompression on)")
                    raise FramingError(msg, self._emitted, out)
                self._scan = _Scan()
            start = pos
            end = self._scan.run(chunk, pos)
            if end < 0:
                if not self._skipping:
                    self._pieces.append(chunk[start:])
                    self._held += n - start
                    if self._held > self._max_doc:  # go on to its end holding its head only
                        self._skipping = True
                        self._pieces, self._held = [], 0
                break
            if self._skipping or self._held + end - start > self._max_doc:
                out.append(self._too_large(self._scan))  # whatever the chunking
            else:
                self._pieces.append(chunk[start:end])
                out += self._records(b"".join(self._pieces))
            self._scan, self._pieces, self._held, self._skipping = None, [], 0, False
            pos = end
        self._consumed += n
        return out

    def finish(self) -> list[Framed]:
        if not self._started and self._bom:
            self._started = True
            return self.feed(b"")
        if self._scan is not None:
            size = self._scan.size
            self._scan, self._pieces, self._held = None, [], 0
            msg = (f"the object ends inside a JSON document ({size} bytes of it read): "
                   "truncated, or not concatenated JSON documents")
            raise FramingError(msg, self._emitted)
        return []

    def _records(self, document: bytes) -> list[Framed]:
        """The document's records, each checked against the size bound."""
        try:
            records: list[bytes] = self._expand(document)
        except ParseError as ex:
            self._emitted += 1
            return [UnreadableRecord(self._emitted - 1, f"document: {ex.reason}", ex.code,
                                     document[:SAMPLE_BYTES], len(document))]
        out: list[Framed] = []
        for rec in records:
            if len(rec) > self._max:
                reason = (f"record of {len(rec)} bytes is larger than max_record_bytes "
                          f"({self._max}); skipped (its first {min(len(rec), SAMPLE_BYTES)} "
                          "bytes are kept)")
                out.append(UnreadableRecord(self._emitted, reason, "record_too_large",
                                            rec[:SAMPLE_BYTES], len(rec)))
            else:
                out.append(rec)
            self._emitted += 1
        return out

    def _too_large(self, scan: _Scan) -> UnreadableRecord:
        self._emitted += 1
        reason = (f"JSON document of {scan.size} bytes is larger than the bound of one "
                  f"document ({self._max_doc} bytes); skipped (its first {len(scan.head)} "
                  "bytes are kept)")
        return UnreadableRecord(self._emitted - 1, reason, "document_too_large", scan.head,
                                scan.size)
