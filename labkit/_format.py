"""How labkit writes quantities for people: sizes, durations, addresses."""

from __future__ import annotations


def format_host(host: str) -> str:
    """``host`` as it goes before ``:port`` in a URL or a Host header: IPv6 addresses in brackets.

    ``"127.0.0.1"`` stays as it is, ``"::1"`` becomes ``"[::1]"`` (without the brackets, the
    port's colon could not be told from the address's own colons).
    """
    return f"[{host}]" if ":" in host else host


def format_uptime(seconds: float) -> str:
    """``42s``, ``7m``, ``1.5h``; ``-`` for a process that is not up."""
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_bytes(count: int) -> str:
    """A memory size in MB with one decimal; ``-`` for nothing measured."""
    if count <= 0:
        return "-"
    return f"{count / 2**20:.1f} MB"

