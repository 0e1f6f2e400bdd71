"""``labkit check NOTEBOOK...``: run exercise notebooks and print each part's verdict.

A student's way to self-check a whole exercise at once: each notebook runs top to bottom in a
fresh kernel, and a table lists every part with its points and what is still wrong. Exit status 0
when every part passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``labkit check``."""
    parser.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="exercise notebooks to run and check")
    parser.add_argument("--timeout", type=int, default=None, help="seconds one cell may run (default 60)")


def run(args: argparse.Namespace) -> int:
    """Run each notebook and print its per-part summary; 0 if everything passed."""
    from labkit.errors import LabkitError
    from labkit.grading.runner import DEFAULT_CELL_TIMEOUT, run_notebook

    all_passed = True
    for path in args.notebooks:
        try:
            _, outcomes = run_notebook(path, timeout=args.timeout or DEFAULT_CELL_TIMEOUT)
        except (LabkitError, OSError) as exc:
            print(f"labkit check: {path}: {exc}", file=sys.stderr)
            all_passed = False
            continue
        earned = sum(o.points for o in outcomes)
        possible = sum(o.max_points for o in outcomes)
        print(f"{path}: {earned:g}/{possible:g} points")
        for o in outcomes:
            mark = "✔" if o.passed else "✘"
            print(f"  {mark} {o.part:<24} {o.points:g}/{o.max_points:g}")
            if not o.passed:
                print(textwrap.fill(o.message, width=96, initial_indent="      ", subsequent_indent="      "))
        all_passed &= all(o.passed for o in outcomes)
    return 0 if all_passed else 1
