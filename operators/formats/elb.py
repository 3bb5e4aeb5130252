"""Elastic Load Balancing access logs: Application (ALB), Classic (ELB) and Network (NLB),
and ALB connection logs.

All three write one request (NLB: one TLS connection) per line, fields separated by a
space, ``-`` for a field without a value, and no header line. An ALB record (wrapped)::

    https 2018-07-02T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188
    192.168.131.39:2817 10.0.0.1:80 0.086 0.048 0.037 200 200 0 57
    "GET https://www.example.com:443/ HTTP/1.1" "curl/7.46.0" ECDHE-RSA-AES128-GCM-SHA256
    TLSv1.2
    arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067
    "Root=1-58337281-1d84f3d73c47ec4e58577259" "www.example.com"
    "arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012" 1
    2018-07-02T22:22:48.364000Z "authenticate,forward" "-" "-" "10.0.0.1:80" "200" "-" "-"
    TID_1234abcd

ALB and Classic ELB put the request line, the user agent and (ALB) most later fields in
double quotes; a ``"`` inside is written ``\\"``. One tokenizer serves both: a quoted
field ends at a ``"`` followed by a space or the end of the line, so a stray unescaped
quote stays inside its field. NLB fields never contain spaces, and its
``alpn_client_preference_list`` is written with quotes of its own (``"h2","http/1.1"``)
that are part of the value, so NLB lines are split at spaces.

Fields, in order (parser keys are the AWS names; ``client:port``-style fields become
``<name>_ip`` and ``<name>_port``; the request line is kept as ``request`` and split into
``request_method``, ``request_url`` and ``request_protocol``):

- ALB: type, time, elb, client:port, target:port, request_processing_time,
  target_processing_time, response_processing_time, elb_status_code, target_status_code,
  received_bytes, sent_bytes, "request", "user_agent", ssl_cipher, ssl_protocol,
  target_group_arn (the 17 fields of the first format, all required), then as AWS added
  them: "trace_id", "domain_name", "chosen_cert_arn", matched_rule_priority,
  request_creation_time, "actions_executed", "redirect_url", "error_reason",
  "target:port_list", "target_status_code_list", "classification",
  "classification_reason", conn_trace_id, "transformed_host", "transformed_uri",
  "request_transform_status". Fields AWS appends after these are ignored.
- Classic ELB: timestamp, elb, client:port, backend:port, request_processing_time,
  backend_processing_time, response_processing_time, elb_status_code,
  backend_status_code, received_bytes, sent_bytes, "request" (12 required), then
  "user_agent", ssl_cipher, ssl_protocol.
- NLB (TLS listeners only): type, version, time, elb, listener, client:port,
  destination:port, connection_time, tls_handshake_time, received_bytes, sent_bytes,
  incoming_tls_alert, chosen_cert_arn, chosen_cert_serial, tls_cipher,
  tls_protocol_version, tls_named_group, domain_name, alpn_fe_protocol, alpn_be_protocol,
  alpn_client_preference_list (21 required), then tls_connection_creation_time.

- ALB connection logs (``conn_log.`` objects, one TLS connection per line, a log type of
  their own): time, client_ip, client_port, listener_port, tls_protocol, tls_cipher,
  tls_handshake_latency, "leaf_client_cert_subject", leaf_client_cert_validity,
  leaf_client_cert_serial_number, tls_verify_status (11 required), then conn_trace_id.
  ``tls_handshake_latency`` is seconds (a float); the ports are ints.

Values: ``-`` (and an empty quoted value) leave the field out. Processing times are
seconds as floats, and stay ``-1.0`` where AWS writes ``-1`` (the load balancer could not
dispatch the request, or got no response): that is the documented signal, not a missing
value. Status codes, byte counts, ports, ``matched_rule_priority`` (``-1`` on a rule
evaluation error), NLB connection and handshake times (milliseconds) and
``incoming_tls_alert`` are ints. Times become ISO 8601 UTC: ALB and Classic write
``2018-07-02T22:23:00.186641Z`` (kept as is), NLB ``2018-12-20T02:59:40`` (UTC, without
the ``Z``; one is added). A Classic TCP listener logs the request as ``"- - - "``: method,
URL and protocol are then all absent.

Addresses: ``192.168.131.39:2817``; IPv6 as AWS writes it, without brackets
(``2001:db8::1:443``, the port after the last colon), or ``[2001:db8::1]:443``.

Records for the Azure Monitor standard tables (AWSALBAccessLogs for ALB, AWSNLBAccessLogs for
NLB: the parser's ``table``, set by the registry) keep AWS's own shape, as those tables hold
it: every number field and time is the text AWS wrote, once checked (``0.000``, ``-1``,
``2018-12-20T02:59:40`` without a ``Z``; the tables type most of them ``string``), an ALB
request line is kept whole (``request``, no method, URL and protocol: the table has RequestRaw
only), and NLB addresses are kept as written (``client``, ``destination``: ``address:port``, as
ClientIPPort and TargetIPPort hold them; ALB's are split all the same, for ClientIp/ClientPort
and TargetIp/TargetPort).

Checks that catch a line read out of step: times must parse; numbers must be numbers;
addresses must be ``address:port``; the request line and user agent must be quoted (or a
bare ``-``); fields written bare must not be quoted, and a bare field must not contain
``"``. Bytes that are not UTF-8 (user agents are set by the client) are kept as ``\\xNN``
escapes rather than failing the line.

Sources: the Elastic Load Balancing guides "Access logs for your Application Load
Balancer", "Access logs for your Classic Load Balancer" and "Access logs for your Network
Load Balancer" (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/
load-balancer-access-logs.html, .../classic/access-log-collection.html,
.../network/load-balancer-access-logs.html); "Connection logs for your Application Load
Balancer" (.../application/load-balancer-connection-logs.html) and Athena's "Create the
table for ALB connection logs" (https://docs.aws.amazon.com/athena/latest/ug/
create-alb-connection-logs-table.html), whose column list and regex give the order and
the quoting.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from operators.formats import ParseError

__all__ = [
    "ALBCONN_FIELDS",
    "ALBCONN_MIN_FIELDS",
    "ALB_FIELDS",
    "ALB_MIN_FIELDS",
    "ELB_FIELDS",
    "ELB_MIN_FIELDS",
    "NLB_FIELDS",
    "NLB_MIN_FIELDS",
    "AlbConnectionFormat",
    "AlbFormat",
    "ClassicElbFormat",
    "NlbFormat",
]

# Field kinds: how a token is checked and converted.
_STR = "str"          # quoted or bare
_BARE = "bare"        # must be bare
_QUOTED = "quoted"    # must be quoted (or a bare "-"): it may hold spaces
_INT = "int"
_REAL = "real"
_TIME = "time"
_ADDR = "addr"        # address:port, split into <name>_ip and <name>_port
_REQUEST = "request"  # quoted request line, kept and split into method, URL and protocol

ALB_FIELDS: tuple[tuple[str, str], ...] = (
    ("type", _BARE), ("time", _TIME), ("elb", _BARE), ("client", _ADDR), ("target", _ADDR),
    ("request_processing_time", _REAL), ("target_processing_time", _REAL),
    ("response_processing_time", _REAL), ("elb_status_code", _INT),
    ("target_status_code", _INT), ("received_bytes", _INT), ("sent_bytes", _INT),
    ("request", _REQUEST), ("user_agent", _QUOTED), ("ssl_cipher", _BARE),
    ("ssl_protocol", _BARE), ("target_group_arn", _BARE),
    # added since the first format, in this order
    ("trace_id", _STR), ("domain_name", _STR), ("chosen_cert_arn", _STR),
    ("matched_rule_priority", _INT), ("request_creation_time", _TIME),
    ("actions_executed", _STR), ("redirect_url", _STR), ("error_reason", _STR),
    ("target_port_list", _STR), ("target_status_code_list", _STR), ("classification", _STR),
    ("classification_reason", _STR), ("conn_trace_id", _STR), ("transformed_host", _STR),
    ("transformed_uri", _STR), ("request_transform_status", _STR),
)
"""ALB fields in line order, with their kind (``target_port_list`` is ``target:port_list``)."""

ALB_MIN_FIELDS = 17
"""Fields every ALB line has: the first format's, through ``target_group_arn``."""

