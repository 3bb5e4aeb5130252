"""The columnar path for VPC flow logs gives what the line path gives, byte for byte: the
same rows, record ids, error records (with their reasons and positions) and order, on
generated objects full of the lines that trip parsers."""

from __future__ import annotations

import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.s3.config import SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectEnd, ObjectRef, RawRecord, Rows
from operators import columnar
from operators.columnar import MIN_RUN, VpcFlowColumns
from operators.formats.vpcflow import DEFAULT_FIELDS, FIELDS, INT_FIELDS, TGW_FIELDS
from operators.parse import RecordMapper
from operators.schema import load_tables

TABLES = load_tables()
SOURCE = SourceConfig(name="vpc", bucket="b", format="vpcflow")
OBJ = ObjectRef("vpc", "vpc:0/1", "b", "AWSLogs/x.log.gz", "e", 1, "vpcflow", id="0123abcd")
LAYOUTS = [
    DEFAULT_FIELDS,
    FIELDS,  # every field of versions 2 to 8 (reject-reason has no column: into the * column)
    ("srcaddr", "dstaddr", "start", "action", "tgw-id", "bytes", "packets-lost-no-route"),
    ("version", "interface-id", "end", "traffic-path", "flow-direction", "start"),
]


def _value(rng: random.Random, name: str) -> str:
    if rng.random() < 0.1:
        return "-"
    if name in ("start", "end"):
        return str(rng.choice([1418530010 + rng.randrange(10**6), 0, 99999999999]))
    if name in INT_FIELDS:
        return str(rng.choice([rng.randrange(70000), 0, 7, 2**40]))
    return rng.choice(["eni-0a1b2c3d", "10.0.1.7", "2001:db8::1", "ACCEPT", "REJECT", "OK",
                       "NODATA", "egress", "us-east-1", "use1-az1", "vpc-1", "unknown"])


_NASTY = ["\t", "  ", " ", "é", '"', "\\", "\x00", "\x1c", "\u2003", "{", "x", "-1", "+5",
          "1.5", "0x10", "9" * 19, "007", "1e3", "a" * 17000, "1700000000000"]


def _line(rng: random.Random, names: tuple[str, ...]) -> str:
    values = [_value(rng, n) for n in names]
    roll = rng.random()
    if roll < 0.08:  # one field replaced by something nasty
        values[rng.randrange(len(values))] = rng.choice(_NASTY)
    elif roll < 0.11:  # a field too few or too many
        values = values[:-1] if rng.random() < 0.5 else [*values, "extra"]
    elif roll < 0.13:  # a CloudWatch export line
        return orjson.dumps({"message": " ".join(values)}).decode()
    elif roll < 0.15:  # nasty whitespace at an end
        return rng.choice([" ", "\t", "\x0b"]) + " ".join(values)
    return " ".join(values)


def _records(seed: int, names: tuple[str, ...], n: int, header: bool = True) -> list:
    rng = random.Random(seed)
    hdr = (" ".join(names).encode(),) if header else ()
    recs: list = []
    for i in range(n):
        data = _line(rng, names).encode("utf-8")
        if rng.random() < 0.01:
            data = b"2 \xff\xfe bad utf-8"
        recs.append(RawRecord(OBJ, i + 1, data, hdr))
    return [*recs, ObjectEnd(OBJ)]


def _both(recs: list, **kw: object) -> tuple[list, list]:
    line = RecordMapper([SOURCE], TABLES, 1_000_000, columnar=False, **kw).map_batch(recs)
    cols = RecordMapper([SOURCE], TABLES, 1_000_000, columnar=True, **kw).map_batch(recs)
    return line, cols


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), layout=st.sampled_from(LAYOUTS),
       n=st.integers(MIN_RUN, 400))
def test_the_columnar_path_gives_the_line_paths_rows_and_errors(seed: int, layout: tuple,
                                                                n: int) -> None:
    line, cols = _both(_records(seed, layout, n))
    assert cols == line  # rows, record ids, error records (reason, offset, data), order
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows):
            assert a.rows == b.rows and a.record_ids == b.record_ids


