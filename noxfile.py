"""The maintainers' test matrix, one command for everyone: `nox` (or `nox -s unit`, `nox -l` to list).

    lint         ruff and mypy over labkit/, on the Python nox runs with
    unit-3.10    the fast library tests (marker `unit`) on every supported Python;
    ...          notebooks, exercises, grading and the browser suite need minutes
    unit-3.13    and do not depend on the Python version, so they run once, in plain `pytest`
    spawn        the labs and solutions replayed under the `spawn` start method (macOS's and
                 Windows' default), which Linux does not use unless asked

Each session installs the course into a fresh virtual environment under .nox/, as the README's
set-up does. A Python that is not installed makes its session fail (in CI) or be skipped (on a
laptop, where nox says so); `.ci/run` makes the pyenv Pythons visible first.
"""

from __future__ import annotations

import nox

UNIT_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["lint", "unit", "spawn"]


@nox.session
def lint(session: nox.Session) -> None:
    """Lint (ruff) and type-check (mypy) the library."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "labkit", "noxfile.py")
    session.run("mypy", "labkit")


@nox.session(python=UNIT_PYTHONS)
def unit(session: nox.Session) -> None:
    """The fast library tests on one Python of the matrix."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests", "-m", "unit", *session.posargs)


@nox.session
def spawn(session: nox.Session) -> None:
    """The labs and solutions under the spawn start method, as on macOS and Windows."""
    session.install("-e", ".[test]")
    # tests/ is named so that pytest loads tests/conftest.py, which marks the notebook cells and
    # guards each notebook against leftovers; `-m notebook` then keeps only the cells.
    session.run(
        "pytest", "tests", "notebooks", "solutions", "-m", "notebook", *session.posargs,
        env={"LABKIT_START_METHOD": "spawn"},
    )
