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
_ZSTD_PIECE = 4096  # compressed bytes per zstd step: ~4 MB of output at most for a 1000:1 bomb


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

    Concatenated gzip members are read in turn (as ``gunzip`` does).

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
            except (isal_zlib.error, zlib.error) as ex:
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
    elif first.startswith(_ZSTD):
        # Fed in small pieces to limit what one step inflates (zstandard's decompressobj
        # has no output cap, so a bomb of extreme ratio can still inflate one piece whole);
        # frames are read in turn (concatenated frames are valid zstd); a stream that ends
        # inside a frame is truncated, not silently short.
        z = zstandard.ZstdDecompressor().decompressobj()
        in_frame = False
        try:
            for chunk in _chain(first, it):
                for i in range(0, len(chunk), _ZSTD_PIECE):
                    piece = chunk[i:i + _ZSTD_PIECE]
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

