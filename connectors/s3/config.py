"""A ``[[sources]]`` entry: one bucket prefix in one format, read by listing or SQS."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from operators.formats.registry import DEFAULT_TABLES, FORMATS
from operators.formats.vpcflow import parse_field_list

__all__ = ["Format", "SourceConfig"]

Format = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class SourceConfig:
    """One stream of log objects: a bucket prefix in one format, bound for one table."""

    name: str
    """Stable name; partition names and resume state derive from it."""
    bucket: str
    """S3 bucket."""
    format: Format
    """Record format of the objects (see operators.formats.registry.FORMATS), or ``auto`` to
    detect it per object from the key layout or the first bytes."""
    table: str | None = None
    """Table the records are mapped onto (shipped, or declared under [[tables]]); defaults to
    the format's standard table (CloudTrail -> AWSCloudTrail, ...)."""
    prefix: str = ""
    """Only keys under this prefix."""
    target: str = ""
    """The delivery target (``[[targets]]`` name) its rows go to; the first target when
    empty. A table pinned to a target (``targets.tables``) goes there whatever the source."""
    partitions: int = 1
    """Keys are split by hash over this many partitions (spread across workers)."""
    start_after: str = ""
    """Listing: keys at or before this one, by name, are never read (not a point in time:
    see ``start_time``)."""
    lookback_secs: float = 900.0
    """Listing: objects whose LastModified is within this many seconds of the newest object
    read are still picked up when they arrive late or under a key that sorts earlier (see
    connectors.s3.discovery). 0 lists by key from a watermark instead (only for prefixes
    where new keys always sort last)."""
    start_time: str = ""
    """Listing: only objects modified at or after this ISO-8601 time (e.g. 2026-11-01T00:00:00Z)."""
    ignore_older_secs: float = 0.0
    """Listing: skip objects modified more than this many seconds before the partition
    started (0: read everything)."""
    role_arn: str = ""
    """IAM role to assume (STS AssumeRole, refreshed before expiry) to read this source, e.g.
    in another account; empty uses the default credential chain."""
    external_id: str = ""
    """ExternalId for the AssumeRole call (the role's trust policy may require one)."""
    discovery: Literal["list", "sqs"] = "list"
    """How new objects are found: ``list`` the prefix every ``poll_secs`` (no AWS set-up), or
    ``sqs``: S3 event notifications (direct, through SNS, or EventBridge) on ``queue_url``."""
    queue_url: str = ""
    """SQS queue of the bucket's ObjectCreated notifications (``discovery = "sqs"``)."""
    queue_poll_secs: float = 1.0
    """How long a partition waits before asking an empty queue again."""
    visibility_timeout_secs: int = 300
    """A received message stays invisible this long, extended while its object is in work."""
    max_receive_count: int = 5
    """A message received more often than this (its object keeps failing) sends its object to
    the dead-letter store and is deleted."""
    max_in_flight_messages: int = 2000
    """Messages a partition holds until their records are delivered; more waits."""
    exclude: list[str] = field(default_factory=list)
    """Regular expressions; matching keys are skipped."""
    poll_secs: float = 30.0
    """How often a caught-up partition lists the bucket again (continuous mode)."""
    fetch_threads: int = 4
    """Objects fetched ahead, in parallel, per partition."""
    prefetch_max_bytes: int = 8 * 1024 * 1024
    """Objects up to this (compressed) size are fetched whole ahead of time; larger ones stream."""
    max_object_bytes: int = 8 * 1024**3
    """Largest decompressed object accepted; larger ones are reported as errors."""
    max_compression_ratio: float = 1000.0
    """Objects that decompress to more than this many times their stored size (past 16 MiB)
    are reported as decompression bombs; 0 turns the check off."""
    max_record_bytes: int = 1024 * 1024
    """Largest record (one line, one JSON array element) accepted; a larger one can never be
    sent (the Logs Ingestion API takes 1 MB per request) and goes to the dead-letter store
    with its size, keeping its first bytes."""
    max_dead_letters_per_object: int = 1000
    """Bad records of one object kept one by one in the dead-letter store; past this (or
    ``max_dead_letter_bytes_per_object``) the rest of the object becomes one entry naming
    the offset it starts from, which ``s3sentinel replay`` reads again from S3."""
    max_dead_letter_bytes_per_object: int = 64 * 1024 * 1024
    """Bytes of bad records of one object kept in the dead-letter store (see above)."""
    fields: list[str] = field(default_factory=list)
    """Field names of ``delimited`` lines (and of ``csv`` objects without a header line)."""
    delimiter: str = ""
    """Field separator of ``delimited`` (default ``|``) and ``csv`` (default ``,``)."""

    def validate(self, problems: list[str]) -> None:
        """Append what is wrong with this source to ``problems``."""
        where = f"sources[{self.name}]"
        if not _NAME_RE.match(self.name):
            problems.append(f"{where}.name: use letters, digits, '_' or '-', starting with a letter")
        if self.max_record_bytes < 1024 or self.max_dead_letters_per_object < 1 \
                or self.max_dead_letter_bytes_per_object < 1:
            problems.append(f"{where}: max_record_bytes must be >= 1024, "
                            "max_dead_letters_per_object and max_dead_letter_bytes_per_object "
                            ">= 1")
        if self.partitions < 1 or self.fetch_threads < 1 or self.poll_secs <= 0:
            problems.append(f"{where}: partitions and fetch_threads must be >= 1, poll_secs > 0")
        if self.table is None and self.format not in DEFAULT_TABLES and self.format != "auto":
            problems.append(f"{where}.table: required for format {self.format!r} "
                            "(it has no standard table)")
        if self.start_time:
            try:
                datetime.fromisoformat(self.start_time.replace("Z", "+00:00"))
            except ValueError:
                problems.append(f"{where}.start_time: {self.start_time!r} is not an ISO-8601 "
                                "time such as 2026-11-01T00:00:00Z")
        if self.lookback_secs < 0 or self.ignore_older_secs < 0:
            problems.append(f"{where}: lookback_secs and ignore_older_secs must be >= 0")
        if self.role_arn and not re.match(r"^arn:aws[\w-]*:iam::\d{12}:role/.+$", self.role_arn):
            problems.append(f"{where}.role_arn: {self.role_arn!r} is not an IAM role ARN "
                            "(arn:aws:iam::<account>:role/<name>)")
        if self.external_id and not self.role_arn:
            problems.append(f"{where}.external_id: only used with role_arn")
        if self.discovery == "sqs":
            if not self.queue_url.startswith(("https://", "http://")):
                problems.append(f"{where}.queue_url: discovery = \"sqs\" needs the queue's URL "
                                "(https://sqs.<region>.amazonaws.com/<account>/<name>)")
            if not 5 <= self.visibility_timeout_secs <= 43200:
                problems.append(f"{where}.visibility_timeout_secs: 5..43200 (within SQS's "
                                "range, and long enough to be extended before it runs out)")
            if self.max_receive_count < 1 or self.max_in_flight_messages < 1:
                problems.append(f"{where}: max_receive_count and max_in_flight_messages >= 1")
            if self.queue_poll_secs <= 0:
                problems.append(f"{where}.queue_poll_secs: must be > 0")
        elif self.queue_url:
            problems.append(f"{where}.queue_url: set discovery = \"sqs\" to use the queue")
        if self.format in ("vpcflow", "auto") and self.fields:
            try:
                parse_field_list(self.fields)
            except ValueError as ex:
                problems.append(f"{where}.fields: {ex}")
        if self.format == "delimited" and not self.fields:
            problems.append(f"{where}.fields: the delimited format needs the field names")
        if len(self.delimiter) > 1:
            problems.append(f"{where}.delimiter: one character")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as ex:
                problems.append(f"{where}.exclude: {pattern!r} is not a valid regex: {ex}")
