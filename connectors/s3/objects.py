"""Reading one S3 object: a streaming GET, decompressed incrementally, never held whole.

Compression is recognised from the first bytes (gzip, zstd, or none), not from the
key's suffix: CloudTrail writes ``.json.gz`` but other producers are less careful.
Small objects may be fetched ahead whole by a thread pool (:class:`Prefetcher`), since
fetching small objects is bound by request latency; larger ones stream in chunks.
"""

from __future__ import annotations

import concurrent.futures as cf
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard
from isal import isal_zlib

from connectors.s3.errors import ObjectReadError

__all__ = [
    "Body",
    "CHUNK_BYTES",
    "OUT_BYTES",
    "Prefetcher",
    "decompress",
    "open_body",
]

CHUNK_BYTES = 256 * 1024
"""Size of the chunks read from a streaming body."""

OUT_BYTES = 1024 * 1024
"""Most bytes one gzip inflate step may produce."""

RATIO_GRACE_BYTES = 16 * 1024 * 1024
"""Output below this size is never judged by its compression ratio."""

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_ZSTD_BLOCK = 128 * 1024  # the most one zstd block decompresses to (the format's limit)
_ZSTD_STEP_BLOCKS = OUT_BYTES // _ZSTD_BLOCK - 1  # blocks ended per step: with the part of
# one more block that a step may also hold, a step yields at most OUT_BYTES


@dataclass(frozen=True)
class Body:
    """An object's (compressed) bytes: already in memory, or a stream to read in chunks."""

    etag: str
    size: int
    data: bytes | None = None
    stream: Any = None
    """A botocore StreamingBody when ``data`` is None."""

    def chunks(self) -> Iterator[bytes]:
        """The stored bytes in chunks."""
        if self.data is not None:
            for i in range(0, len(self.data), 4 * CHUNK_BYTES):
                yield self.data[i:i + 4 * CHUNK_BYTES]
            return
        try:
            yield from self.stream.iter_chunks(CHUNK_BYTES)
        finally:
            self.stream.close()

    def close(self) -> None:
        """Release the connection of a stream not read to the end."""
        if self.stream is not None:
            self.stream.close()


def open_body(s3: Any, bucket: str, key: str, *, etag: str | None = None,
              prefetch_max_bytes: int = 0) -> Body:
    """GET an object; read it whole when it is at most ``prefetch_max_bytes``.

    :arg etag: When given, the GET fails (412) if the object has changed since.
    :raises ObjectReadError: With ``transient`` set for errors worth retrying.
    """
    kwargs = {"Bucket": bucket, "Key": key}
    if etag:
        kwargs["IfMatch"] = f'"{etag}"'
    try:
        resp = s3.get_object(**kwargs)
        size = int(resp["ContentLength"])
        got_etag = resp["ETag"].strip('"')
        if size <= prefetch_max_bytes:
            return Body(got_etag, size, data=resp["Body"].read())
        return Body(got_etag, size, stream=resp["Body"])
    except Exception as ex:  # botocore raises many types; classify them in one place
        raise ObjectReadError.from_exception(bucket, key, ex) from ex


