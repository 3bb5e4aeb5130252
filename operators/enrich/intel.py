"""Threat-intel indicators (IPs and CIDRs, domains, AWS access key ids) matched against rows.

A hit is most useful on the row itself, when it reaches Sentinel: matching here, at tens
of thousands of rows a second, needs lookups that do not grow with the feed. Addresses
become integers; CIDRs are kept in one dict per prefix length, so an address costs one
masked lookup per distinct prefix length (a few dozen at most), not one per network.
Domains match themselves and every subdomain (one set lookup per label of the host);
access key ids are a dict.

Feed formats, told apart by content:

- text: one indicator per line; ``#`` starts a comment, and a comment (or text after
  whitespace) behind an indicator is its description: ``203.0.113.7  # scanner``;
- CSV: ``type,value,description`` rows, with an optional header naming those columns;
- JSON: a list of strings or of ``{"type", "value", "description"}`` objects (or an object
  holding that list under ``"indicators"``).

Types (detected when not given): ``ip`` (IPv4 or IPv6 address), ``cidr``, ``domain`` (a
leading ``*.`` is dropped), ``access_key`` (``AKIA...`` long-term or ``ASIA...`` temporary
key ids). Entries that cannot be read are skipped and listed in ``skipped``; a feed in
which nothing can be read is refused (it is most likely not a feed, e.g. an error page).

:class:`IntelWatcher` reloads a feed (a local file, or ``s3://bucket/key``) when it
changes, and keeps the previous indicators when the new file cannot be read.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from operators.enrich.conditions import compile_json_path

__all__ = ["FIELDS", "IndicatorSet", "IntelError", "IntelMatch", "IntelWatcher"]

log = logging.getLogger(__name__)

FIELDS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "AWSCloudTrail": (("SourceIpAddress", "address", None),
                      ("UserIdentityAccessKeyId", "key", None)),
    "AWSVPCFlow": (("SrcAddr", "address", None), ("DstAddr", "address", None),
                   ("PktSrcAddr", "address", None), ("PktDstAddr", "address", None)),
    "AWSALBAccessLogs_CL": (("ClientIp", "address", None), ("DomainName", "host", None)),
    "AWSALBAccessLogs": (("ClientIp", "address", None), ("DomainName", "host", None)),
    "AWSNLBAccessLogs": (("DomainName", "host", None),),
    "AWSNetworkFirewallFlow": (("SrcIp", "address", None), ("DestIp", "address", None)),
    "AWSNetworkFirewallAlert": (("SrcIp", "address", None), ("DestIp", "address", None),
                                ("Sni", "host", None)),
    "AWSELBAccessLogs_CL": (("ClientIp", "address", None),),
    "AWSNLBAccessLogs_CL": (("ClientIp", "address", None), ("DomainName", "host", None)),
    "AWSCloudFront_CL": (("ClientIp", "address", None), ("ForwardedFor", "addresses", None),
                         ("HostHeader", "host", None)),
    "AWSWAF": (("ClientIp", "address", None),),
    "AWSS3ServerAccess_CL": (("RemoteIp", "address", None),),
    "AWSRoute53Resolver": (("SrcAddr", "address", None), ("QueryName", "host", None)),
    "AWSGuardDuty": tuple(
        ("ServiceDetails", "address", f"action.{p}.ipAddressV{v}")
        for p in ("networkConnectionAction.remoteIpDetails", "awsApiCallAction.remoteIpDetails",
                  "kubernetesApiCallAction.remoteIpDetails",
                  "rdsLoginAttemptAction.remoteIpDetails",
                  "portProbeAction.portProbeDetails[].remoteIpDetails")
        for v in (4, 6)) + (("ServiceDetails", "host", "action.dnsRequestAction.domain"),
                            ("ResourceDetails", "key", "accessKeyDetails.accessKeyId")),
}
"""Columns checked per table: (column, kind, json_path into the column or None). Kinds:
``address`` (an IP, else a host name: CloudTrail writes ``ec2.amazonaws.com`` there for AWS
services), ``addresses`` (comma-separated, as X-Forwarded-For), ``host``, ``key``."""

_TYPES = {
    "ip": "ip", "ipv4": "ip", "ipv6": "ip", "ip-src": "ip", "ip-dst": "ip", "address": "ip",
    "cidr": "cidr", "net": "cidr", "network": "cidr", "subnet": "cidr",
    "domain": "domain", "hostname": "domain", "host": "domain", "fqdn": "domain",
    "access_key": "access_key", "access_key_id": "access_key", "aws_access_key": "access_key",
    "accesskey": "access_key",
}
_KEY = re.compile(r"^A(?:KI|SI)A[A-Z0-9]{16}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z0-9-]{2,63}$")
_V4_MAPPED = 0xFFFF << 32


class IntelError(ValueError):
    """A feed cannot be read (with the reason and what to check)."""


@dataclass(frozen=True, slots=True)
class IntelMatch:
    """A value of a row that matches an indicator."""

    kind: str
    """The indicator's type: ``ip``, ``cidr``, ``domain`` or ``access_key``."""
    value: str
    """The value seen in the row."""
    indicator: str
    """The indicator it matched (normalized: ``10.0.0.0/8``, ``evil.example``)."""
    description: str
    column: str = ""
    """The row's column the value came from."""


