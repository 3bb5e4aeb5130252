"""Modules imported on first use, not at start-up.

polars is the one large library only some flows need (transforms, the columnar path of
text formats, Parquet): importing it costs ~0.1 CPU-second, about an eighth of a flow
process's whole start-up (``bench/throughput.py`` measures the start-up), paid at every
start of every process and CLI command that never touches a frame. The modules that use it
name it the usual way for the type checker and get it from :func:`lazy_import` at run time::

    if TYPE_CHECKING:
        import polars as pl
    else:
        pl = lazy_import("polars")
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_import"]


def lazy_import(name: str) -> ModuleType:
    """Module ``name``, executed on its first attribute access (the standard library's
    :class:`importlib.util.LazyLoader`); the module itself when it is imported already.

    :raises ModuleNotFoundError: ``name`` is not installed (found out now, not at first use).
    """
    got = sys.modules.get(name)
    if got is not None:
        return got
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        msg = f"No module named {name!r}"
        raise ModuleNotFoundError(msg, name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