def decompress(chunks: Iterable[bytes], *, max_bytes: int,
               max_ratio: float = 0.0) -> Iterator[bytes]:
    """Decompressed chunks of a gzip, zstd or plain stream.

    Concatenated gzip members and zstd frames are read in turn (as ``gunzip`` and ``zstd -d``
    do). Their output comes in chunks of at most OUT_BYTES whatever the compression ratio, so
    a bomb is stopped by ``max_bytes`` before it fills memory.

    :arg max_bytes: Stop with ObjectReadError beyond this many decompressed bytes
        (a guard against runaway objects).
    :arg max_ratio: Stop when the output outgrows the input by more than this factor
        (a guard against decompression bombs); checked past RATIO_GRACE_BYTES of output.
        0 turns the check off.
    """
    counted = _Counted(chunks)
    it = iter(counted)
    first = b""
    for chunk in it:  # enough bytes to see the magic number, however the input is cut
        first += chunk
        if len(first) >= len(_ZSTD):
            break
    if not first:
        return
    total = 0

    def guard(out: bytes) -> bytes:
        nonlocal total
        total += len(out)
        if total > max_bytes:
            msg = f"decompressed size exceeds the limit of {max_bytes} bytes"
            raise ObjectReadError(msg, transient=False)
        if max_ratio and total > RATIO_GRACE_BYTES and total > max_ratio * counted.bytes:
            msg = (f"decompresses more than {max_ratio:.0f} times its stored size "
                   f"({total} bytes from {counted.bytes}): treated as a decompression bomb")
            raise ObjectReadError(msg, transient=False)
        return out

    if first.startswith(_GZIP):
        d = isal_zlib.decompressobj(wbits=31)
        pending = first
        while True:
            try:
                # Bounded output: a small chunk of a decompression bomb cannot inflate at once.
                out = d.decompress(pending, OUT_BYTES)
            # isal's stub declares `error: Exception`, an instance; at run time it is a class.
            except (isal_zlib.error, zlib.error) as ex:  # type: ignore[misc]  # wrong isal stub
                msg = f"corrupt gzip data: {ex}"
                raise ObjectReadError(msg, transient=False) from ex
            if out:
                yield guard(out)
            if d.unconsumed_tail:
                pending = d.unconsumed_tail
                continue
            if d.eof:
                rest = d.unused_data
                if not rest.strip(b"\x00"):
                    rest = next(it, b"")
                    while rest == b"":
                        nxt = next(it, None)
                        if nxt is None:
                            return
                        rest = nxt
                d = isal_zlib.decompressobj(wbits=31)  # next gzip member
                pending = rest
                continue
            nxt = next(it, None)
            if nxt is None:
                msg = "truncated gzip data: the stream ended inside a gzip member"
                raise ObjectReadError(msg, transient=False)
            pending = nxt
    elif first.startswith(_ZSTD) or _skippable(first):  # pzstd starts with a skippable frame
        # zstandard's decompressobj has no output cap, and a few bytes of one block can
        # stand for 128 KiB, so the input is cut where blocks end (read from the frame and
        # block headers): each step completes at most _ZSTD_STEP_BLOCKS blocks. Frames are
        # read in turn (concatenated frames are valid zstd); a stream that ends inside a
        # frame is truncated, not silently short.
        z = zstandard.ZstdDecompressor().decompressobj()
        cutter = _ZstdCutter()
        in_frame = False
        try:
            for chunk in _chain(first, it):
                for piece in cutter.cut(chunk):
                    while piece:
                        in_frame = True
                        out = z.decompress(piece)
                        if out:
                            yield guard(out)
                        piece = b""
                        if z.eof:
                            in_frame = False
                            piece = z.unused_data
                            z = zstandard.ZstdDecompressor().decompressobj()
        except zstandard.ZstdError as ex:
            msg = f"corrupt zstd data: {ex}"
            raise ObjectReadError(msg, transient=False) from ex
        if in_frame:
            msg = "truncated zstd data: the stream ended inside a zstd frame"
            raise ObjectReadError(msg, transient=False)
    else:
        for chunk in _chain(first, it):
            yield guard(chunk)


