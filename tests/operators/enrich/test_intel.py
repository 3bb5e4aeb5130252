"""Threat-intel indicators: feed formats, IP/CIDR/IPv6/domain/key matching per table, CIDR
lookups at scale, and reloading a changed feed from a file or from S3 (moto, in process)."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto import mock_aws

from operators.enrich.intel import IndicatorSet, IntelError, IntelMatch, IntelWatcher

FEED = b"""# test feed
203.0.113.7            # scanner
198.51.100.0/24        # bad hosting
10.0.0.0/8
2001:db8:bad::/48      # v6 range
2001:db8::1
evil.example           # c2 domain
*.phish.test           # wildcard form
AKIAIOSFODNN7EXAMPLE   # leaked key
ASIAXXXXXXXXXXXXXXXX	temporary key, tab separated
"""


@pytest.fixture(scope="module")
def intel() -> IndicatorSet:
    return IndicatorSet.load(FEED)


def kinds(matches: list[IntelMatch]) -> list[tuple[str, str, str]]:
    return [(m.kind, m.indicator, m.column) for m in matches]


def test_text_feed(intel: IndicatorSet) -> None:
    assert len(intel) == 9 and intel.skipped == ()
    got = intel.match("AWSCloudTrail", {"SourceIpAddress": "203.0.113.7",
                                        "UserIdentityAccessKeyId": "ASIAXXXXXXXXXXXXXXXX"})
    assert got == [
        IntelMatch("ip", "203.0.113.7", "203.0.113.7", "scanner", "SourceIpAddress"),
        IntelMatch("access_key", "ASIAXXXXXXXXXXXXXXXX", "ASIAXXXXXXXXXXXXXXXX",
                   "temporary key, tab separated", "UserIdentityAccessKeyId")]


def test_cidrs_most_specific_first(intel: IndicatorSet) -> None:
    both = IndicatorSet.load(b"10.0.0.0/8 # wide\n10.1.0.0/16 # narrow\n10.1.2.3 # host\n")
    assert [(m.indicator, m.description) for m in both.match_address("10.1.2.3")] == [
        ("10.1.2.3", "host"), ("10.1.0.0/16", "narrow"), ("10.0.0.0/8", "wide")]
    assert kinds(intel.match_address("198.51.100.255")) == [("cidr", "198.51.100.0/24", "")]
    assert intel.match_address("198.51.101.1") == []
    assert intel.match_address("11.0.0.1") == []


def test_ipv6_and_mapped_addresses(intel: IndicatorSet) -> None:
    assert kinds(intel.match_address("2001:db8:bad:1::99")) == [("cidr", "2001:db8:bad::/48", "")]
    assert kinds(intel.match_address("2001:DB8::1")) == [("ip", "2001:db8::1", "")]
    assert intel.match_address("2001:db8:bae::1") == []
    assert kinds(intel.match_address("::ffff:10.9.8.7")) == [("cidr", "10.0.0.0/8", "")]


def test_domains_match_themselves_and_subdomains(intel: IndicatorSet) -> None:
    for host in ("evil.example", "a.b.evil.example", "EVIL.Example.", "cdn.evil.example:8443"):
        assert kinds(intel.match_host(host)) == [("domain", "evil.example", "")], host
    for host in ("notevil.example", "evil.example.com", "example", ""):
        assert intel.match_host(host) == [], host
    assert kinds(intel.match_host("x.phish.test")) == [("domain", "phish.test", "")]


def test_columns_per_table(intel: IndicatorSet) -> None:
    assert intel.match("AWSCloudTrail", {"SourceIpAddress": "AWS Internal"}) == []
    assert intel.match("AWSCloudTrail", {"SourceIpAddress": "ec2.amazonaws.com"}) == []
    vpc = intel.match("AWSVPCFlow", {"SrcAddr": "10.0.0.5", "DstAddr": "2001:db8::1",
                                     "Action": "ACCEPT"})
    assert kinds(vpc) == [("cidr", "10.0.0.0/8", "SrcAddr"), ("ip", "2001:db8::1", "DstAddr")]
    alb = intel.match("AWSALBAccessLogs_CL", {"ClientIp": "198.51.100.4",
                                              "DomainName": "login.evil.example"})
    assert kinds(alb) == [("cidr", "198.51.100.0/24", "ClientIp"),
                          ("domain", "evil.example", "DomainName")]
    cf = intel.match("AWSCloudFront_CL", {"ClientIp": "192.0.2.1",
                                          "ForwardedFor": "192.0.2.9, 203.0.113.7",
                                          "HostHeader": "d111.cloudfront.net"})
    assert kinds(cf) == [("ip", "203.0.113.7", "ForwardedFor")]
    dns = intel.match("AWSRoute53Resolver", {"SrcAddr": "172.16.0.2",
                                             "QueryName": "beacon.evil.example."})
    assert kinds(dns) == [("domain", "evil.example", "QueryName")]
    service = {"action": {"actionType": "PORT_PROBE", "portProbeAction": {"portProbeDetails": [
        {"remoteIpDetails": {"ipAddressV4": "192.0.2.50"}},
        {"remoteIpDetails": {"ipAddressV4": "203.0.113.7"}}]}}}
    resource = {"resourceType": "AccessKey",
                "accessKeyDetails": {"accessKeyId": "AKIAIOSFODNN7EXAMPLE"}}
    for form in (lambda v: v, lambda v: orjson.dumps(v).decode()):  # parsed, or JSON text
        gd = intel.match("AWSGuardDuty", {"ServiceDetails": form(service),
                                          "ResourceDetails": form(resource)})
        assert kinds(gd) == [("ip", "203.0.113.7", "ServiceDetails"),
                             ("access_key", "AKIAIOSFODNN7EXAMPLE", "ResourceDetails")]
    assert intel.match("Unknown_CL", {"SourceIpAddress": "203.0.113.7"}) == []


def test_csv_and_json_feeds() -> None:
    csv_feed = IndicatorSet.load(b'type,value,description\nip,192.0.2.1,"scanner, noisy"\n'
                                 b'# a comment\ncidr,192.0.2.128/25,\ndomain,bad.test,c2\n'
                                 b'access_key,AKIAABCDEFGHIJKLMNOP,k\n,192.0.2.77,typeless\n')
    assert len(csv_feed) == 5
    assert csv_feed.match_address("192.0.2.1")[0].description == "scanner, noisy"
    assert csv_feed.match_address("192.0.2.77")[0].description == "typeless"
    headerless = IndicatorSet.load(b"ip,192.0.2.1,x\ndomain,bad.test,y\n")
    assert len(headerless) == 2
    reordered = IndicatorSet.load(b"indicator,comment\n192.0.2.1,x\n")
    assert reordered.match_address("192.0.2.1")[0].description == "x"
    js = IndicatorSet.load(orjson.dumps(["192.0.2.1", {"type": "domain", "value": "bad.test",
                                                       "description": "d"}]))
    assert len(js) == 2 and js.match_host("a.bad.test")[0].description == "d"
    wrapped = IndicatorSet.load(orjson.dumps({"indicators": [{"value": "2001:db8::/32"}]}))
    assert kinds(wrapped.match_address("2001:db8::5")) == [("cidr", "2001:db8::/32", "")]


def test_unreadable_entries_are_skipped_and_listed() -> None:
    feed = IndicatorSet.load(b"192.0.2.1\nnot an indicator!\n999.1.1.1\n")
    assert len(feed) == 1
    assert feed.skipped == ("entry 2 'not': not an IP address, CIDR, domain or access key id",
                            "entry 3 '999.1.1.1': not an IP address, CIDR, domain or access key "
                            "id")
    typed = IndicatorSet.load(b"type,value\nip,bad.test\naccess_key,nope\ncolour,red\nip,1.2.3.4\n")
    assert [s.split(": ", 1)[1] for s in typed.skipped] == [
        "not an IP address or network (ip)",
        "not an access key id (AKIA... or ASIA..., 20 characters)",
        "unknown type 'colour'; use ip, cidr, domain or access_key"]


@pytest.mark.parametrize(("data", "message"), [
    (b"<html><body>Access Denied</body></html>", "none of its 1 entries is an indicator"),
    (b"[1, 2", "not valid JSON"),
    (b'{"feed": 1}', "JSON feeds are a list of indicators"),
    (b"\xff\xfe\x00bad", "not UTF-8 text"),
])
def test_feeds_that_are_not_feeds_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(IntelError, match=message):
        IndicatorSet.load(data)


def test_strict_mode_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(IntelError, match="entry 2 'x!': not an IP"):
        IndicatorSet.load(b"192.0.2.1\nx!\n", strict=True)
    with pytest.raises(IntelError, match="cannot be read"):
        IndicatorSet.load(tmp_path / "missing.txt")
    assert len(IndicatorSet.load(b"# nothing yet\n")) == 0  # an empty feed is a feed


def test_thousands_of_cidrs_match_like_a_linear_scan_and_fast() -> None:
    rng = random.Random(7)
    nets = {ipaddress.ip_network((rng.getrandbits(32), rng.randint(8, 32)), strict=False)
            for _ in range(5_000)}
    nets |= {ipaddress.ip_network((rng.getrandbits(128), rng.randint(16, 128)), strict=False)
             for _ in range(1_000)}
    feed = IndicatorSet.load("\n".join(map(str, nets)).encode())
    assert len(feed) == len(nets)
    probes = [str(ipaddress.ip_address(rng.getrandbits(32))) for _ in range(300)]
    probes += [str(next(iter(n.hosts() if n.num_addresses > 2 else [n.network_address])))
               for n in list(nets)[:300]]
    for p in probes:
        addr = ipaddress.ip_address(p)
        expected = sorted(str(n) if n.prefixlen < n.max_prefixlen else str(n.network_address)
                          for n in nets if addr.version == n.version and addr in n)
        assert sorted(m.indicator for m in feed.match_address(p)) == expected, p
    row = {"SourceIpAddress": "192.0.2.200", "UserIdentityAccessKeyId": "AKIAIOSFODNN7EXAMPLE"}
    n = 5_000
    per_row = min(timeit.repeat(lambda: feed.match("AWSCloudTrail", row), number=n, repeat=3)) / n
    print(f"intel match: {per_row * 1e6:.2f} us/row ({len(feed)} networks)")
    assert per_row < 100e-6


# --------------------------------------------------------------------------- reloading


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bump(path: Path, data: bytes, secs: int) -> None:
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + secs * 1_000_000_000))


def test_a_changed_file_is_reloaded_and_a_broken_one_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    feed, clock = tmp_path / "feed.txt", Clock()
    feed.write_bytes(b"192.0.2.1 # first\n")
    w = IntelWatcher(feed, check_every_secs=30, clock=clock)
    new_ip = {"SourceIpAddress": "192.0.2.2"}
    assert kinds(w.match("AWSCloudTrail", {"SourceIpAddress": "192.0.2.1"})) == [
        ("ip", "192.0.2.1", "SourceIpAddress")]
    assert w.match("AWSCloudTrail", new_ip) == []

    bump(feed, b"192.0.2.1 # first\n192.0.2.2 # second\n", 1)
    clock.now += 10
    assert w.match("AWSCloudTrail", new_ip) == []  # not due yet
    clock.now += 25
    assert [m.description for m in w.match("AWSCloudTrail", new_ip)] == ["second"]
    assert w.reloads == 1
    assert not w.maybe_reload(force=True)  # unchanged: nothing to do

    with caplog.at_level(logging.WARNING, logger="operators.enrich.intel"):
        bump(feed, b"<html>oops</html>\n", 2)
        assert not w.maybe_reload(force=True)
    assert "keeping 2 indicators" in caplog.text and "none of its 1 entries" in caplog.text
    assert [m.description for m in w.match("AWSCloudTrail", new_ip)] == ["second"]
    assert w.failures == 1
    assert not w.maybe_reload(force=True)  # the broken version is not parsed again

    feed.unlink()
    assert not w.maybe_reload(force=True) and w.failures == 2
    assert len(w.current) == 2

    bump(feed, b"192.0.2.3 # third\n", 3)
    assert w.maybe_reload(force=True)
    assert w.match("AWSCloudTrail", new_ip) == []
    assert w.reloads == 2


def test_a_feed_that_cannot_be_read_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IntelError, match="cannot be read"):
        IntelWatcher(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_bytes(b"nope!\n")
    with pytest.raises(IntelError, match="none of its 1 entries"):
        IntelWatcher(tmp_path / "bad.txt")
    with pytest.raises(IntelError, match="s3://bucket/key"):
        IntelWatcher("s3://only-a-bucket", s3_client=object())


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process moto S3 (no network), with fake credentials."""
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="intel")
        yield client


