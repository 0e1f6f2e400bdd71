"""``labkit assign SOLUTIONS_DIR EXERCISES_DIR``: regenerate student notebooks from the solutions.

With ``--check`` nothing is written; the exit code says whether the exercises are up to date
(0) or stale (1), which is what CI runs. A malformed solutions notebook is reported on stderr
as ``labkit assign: <what and where, and how to fix it>`` with exit code 1, and nothing is written.
"""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``labkit assign``."""
    parser.add_argument("solutions", metavar="SOLUTIONS_DIR", help="directory of complete solutions notebooks")
    parser.add_argument("exercises", metavar="EXERCISES_DIR", help="directory the student notebooks go to")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the exercise files that are out of date",
    )


def run(args: argparse.Namespace) -> int:
    """Generate (or with ``--check``, verify) the exercises; return the exit code."""
    # Deferred so that `labkit doctor` and friends do not pay for importing nbformat.
    from labkit.grading.assign import assign, outdated
    from labkit.grading.notebook import AssignError

    try:
        if args.check:
            stale = outdated(args.solutions, args.exercises)
        else:
            report = assign(args.solutions, args.exercises)
    except AssignError as exc:
        print(f"labkit assign: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"labkit assign: could not write the exercises: {exc}", file=sys.stderr)
        return 1

    if not args.check:
        for line in report.lines():
            print(line)
        return 0
    if not stale:
        print(f"{args.exercises}: up to date with {args.solutions}")
        return 0
    for item in stale:
        print(f"{item.target}: {item.reason}")
    command = shlex.join(["labkit", "assign", args.solutions, args.exercises])
    count = len(stale)
    print(
        f"labkit assign: {count} exercise notebook{'' if count == 1 else 's'} out of date; run: {command}",
        file=sys.stderr,
    )
    return 1