class _Counted:
    """An iterable of chunks that counts the bytes handed out."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.bytes += len(chunk)
            yield chunk


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _skippable(head: bytes) -> bool:
    """Whether ``head`` starts with the magic number of a zstd skippable frame."""
    return head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50


class _ZstdCutter:
    """Cuts a zstd stream into pieces that each complete at most _ZSTD_STEP_BLOCKS blocks.

    It reads only what delimits blocks (RFC 8878: frame and skippable-frame headers, block
    headers, checksums) and never fails: on bytes it cannot follow it stops cutting, and
    the decompressor reports the corruption.
    """

    _NEED = {"magic": 4, "skip_size": 4, "fhd": 1, "block": 3}

    def __init__(self) -> None:
        self._state = "magic"  # a header being read (see _NEED), or "skip"
        self._head = b""       # its bytes so far
        self._skip = 0         # bytes left to pass over ("skip")
        self._next = "magic"   # the state after them ("checksum": 4 more bytes, then magic)
        self._ends = False     # whether they end a block
        self._checksum = False
        self._lost = False     # not followed: pass the rest through in one piece

    def cut(self, data: bytes) -> Iterator[bytes]:
        """``data`` in pieces; concatenated, the pieces are ``data``."""
        start = i = done = 0
        n = len(data)
        while i < n and not self._lost:
            if self._state == "skip":
                step = min(self._skip, n - i)
                i += step
                self._skip -= step
            else:
                need = self._NEED[self._state]
                take = min(need - len(self._head), n - i)
                self._head += data[i:i + take]
                i += take
                if len(self._head) < need:
                    continue
                head, self._head = self._head, b""
                self._read(head)
            if self._state == "skip" and self._skip == 0:
                done += self._skipped()
                if done >= _ZSTD_STEP_BLOCKS:
                    yield data[start:i]
                    start, done = i, 0
        if start < n:
            yield data[start:]

    def _skipped(self) -> int:
        ends, self._ends = self._ends, False
        if self._next == "checksum":
            self._state, self._skip, self._next = "skip", 4, "magic"
        else:
            self._state = self._next
        return int(ends)

    def _read(self, head: bytes) -> None:
        if self._state == "magic":
            if head == _ZSTD:
                self._state = "fhd"
            elif _skippable(head):
                self._state = "skip_size"
            else:
                self._lost = True
        elif self._state == "skip_size":
            self._skip_to(int.from_bytes(head, "little"), "magic")
        elif self._state == "fhd":  # the rest of the frame header: window, dictionary, size
            fhd = head[0]
            single = fhd >> 5 & 1
            self._checksum = bool(fhd & 4)
            self._skip_to((1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6],
                          "block")
        else:
            h = int.from_bytes(head, "little")
            kind = h >> 1 & 3
            if kind == 3:  # reserved: corrupt
                self._lost = True
                return
            after = "block" if not h & 1 else "checksum" if self._checksum else "magic"
            self._skip_to(1 if kind == 1 else h >> 3, after)  # an RLE block holds one byte
            self._ends = True

    def _skip_to(self, size: int, after: str) -> None:
        self._state, self._skip, self._next = "skip", size, after


class Prefetcher:
    """Opens upcoming objects in background threads so the parser never waits on a GET.

    boto3 clients are thread-safe; one is shared by the pool. Each partition owns
    one prefetcher; at most ``threads`` objects are in flight or buffered.
    """

    def __init__(self, s3: Any, bucket: str, *, threads: int, prefetch_max_bytes: int) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._max = prefetch_max_bytes
        self._threads = threads
        self._pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-fetch")
        self._inflight: dict[str, cf.Future[Body]] = {}

    def want(self, keys: Iterable[str]) -> None:
        """Start fetching the first of ``keys`` not yet in flight, up to the pool size."""
        for key in keys:
            if len(self._inflight) >= self._threads:
                return
            if key not in self._inflight:
                self._inflight[key] = self._pool.submit(
                    open_body, self._s3, self._bucket, key, prefetch_max_bytes=self._max)

    def take(self, key: str, etag: str | None = None) -> Body:
        """The body of ``key``: the prefetched one, or a fresh GET.

        :raises ObjectReadError: As :func:`open_body`.
        """
        fut = self._inflight.pop(key, None)
        if fut is not None and etag is None:
            return fut.result()
        if fut is not None:
            fut.cancel()
        return open_body(self._s3, self._bucket, key, etag=etag, prefetch_max_bytes=self._max)

    def discard(self, key: str) -> None:
        """Forget a prefetched object (for instance after a transient failure)."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.cancel() and fut.done() and fut.exception() is None:
            fut.result().close()

    def close(self) -> None:
        """Stop the threads; in-flight GETs are abandoned."""
        for key in list(self._inflight):
            self.discard(key)
        self._pool.shutdown(wait=False, cancel_futures=True)