ELB_FIELDS: tuple[tuple[str, str], ...] = (
    ("timestamp", _TIME), ("elb", _BARE), ("client", _ADDR), ("backend", _ADDR),
    ("request_processing_time", _REAL), ("backend_processing_time", _REAL),
    ("response_processing_time", _REAL), ("elb_status_code", _INT),
    ("backend_status_code", _INT), ("received_bytes", _INT), ("sent_bytes", _INT),
    ("request", _REQUEST), ("user_agent", _QUOTED), ("ssl_cipher", _BARE),
    ("ssl_protocol", _BARE),
)
"""Classic Load Balancer fields in line order."""

ELB_MIN_FIELDS = 12
"""Fields every Classic line has: through the request (user agent and TLS came later)."""

NLB_FIELDS: tuple[tuple[str, str], ...] = (
    ("type", _BARE), ("version", _BARE), ("time", _TIME), ("elb", _BARE),
    ("listener", _BARE), ("client", _ADDR), ("destination", _ADDR),
    ("connection_time", _INT), ("tls_handshake_time", _INT), ("received_bytes", _INT),
    ("sent_bytes", _INT), ("incoming_tls_alert", _INT), ("chosen_cert_arn", _BARE),
    ("chosen_cert_serial", _BARE), ("tls_cipher", _BARE), ("tls_protocol_version", _BARE),
    ("tls_named_group", _BARE), ("domain_name", _BARE), ("alpn_fe_protocol", _BARE),
    ("alpn_be_protocol", _BARE), ("alpn_client_preference_list", _BARE),
    ("tls_connection_creation_time", _TIME),
)
"""Network Load Balancer (TLS listener) fields in line order."""