def _ip(value: str) -> tuple[int, int] | None:
    """(version, address as int) of an IP address text, or None; IPv4-mapped IPv6 -> IPv4."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
    except (OSError, TypeError, ValueError):
        pass
    if ":" not in value:
        return None
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, value.split("%", 1)[0]), "big")
    except (OSError, ValueError):
        return None
    return (4, n & 0xFFFFFFFF) if n >> 32 == 0xFFFF else (6, n)


def _host(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    head, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in head:
        host = head
    return host


def _classify(kind: str, value: str) -> tuple[str, Any, str] | str:
    """(type, key, normalized indicator) of one entry, or why it cannot be read."""
    value = value.strip()
    if not value:
        return "empty value"
    t = _TYPES.get(kind.strip().lower()) if kind.strip() else None
    if kind.strip() and t is None:
        return f"unknown type {kind!r}; use ip, cidr, domain or access_key"
    if t in (None, "ip", "cidr"):
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            if t is not None:
                return f"not an IP address or network ({t})"
        else:
            full = net.prefixlen == net.max_prefixlen
            text = str(net.network_address) if full else str(net)
            return ("ip" if full else "cidr", (net.version, net.prefixlen,
                                                int(net.network_address)), text)
    if t in (None, "access_key"):
        if _KEY.match(value) or (t == "access_key" and re.fullmatch(r"[A-Z0-9]{16,128}", value)):
            return "access_key", value, value
        if t is not None:
            return "not an access key id (AKIA... or ASIA..., 20 characters)"
    host = _host(value)
    host = host[2:] if host.startswith("*.") else host.lstrip(".")
    if _DOMAIN.match(host):
        return "domain", host, host
    return "not an IP address, CIDR, domain or access key id"


class IndicatorSet:
    """Indicators indexed for matching; build with :meth:`load`.

    :arg entries: (type or "", value, description) triples; type is detected when empty.
    :arg origin: Where they come from, for messages.
    :arg strict: Raise on the first unreadable entry instead of skipping it.
    :raises IntelError: An entry is unreadable (strict), or every entry is.
    """

    def __init__(self, entries: Iterable[tuple[str, str, str]], origin: str = "<indicators>",
                 *, strict: bool = False) -> None:
        self.origin = origin
        self._nets: dict[int, dict[int, dict[int, tuple[str, str, str]]]] = {4: {}, 6: {}}
        self._domains: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        skipped: list[str] = []
        total = 0
        for n, (kind, value, description) in enumerate(entries, 1):
            total += 1
            got = _classify(kind, str(value))
            if isinstance(got, str):
                problem = f"entry {n} {value!r}: {got}"
                if strict:
                    msg = f"threat-intel feed {origin}: {problem}"
                    raise IntelError(msg)
                skipped.append(problem)
                continue
            t, key, text = got
            description = str(description or "").strip()
            if t in ("ip", "cidr"):
                version, plen, net = key
                self._nets[version].setdefault(plen, {})[net] = (t, text, description)
            elif t == "domain":
                self._domains[key] = description
            else:
                self._keys[key] = description
        if skipped and len(skipped) == total:
            msg = (f"threat-intel feed {origin}: none of its {total} entries is an indicator "
                   f"(first: {skipped[0]}); check that it is a text, CSV or JSON feed")
            raise IntelError(msg)
        self.skipped = tuple(skipped)
        """Entries that could not be read, with the reason."""
        self._lengths = {v: sorted(nets, reverse=True) for v, nets in self._nets.items()}
        self._masks = {v: {p: ((1 << bits) - 1) ^ ((1 << (bits - p)) - 1) for p in nets}
                       for v, nets, bits in ((4, self._nets[4], 32), (6, self._nets[6], 128))}
        self._paths: dict[str, Callable[[Any], list[Any]]] = {}

    @classmethod
    def load(cls, source: str | Path | bytes, *, strict: bool = False) -> IndicatorSet:
        """Indicators from a local file (path) or a feed's bytes.

        :raises IntelError: The file cannot be read, or holds no readable indicator.
        """
        if isinstance(source, (bytes, bytearray)):
            return cls(_entries(bytes(source), "<bytes>"), "<bytes>", strict=strict)
        try:
            data = Path(source).read_bytes()
        except OSError as ex:
            msg = (f"threat-intel feed {source}: cannot be read ({ex.strerror or ex}); "
                   "check the path")
            raise IntelError(msg) from None
        return cls(_entries(data, str(source)), str(source), strict=strict)

    def __len__(self) -> int:
        return (sum(len(n) for nets in self._nets.values() for n in nets.values())
                + len(self._domains) + len(self._keys))

    def match_address(self, value: str, column: str = "") -> list[IntelMatch]:
        """Indicators an IP address falls in (most specific first); a host name is matched
        against the domains."""
        ip = _ip(value)
        if ip is None:
            return self.match_host(value, column) if "." in value else []
        version, n = ip
        nets, masks, out = self._nets[version], self._masks[version], []
        for plen in self._lengths[version]:
            hit = nets[plen].get(n & masks[plen])
            if hit is not None:
                out.append(IntelMatch(hit[0], value, hit[1], hit[2], column))
        return out

    def match_host(self, value: str, column: str = "") -> list[IntelMatch]:
        """Domain indicators a host name is, or is under."""
        host = _host(value)
        if host and _ip(host) is not None:
            return self.match_address(host, column)
        if not host or not self._domains:
            return []
        out, domains = [], self._domains
        while True:
            if host in domains:
                out.append(IntelMatch("domain", value, host, domains[host], column))
            i = host.find(".")
            if i < 0:
                return out
            host = host[i + 1:]

    def match_key(self, value: str, column: str = "") -> list[IntelMatch]:
        """The access key id indicator ``value`` is, if any."""
        d = self._keys.get(value)
        return [] if d is None else [IntelMatch("access_key", value, value, d, column)]

    def match(self, table: str, row: Mapping[str, Any]) -> list[IntelMatch]:
        """Every indicator the row's values match, over the columns :data:`FIELDS` names."""
        out: list[IntelMatch] = []
        for column, kind, path in FIELDS.get(table, ()):
            raw = row.get(column)
            if raw is None:
                continue
            values: Sequence[Any]
            if path is None:
                values = (raw,)
            else:
                select = self._paths.get(path)
                if select is None:
                    select = self._paths[path] = compile_json_path(path)
                values = select(raw)
            for v in values:
                if not isinstance(v, str) or not v:
                    continue
                if kind == "address":
                    out += self.match_address(v, column)
                elif kind == "key":
                    if self._keys:
                        out += self.match_key(v, column)
                elif kind == "host":
                    out += self.match_host(v, column)
                else:
                    for part in v.split(","):
                        if part.strip():
                            out += self.match_address(part.strip(), column)
        return out


