"""connectors.s3.objects: decompression of any chunking, bomb guard, GETs against a moto server."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import pytest
import zstandard
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from connectors.s3.errors import ObjectReadError, is_transient
from connectors.s3.objects import CHUNK_BYTES, OUT_BYTES, Prefetcher, decompress, open_body

BUCKET = "unit-objects"
MB = 1024 * 1024
DATA = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i % 50)) for i in range(5_000))
NOISE = random.Random(0).randbytes(50_000)  # incompressible: stored/raw blocks, not compressed


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def inflate(chunks: Iterable[bytes], max_bytes: int = 1 << 40) -> bytes:
    return b"".join(decompress(chunks, max_bytes=max_bytes))


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def failure(chunks: Iterable[bytes], max_bytes: int = 1 << 40) -> ObjectReadError:
    with pytest.raises(ObjectReadError) as ei:
        inflate(chunks, max_bytes)
    return ei.value


# --------------------------------------------------------------------------- decompress


@pytest.mark.parametrize("codec,size", [
    (codec, size) for codec in ("gzip", "gzip-multi", "zstd", "plain")
    for size in (2, 3, 4, 7, 1000, 65_537, 1 << 30)
])
def test_decompress_any_chunking(codec: str, size: int) -> None:
    body = DATA + NOISE
    if codec == "gzip":
        blob = gzip.compress(body)
    elif codec == "gzip-multi":  # concatenated members, as `cat a.gz b.gz` makes
        third = len(body) // 3
        blob = b"".join(gzip.compress(body[i:i + third]) for i in range(0, len(body), third))
    elif codec == "zstd":
        blob = zstd(body)
    else:
        blob = body
    assert inflate(chunked(blob, size)) == body


def test_decompress_gzip_members_and_empty_chunks_anywhere() -> None:
    a, b = gzip.compress(b"first\n"), gzip.compress(b"second\n")
    assert inflate([b"", a, b"", b"", b]) == b"first\nsecond\n"
    assert inflate([a + b]) == b"first\nsecond\n"
    assert inflate([a[:5], a[5:] + b[:3], b"", b[3:]]) == b"first\nsecond\n"
    assert inflate([a + gzip.compress(b"")]) == b"first\n"           # an empty member
    assert inflate([a + b"\x00" * 64]) == b"first\n"                 # zero padding after it


def test_decompress_gzip_made_by_zlib_streams() -> None:
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = co.compress(DATA) + co.flush()
    assert inflate(chunked(blob, 4096)) == DATA


@pytest.mark.parametrize("codec,size", [("gzip", 1), ("zstd", 1), ("zstd", 3)])
def test_decompress_magic_number_split_across_chunks(codec: str, size: int) -> None:
    blob = gzip.compress(DATA) if codec == "gzip" else zstd(DATA)
    assert inflate(chunked(blob, size)) == DATA


def test_decompress_empty_input_yields_nothing() -> None:
    assert list(decompress([], max_bytes=10)) == []
    assert list(decompress([b"", b""], max_bytes=10)) == []
    assert list(decompress(iter(()), max_bytes=0)) == []
    assert inflate([gzip.compress(b"")]) == b""


def test_decompress_corrupt_gzip() -> None:
    blob = bytearray(gzip.compress(DATA))
    blob[len(blob) // 2: len(blob) // 2 + 16] = b"\xff" * 16
    err = failure(chunked(bytes(blob), 1000))
    assert err.transient is False and err.gone is False
    assert "corrupt gzip data" in err.reason
    # A bad CRC trailer is corruption too.
    blob = bytearray(gzip.compress(DATA))
    blob[-8] ^= 0xFF
    assert "corrupt gzip data" in failure([bytes(blob)]).reason
    # The gzip magic followed by garbage.
    assert "corrupt gzip data" in failure([b"\x1f\x8b" + b"garbage" * 10]).reason


@pytest.mark.parametrize("cut", [5, 20, 1000, -9, -1])
@pytest.mark.parametrize("size", [7, 1 << 30])
def test_decompress_truncated_gzip(cut: int, size: int) -> None:
    blob = gzip.compress(DATA)
    err = failure(chunked(blob[:cut], size))
    assert err.transient is False
    assert "truncated" in err.reason


def test_decompress_truncated_second_member() -> None:
    blob = gzip.compress(b"a\n") + gzip.compress(DATA)[:100]
    assert "truncated" in failure([blob]).reason


def test_decompress_corrupt_zstd() -> None:
    blob = bytearray(zstd(DATA))
    blob[10:30] = b"\x00" * 20
    err = failure([bytes(blob)])
    assert err.transient is False
    assert "corrupt zstd data" in err.reason


def test_decompress_truncated_zstd_is_an_error() -> None:
    blob = zstd(DATA)
    err = failure(chunked(blob[: len(blob) // 2], 1000))
    assert "truncated" in err.reason


def test_decompress_concatenated_zstd_frames_in_one_chunk() -> None:
    assert inflate([zstd(b"first\n") + zstd(b"second\n")]) == b"first\nsecond\n"


def test_decompress_concatenated_zstd_frames_in_two_chunks() -> None:
    assert inflate([zstd(b"first\n"), zstd(b"second\n")]) == b"first\nsecond\n"


# --------------------------------------------------------------------------- max_bytes


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return zlib.compress(b"\x00" * (50 * MB), 9, wbits=31)  # ~50 KB of gzip


@pytest.fixture(scope="module")
def zstd_bomb() -> bytes:
    return zstd(b"\x00" * (50 * MB))  # a few KB


def drain(chunks: Iterable[bytes], limit: int) -> tuple[int, int, ObjectReadError | None]:
    """(bytes yielded, peak traced memory, the error) of decompressing ``chunks``."""
    got, err = 0, None
    tracemalloc.start()
    try:
        for out in decompress(chunks, max_bytes=limit):
            got += len(out)
    except ObjectReadError as ex:
        err = ex
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return got, peak, err


@pytest.mark.parametrize("size", [CHUNK_BYTES, 1 << 30])
def test_gzip_bomb_stops_at_the_limit_with_bounded_memory(gzip_bomb: bytes, size: int) -> None:
    assert len(gzip_bomb) < 100_000
    got, peak, err = drain(chunked(gzip_bomb, size), MB)
    assert err is not None and err.transient is False
    assert "exceeds the limit of 1048576 bytes" in err.reason
    assert got <= MB
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB while inflating a 50 MB bomb"


def test_zstd_bomb_stops_at_the_limit_with_bounded_memory(zstd_bomb: bytes) -> None:
    got, peak, err = drain([zstd_bomb], MB)
    assert err is not None and got <= MB
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MB while inflating a 50 MB bomb"


def test_gzip_output_comes_in_bounded_steps() -> None:
    bomb = gzip.compress(b"\0" * (20 * MB))
    sizes = [len(out) for out in decompress([bomb], max_bytes=1 << 40)]
    assert sum(sizes) == 20 * MB and max(sizes) <= OUT_BYTES


@pytest.mark.parametrize("kwargs", [{}, {"write_checksum": True}, {"write_content_size": False},
                                    {"level": 19, "write_dict_id": True}])
def test_zstd_output_comes_in_bounded_steps(kwargs: dict[str, Any]) -> None:
    # Runs of zeros are RLE blocks (4 bytes for 128 KiB) and their ratio is extreme; the
    # frame header flags move where the blocks start.
    data = b"\x00" * (20 * MB) + DATA + b"\x00" * (5 * MB)
    blob = zstandard.ZstdCompressor(**kwargs).compress(data)
    assert len(blob) < 200_000
    sizes = [len(out) for out in decompress([blob], max_bytes=1 << 40)]
    assert b"".join(decompress(chunked(blob, 1000), max_bytes=1 << 40)) == data
    assert sum(sizes) == len(data) and max(sizes) <= OUT_BYTES


def test_zstd_skippable_frames_and_streamed_frames() -> None:
    co = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    streamed = co.compress(DATA) + co.flush()  # no content size in its header
    skippable = struct.pack("<II", 0x184D2A53, 5) + b"hello"
    blob = skippable + streamed + skippable + zstd(b"tail\n")
    for size in (1, 5, 7, 1000, 1 << 30):
        assert inflate(chunked(blob, size)) == DATA + b"tail\n"


@pytest.mark.parametrize("cut", [5, 6, 8, 12, 20])
def test_zstd_truncated_in_a_header_is_an_error(cut: int) -> None:
    err = failure([zstd(DATA)[:cut]])
    assert "truncated" in err.reason and err.transient is False


def test_compression_ratio_guard(gzip_bomb: bytes) -> None:
    from connectors.s3.objects import RATIO_GRACE_BYTES

    got = 0
    with pytest.raises(ObjectReadError) as ei:
        for out in decompress(chunked(gzip_bomb, CHUNK_BYTES), max_bytes=1 << 40, max_ratio=100):
            got += len(out)
    assert "decompression bomb" in ei.value.reason and ei.value.transient is False
    assert RATIO_GRACE_BYTES < got + MB <= RATIO_GRACE_BYTES + 2 * MB
    # 0 turns it off.
    total = sum(map(len, decompress([gzip_bomb], max_bytes=1 << 40, max_ratio=0)))
    assert total == 50 * MB
    # Ordinary log data (~10:1), past the grace bytes, passes the same limit.
    logs = b"".join(b'{"n": %d, "msg": "user %d logged in"}\n' % (i, i % 97)
                    for i in range(600_000))
    assert len(logs) > RATIO_GRACE_BYTES
    out = decompress(chunked(gzip.compress(logs), CHUNK_BYTES), max_bytes=1 << 40, max_ratio=100)
    assert sum(map(len, out)) == len(logs)


def test_zstd_bomb_is_refused(zstd_bomb: bytes) -> None:
    got, _, err = drain([zstd_bomb], MB)
    assert err is not None and "exceeds the limit" in err.reason and got <= MB


@pytest.mark.parametrize("codec", ["gzip", "zstd", "plain"])
def test_max_bytes_is_exact(codec: str) -> None:
    blob = {"gzip": gzip.compress, "zstd": zstd, "plain": bytes}[codec](DATA)
    assert inflate(chunked(blob, 999), max_bytes=len(DATA)) == DATA
    err = failure(chunked(blob, 999), max_bytes=len(DATA) - 1)
    assert f"exceeds the limit of {len(DATA) - 1} bytes" in err.reason


def test_object_read_error_pickles() -> None:
    err = ObjectReadError("why", transient=True, gone=True)
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.transient, back.gone, str(back)) == ("why", True, True, "why")


# --------------------------------------------------------------------------- errors.is_transient


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("code,transient", [("SlowDown", True), ("InternalError", True),
                                            ("503", True), ("AccessDenied", False),
                                            ("NoSuchKey", False), ("NoSuchBucket", False)])
def test_is_transient_client_errors(code: str, transient: bool) -> None:
    assert is_transient(client_error(code)) is transient


def test_is_transient_network_errors() -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("x"))


def test_a_credential_refresh_that_fails_is_transient_not_the_objects_fault() -> None:
    """A refresh of the web-identity or source-role session fails inside a GetObject: the
    object is fine, so it is retried later (with back-off) rather than dead-lettered."""
    from azure.core.exceptions import ClientAuthenticationError
    from botocore.exceptions import CredentialRetrievalError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "not trusted"}},
                         "AssumeRoleWithWebIdentity")
    assert is_transient(denied)
    assert is_transient(ClientError({"Error": {"Code": "AccessDenied"}}, "AssumeRole"))
    assert not is_transient(client_error("AccessDenied"))  # GetObject's own refusal
    assert is_transient(ClientAuthenticationError("IMDS unreachable"))
    assert is_transient(CredentialRetrievalError(provider="web-identity", error_msg="x"))


def test_from_exception_classifies() -> None:
    denied = ObjectReadError.from_exception("b", "k", client_error("AccessDenied", 403))
    assert (denied.transient, denied.gone) == (False, False)
    assert "s3://b/k" in denied.reason and "s3:GetObject" in denied.reason
    slow = ObjectReadError.from_exception("b", "k", client_error("SlowDown", 503))
    assert (slow.transient, slow.gone) == (True, False)


# --------------------------------------------------------------------------- GETs (moto)


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def put(s3: Any, key: str, body: bytes) -> str:
    return s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')


def test_small_object_is_read_whole(s3: Any) -> None:
    blob = gzip.compress(b"hello\n")
    etag = put(s3, "small.json.gz", blob)
    body = open_body(s3, BUCKET, "small.json.gz", prefetch_max_bytes=1024)
    assert (body.data, body.stream, body.etag, body.size) == (blob, None, etag, len(blob))
    assert inflate(body.chunks()) == b"hello\n"
    # With the etag it was listed with, the GET succeeds.
    assert open_body(s3, BUCKET, "small.json.gz", etag=etag).etag == etag


def test_large_object_is_streamed(s3: Any) -> None:
    blob = os.urandom(3 * CHUNK_BYTES + 12345)
    etag = put(s3, "large.bin", blob)
    body = open_body(s3, BUCKET, "large.bin", prefetch_max_bytes=CHUNK_BYTES)
    assert body.data is None and body.stream is not None
    assert (body.etag, body.size) == (etag, len(blob))
    chunks = list(body.chunks())
    assert len(chunks) >= 4
    assert b"".join(chunks) == blob


def test_streamed_gzip_object_decompresses(s3: Any) -> None:
    put(s3, "data.json.gz", gzip.compress(DATA))
    body = open_body(s3, BUCKET, "data.json.gz", prefetch_max_bytes=0)
    assert body.stream is not None
    assert inflate(body.chunks()) == DATA


def test_etag_mismatch_is_gone(s3: Any) -> None:
    old = put(s3, "changing.json", b"v1")
    put(s3, "changing.json", b"v2 is different")
    with pytest.raises(ObjectReadError) as ei:
        open_body(s3, BUCKET, "changing.json", etag=old)
    assert ei.value.gone is True and ei.value.transient is False
    assert "s3://unit-objects/changing.json" in ei.value.reason


def test_missing_key_is_gone_not_transient(s3: Any) -> None:
    with pytest.raises(ObjectReadError) as ei:
        open_body(s3, BUCKET, "no/such/key.json")
    assert ei.value.gone is True and ei.value.transient is False
    assert "NoSuchKey" in ei.value.reason


def test_prefetcher(s3: Any) -> None:
    blobs = {f"pf/{i}.json": (b"%d\n" % i) * (i + 1) for i in range(6)}
    etags = {k: put(s3, k, v) for k, v in blobs.items()}
    pf = Prefetcher(s3, BUCKET, threads=2, prefetch_max_bytes=1 << 20)
    try:
        pf.want(blobs)           # starts the first two only
        assert len(pf._inflight) == 2
        for key, blob in blobs.items():
            pf.want(k for k in blobs if k >= key)
            body = pf.take(key)
            assert body.data == blob and body.etag == etags[key]
        # With an etag, take() GETs again (conditionally); a stale etag is "gone".
        pf.want(["pf/0.json"])
        assert pf.take("pf/0.json", etag=etags["pf/0.json"]).data == blobs["pf/0.json"]
        with pytest.raises(ObjectReadError) as ei:
            pf.take("pf/1.json", etag="0" * 32)
        assert ei.value.gone
        pf.want(["pf/2.json", "missing.json"])
        pf.discard("pf/2.json")
        with pytest.raises(ObjectReadError) as ei:
            pf.take("missing.json")
        assert ei.value.gone and not ei.value.transient
    finally:
        pf.close()
