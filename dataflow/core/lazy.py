"""Modules imported on first use, not at start-up.

polars is the one large library only some flows need (transforms, the columnar path of
text formats, Parquet): importing it costs ~0.1 CPU-second and ~20 MB of memory, paid at
every start of every process and CLI command that never touches a frame
(``bench/throughput.py`` measures the start-up). The modules that use it name it the usual
way for the type checker and get it from :func:`lazy_import` at run time::

    if TYPE_CHECKING:
        import polars as pl
    else:
        pl = lazy_import("polars")
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

__all__ = ["lazy_import"]


class _Deferred(ModuleType):
    """Stands for a module not imported yet. The first attribute looked up imports it (by
    the import system, whose lock makes that happen once however many threads ask at
    once) and copies its names here, so later look-ups find them directly."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def lazy_import(name: str) -> ModuleType:
    """Module ``name``, imported when one of its attributes is first looked up; the module
    itself when it is imported already.

    Not the standard library's ``importlib.util.LazyLoader``: on Python 3.11 two threads
    that first touch a module at once can execute it twice (fixed in 3.12), and flows run
    several workers as threads of one process.

    :raises ModuleNotFoundError: ``name`` is not installed (found out now, not at first use).
    """
    got = sys.modules.get(name)
    if got is not None:
        return got
    if importlib.util.find_spec(name) is None:
        msg = f"No module named {name!r}"
        raise ModuleNotFoundError(msg, name=name)
    return _Deferred(name)
