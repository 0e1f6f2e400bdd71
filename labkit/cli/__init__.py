"""The ``labkit`` command: ``labkit doctor`` and friends.

Each subcommand lives in its own module with two functions, ``configure(parser)`` to declare its
options and ``run(args) -> int`` to do the work; :data:`COMMANDS` maps names to those modules and
``main`` only parses and dispatches. Exit codes: 0 success, 1 a failure the command reports,
2 a usage error (unknown option, bad argument), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "COMMANDS"]

#: subcommand name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("labkit.cli._doctor", "show this machine as the course sees it"),
    "assign": ("labkit.cli._assign", "regenerate student notebooks from the solutions"),
    "serve": ("labkit.cli._serve", "run an app in a cluster of worker processes, in the foreground"),
    "load": ("labkit.cli._load", "drive HTTP load at a URL and print the report"),
    "check": ("labkit.cli._check", "run exercise notebooks and show each part's verdict"),
    "grade": ("labkit.cli._grade", "grade students' notebooks in parallel and write the gradebook"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="labkit", description="Tools of the course 'Scaling Python across cores'."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        module.configure(child)
        child.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labkit`` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage line on unknown options
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