def test_parsed_rows_are_the_mappers_dicts() -> None:
    line, cols = _both(_records(3, FIELDS, 300), keep_parsed=frozenset({"AWSVPCFlow"}))
    assert cols == line
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows) and a.rows:
            assert [orjson.loads(orjson.dumps(p)) for p in a.parsed] == list(b.parsed)


def test_clean_lines_all_take_the_columnar_path() -> None:
    """Not a test that passes because every line fell back: clean lines are all mapped by
    polars, and the nasty ones are all left to the line path."""
    rng = random.Random(5)
    clean = [" ".join(_value(rng, n) if n != "start" else "1418530010" for n in DEFAULT_FIELDS)
             .encode() for _ in range(200)]
    base = "2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 22 6 1 40 1418530010 1418530070 ACCEPT OK"

    def put(pos: int, x: str) -> bytes:
        f = base.split(" ")
        f[pos] = x
        return " ".join(f).encode()

    nasty = ([put(1, x) for x in ("\t", "  ", "é", '"', "\\", "\x00", "\x1c", "\u2003", "a" * 17000)]
             + [put(0, "{")]
             + [put(5, x) for x in ("-1", "+5", "1.5", "0x10", "9" * 19, "1e3", "x", "")]
             + [put(10, "1700000000000"), put(10, "-"), base.encode() + b" extra",
                b" " + base.encode(), base.encode() + b" "])
    cols = VpcFlowColumns(TABLES["AWSVPCFlow"], 1_000_000)
    plan = cols.plan(DEFAULT_FIELDS)
    assert plan is not None
    rows = cols.map_run(clean + nasty, plan, "o-", list(range(len(clean) + len(nasty))))
    assert all(rows[: len(clean)])
    assert not any(rows[len(clean):])


def test_short_runs_and_headerless_objects_take_the_line_path(monkeypatch) -> None:
    calls = []
    real = VpcFlowColumns.map_run
    monkeypatch.setattr(VpcFlowColumns, "map_run",
                        lambda self, *a: calls.append(len(a[0])) or real(self, *a))
    _both(_records(1, DEFAULT_FIELDS, MIN_RUN - 1))
    _both(_records(1, DEFAULT_FIELDS, 200, header=False))
    assert calls == []
    _both(_records(1, DEFAULT_FIELDS, MIN_RUN))
    assert calls == [MIN_RUN]


def test_a_field_list_the_plan_does_not_cover_takes_the_line_path() -> None:
    cols = VpcFlowColumns(TABLES["AWSVPCFlow"], 1_000_000)
    assert cols.plan(("srcaddr", "srcaddr")) is None  # a name twice
    assert cols.plan(("srcaddr", "dstaddr")) is None  # no start: every line an error record
    assert cols.plan(TGW_FIELDS) is not None
    assert columnar.MIN_RUN > 1


def test_rows_over_the_request_limit_are_the_line_paths_errors() -> None:
    recs = _records(9, FIELDS, 100)
    line = RecordMapper([SOURCE], TABLES, 700, columnar=False).map_batch(recs)
    cols = RecordMapper([SOURCE], TABLES, 700, columnar=True).map_batch(recs)
    assert cols == line
    assert any(isinstance(x, ErrorRecord) and x.code == "row_too_large" for x in line)


# --------------------------------------------------------------------------- ALB access logs

ALB = SourceConfig(name="alb", bucket="b", format="alb")
ALB_OBJ = ObjectRef("alb", "alb:0/1", "b", "AWSLogs/x/elasticloadbalancing/x.log.gz", "e", 1,
                    "alb", id="0a1b2c3d")


