"""connectors.ops.webhooks against a real HTTP receiver on 127.0.0.1: payload shapes, retries and
back-off, de-duplication, rate limiting, flapping, and URLs kept out of logs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.ops.webhooks import (
    Alert,
    AlertState,
    WebhookNotifier,
    WebhookTarget,
    redact_url,
    slack_payload,
    teams_payload,
)


@dataclass
class Received:
    path: str
    content_type: str
    body: dict


class Receiver:
    """A webhook receiver: records every POST and answers from a per-path script."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: dict[str, list[tuple[int | str, dict[str, str]]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, self.headers["Content-Type"],
                                                      json.loads(body)))
                    queue = receiver.script.get(self.path.split("?")[0], [])
                    status, headers = queue.pop(0) if queue else (200, {})
                if status == "drop":  # close the connection without an answer
                    self.close_connection = True
                    return
                self.send_response(int(status))
                for k, v in headers.items():
                    self.send_header(k, v)
                text = b"ok" if int(status) < 300 else b"invalid_payload"
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps(list):
    def __call__(self, secs: float) -> None:
        self.append(secs)


def notifier(targets: list[WebhookTarget], clock: Clock | None = None,
             sleeps: Sleeps | None = None, **kw: object) -> WebhookNotifier:
    return WebhookNotifier(targets, clock=clock or Clock(), sleep=sleeps if sleeps is not None
                           else Sleeps(), **kw)  # type: ignore[arg-type]


LAG = Alert("DeliveryLagHigh", "critical", "lag above 15 minutes",
            {"source": "trail", "lag": "1200s"})


def test_teams_gets_an_adaptive_card(receiver: Receiver) -> None:
    n = notifier([WebhookTarget("teams", receiver.url("/teams/secret"))])
    assert n.notify(LAG).outcomes == ("sent",)
    (req,) = receiver.requests
    assert req.content_type == "application/json"
    assert req.body["type"] == "message"
    (att,) = req.body["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title, summary, facts = card["body"]
    assert title["type"] == "TextBlock" and "FIRING" in title["text"]
    assert "DeliveryLagHigh" in title["text"] and title["color"] == "Attention"
    assert summary["text"] == "lag above 15 minutes"
    assert facts == {"type": "FactSet", "facts": [{"title": "source", "value": "trail"},
                                                  {"title": "lag", "value": "1200s"}]}
    resolved = teams_payload(Alert("X", "warning", "ok now", firing=False))
    first = resolved["attachments"][0]["content"]["body"][0]
    assert "RESOLVED" in first["text"] and first["color"] == "Good"


def test_slack_gets_text_and_blocks(receiver: Receiver) -> None:
    n = notifier([WebhookTarget("slack", receiver.url("/services/T0/B0/secret"))])
    alert = Alert("Errors", "warning", "5% of <requests> & more fail",
                  {f"k{i}": f"v{i}" for i in range(12)})
    assert n.notify(alert).sent == 1
    body = receiver.requests[0].body
    assert set(body) == {"text", "blocks"}
    assert "FIRING" in body["text"] and "Errors" in body["text"]
    header, section, fields1, fields2 = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert section["text"] == {"type": "mrkdwn",
                               "text": "5% of &lt;requests&gt; &amp; more fail"}
    assert len(fields1["fields"]) == 10 and len(fields2["fields"]) == 2
    assert fields1["fields"][0] == {"type": "mrkdwn", "text": "*k0*\nv0"}
    long = slack_payload(Alert("L", "info", "x" * 5000, {"k": "y" * 5000}))
    assert len(long["blocks"][1]["text"]["text"]) <= 3000
    assert len(long["blocks"][2]["fields"][0]["text"]) <= 2000


def test_500s_are_retried_with_exponential_backoff(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(500, {}), (502, {}), (503, {})]
    sleeps = Sleeps()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], sleeps=sleeps,
                 backoff_secs=0.5)
    assert n.notify(LAG).outcomes == ("sent",)
    assert len(receiver.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_429_waits_as_long_as_retry_after_says(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(429, {"Retry-After": "7"}), (429, {"Retry-After": "120"})]
    sleeps = Sleeps()
    n = notifier([WebhookTarget("teams", receiver.url("/hook"))], sleeps=sleeps,
                 max_backoff_secs=30)
    assert n.notify(LAG).outcomes == ("sent",)
    assert sleeps == [7.0, 30.0]  # the second is capped at max_backoff_secs
    assert len(receiver.requests) == 3


def test_retry_after_as_an_http_date_and_on_503(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                                (503, {"Retry-After": "3"})]
    sleeps = Sleeps()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], sleeps=sleeps)
    assert n.notify(LAG).outcomes == ("sent",)
    assert sleeps == [0.0, 3.0]  # a date in the past: no wait


