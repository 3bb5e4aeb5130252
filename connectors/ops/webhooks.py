"""Webhook alerting (Microsoft Teams, Slack) for teams that run no Alertmanager.

The preferred path is Prometheus with the rules in ``deploy/prometheus/`` and an
Alertmanager. Some teams run the connector with no alerting stack at all; for them the
connector can post to a Teams Workflows or Slack incoming webhook by itself. Two pieces:

- :class:`AlertState` turns raw observations ("is the lag too high right now?") into
  transitions, waiting ``for_secs`` both ways like a Prometheus rule's ``for:``, so a
  check that flaps does not flood a channel.
- :class:`WebhookNotifier` delivers an :class:`Alert` to every target. Per target it
  sends a firing alert once and its resolution once (a still-firing alert again at most
  every ``min_interval_secs``, as a reminder), spends a token bucket (a runaway caller
  cannot spam a channel: drops are counted and logged), and retries with exponential
  back-off on connection errors, 429 (honouring ``Retry-After``) and 5xx. Other 4xx are
  not retried: the URL or the payload is wrong, and the same request will fail again.

A webhook URL is a credential (whoever holds it can post to the channel), so it never
appears in logs, reprs or errors: only ``scheme://host/…`` does (:func:`redact_url`).

:meth:`WebhookNotifier.notify` blocks while it retries (it sleeps), so call it from a
monitoring thread, never from the dataflow's hot loop.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from dataflow.core.backoff import delay_secs, retry_after_secs

__all__ = [
    "Alert",
    "AlertState",
    "NotifyResult",
    "WebhookNotifier",
    "WebhookTarget",
    "redact_url",
    "slack_payload",
    "teams_payload",
]

log = logging.getLogger(__name__)

Severity = Literal["critical", "warning", "info"]
Kind = Literal["teams", "slack"]
Clock = Callable[[], float]
Sleep = Callable[[float], None]

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
KINDS: tuple[str, ...] = ("teams", "slack")

_TEAMS_COLOR = {"critical": "Attention", "warning": "Warning", "info": "Accent"}
_MAX_VALUE_CHARS = 1000
"""Longest detail value sent; chat cards are for people, the logs have the rest."""


@dataclass(frozen=True)
class Alert:
    """One alert, firing or resolved.

    :arg name: Identity of the condition (``DeliveryLagHigh``); de-duplication keys on it.
    :arg severity: ``critical``, ``warning`` or ``info``.
    :arg summary: One line for a person.
    :arg details: Facts shown under the summary (source, stream, value, runbook...).
    :arg firing: False for the resolution of an alert that fired.
    """

    name: str
    severity: Severity
    summary: str
    details: dict[str, str] = field(default_factory=dict)
    firing: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            msg = "an alert needs a name (it is what de-duplication keys on)"
            raise ValueError(msg)
        if self.severity not in SEVERITIES:
            msg = (f"alert {self.name!r}: severity {self.severity!r} is not one of "
                   f"{', '.join(SEVERITIES)}")
            raise ValueError(msg)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _title(alert: Alert) -> str:
    state = "FIRING" if alert.firing else "RESOLVED"
    return f"[{state}] {alert.severity.upper()}: {alert.name}"


def teams_payload(alert: Alert) -> dict[str, Any]:
    """The message a Teams Workflows incoming webhook takes: one Adaptive Card."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": _clip(_title(alert), 200), "weight": "Bolder",
         "size": "Medium", "wrap": True,
         "color": _TEAMS_COLOR[alert.severity] if alert.firing else "Good"},
        {"type": "TextBlock", "text": _clip(alert.summary, 2000), "wrap": True},
    ]
    if alert.details:
        body.append({"type": "FactSet", "facts": [
            {"title": _clip(k, 100), "value": _clip(v, _MAX_VALUE_CHARS)}
            for k, v in alert.details.items()]})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": "1.4", "body": body,
            "msteams": {"width": "Full"}}
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
         "content": card}]}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The message a Slack incoming webhook takes: fallback ``text`` plus Block Kit blocks.

    Slack's limits are kept: header 150 characters, section text 3000, a field 2000,
    10 fields a section, 50 blocks.
    """
    title = _title(alert)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(title, 150)}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _clip(_slack_escape(_clip(alert.summary, 2900)),
                                                   3000)}},
    ]
    fields = [{"type": "mrkdwn", "text": _clip(
        f"*{_slack_escape(_clip(k, 100))}*\n{_slack_escape(_clip(v, _MAX_VALUE_CHARS))}", 2000)}
        for k, v in alert.details.items()]
    blocks.extend({"type": "section", "fields": fields[i:i + 10]}
                  for i in range(0, len(fields), 10))
    return {"text": _clip(f"{title}: {_slack_escape(alert.summary)}", 3000),
            "blocks": blocks[:50]}


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: what of a webhook URL may be logged (the rest is a secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{f':{port}' if port else ''}/…"


@dataclass(frozen=True, repr=False)
class WebhookTarget:
    """Where alerts go.

    :arg kind: ``teams`` (a Teams Workflows webhook) or ``slack`` (an incoming webhook).
    :arg url: The webhook URL; a secret, shown only redacted.
    """

    kind: Kind
    url: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"webhook target kind {self.kind!r} is not one of {', '.join(KINDS)}"
            raise ValueError(msg)
        try:
            parts = urllib.parse.urlsplit(self.url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            msg = (f"{self.kind} webhook target: the URL must look like https://host/path "
                   f"(got {redact_url(self.url)}); copy it whole from the channel's "
                   "webhook settings")
            raise ValueError(msg)

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"WebhookTarget(kind={self.kind!r}, url={self.redacted!r})"

    def payload(self, alert: Alert) -> dict[str, Any]:
        return teams_payload(alert) if self.kind == "teams" else slack_payload(alert)


@dataclass(frozen=True)
class NotifyResult:
    """What :meth:`WebhookNotifier.notify` did, one outcome per target in order.

    Outcomes: ``sent``, ``reminder`` (a still-firing alert sent again), ``failed`` (retries
    ran out or a 4xx), ``duplicate`` (already told), ``not_firing`` (a resolution of an
    alert this target was never told about) or ``rate_limited``.
    """

    alert: str
    outcomes: tuple[str, ...]

    @property
    def sent(self) -> int:
        return sum(o in ("sent", "reminder") for o in self.outcomes)

    @property
    def failed(self) -> int:
        return self.outcomes.count("failed")


class _Bucket:
    """Token bucket: ``capacity`` posts at once, refilled at ``capacity`` per minute."""

    def __init__(self, capacity: int, now: float) -> None:
        self._capacity = float(capacity)
        self._per_sec = capacity / 60.0
        self._tokens = float(capacity)
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._per_sec)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured; following it would drop the POST body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None



class WebhookNotifier:
    """Posts alerts to Teams and Slack webhooks (see the module docstring).

    :arg targets: Where every alert goes.
    :arg min_interval_secs: Least time between two posts of the same still-firing alert.
    :arg retries: Retries after the first attempt (so ``retries + 1`` attempts at most).
    :arg timeout_secs: Timeout of one HTTP request.
    :arg rate_per_minute: Token bucket per target: burst and refill per minute.
    :arg backoff_secs: First back-off; doubled on each retry.
    :arg max_backoff_secs: Longest single wait, ``Retry-After`` included.
    :arg clock: Monotonic clock (de-duplication and rate limit).
    :arg sleep: How to wait between retries.
    """

    def __init__(self, targets: Iterable[WebhookTarget], *, min_interval_secs: float = 300.0,
                 retries: int = 3, timeout_secs: float = 5.0, rate_per_minute: int = 10,
                 backoff_secs: float = 1.0, max_backoff_secs: float = 60.0,
                 clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        self.targets = list(targets)
        if not self.targets:
            msg = "a webhook notifier needs at least one target (a Teams or Slack webhook URL)"
            raise ValueError(msg)
        if retries < 0 or rate_per_minute < 1 or timeout_secs <= 0 or min_interval_secs < 0:
            msg = ("webhook notifier: retries must be >= 0, rate_per_minute >= 1, "
                   "timeout_secs > 0 and min_interval_secs >= 0")
            raise ValueError(msg)
        self._min_interval = min_interval_secs
        self._retries = retries
        self._timeout = timeout_secs
        self._backoff = backoff_secs
        self._max_backoff = max_backoff_secs
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._buckets = [_Bucket(rate_per_minute, now) for _ in self.targets]
        self._last: dict[tuple[int, str], tuple[bool, float]] = {}
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.sent: collections.Counter[str] = collections.Counter()
        """Posts that a target accepted, by kind (teams, slack)."""
        self.dropped: collections.Counter[str] = collections.Counter()
        """Posts not made or not accepted, by reason (duplicate, not_firing, rate_limited,
        failed)."""

    def notify(self, alert: Alert) -> NotifyResult:
        """Post ``alert`` to every target that should have it; never raises for a target.

        Calls are serialized (de-duplication must see every earlier post), so one call
        waiting out its retries holds the next.
        """
        with self._lock:
            return NotifyResult(alert.name, tuple(
                self._notify_one(i, t, alert) for i, t in enumerate(self.targets)))

    def _notify_one(self, i: int, target: WebhookTarget, alert: Alert) -> str:
        now = self._clock()
        last = self._last.get((i, alert.name))
        outcome = "sent"
        if alert.firing and last is not None and last[0]:
            if now - last[1] < self._min_interval:
                return self._drop("duplicate", target, alert, logging.DEBUG)
            outcome = "reminder"
        elif not alert.firing and (last is None or not last[0]):
            return self._drop("not_firing" if last is None else "duplicate", target, alert,
                              logging.DEBUG)
        if not self._buckets[i].take(now):
            return self._drop("rate_limited", target, alert, logging.WARNING)
        body = json.dumps(target.payload(alert)).encode()
        if not self._post(target, body, alert):
            return self._drop("failed", target, alert, logging.ERROR)
        self._last[(i, alert.name)] = (alert.firing, self._clock())
        self.sent[target.kind] += 1
        return outcome

    def _drop(self, reason: str, target: WebhookTarget, alert: Alert, level: int) -> str:
        self.dropped[reason] += 1
        log.log(level, "alert %s (%s) not posted to %s webhook %s: %s (%d so far)", alert.name,
                "firing" if alert.firing else "resolved", target.kind, target.redacted, reason,
                self.dropped[reason])
        return reason

    def _post(self, target: WebhookTarget, body: bytes, alert: Alert) -> bool:
        attempt = 0
        while True:
            status, retry_after, why = self._send(target, body)
            if status is not None and 200 <= status < 300:
                return True
            transient = status is None or status == 429 or status >= 500
            if not transient or attempt >= self._retries:
                hint = ("check the URL and the payload; the receiver refused it"
                        if not transient else "retries ran out; check that the receiver is up")
                log.error("alert %s: %s webhook %s failed after %d attempt(s): %s; %s",
                          alert.name, target.kind, target.redacted, attempt + 1, why, hint)
                return False
            # No jitter: one process retries one alert; the planned wait is the wait.
            wait = retry_after if retry_after is not None else delay_secs(
                attempt + 1, self._backoff, self._max_backoff, uniform=_planned)
            wait = min(wait, self._max_backoff)
            log.warning("alert %s: %s webhook %s: %s; retrying in %.1fs", alert.name,
                        target.kind, target.redacted, why, wait)
            self._sleep(wait)
            attempt += 1

    def _send(self, target: WebhookTarget, body: bytes) -> tuple[int | None, float | None, str]:
        """One POST: (status or None for no response, Retry-After seconds, what happened)."""
        req = urllib.request.Request(target.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "s3sentinel-alerts"})
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                resp.read(4096)
                return resp.status, None, f"HTTP {resp.status}"
        except urllib.error.HTTPError as ex:
            try:
                text = ex.read(300).decode("utf-8", errors="replace").strip()
            except (OSError, http.client.HTTPException):
                text = ""
            why = f"HTTP {ex.code}{': ' + text if text else ''}"
            return ex.code, retry_after_secs(ex.headers.get("Retry-After")), self._safe(why, target)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as ex:
            reason = getattr(ex, "reason", None) or ex
            return None, None, self._safe(f"{type(ex).__name__}: {reason}", target)

    @staticmethod
    def _safe(text: str, target: WebhookTarget) -> str:
        return text.replace(target.url, target.redacted)


@dataclass
class _Condition:
    firing: bool = False
    bad_since: float | None = None
    good_since: float | None = None
    alert: Alert | None = None


class AlertState:
    """Turns ``(name, is_bad)`` observations into firing and resolved alerts.

    A condition fires once it has been bad for ``for_secs`` without a good observation in
    between, and resolves once it has been good for ``resolve_secs`` (``for_secs`` unless
    given) without a bad one in between. A flapping check therefore neither fires nor,
    once firing, resolves. Only transitions are returned; :meth:`active` lists what is
    firing, for reminders (the notifier throttles those).

    :arg for_secs: How long a condition must hold before it fires.
    :arg resolve_secs: How long it must be good before it resolves.
    :arg clock: Monotonic clock.
    """

    def __init__(self, for_secs: float, *, resolve_secs: float | None = None,
                 clock: Clock = time.monotonic) -> None:
        if for_secs < 0 or (resolve_secs is not None and resolve_secs < 0):
            msg = "AlertState: for_secs and resolve_secs must be >= 0 seconds"
            raise ValueError(msg)
        self._for = for_secs
        self._resolve = for_secs if resolve_secs is None else resolve_secs
        self._clock = clock
        self._conds: dict[str, _Condition] = {}

    def observe(self, name: str, is_bad: bool, *, severity: Severity = "warning",
                summary: str = "", details: dict[str, str] | None = None) -> Alert | None:
        """Record one observation; returns the alert to send when the state changed."""
        now = self._clock()
        c = self._conds.setdefault(name, _Condition())
        if is_bad:
            c.good_since = None
            c.alert = Alert(name, severity, summary or f"{name} has been failing for "
                            f"{self._for:g}s", dict(details or {}))
            if c.firing:
                return None
            if c.bad_since is None:
                c.bad_since = now
            if now - c.bad_since >= self._for:
                c.firing, c.bad_since = True, None
                return c.alert
            return None
        c.bad_since = None
        if not c.firing:
            return None
        if c.good_since is None:
            c.good_since = now
        if now - c.good_since < self._resolve:
            return None
        c.firing, c.good_since = False, None
        fired = c.alert
        return Alert(name, fired.severity if fired else severity,
                     summary or f"{name} is healthy again",
                     dict(details if details is not None else (fired.details if fired else {})),
                     firing=False)

    def is_firing(self, name: str) -> bool:
        c = self._conds.get(name)
        return bool(c and c.firing)

    def active(self) -> list[Alert]:
        """The alerts firing now, as last observed (pass them to ``notify`` for reminders)."""
        return [c.alert for c in self._conds.values() if c.firing and c.alert is not None]


def _planned(low: float, high: float) -> float:
    """The back-off's wait without jitter (see :func:`~dataflow.core.backoff.delay_secs`)."""
    return high