def _alb_value(rng: random.Random, kind: str) -> str:
    if rng.random() < 0.08:
        return "-" if kind not in ("quoted", "request") or rng.random() < 0.5 else '"-"'
    if kind == "time":
        return rng.choice(["2026-11-01T22:23:00.186641Z", "2026-11-01T22:22:48Z",
                           "2026-02-28T23:59:59.123456789Z"])
    if kind == "addr":
        return rng.choice(["192.168.131.39:2817", "10.0.0.1:80", "2001:db8::1:443",
                           "10.0.0.2:0"])
    if kind == "real":
        return rng.choice(["0.000", "0.086", "-1", "12.5", "3"])
    if kind == "int":
        return rng.choice(["200", "502", "0", "-1", "34", "366", "1234567"])
    if kind == "request":
        return rng.choice(['"GET https://www.example.com:443/a?b=1 HTTP/1.1"', '"- - - "',
                           '"POST http://x.example:80/ HTTP/2.0"', '"--"', '""'])
    if kind == "quoted":
        return rng.choice(['"curl/7.46.0"', '"Mozilla/5.0 (X11; Linux) é ü"', '""'])
    text = rng.choice(["forward", "authenticate,forward", "arn:aws:acm:us-east-2:1:cert/x",
                       "Root=1-5833", "www.example.com", "TID_1234", "Ambiguous", "h2"])
    if kind == "str":
        return f'"{text}"' if rng.random() < 0.7 else text
    return text  # bare


_ALB_NASTY = ['"a\\"b"', "\t", "  ", '"x"y', "[2001:db8::1]:443", "010", "2026-02-30T00:00:00Z",
              "2026-11-01T22:23:00", "\x01", "x\"", "10.0.0.1:0080", "-0.5.5"]


def _alb_line(rng: random.Random) -> bytes:
    from operators.formats.elb import ALB_FIELDS, ALB_MIN_FIELDS

    n = rng.choice([ALB_MIN_FIELDS, 29, len(ALB_FIELDS), len(ALB_FIELDS)])
    values = [_alb_value(rng, kind) for _, kind in ALB_FIELDS[:n]]
    roll = rng.random()
    if roll < 0.12:
        values[rng.randrange(n)] = rng.choice(_ALB_NASTY)
    elif roll < 0.14:
        values.append("extra")
    elif roll < 0.15:
        return b"http \xff\xfe 2026"
    return " ".join(values).encode("utf-8")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(MIN_RUN, 300))
def test_alb_lines_map_as_on_the_line_path(seed: int, n: int) -> None:
    rng = random.Random(seed)
    recs = [RawRecord(ALB_OBJ, i, _alb_line(rng)) for i in range(n)]
    line = RecordMapper([ALB], TABLES, 1_000_000, columnar=False).map_batch(recs)
    cols = RecordMapper([ALB], TABLES, 1_000_000, columnar=True).map_batch(recs)
    assert cols == line
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows):
            assert a.rows == b.rows


def test_clean_alb_lines_all_take_the_columnar_path() -> None:
    from operators.columnar import alb_columns

    rng = random.Random(2)
    clean = []
    while len(clean) < 200:
        data = _alb_line(rng)
        if not any(x.encode() in data for x in _ALB_NASTY) and b"extra" not in data \
                and b"\xff" not in data and data.split(b" ")[1] != b"-":  # time: required
            clean.append(data)
    cols = alb_columns(TABLES["AWSALBAccessLogs"], 1_000_000)
    plan = cols.plan_for(None, ())
    assert plan is not None
    rows = cols.map_run(clean, plan, "o-", list(range(len(clean))))
    assert all(rows)
    nasty = [b"http 2026-11-01T22:23:00Z app/x " + x.encode() + b" 10.0.0.1:80 0 0 0 200 200 1 2 "
             b'"GET / HTTP/1.1" "ua" - - arn' for x in ("1.2.3.4:080", "[::1]:80", "a\\\"b")]
    assert not any(cols.map_run(nasty, plan, "o-", [0, 1, 2]))


# --------------------------------------------------------------------------- S3 access logs

S3A = SourceConfig(name="s3a", bucket="b", format="s3access")
S3A_OBJ = ObjectRef("s3a", "s3a:0/1", "b", "logs/2026-02-06-00-00-38-1", "e", 1, "s3access",
                    id="5a6b7c8d")


