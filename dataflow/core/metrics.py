"""Every metric of the connector, in one module, on prometheus_client's default registry.

Names follow ``s3sentinel_<noun>_<unit>_total`` for counters and carry their unit
(seconds, bytes) otherwise. bytewax serves this registry at ``/metrics`` when
``BYTEWAX_DATAFLOW_API_ENABLED=1``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_BYTES",
    "BATCH_RECORDS",
    "DCR_BUDGET_LEFT",
    "DCR_BYTES",
    "DCR_REQUESTS",
    "DCR_THROTTLED_SECONDS",
    "DCR_WAIT_SECONDS",
    "TRANSFORM_BYTES",
    "TRANSFORM_ROWS",
    "EVENT_DELAY_SECONDS",
    "THROTTLE_WAIT_SECONDS",
    "DEADLETTER_RECORDS",
    "ENRICH_ENTITIES",
    "ENRICH_EVICTED",
    "ERRORS",
    "IN_FLIGHT_OBJECTS",
    "LAG_SECONDS",
    "OLDEST_UNDELIVERED_SECONDS",
    "FIELDS_MISSING",
    "FIELDS_TRUNCATED",
    "OBJECTS",
    "OBJECTS_LISTED",
    "OBJECT_BYTES",
    "OBJECT_RETRIES",
    "RECORDS_DELIVERED",
    "RECORDS_FLAGGED",
    "RECORDS_READ",
    "RECORDS_SKIPPED",
    "REQUESTS",
    "REQUEST_BYTES",
    "REQUEST_SECONDS",
    "REQUEST_RETRIES",
    "REPLAYED_RECORDS",
    "SQS_MESSAGES",
    "OPS_AUTH_FAILURES",
    "summary",
]

OBJECTS = Counter(
    "s3sentinel_objects_total",
    "S3 objects finished by a source, by outcome (completed, failed, gone).",
    ["source", "outcome"],
)
OBJECT_RETRIES = Counter(
    "s3sentinel_object_retries_total",
    "Transient S3 failures (throttling, 5xx, network) that were retried.",
    ["source", "operation"],
)
OBJECT_BYTES = Counter(
    "s3sentinel_object_bytes_total",
    "Bytes of S3 objects finished (as stored, compressed or not).",
    ["source"],
)
OBJECTS_LISTED = Counter(
    "s3sentinel_objects_listed_total",
    "Objects found by listing or received in SQS notifications, to be read.",
    ["source"],
)
RECORDS_READ = Counter(
    "s3sentinel_records_read_total",
    "Records split out of S3 objects.",
    ["source"],
)
ERRORS = Counter(
    "s3sentinel_component_errors_total",
    "Records or objects that failed, by stage (read, parse, map) and reason code.",
    ["source", "stage", "error_code"],
)
FIELDS_TRUNCATED = Counter(
    "s3sentinel_fields_truncated_total",
    "String values cut to 64 KB (the Log Analytics limit), with a visible marker.",
    ["table", "column"],
)
RECORDS_DELIVERED = Counter(
    "s3sentinel_records_delivered_total",
    "Records accepted by the Logs Ingestion API (HTTP 204).",
    ["stream"],
)
RECORDS_SKIPPED = Counter(
    "s3sentinel_records_skipped_total",
    "Records not sent again, by reason (already_delivered: the upload journal had them).",
    ["stream", "reason"],
)
REQUESTS = Counter(
    "s3sentinel_requests_total",
    "Logs Ingestion API requests, by HTTP status ('error' for no response).",
    ["stream", "status"],
)
REQUEST_BYTES = Counter(
    "s3sentinel_request_bytes_total",
    "Bytes sent to the Logs Ingestion API in accepted requests (gzip, on the wire).",
    ["stream"],
)
REQUEST_RETRIES = Counter(
    "s3sentinel_request_retries_total",
    "Requests retried, by reason (throttled, server_error, connection, too_large).",
    ["stream", "reason"],
)
THROTTLE_WAIT_SECONDS = Counter(
    "s3sentinel_throttle_wait_seconds_total",
    "Seconds spent waiting on Retry-After after 429 responses.",
    ["stream"],
)
EVENT_DELAY_SECONDS = Histogram(
    "s3sentinel_event_delay_seconds",
    "End-to-end delay: the first row's TimeGenerated to the request's acceptance (per request).",
    ["stream"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400),
)
BATCH_RECORDS = Histogram(
    "s3sentinel_batch_records",
    "Records in one accepted request.",
    ["stream"],
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
REQUEST_SECONDS = Histogram(
    "s3sentinel_request_seconds",
    "Latency of one Logs Ingestion API request.",
    ["stream"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DCR_REQUESTS = Counter(
    "s3sentinel_dcr_requests_total",
    "Logs Ingestion API requests per data collection rule, by HTTP status ('error': none).",
    ["target", "dcr", "status"],
)
DCR_BYTES = Counter(
    "s3sentinel_dcr_bytes_total",
    "Uncompressed bytes a data collection rule accepted (what its per-minute limit counts).",
    ["target", "dcr"],
)
DCR_THROTTLED_SECONDS = Counter(
    "s3sentinel_dcr_throttled_seconds_total",
    "Seconds a data collection rule was paused by the service's Retry-After (429).",
    ["target", "dcr"],
)
DCR_BUDGET_LEFT = Gauge(
    "s3sentinel_dcr_budget_left_ratio",
    "Share of a data collection rule's per-minute limit left in the last minute, by kind "
    "(bytes, requests), as this process sees it.",
    ["target", "dcr", "kind"],
)
DCR_WAIT_SECONDS = Counter(
    "s3sentinel_dcr_wait_seconds_total",
    "Seconds the sink waited because every DCR carrying a stream was out of budget.",
    ["target", "stream"],
)
TRANSFORM_ROWS = Counter(
    "s3sentinel_transform_rows_total",
    "Rows through [[transforms]] per table: in, kept, dropped (where), sampled_out, routed.",
    ["table", "outcome"],
)
TRANSFORM_BYTES = Counter(
    "s3sentinel_transform_bytes_total",
    "Row bytes (JSON) into and out of [[transforms]] per table: what they saved.",
    ["table", "direction"],
)
BATCH_BYTES = Histogram(
    "s3sentinel_batch_bytes",
    "Size of a batch as uncompressed JSON.",
    ["stream"],
    buckets=(1e3, 1e4, 1e5, 2.5e5, 5e5, 7.5e5, 1e6, 1.1e6),
)

DEADLETTER_RECORDS = Counter(
    "s3sentinel_deadletter_records_total",
    "Records (or object remainders) written to the dead-letter store, by stage and reason code.",
    ["stage", "reason"],
)
RECORDS_FLAGGED = Counter(
    "s3sentinel_records_flagged_total",
    "Records flagged by enrichment, by table and flag (critical, high, intel, anomalous, "
    "sequence, fast_lane).",
    ["table", "flag"],
)
REPLAYED_RECORDS = Counter(
    "s3sentinel_replayed_records_total",
    "Dead-letter records replayed, by outcome (delivered, failed, already_delivered).",
    ["outcome"],
)
SQS_MESSAGES = Counter(
    "s3sentinel_sqs_messages_total",
    "SQS notification messages, by action (received, deleted, extended, ignored, "
    "test_event, dead_lettered; after a restart taken_back, expired_at_restart, and "
    "read_again_after_delete and read_again_done for those deleted since the snapshot).",
    ["source", "action"],
)
ENRICH_ENTITIES = Gauge(
    "s3sentinel_enrich_entities",
    "State the anomaly/sequence side step of this process holds, by detector: anomaly "
    "entities (principals, accounts, ...) with their baselines, sequence groups with partial "
    "matches; counted once a shard has taken rows since the process started. Bounded by "
    "enrich.max_entities.",
    ["detector"],
)
ENRICH_EVICTED = Counter(
    "s3sentinel_enrich_evicted_total",
    "Entities (anomaly) and groups with partial matches (sequences) dropped at the "
    "enrich.max_entities bound, least recently seen first: their baselines are learnt anew, "
    "their partial sequences lost.",
    ["detector"],
)
IN_FLIGHT_OBJECTS = Gauge(
    "s3sentinel_in_flight_objects",
    "Objects read (or being read) whose records are not all delivered or dead-lettered yet.",
    ["source", "partition"],
)
LAG_SECONDS = Gauge(
    "s3sentinel_lag_seconds",
    "Seconds between an object's arrival (LastModified or the SQS SentTimestamp) and the "
    "delivery of its last record, for the last object finished.",
    ["source", "partition"],
)
OLDEST_UNDELIVERED_SECONDS = Gauge(
    "s3sentinel_oldest_undelivered_seconds",
    "Age of the oldest object received whose records are not all accounted for yet.",
    ["source", "partition"],
)

OPS_AUTH_FAILURES = Counter(
    "s3sentinel_ops_auth_failures",
    "Ops server requests refused before reaching a protected route, by reason: missing, "
    "malformed, invalid, expired, revoked, lifetime (401), forbidden (403), unavailable "
    "(503: a credential could not be read).",
    ["reason"],
)


def _sum(counter: Counter, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in counter.collect():
        for s in metric.samples:
            if not s.name.endswith("_total"):
                continue
            if all(s.labels.get(k) == v for k, v in match.items()):
                label = next(iter(s.labels.values()), "")
                out[label] = out.get(label, 0.0) + s.value
    return out


def summary() -> str:
    """One line: what this process delivered, from how many objects, to which streams, what failed."""
    delivered = _sum(RECORDS_DELIVERED)
    objects = sum(_sum(OBJECTS, outcome="completed").values())
    failed_objects = sum(_sum(OBJECTS, outcome="failed").values())
    errors = sum(_sum(ERRORS).values()) - failed_objects
    streams = ", ".join(f"{k}={int(v)}" for k, v in sorted(delivered.items())) or "none"
    return (f"s3sentinel: delivered {int(sum(delivered.values()))} records from {int(objects)} "
            f"objects to streams [{streams}]; failed: {int(errors)} records, "
            f"{int(failed_objects)} objects")


JOURNAL_REJECTED_LINES = Counter(
    "s3sentinel_journal_rejected_lines_total",
    "Journal lines ignored because they fail authentication (a key is configured) or have "
    "another shape, by journal and reason (bad_mac, unknown_key, unauthenticated, malformed); "
    "their records count as not delivered and may be sent again (sqsdeleted: the objects of "
    "their messages are not read again after a restart).",
    ["journal", "reason"],
)
DEADLETTER_REJECTED_LINES = Counter(
    "s3sentinel_deadletter_rejected_lines_total",
    "Dead-letter file lines refused when read (replay, rotate-key), by kind (plain, no_key, "
    "undecryptable, duplicate, foreign, malformed).",
    ["kind"],
)
FIELDS_MISSING = Counter(
    "s3sentinel_fields_missing_total",
    "Fields a text record lacked at the end of its line compared with its header (an older line "
    "under a newer CloudFront #Fields line): their columns are left empty; by table.",
    ["table"],
)
RECORDS_SKIPPED_EMPTY = Counter(
    "s3sentinel_records_skipped_empty_total",
    "Records that hold nothing to send (an empty GuardDuty envelope {\"findings\": []}): "
    "neither mapped nor dead-lettered, by source and format.",
    ["source", "format"],
)
