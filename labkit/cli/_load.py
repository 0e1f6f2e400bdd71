"""``labkit load URL -c 64 -d 10s [-n N] [--json]``: drive HTTP load and print the report.

The load runs right in this process (the command is a process of its own already). Durations
accept ``10s``, ``500ms``, ``2m`` or a plain number of seconds. With ``-n`` and no ``-d``, the
run lasts until ``N`` requests have ended; with both, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from ..errors import ConfigurationError

__all__ = ["configure", "run", "parse_duration"]

_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"10s"``, ``"500ms"``, ``"2m"``, ``"1.5h"`` or ``"3"`` (plain seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(f"not a duration: {text!r} (try 10s, 500ms or 2m)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _duration_argument(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``labkit load``."""
    parser.add_argument("url", metavar="URL", help="what to request, e.g. http://127.0.0.1:8000/fast")
    parser.add_argument("-c", "--concurrency", type=_positive_int, default=64,
                        help="connections kept busy at once (default 64)")
    parser.add_argument("-d", "--duration", type=_duration_argument, default=None,
                        help="how long to run: 10s, 500ms, 2m (default 10s, or until -n is reached)")
    parser.add_argument("-n", "--requests", type=_positive_int, default=None,
                        help="stop after this many requests")
    parser.add_argument("-t", "--timeout", type=_duration_argument, default=None,
                        help="limit for each request (default 10s)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the load and print its report; exit 1 if the load could not run at all."""
    from ..load import DEFAULT_TIMEOUT, _drive

    duration = args.duration if args.duration is not None or args.requests is not None else 10.0
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    try:
        report = asyncio.run(_drive(args.url, args.concurrency, duration, args.requests, timeout))
    except ConfigurationError as exc:
        print(f"labkit load: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.summary())
    return 0