def _s3a_value(rng: random.Random, name: str) -> str:
    if rng.random() < 0.08:
        return "-"
    if name == "time":
        return rng.choice(["[06/Feb/2026:00:00:38 +0000]", "[31/Dec/2025:23:59:59 +0000]",
                           "[31/Feb/2026:10:00:00 +0000]"])
    if name in ("request_uri", "referer", "user_agent"):
        return rng.choice(['"GET /bucket?versioning HTTP/1.1"', '"S3Console/0.4"', '""',
                           '"aws-cli/2.15 Python/3.11 é"', '"-"'])
    if name in ("http_status", "bytes_sent", "object_size", "total_time", "turn_around_time"):
        return rng.choice(["200", "0", "113", "7", "4096"])
    return rng.choice(["79a59df900b949e5", "amzn-s3-demo-bucket1", "192.0.2.3",
                       "REST.GET.VERSIONING", "photos/2026/a%20b.jpg", "SigV4", "TLSv1.2",
                       "arn:aws:s3:us-west-1:1:accesspoint/x", "Yes"])


_S3A_NASTY = ['"a\\"b"', "\t", "  ", "[1]", "[06/Feb/2026:00:00:38 -0700]", "007", "x\"",
              "[00/Feb/2026:00:00:38 +0000]", "[06/Foo/2026:00:00:38 +0000]", '"q"z', "\x02"]


def _s3a_line(rng: random.Random) -> bytes:
    from operators.formats.s3access import FIELDS, MIN_FIELDS

    n = rng.choice([MIN_FIELDS, 20, len(FIELDS), len(FIELDS)])
    values = [_s3a_value(rng, name) for name in FIELDS[:n]]
    roll = rng.random()
    if roll < 0.12:
        values[rng.randrange(n)] = rng.choice(_S3A_NASTY)
    elif roll < 0.15:
        values.append(rng.choice(["extra", '"quoted extra"', "[x y]"]))
    elif roll < 0.16:
        return b"79a59df9 bucket \xff\xfe"
    return " ".join(values).encode("utf-8")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(MIN_RUN, 300))
def test_s3_access_lines_map_as_on_the_line_path(seed: int, n: int) -> None:
    rng = random.Random(seed)
    recs = [RawRecord(S3A_OBJ, i, _s3a_line(rng)) for i in range(n)]
    line = RecordMapper([S3A], TABLES, 1_000_000, columnar=False).map_batch(recs)
    cols = RecordMapper([S3A], TABLES, 1_000_000, columnar=True).map_batch(recs)
    assert cols == line
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows):
            assert a.rows == b.rows


def test_clean_s3_access_lines_all_take_the_columnar_path() -> None:
    from operators.columnar import s3access_columns

    rng = random.Random(4)
    clean = []
    while len(clean) < 200:
        data = _s3a_line(rng)
        if not any(x.encode() in data for x in _S3A_NASTY) and b"\xff" not in data \
                and b"extra" not in data and b"[x y]" not in data \
                and data.split(b" ")[2][:1] == b"[":  # the time: required
            clean.append(data)
    cols = s3access_columns(TABLES["AWSS3ServerAccess_CL"], 1_000_000)
    plan = cols.plan_for(None, ())
    assert plan is not None
    assert all(cols.map_run(clean, plan, "o-", list(range(len(clean)))))


# --------------------------------------------------------------------------- NLB access logs

NLB = SourceConfig(name="nlb", bucket="b", format="nlb")
NLB_OBJ = ObjectRef("nlb", "nlb:0/1", "b", "AWSLogs/x/elasticloadbalancing/n.log.gz", "e", 1,
                    "nlb", id="9e8d7c6b")


def _nlb_value(rng: random.Random, kind: str, name: str) -> str:
    if rng.random() < 0.08 and name != "alpn_client_preference_list":
        return "-"
    if kind == "time":
        return rng.choice(["2026-12-20T02:59:40", "2026-12-20T02:59:40Z"] * 5
                          + ["2026-02-29T10:00:00"])  # not a day of 2026
    if kind == "int":
        return rng.choice(["2", "0", "-1", "0042", "12345"])
    if kind == "addr":
        return rng.choice(["192.168.1.1:443", "2001:db8::1:443", "[2001:db8::2]:8443"])
    if name == "alpn_client_preference_list":
        return rng.choice(['"h2","http/1.1"', "-", '"http/1.1"'])
    return rng.choice(["tls", "2.0", "net/my-nlb/c6e77e28c25b2234", "listener/net/x/y/z",
                       "arn:aws:acm:us-east-2:1:certificate/x", "5b8f2c1d", "TLSv12",
                       "ECDHE-RSA-AES128-GCM-SHA256", "secp256r1", "my.example.com", "h2"])


