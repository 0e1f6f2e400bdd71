"""The one exception root of labkit, and its subclasses.

Every error labkit raises on purpose derives from :class:`LabkitError`, so a notebook can catch
them all with one ``except``. Each subclass also derives from the built-in exception it resembles,
so code that already catches ``ValueError`` or ``RuntimeError`` keeps working. Messages say what
went wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "LabkitError",
    "ConfigurationError",
    "NoRunningLoopError",
    "ServerStartError",
]


class LabkitError(Exception):
    """Root of every error labkit raises on purpose."""


class ConfigurationError(LabkitError, ValueError):
    """An argument or setting is out of range or malformed; the message names the fix."""


class NoRunningLoopError(LabkitError, RuntimeError):
    """An asyncio-only feature was used where no event loop is running."""


class ServerStartError(LabkitError, RuntimeError):
    """A background server did not come up; the message carries what it printed before dying."""
