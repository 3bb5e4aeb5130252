"""The project's error vocabulary: one root, and what a caller may do about an error.

Every exception of the project derives from :class:`S3SentinelError`, which pickles
whatever its constructor takes (bytewax moves exceptions between workers and processes,
and a failed pickle hides the real error): the instance is rebuilt from its ``args`` and
its attributes, not by calling ``__init__`` again (dlt's pattern). Whether trying again may
help is said by the mixins, tested with ``isinstance``: :class:`TransientError` (throttling,
5xx, the network) and :class:`TerminalError` (the input or the config is wrong; retrying
changes nothing). Errors whose kind is known only at run time (an S3 GET, a request to
the service) carry a ``transient`` attribute instead; :func:`is_transient` reads both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["S3SentinelError", "TerminalError", "TransientError", "is_transient"]


class S3SentinelError(Exception):
    """Root of the project's exceptions; pickles with any constructor signature."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).__new__, (type(self), *self.args), self.__dict__)


class TransientError(S3SentinelError):
    """Trying again later may succeed."""


class TerminalError(S3SentinelError):
    """Trying again cannot succeed: report it (dead letter, config error) and move on."""


def is_transient(ex: BaseException) -> bool:
    """Whether ``ex`` says trying again may succeed (by its class, or its ``transient``)."""
    if isinstance(ex, TransientError):
        return True
    if isinstance(ex, TerminalError):
        return False
    return getattr(ex, "transient", False) is True
