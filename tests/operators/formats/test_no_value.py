"""Issue 18 item 6: "-" in a numeric field is no value (an empty column), never 0, unless the
AWS documentation gives the value a meaning; every table file states its rule."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import operators
from operators.formats.cloudfront import DEFAULT_FIELDS as CF_FIELDS
from operators.formats.cloudfront import CloudFrontFormat
from operators.formats.elb import AlbFormat
from operators.formats.s3access import S3AccessFormat
from operators.formats.vpcflow import VpcFlowFormat
from operators.schema import Mapper, load_tables

TABLES_DIR = Path(operators.__file__).parent / "tables"
NUMERIC = ("int", "long", "real")


def _row(table: str, rec: dict) -> dict:
    return orjson.loads(Mapper(load_tables()[table]).map_dict(rec, "r"))


@pytest.mark.parametrize("path", sorted(TABLES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_table_with_numbers_states_its_no_value_rule(path: Path) -> None:
    table = load_tables()[path.stem]
    if not any(c.type in NUMERIC for c in table.columns) or path.stem.startswith("S3Sentinel"):
        return  # the connector's own tables are written by it, not parsed from AWS text
    assert 'Numbers and "no value"' in path.read_text()


def test_vpcflow_nodata_counts_are_empty_not_zero() -> None:
    line = b"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
    row = _row("AWSVPCFlow", VpcFlowFormat().parse(line, ()))
    assert not {"Packets", "Bytes", "SrcPort", "DstPort", "Protocol"} & row.keys()
    assert row["LogStatus"] == "NODATA"


def test_s3access_dash_is_empty_except_bytes_sent_which_aws_defines_as_zero() -> None:
    owner = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"
    line = (f'{owner} b [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - REQ REST.HEAD.BUCKET - '
            f'"HEAD /b HTTP/1.1" - AccessDenied - - - - "-" "curl"').encode()
    rec = S3AccessFormat().parse(line, ())
    assert rec["bytes_sent"] == 0  # AWS: "... or - if zero"
    assert not {"http_status", "object_size", "total_time", "turn_around_time"} & rec.keys()


def test_cloudfront_dash_is_empty_and_status_000_keeps_its_documented_meaning() -> None:
    values = dict.fromkeys(CF_FIELDS, "-")
    values.update({"date": "2019-12-04", "time": "21:02:31", "sc-status": "000",
                   "x-edge-result-type": "Error"})
    rec = CloudFrontFormat().parse("\t".join(values[f] for f in CF_FIELDS).encode(), ())
    row = _row("AWSCloudFront_CL", rec)
    assert row["HttpStatus"] == 0  # "the viewer closed the connection before the server could respond"
    numeric = {c.name for c in load_tables()["AWSCloudFront_CL"].columns if c.type in NUMERIC}
    assert numeric & row.keys() == {"HttpStatus"}


def test_alb_minus_one_processing_times_are_kept() -> None:
    line = (b'http 2018-07-02T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 '
            b'192.168.131.39:2817 - -1 -1 -1 502 - 34 366 "GET http://www.example.com:80/ HTTP/1.1" '
            b'"curl/7.46.0" - - -')
    row = _row("AWSALBAccessLogs_CL", AlbFormat().parse(line, ()))
    assert (row["RequestProcessingTime"], row["TargetProcessingTime"],
            row["ResponseProcessingTime"]) == (-1.0, -1.0, -1.0)
    assert "TargetStatusCode" not in row and "TargetPort" not in row