def _nlb_line(rng: random.Random) -> bytes:
    from operators.formats.elb import NLB_FIELDS, NLB_MIN_FIELDS

    n = rng.choice([NLB_MIN_FIELDS, len(NLB_FIELDS), len(NLB_FIELDS)])
    values = [_nlb_value(rng, kind, name) for name, kind in NLB_FIELDS[:n]]
    roll = rng.random()
    if roll < 0.12:
        values[rng.randrange(n)] = rng.choice(['a"b', "\t", "  ", "x:99999", "2026-13-01T00:00:00",
                                               "1.5", "2026-12-20T02:59:40.123", "\x03", "é"])
    elif roll < 0.15:
        values.append(rng.choice(["extra", '"q q"']))
    return " ".join(values).encode("utf-8")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(MIN_RUN, 300))
def test_nlb_lines_map_as_on_the_line_path(seed: int, n: int) -> None:
    rng = random.Random(seed)
    recs = [RawRecord(NLB_OBJ, i, _nlb_line(rng)) for i in range(n)]
    line = RecordMapper([NLB], TABLES, 1_000_000, columnar=False).map_batch(recs)
    cols = RecordMapper([NLB], TABLES, 1_000_000, columnar=True).map_batch(recs)
    assert cols == line
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows):
            assert a.rows == b.rows
    # Not a test that passes because every line fell back: most rows came from polars.
    from operators.columnar import nlb_columns

    plan = nlb_columns(TABLES["AWSNLBAccessLogs"], 1_000_000)
    got = plan.map_run([r.data for r in recs], plan.plan_for(None, ()), "x-", list(range(n)))
    assert sum(1 for r in got if r) > n // 2


# --------------------------------------------------------------------------- hostile input

_HOSTILE_FORMATS = [(SOURCE, OBJ, (" ".join(DEFAULT_FIELDS).encode(),)), (ALB, ALB_OBJ, ()),
                    (NLB, NLB_OBJ, ()), (S3A, S3A_OBJ, ())]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_HOSTILE_FORMATS) - 1),
       junk=st.lists(st.binary(max_size=200), min_size=1, max_size=40),
       seed=st.integers(0, 10**6))
def test_arbitrary_bytes_deep_nesting_and_huge_lines_map_as_on_the_line_path(
        which: int, junk: list[bytes], seed: int) -> None:
    """Whatever the bytes, the columnar path gives the line path's rows and error records
    (nothing dropped, nothing raised), mixed into runs of good lines."""
    source, obj, header = _HOSTILE_FORMATS[which]
    rng = random.Random(seed)
    good = {0: lambda: _line(rng, DEFAULT_FIELDS).encode(), 1: lambda: _alb_line(rng),
            2: lambda: _nlb_line(rng), 3: lambda: _s3a_line(rng)}[which]
    lines = [good() for _ in range(MIN_RUN)]
    hostile = [*(j.replace(b"\n", b" ") for j in junk),
               b"[" * 5000 + b"]" * 5000,  # deep nesting
               b'{"message": ' + b"[" * 3000 + b"]" * 3000 + b"}",
               b"x" * 300_000,  # a huge record
               good() + b" " + b"y" * 70_000]
    for h in hostile:
        lines.insert(rng.randrange(len(lines) + 1), h)
    recs = [RawRecord(obj, i, data, header) for i, data in enumerate(lines)]
    line = RecordMapper([source], TABLES, 1_000_000, columnar=False).map_batch(recs)
    cols = RecordMapper([source], TABLES, 1_000_000, columnar=True).map_batch(recs)
    assert cols == line
    for a, b in zip(line, cols, strict=True):
        if isinstance(a, Rows):
            assert a.rows == b.rows
    mapped = sum(len(x.rows) for x in cols if isinstance(x, Rows))
    errors = sum(1 for x in cols if isinstance(x, ErrorRecord))
    assert mapped + errors == len(recs)  # every record is a row or an error record