def test_a_changed_s3_object_is_reloaded(s3: Any, caplog: pytest.LogCaptureFixture) -> None:
    s3.put_object(Bucket="intel", Key="feeds/ips.csv", Body=b"type,value,description\n"
                  b"ip,192.0.2.1,first\n")
    clock = Clock()
    w = IntelWatcher("s3://intel/feeds/ips.csv", s3_client=s3, check_every_secs=30, clock=clock)
    row = {"SrcAddr": "192.0.2.2", "DstAddr": "192.0.2.1"}
    assert [m.description for m in w.match("AWSVPCFlow", row)] == ["first"]

    s3.put_object(Bucket="intel", Key="feeds/ips.csv", Body=b"type,value,description\n"
                  b"ip,192.0.2.1,first\nip,192.0.2.2,second\n")
    clock.now += 31
    assert [m.description for m in w.match("AWSVPCFlow", row)] == ["second", "first"]
    assert w.reloads == 1

    with caplog.at_level(logging.WARNING, logger="operators.enrich.intel"):
        s3.put_object(Bucket="intel", Key="feeds/ips.csv", Body=b"[not json")
        clock.now += 31
        assert len(w.match("AWSVPCFlow", row)) == 2
        s3.delete_object(Bucket="intel", Key="feeds/ips.csv")
        clock.now += 31
        assert len(w.match("AWSVPCFlow", row)) == 2
    assert "not valid JSON" in caplog.text and "cannot check for a new version" in caplog.text
    assert w.failures == 2

    s3.put_object(Bucket="intel", Key="feeds/ips.csv", Body=b"192.0.2.2 # back\n")
    assert w.maybe_reload(force=True)
    assert [m.description for m in w.match("AWSVPCFlow", row)] == ["back"]


def test_a_missing_s3_object_at_start_is_an_error(s3: Any) -> None:
    with pytest.raises(IntelError, match="cannot be read at start"):
        IntelWatcher("s3://intel/nothing.txt", s3_client=s3)