def test_400_is_not_retried(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.script["/hook"] = [(400, {})]
    sleeps = Sleeps()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], sleeps=sleeps)
    with caplog.at_level(logging.ERROR, logger="connectors.ops.webhooks"):
        assert n.notify(LAG).outcomes == ("failed",)
    assert len(receiver.requests) == 1 and sleeps == []
    assert n.dropped["failed"] == 1
    assert "HTTP 400" in caplog.text and "check the URL and the payload" in caplog.text


def test_retries_run_out(receiver: Receiver) -> None:
    receiver.script["/hook"] = [(503, {})] * 5
    sleeps = Sleeps()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], sleeps=sleeps, retries=2)
    assert n.notify(LAG).failed == 1
    assert len(receiver.requests) == 3 and sleeps == [1.0, 2.0]


def test_dropped_connections_are_retried(receiver: Receiver) -> None:
    receiver.script["/hook"] = [("drop", {}), ("drop", {})]
    sleeps = Sleeps()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], sleeps=sleeps)
    assert n.notify(LAG).outcomes == ("sent",)
    assert len(receiver.requests) == 3 and sleeps == [1.0, 2.0]


def test_flapping_gives_one_firing_and_one_resolved(receiver: Receiver) -> None:
    clock = Clock()
    state = AlertState(for_secs=60, clock=clock)
    n = notifier([WebhookTarget("teams", receiver.url("/hook"))], clock=clock)
    alerts = []

    def observe(bad: bool) -> None:
        clock.now += 10
        a = state.observe("LagHigh", bad, severity="critical", summary="lag above 15 min")
        if a is not None:
            alerts.append(a)
            n.notify(a)

    for i in range(60):  # ten minutes of flapping: bad, good, bad, good...
        observe(i % 2 == 0)
    assert alerts == [] and not state.is_firing("LagHigh")
    for _ in range(30):  # five minutes of sustained failure
        observe(True)
    for i in range(60):  # flapping while firing does not resolve it
        observe(i % 3 != 0)
    assert state.is_firing("LagHigh") and [a.name for a in state.active()] == ["LagHigh"]
    for _ in range(30):  # five good minutes
        observe(False)
    assert [a.firing for a in alerts] == [True, False]
    assert alerts[0].severity == alerts[1].severity == "critical"
    assert len(receiver.requests) == 2
    titles = [r.body["attachments"][0]["content"]["body"][0]["text"] for r in receiver.requests]
    assert "FIRING" in titles[0] and "RESOLVED" in titles[1]


def test_alert_state_fires_at_for_secs_and_resolves_after_resolve_secs() -> None:
    clock = Clock()
    state = AlertState(for_secs=30, resolve_secs=90, clock=clock)
    assert state.observe("x", True) is None
    clock.now += 29
    assert state.observe("x", True) is None
    clock.now += 1
    fired = state.observe("x", True, details={"v": "1"})
    assert fired is not None and fired.firing and fired.details == {"v": "1"}
    assert state.observe("x", False) is None
    clock.now += 89
    assert state.observe("x", False) is None
    clock.now += 1
    resolved = state.observe("x", False)
    assert resolved is not None and not resolved.firing and resolved.details == {"v": "1"}
    assert state.observe("y", True) is None and AlertState(0).observe("z", True) is not None


