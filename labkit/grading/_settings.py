"""The first steps of every check that takes a student's Cluster settings (exercises 02, 03, 07).

The student writes a plain function that returns ``Cluster`` keyword arguments; the check calls
it and starts the cluster it describes. What may go wrong before anything starts is the same
each time, and so are the messages.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ._values import plain_dict
from .checks import Fail

__all__ = ["settings_from"]


def settings_from(function: Callable[[], dict], name: str, *, example: str, fixed: tuple[str, ...],
                  yours: str) -> dict:
    """Call the student's ``name()`` and return its dict, or fail saying what to return instead.

    ``example`` shows a right answer's shape, ``fixed`` are the keyword arguments the check
    chooses itself (the app, the address), and ``yours`` names what the student does choose.
    """
    if not callable(function):
        raise Fail(f"pass your {name} function itself to the check, not {type(function).__name__}")
    if inspect.iscoroutinefunction(function):
        raise Fail(f"{name} should be a plain function (def, not async def) that returns a dict")
    settings = plain_dict(function(), f"{name}()", shape=f"of Cluster keyword arguments, such as {example}")
    chosen = [key for key in settings if key in fixed]
    if chosen:
        raise Fail(f"{name}() sets {', '.join(chosen)}; the check chooses the app and the address, so leave "
                   f"those out and return only {yours}")
    return settings
