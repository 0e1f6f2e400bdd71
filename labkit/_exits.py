"""Naming the signal that ended a process, for the messages that explain why it ended."""

from __future__ import annotations

import signal

__all__ = ["signal_name"]


def signal_name(number: int) -> str:
    """``"SIGKILL"`` for 9, or ``"signal 77"`` for a number this platform has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
