"""A student's answer becomes a plain value before any check compares it.

A check that asks ``result != expected`` lets the student's object answer: an object whose
``__eq__`` always says True (and ``__ne__`` False) passes every comparison, and putting the
expected value on the left does not help, since Python then asks the other operand's reflected
method, and a subclass of the expected type is asked first. So no check compares what a student
returned. :func:`plain` first rebuilds the answer out of the built-in types alone, reading it
without calling any method the student could have written, and refuses anything else with a
message that says what to return. Checks then compare plain values with plain values.

What is accepted, by exact type (a subclass is refused, since it may override what the check
would call): ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, numpy's own integer,
floating and boolean scalars (converted to ``int``, ``float`` and ``bool``, so an ``np.int64``
count passes), and lists, tuples and dicts of these, nested to :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Iterator
from typing import Any

from .checks import Fail

__all__ = ["plain", "plain_dict", "MAX_DEPTH", "MAX_ITEMS"]

#: How deeply containers may nest. Answers of the course nest two or three levels; a limit keeps a
#: self-containing list or a deliberately deep one from exhausting the recursion limit.
MAX_DEPTH = 32

#: How many values one answer may hold in all; the largest answers of the course hold a few thousand.
MAX_ITEMS = 1_000_000

# Types are told apart by identity: `kind in (int, ...)` would ask a metaclass's __eq__.
_SCALAR_IDS = frozenset(id(t) for t in (type(None), bool, int, float, str, bytes))

ACCEPTED = "None, bool, int, float, str, bytes, numpy numbers, and lists, tuples or dicts of those"


def plain(value: object, what: str) -> Any:
    """``value`` rebuilt from built-in types only, or :class:`Fail` naming ``what`` and its type.

    ``what`` names the answer in the message, for example ``"count_report(150000)"``.
    """
    budget = [MAX_ITEMS]
    return _rebuild(value, what, 0, budget)


def plain_dict(value: object, what: str, *, shape: str) -> dict[Any, Any]:
    """Like :func:`plain` for an answer that must be a dict; ``shape`` describes the dict expected."""
    if type(value) is not dict:
        raise Fail(f"{what} returned {_type_name(value, article=False)}; return a dict {shape}")
    return plain(value, what)


def _rebuild(value: object, what: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise Fail(f"{what} returned more than {MAX_ITEMS:,} values; the check reads no more than that")
    kind = type(value)
    if id(kind) in _SCALAR_IDS:
        return value
    number = _numpy_number(value, kind)
    if number is not None:
        return number
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_DEPTH:
            raise Fail(f"{what} returned containers nested more than {MAX_DEPTH} deep; the answer is flatter")
        if kind is dict:
            # dict.items of an exact dict calls nothing of the keys' or values' own.
            exact: dict[Any, Any] = value  # type: ignore[assignment]  # kind is dict: exactly a dict
            return {_rebuild(k, what, depth + 1, budget): _rebuild(v, what, depth + 1, budget)
                    for k, v in dict.items(exact)}
        members: Iterator[Any] = (
            list.__iter__(value) if kind is list else tuple.__iter__(value)  # type: ignore[arg-type]
        )
        items = [_rebuild(item, what, depth + 1, budget) for item in members]
        return items if kind is list else tuple(items)
    raise Fail(f"{what} returned {_type_name(value)}, which the check does not compare: return {ACCEPTED}")


def _numpy_number(value: object, kind: type) -> int | float | bool | None:
    numpy = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is imported
    if numpy is None or id(kind) not in _numpy_scalar_ids(numpy):
        return None
    if issubclass(kind, numpy.bool_):
        return bool(value)
    if issubclass(kind, numpy.integer):
        # numpy's own types: their __index__ is numpy's C code
        return operator.index(value)  # type: ignore[arg-type]
    return float(value)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def _numpy_scalar_ids(numpy: Any) -> frozenset[int]:
    """The ids of numpy's own number types: exact types, so a student's subclass is not among them."""
    bases = (numpy.integer, numpy.floating, numpy.bool_)
    return frozenset(id(t) for t in numpy.sctypeDict.values() if isinstance(t, type) and issubclass(t, bases))


def _type_name(value: object, *, article: bool = True) -> str:
    kind = type(value)
    name = type.__dict__["__name__"].__get__(kind)  # the class's own name, never a property of it
    if not article:
        return name
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