def test_duplicates_are_sent_once_and_reminders_are_spaced(receiver: Receiver) -> None:
    clock = Clock()
    n = notifier([WebhookTarget("slack", receiver.url("/hook"))], clock=clock,
                 min_interval_secs=300)
    resolved = Alert(LAG.name, LAG.severity, LAG.summary, firing=False)
    assert n.notify(resolved).outcomes == ("not_firing",)  # never fired: nothing to resolve
    assert n.notify(LAG).outcomes == ("sent",)
    clock.now += 10
    assert n.notify(LAG).outcomes == ("duplicate",)
    clock.now += 289
    assert n.notify(LAG).outcomes == ("duplicate",)
    clock.now += 1
    assert n.notify(LAG).outcomes == ("reminder",)
    assert n.notify(resolved).outcomes == ("sent",)
    assert n.notify(resolved).outcomes == ("duplicate",)
    assert n.notify(LAG).outcomes == ("sent",)  # fired again: sent at once
    assert len(receiver.requests) == 4
    assert n.dropped == {"not_firing": 1, "duplicate": 3}
    assert n.sent == {"slack": 4}


def test_each_target_is_told_once_even_if_another_failed(receiver: Receiver) -> None:
    receiver.script["/b"] = [(500, {})]
    n = notifier([WebhookTarget("slack", receiver.url("/a")),
                  WebhookTarget("teams", receiver.url("/b"))], retries=0)
    assert n.notify(LAG).outcomes == ("sent", "failed")
    assert n.notify(LAG).outcomes == ("duplicate", "sent")
    assert receiver.paths() == ["/a", "/b", "/b"]


def test_rate_limit_per_target(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    n = notifier([WebhookTarget("slack", receiver.url("/a")),
                  WebhookTarget("slack", receiver.url("/b"))], clock=clock, rate_per_minute=10)
    with caplog.at_level(logging.WARNING, logger="connectors.ops.webhooks"):
        results = [n.notify(Alert(f"a{i}", "info", "x")) for i in range(15)]
    assert [r.outcomes[0] for r in results] == ["sent"] * 10 + ["rate_limited"] * 5
    assert n.dropped["rate_limited"] == 10  # five for each target
    assert "rate_limited" in caplog.text and "http://127.0.0.1:" in caplog.text
    clock.now += 6  # one token back per target (10 a minute)
    assert n.notify(Alert("late", "info", "x")).outcomes == ("sent", "sent")
    assert n.notify(Alert("later", "info", "x")).outcomes == ("rate_limited", "rate_limited")
    assert receiver.paths().count("/a") == receiver.paths().count("/b") == 11


def test_urls_stay_out_of_logs_and_reprs(receiver: Receiver,
                                         caplog: pytest.LogCaptureFixture) -> None:
    url = receiver.url("/workflows/SECRETPATH?sig=SECRETSIG")
    receiver.script["/workflows/SECRETPATH"] = [(500, {}), (404, {})]
    target = WebhookTarget("teams", url)
    port = receiver.server.server_port
    assert redact_url(url) == f"http://127.0.0.1:{port}/…"
    assert "SECRET" not in repr(target) and "SECRET" not in repr(
        notifier([target]).targets)
    with caplog.at_level(logging.DEBUG, logger="connectors.ops.webhooks"):
        n = notifier([target])
        n.notify(LAG)
        n.notify(LAG)
    assert "SECRET" not in caplog.text and f"127.0.0.1:{port}/…" in caplog.text
    with pytest.raises(ValueError, match="https://host/path") as err:
        WebhookTarget("slack", "ftp://hooks.example/SECRET")
    assert "SECRET" not in str(err.value)


def test_bad_alerts_and_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="severity 'fatal' is not one of"):
        Alert("x", "fatal", "s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind 'email'"):
        WebhookTarget("email", "https://example.invalid/x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one target"):
        WebhookNotifier([])