def _entries(data: bytes, origin: str) -> list[tuple[str, str, str]]:
    """(type, value, description) entries of a feed, whatever its format."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        msg = f"threat-intel feed {origin}: not UTF-8 text ({ex}); feeds are text, CSV or JSON"
        raise IntelError(msg) from None
    head = text.lstrip()
    if head.startswith(("[", "{")):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as ex:
            msg = f"threat-intel feed {origin}: not valid JSON ({ex})"
            raise IntelError(msg) from None
        items = doc.get("indicators") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            msg = (f"threat-intel feed {origin}: JSON feeds are a list of indicators (strings or "
                   "objects with type, value, description), or {\"indicators\": [...]}")
            raise IntelError(msg)
        return [(str(i.get("type") or ""), str(i.get("value") or ""),
                 str(i.get("description") or "")) if isinstance(i, dict) else ("", str(i), "")
                for i in items]
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and "," in lines[0]:
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        cols = {"type": 0, "value": 1, "description": 2}
        header = [c.strip().lower() for c in rows[0]]
        if "value" in header or "indicator" in header:
            cols = {name: header.index(alias) for name, aliases in (
                ("type", ("type",)), ("value", ("value", "indicator")),
                ("description", ("description", "comment"))) for alias in aliases
                if alias in header}
            rows = rows[1:]
        return [tuple(r[cols[c]] if c in cols and cols[c] < len(r) else ""  # type: ignore[misc]
                      for c in ("type", "value", "description")) for r in rows]
    out = []
    for ln in lines:
        body, _, comment = ln.partition("#")
        value, *rest = body.split(None, 1)
        out.append(("", value, comment.strip() or (rest[0].strip() if rest else "")))
    return out


class IntelWatcher:
    """The indicators of a feed that may change: a local file, or ``s3://bucket/key``.

    Every ``check_every_secs`` (on :meth:`match` or :meth:`maybe_reload`) it compares the
    file's mtime and size, or the object's ETag (``head_object``), and reloads when they
    changed. A new version that cannot be read is logged and the previous indicators are
    kept; that version is not tried again until it changes. The check runs inline, in the
    caller's thread: one ``stat`` (or one HEAD request) per ``check_every_secs``.

    :arg path: A local path, or ``s3://bucket/key``.
    :arg s3_client: A boto3 S3 client for ``s3://`` feeds (one is made when None).
    :arg clock: Monotonic seconds (injectable for tests).
    :raises IntelError: The feed cannot be read at start (there is nothing to keep).
    """

    def __init__(self, path: str | Path, s3_client: Any = None, check_every_secs: float = 30.0,
                 *, strict: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = str(path)
        self.check_every_secs = check_every_secs
        self.reloads = 0
        """New versions loaded since start."""
        self.failures = 0
        """Checks or versions that failed (the previous indicators were kept)."""
        self._strict = strict
        self._clock = clock
        self._bucket = self._key = None
        if self.path.startswith("s3://"):
            self._bucket, _, self._key = self.path[5:].partition("/")
            if not self._bucket or not self._key:
                msg = f"threat-intel feed {self.path}: write S3 feeds as s3://bucket/key"
                raise IntelError(msg)
            if s3_client is None:
                import boto3

                s3_client = boto3.client("s3")
        self._s3 = s3_client
        self._version: Any = None
        try:
            self.current = self._fetch(self._signature())
        except IntelError:
            raise
        except Exception as ex:
            msg = f"threat-intel feed {self.path}: cannot be read at start ({ex}); check it exists"
            raise IntelError(msg) from None
        self._next_check = clock() + check_every_secs

    def match(self, table: str, row: Mapping[str, Any]) -> list[IntelMatch]:
        """:meth:`IndicatorSet.match` on the current indicators (checking for a new version
        first, when one is due)."""
        if self._clock() >= self._next_check:
            self.maybe_reload()
        return self.current.match(table, row)

    def maybe_reload(self, force: bool = False) -> bool:
        """Check the feed if a check is due (or ``force``); True when new indicators are in use."""
        now = self._clock()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.check_every_secs
        try:
            version = self._signature()
        except Exception as ex:  # noqa: BLE001 - any failure keeps the old set
            self.failures += 1
            log.warning("threat-intel feed %s: cannot check for a new version, keeping %d "
                        "indicators: %s", self.path, len(self.current), ex)
            return False
        if version == self._version:
            return False
        try:
            new = self._fetch(version)
        except Exception as ex:  # noqa: BLE001 (reported, never raised)
            self.failures += 1
            self._version = version  # not tried again until it changes
            log.warning("threat-intel feed %s: the new version cannot be used, keeping %d "
                        "indicators: %s", self.path, len(self.current), ex)
            return False
        self.current = new
        self.reloads += 1
        log.info("threat-intel feed %s: loaded %d indicators (%d entries skipped)", self.path,
                 len(new), len(new.skipped))
        return True

    def _signature(self) -> Any:
        if self._bucket is None:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_size
        head = self._s3.head_object(Bucket=self._bucket, Key=self._key)
        return head["ETag"]

    def _fetch(self, version: Any) -> IndicatorSet:
        if self._bucket is None:
            new = IndicatorSet.load(self.path, strict=self._strict)
        else:
            try:
                body = self._s3.get_object(Bucket=self._bucket, Key=self._key,
                                           IfMatch=version)["Body"].read()
            except Exception as ex:
                msg = f"threat-intel feed {self.path}: cannot be read from S3 ({ex})"
                raise IntelError(msg) from None
            new = IndicatorSet(_entries(body, self.path), self.path, strict=self._strict)
        self._version = version
        if new.skipped:
            log.warning("threat-intel feed %s: %d entries skipped (first: %s)", self.path,
                        len(new.skipped), new.skipped[0])
        return new
