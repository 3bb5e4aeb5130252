"""dataflow.core.errors and failures: one root that pickles whatever the constructor takes,
transient/terminal by class, and a failure that is counted and carried in one call."""

from __future__ import annotations

import logging
import pickle

import pytest

from connectors.deadletter import DeadLetterFileError
from connectors.ops.crypto import DecryptError
from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError
from connectors.sentinel.errors import DeliveryError
from dataflow.config import ConfigError
from dataflow.core import metrics
from dataflow.core.errors import S3SentinelError, TerminalError, TransientError, is_transient
from dataflow.core.failures import failed
from dataflow.core.messages import ObjectRef
from operators.enrich.rules import RuleError
from operators.formats import ParseError
from operators.schema import MappingError

ERRORS = [
    (ObjectReadError("GET failed", transient=True, gone=False), True),
    (ObjectReadError("corrupt gzip", transient=False), False),
    (DeliveryError("busy", status=429, code="TooMany", transient=True, retry_after=2.0,
                   request_id="r-1"), True),
    (FramingError("no closing ']'", 7), False),
    (ConfigError(["a: bad", "b: bad"], "my.toml"), False),
    (MappingError("does not fit", "wrong_type"), False),
    (ParseError("17 fields, expected 14", "field_count"), False),
    (RuleError(["rules[x]: unknown operator"]), False),
    (DecryptError("altered", "k1"), False),
    (DeadLetterFileError("line 3: plain"), False),
]


@pytest.mark.parametrize(("ex", "transient"), ERRORS, ids=lambda x: type(x).__name__)
def test_every_error_pickles_whole_and_says_if_retrying_may_help(ex: Exception,
                                                                 transient: bool) -> None:
    assert isinstance(ex, S3SentinelError)
    back = pickle.loads(pickle.dumps(ex))
    assert type(back) is type(ex) and str(back) == str(ex) and back.__dict__ == ex.__dict__
    assert is_transient(back) is transient


class Busy(TransientError):
    def __init__(self, what: str, *, secs: float) -> None:
        self.secs = secs
        super().__init__(f"{what} busy for {secs}s")


class Broken(TerminalError):
    pass


def test_the_mixins_decide_by_class() -> None:
    assert is_transient(pickle.loads(pickle.dumps(Busy("S3", secs=3.0))))
    assert not is_transient(Broken("x")) and not is_transient(ValueError("x"))


def test_a_failure_is_counted_logged_and_carried_in_one_call(caplog) -> None:
    obj = ObjectRef("app", "app:0/1", "b", "k.ndjson", "e", 9)
    before = metrics.ERRORS.labels("app", "parse", "invalid_json")._value.get()
    with caplog.at_level(logging.ERROR, logger="s3sentinel.failures"):
        err = failed(obj, 4, "parse", "not JSON", "invalid_json", b"x", level=logging.ERROR)
    assert metrics.ERRORS.labels("app", "parse", "invalid_json")._value.get() - before == 1
    assert (err.obj, err.offset, err.stage, err.code, err.data) == (obj, 4, "parse",
                                                                     "invalid_json", b"x")
    assert "s3://b/k.ndjson record 4: invalid_json: not JSON" in caplog.text