ALBCONN_FIELDS: tuple[tuple[str, str], ...] = (
    ("time", _TIME), ("client_ip", _BARE), ("client_port", _INT), ("listener_port", _INT),
    ("tls_protocol", _BARE), ("tls_cipher", _BARE), ("tls_handshake_latency", _REAL),
    ("leaf_client_cert_subject", _QUOTED), ("leaf_client_cert_validity", _STR),
    ("leaf_client_cert_serial_number", _STR), ("tls_verify_status", _STR),
    ("conn_trace_id", _STR),
)
"""ALB connection log fields in line order (AWS's own examples quote ``tls_verify_status``
at times, so the fields after the subject may be quoted or bare)."""

ALBCONN_MIN_FIELDS = 11
"""Fields every ALB connection log line has: through ``tls_verify_status``."""

NLB_MIN_FIELDS = 21
"""Fields every NLB line has: through ``alpn_client_preference_list``."""

_TOKEN = re.compile(r"""
    "(?P<q>(?:[^"\\]|\\.|"(?!\s|$))*)"(?=\s|$)      # "quoted", \-escapes, a stray " kept
  | (?P<w>\S+)                                      # bare
""", re.X | re.S | re.A)
_UNESCAPE = re.compile(r'\\(["\\])')
_INT_TEXT = re.compile(r"-?[0-9]+")
_REAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TIME_TEXT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?Z?")
_QUOTABLE = frozenset({_STR, _QUOTED, _REQUEST})
_MUST_QUOTE = frozenset({_QUOTED, _REQUEST})
_HOST = re.compile(r"[0-9A-Fa-f:.]+")
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})")


