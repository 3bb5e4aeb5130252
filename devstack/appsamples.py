"""NDJSON application-log samples (the demo's custom AppEvents_CL table), with a few bad lines."""

from __future__ import annotations

import contextlib
import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = ["AppSeed", "app_event", "seed_app_logs"]

_LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")
_USERS = ("alice", "bob", "carol", "dave", "svc-batch")


def app_event(rng: random.Random, when: datetime) -> dict[str, Any]:
    """One application event as the demo's NDJSON producer writes it."""
    ev: dict[str, Any] = {
        "ts": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "level": rng.choice(_LEVELS),
        "msg": rng.choice(("login ok", "login failed", "export started", "report viewed",
                           "token refreshed", "permission denied: \"admin\" scope")),
        "status": rng.choice((200, 200, 200, 401, 403, 500)),
        "latency_ms": round(rng.lognormvariate(3, 1), 2),
    }
    if rng.random() < 0.9:
        ev["user"] = {"name": rng.choice(_USERS),
                      "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"}
    if rng.random() < 0.5:
        ev["attrs"] = {"tenant": rng.choice(("a", "b")), "tags": ["x", "y"][: rng.randrange(3)]}
    return ev


@dataclass(frozen=True)
class AppSeed:
    bucket: str
    keys: tuple[str, ...]
    good: int
    """Lines that map onto AppEvents_CL."""
    bad: int
    """Lines that cannot (not JSON, or missing a required field): they go to the dead-letter store."""


def seed_app_logs(s3: Any, bucket: str, *, objects: int = 4, lines: int = 250, bad_every: int = 97,
                  seed: int = 11, start: datetime | None = None) -> AppSeed:
    """Write ``objects`` NDJSON objects (half gzipped, half plain) under ``app/``."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    keys, good, bad = [], 0, 0
    for i in range(objects):
        out = []
        for j in range(lines):
            n = i * lines + j
            if bad_every and n % bad_every == bad_every - 1:
                out.append(b'{"ts": "2026-11-01T00:00:00Z", "level": "INFO"' if n % 2
                           else b'{"level": "INFO", "msg": "no timestamp"}')
                bad += 1
            else:
                out.append(orjson.dumps(app_event(rng, start + timedelta(seconds=n))))
                good += 1
        body = b"\n".join(out) + b"\n"
        key = f"app/2026/11/01/events-{i:04d}.ndjson"
        if i % 2 == 0:
            body, key = gzip.compress(body), key + ".gz"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
    return AppSeed(bucket, tuple(keys), good, bad)
