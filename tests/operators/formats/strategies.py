"""Hypothesis strategies the format tests share: any JSON value, and a record with some of
its fields replaced (any JSON value), removed or added."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["json_values", "mutations"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


def mutations(obj: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``obj`` with some of its fields replaced (any JSON value), removed or added."""
    keys = sorted(obj) + ["newField"]
    return st.dictionaries(st.sampled_from(keys), json_values | st.just(...), max_size=4).map(
        lambda changes: {k: v for k, v in {**obj, **changes}.items() if v is not ...})
