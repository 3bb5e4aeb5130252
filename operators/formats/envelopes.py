"""Documents that hold several records: CloudWatch Logs subscription data and EventBridge
events of Security Hub findings, as Amazon Data Firehose writes them to S3.

Firehose writes the documents it receives one after the other (``{...}{...}``, with no
separator unless the stream is set to add a newline). The connector's ``documents`` framing
finds where each document ends and hands it to the format's expander, one of the two below,
which returns one record per log event or finding. So each row has an offset of its own in
the object: its record id, its place in the delivery and dead-letter journals, and the
position a restart resumes from are those of the event, never of a document of hundreds.

Each record is a JSON object: the document's own fields (the list left out) beside the item
under one key, the item's bytes as the document wrote them::

    {"messageType": "DATA_MESSAGE", "owner": "111111111111", "logGroup": "CloudTrail/logs",
     "logStream": "111111111111_CloudTrail/logs_us-east-1", "subscriptionFilters": ["Destination"],
     "logEvents": [{"id": "3195...568", "timestamp": 1432826855000, "message": "..."}, ...]}

gives, per log event::

    {"messageType": "DATA_MESSAGE", "owner": "111111111111", "logGroup": "CloudTrail/logs",
     "logStream": "...", "subscriptionFilters": ["Destination"],
     "logEvent": {"id": "3195...568", "timestamp": 1432826855000, "message": "..."}}

- CloudWatch Logs: a ``DATA_MESSAGE`` gives one record per element of ``logEvents``
  (``"logEvent"``); a ``CONTROL_MESSAGE`` (CloudWatch Logs checking that the destination is
  reachable) carries no log data and gives none.
- Security Hub: an EventBridge event of detail-type ``Security Hub Findings - Imported`` (or
  ``- Custom Action``) gives one record per element of ``detail.findings`` (``"finding"``,
  an AWS Security Finding Format object); the event's other fields (``time``, ``id``,
  ``account``, ``region``, ...) are kept beside it, and ``detail`` too when it has members
  other than ``findings``. ``Findings Imported V2`` events carry OCSF findings, another
  format: refused with that reason.

Only the document's outer object (and ``detail``) is decoded; items are passed on as raw
JSON text, for the table's mapper to decode once. A document that is not the envelope its
format reads raises :class:`~operators.formats.ParseError` (the connector then reports that
document as one error record, with the reason, and goes on with the next one); an item that
is not a usable record fails on its own when it is mapped.

Sources: "Using CloudWatch Logs subscription filters" (the decompressed data of Example 3,
"Subscription filters with Amazon Data Firehose", and the CONTROL_MESSAGE note),
https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/SubscriptionFilters.html; "EventBridge
event formats for Security Hub CSPM", https://docs.aws.amazon.com/securityhub/latest/userguide/
securityhub-cwe-event-formats.html; and the V2 (OCSF) event format,
https://docs.aws.amazon.com/securityhub/latest/userguide/securityhub-v2-cwe-event-formats.html.
"""

from __future__ import annotations

import msgspec

from operators.formats import ParseError

__all__ = ["cloudwatch_events", "securityhub_findings"]

_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_str = msgspec.json.Decoder(str).decode
_encode = msgspec.json.Encoder().encode

FINDINGS_DETAIL_TYPE = "Security Hub Findings - "
"""How the detail-type of an EventBridge event of ASFF findings starts (``Imported``,
``Custom Action``)."""


def _object(data: bytes, what: str) -> dict[str, msgspec.Raw]:
    try:
        return _decode_object(data)
    except RecursionError:  # msgspec's answer to nesting deeper than its limit
        msg = f"{what} is nested deeper than the JSON decoder's limit (about 1000 levels)"
        raise ParseError(msg, "too_deep") from None
    except msgspec.ValidationError:
        msg = f"{what} is not a JSON object"
        raise ParseError(msg, "not_an_object") from None
    except msgspec.DecodeError as ex:
        msg = f"{what} is not valid JSON: {ex}"
        raise ParseError(msg, "invalid_json") from None


def _items(raw: msgspec.Raw, what: str) -> list[msgspec.Raw]:
    try:
        return _decode_list(raw)
    except msgspec.ValidationError:
        msg = f"{what} is not a JSON array"
        raise ParseError(msg, "malformed") from None


def _string(raw: msgspec.Raw | None) -> str | None:
    """A field's value when it is a JSON string, else None."""
    if raw is None:
        return None
    try:
        return _decode_str(raw)
    except msgspec.ValidationError:
        return None


def _records(envelope: dict[str, msgspec.Raw], key: str, items: list[msgspec.Raw]) -> list[bytes]:
    """``{<envelope's fields>, "<key>": <item>}`` per item (the envelope encoded once)."""
    envelope.pop(key, None)  # the item's key names the item
    head = _encode(envelope)[:-1]
    head += b',"' if len(head) > 1 else b'"'
    head += key.encode() + b'":'
    return [b"".join((head, bytes(item), b"}")) for item in items]


def _keys(envelope: dict[str, msgspec.Raw]) -> str:
    return ", ".join(k[:40] for k in sorted(envelope)[:10]) or "none"


def cloudwatch_events(document: bytes) -> list[bytes]:
    """The log events of one CloudWatch Logs subscription document, one record each.

    :raises ParseError: The document is not a JSON object with a ``logEvents`` array (and is
        no ``CONTROL_MESSAGE``).
    """
    envelope = _object(document, "the document")
    if _string(envelope.get("messageType")) == "CONTROL_MESSAGE":
        return []
    events = envelope.pop("logEvents", None)
    if events is None:
        msg = ("not a CloudWatch Logs subscription document: it has no logEvents "
               f"(its keys: {_keys(envelope)})")
        raise ParseError(msg, "not_cloudwatch")
    return _records(envelope, "logEvent", _items(events, "logEvents"))


def securityhub_findings(document: bytes) -> list[bytes]:
    """The findings of one EventBridge event of Security Hub (ASFF) findings, one record each.

    :raises ParseError: The document is not a JSON object with ``detail.findings``, or is an
        event of another detail-type (``Findings Imported V2``: OCSF findings).
    """
    envelope = _object(document, "the event")
    kind = _string(envelope.get("detail-type"))
    if kind is not None and not kind.startswith(FINDINGS_DETAIL_TYPE):
        msg = (f"EventBridge event of detail-type {kind[:80]!r}: the securityhub format reads "
               "AWS Security Finding Format events ('Security Hub Findings - Imported' or "
               "'- Custom Action'); 'Findings Imported V2' events carry OCSF findings")
        raise ParseError(msg, "not_securityhub")
    detail_raw = envelope.pop("detail", None)
    if detail_raw is None:
        msg = ("not an EventBridge event of Security Hub findings: it has no detail "
               f"(its keys: {_keys(envelope)})")
        raise ParseError(msg, "not_securityhub")
    detail = _object(bytes(detail_raw), "its detail")
    findings = detail.pop("findings", None)
    if findings is None:
        msg = f"its detail has no findings (detail's keys: {_keys(detail)})"
        raise ParseError(msg, "not_securityhub")
    items = _items(findings, "detail.findings")
    if detail:  # members of detail other than the findings are kept
        envelope["detail"] = msgspec.Raw(_encode(detail))
    return _records(envelope, "finding", items)