def _tokens_quoted(text: str) -> list[tuple[str, bool]]:
    """(text, quoted) per field of an ALB/ELB line: a bare token, or a quoted one's content.

    Most lines have quotes only around fields and no backslash: those are split at the
    quotes, then at spaces. Any other line (escapes, a stray quote) goes through the
    tokenizer regex, which gives the same tokens where both apply.
    """
    if "\\" not in text:
        parts = text.split('"')
        last = len(parts) - 1
        if last % 2 == 0:
            tokens: list[tuple[str, bool]] = []
            for i, part in enumerate(parts):
                if i & 1:
                    tokens.append((part, True))
                elif part:
                    if (i and part[0] != " ") or (i < last and part[-1] != " "):
                        break  # a quote inside a field: leave it to the regex
                    tokens += [(t, False) for t in part.split()]
                elif 0 < i < last:
                    break  # two quoted fields with nothing between them
            else:
                return tokens
    return _tokens_regex(text)


def _tokens_regex(text: str) -> list[tuple[str, bool]]:
    return [(q, True) if (q := m.group("q")) is not None else (m.group(), False)
            for m in _TOKEN.finditer(text)]


def _tokens_bare(text: str) -> list[tuple[str, bool]]:
    return [(t, False) for t in text.split()]


def _iso_time(text: str, where: str) -> str:
    """``2018-07-02T22:23:00.186641Z`` (or without the ``Z``: UTC) as ISO 8601 UTC."""
    m = _TIME_TEXT.fullmatch(text)
    if m is None:
        msg = f"{where} = {text[:40]!r} is not a time like 2018-07-02T22:23:00.186641Z"
        raise ParseError(msg, "bad_time")
    try:
        year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
        datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 (a check only)
    except ValueError:
        msg = f"{where} = {text[:40]!r} is not a valid date and time"
        raise ParseError(msg, "bad_time") from None
    return text if text[-1] == "Z" else text + "Z"


def _host_port(text: str, where: str) -> tuple[str, int]:
    """``10.0.0.1:80``, ``2001:db8::1:443`` (AWS's form) or ``[2001:db8::1]:443``."""
    m = _BRACKETED.fullmatch(text)
    if m is not None:
        host, port = m.group(1), m.group(2)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or _HOST.fullmatch(host) is None or not (
                port.isdigit() and port.isascii() and len(port) <= 5):
            msg = f"{where} = {text[:60]!r} is not address:port"
            raise ParseError(msg, "malformed")
    return host, int(port)


def _split_request(request: str, rec: dict[str, Any]) -> None:
    """``GET https://example.com:443/p?q=1 HTTP/1.1`` into method, URL and protocol.

    The method is the first word, the protocol the last, the URL what lies between (as
    the client sent it, so it may hold a space in a malformed request); ``-`` parts are
    left out, so a Classic TCP listener's ``- - - `` gives nothing.
    """
    parts = request.rstrip(" ").split(" ")
    if len(parts) >= 3:
        method, url, protocol = parts[0], " ".join(parts[1:-1]), parts[-1]
    elif len(parts) == 2:
        method, url, protocol = parts[0], parts[1], ""
    else:
        method, url, protocol = "", parts[0], ""
    if method and method != "-":
        rec["request_method"] = method
    if url and url != "-":
        rec["request_url"] = url
    if protocol and protocol != "-":
        rec["request_protocol"] = protocol
    if any(p and p != "-" for p in parts):
        rec["request"] = request


class _AccessLogFormat:
    """A space-separated load balancer access log: the field list decides the rest."""

    name = ""
    table = ""
    """The table records map onto (the registry sets it): for :attr:`standard_table` the
    records keep AWS's own shape (see the module docstring)."""
    standard_table = ""
    """The Azure Monitor standard table of this log, if it has one."""
    _whole_when_written: frozenset[str] = frozenset()
    """Field kinds a standard table holds as written (not split)."""
    _fields: tuple[tuple[str, str], ...] = ()
    _min_fields = 0
    _first_fields = ""
    _quoting = True

    def is_header(self, line: bytes) -> bool:
        """Never: load balancer access log objects have no header lines."""
        return False

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record (see the module docstring).

        :raises ParseError: Too few fields, or a field of the wrong shape.
        """
        text = line.decode("utf-8", "backslashreplace")
        tokens = _tokens_quoted(text) if self._quoting else _tokens_bare(text)
        if len(tokens) < self._min_fields:
            msg = (f"expected at least {self._min_fields} fields ({self._first_fields}), "
                   f"got {len(tokens)}")
            raise ParseError(msg, "field_count")
        rec: dict[str, Any] = {}
        quoting = self._quoting
        as_written = bool(self.standard_table) and self.table == self.standard_table
        whole = self._whole_when_written if as_written else frozenset()
        for i, ((name, kind), (value, quoted)) in enumerate(zip(self._fields, tokens, strict=False), 1):
            if quoted:
                if kind not in _QUOTABLE:
                    written = f'"{value}"'[:40]
                    msg = f"field {i} ({name}) should be a bare value, got {written!r}"
                    raise ParseError(msg, "malformed")
                if "\\" in value:
                    value = _UNESCAPE.sub(r"\1", value)
                if not value or value == "-":
                    continue
            else:
                if value == "-":
                    continue
                if quoting and '"' in value:
                    msg = (f"field {i} ({name}) = {value[:40]!r} has an unbalanced quote; "
                           "the line cannot be split into fields reliably")
                    raise ParseError(msg, "malformed")
                if kind in _MUST_QUOTE:
                    msg = f"field {i} ({name}) should be \"quoted\", got {value[:40]!r}"
                    raise ParseError(msg, "malformed")
            if kind is _STR or kind is _BARE or kind is _QUOTED:
                rec[name] = value
            elif kind is _INT:
                if _INT_TEXT.fullmatch(value) is None:
                    msg = f"field {i} ({name}) = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = value if as_written else int(value)
            elif kind is _REAL:
                if _REAL_TEXT.fullmatch(value) is None:
                    msg = f"field {i} ({name}) = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = value if as_written else float(value)
            elif kind is _TIME:
                iso = _iso_time(value, f"field {i} ({name})")
                rec[name] = value if as_written else iso
            elif kind is _ADDR:
                addr = _host_port(value, f"field {i} ({name})")
                if kind in whole:
                    rec[name] = value
                else:
                    rec[f"{name}_ip"], rec[f"{name}_port"] = addr
            elif kind in whole:
                if any(p and p != "-" for p in value.split(" ")):
                    rec["request"] = value
            else:
                _split_request(value, rec)
        return rec


class AlbFormat(_AccessLogFormat):
    """Application Load Balancer access log records (every field list AWS has written)."""

    name = "alb"
    standard_table = "AWSALBAccessLogs"
    _whole_when_written = frozenset({_REQUEST})
    _fields = ALB_FIELDS
    _min_fields = ALB_MIN_FIELDS
    _first_fields = "type through target_group_arn"


class ClassicElbFormat(_AccessLogFormat):
    """Classic Load Balancer access log records (with or without user agent and TLS)."""

    name = "elb"
    _fields = ELB_FIELDS
    _min_fields = ELB_MIN_FIELDS
    _first_fields = "timestamp through request"


class NlbFormat(_AccessLogFormat):
    """Network Load Balancer access log records (TLS listeners)."""

    name = "nlb"
    standard_table = "AWSNLBAccessLogs"
    _whole_when_written = frozenset({_ADDR})
    _fields = NLB_FIELDS
    _min_fields = NLB_MIN_FIELDS
    _first_fields = "type through alpn_client_preference_list"
    _quoting = False


class AlbConnectionFormat(_AccessLogFormat):
    """Application Load Balancer connection log records (mutual TLS connections)."""

    name = "albconn"
    _fields = ALBCONN_FIELDS
    _min_fields = ALBCONN_MIN_FIELDS
    _first_fields = "time through tls_verify_status"
