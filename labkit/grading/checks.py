"""Self-checks: what a check cell runs, and how it tells a student what is still wrong.

A check cell in an exercise looks like this, and is locked so students run it but do not edit it::

    await labkit.check("ex01.offload_hash", login)

:func:`check` finds the check registered for the part id, runs it against the student's code,
and ends in one of two ways:

- **pass**: one stable line, ``✔ ex01.offload_hash passed: <what was shown>``. It holds no timings,
  so the stored output of a solution's check cell is exactly what a fresh run prints, and
  ``pytest --nbval`` over the solutions proves every check passes;
- **fail**: a :class:`CheckFailed` error whose message says, in the student's terms and with the
  numbers measured, what is wrong and what to try (never a bare ``AssertionError``). In Jupyter it
  shows as that message alone, without a traceback through labkit's internals.

Either way the check also displays a small machine-readable record (MIME type
:data:`RESULT_MIME`) that ``labkit check`` and the grader read back from the executed notebook.

Checks are registered per part with :func:`register`; the exercises' checks live in modules named
after them (``labkit.grading.ex01``) and are loaded on first use.

Checks that measure speed are only fair on a machine that is not measuring something else at the
same moment. When the environment variable :data:`CHECK_LOCK_ENV` names a file (the grader sets it
when it grades several submissions at once), :func:`check` holds an exclusive lock on that file
while the check runs, like a single key to the one measuring room: whoever holds it measures, the
others wait at the door. The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking``
on Windows), so it is released even when the kernel holding it dies.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

from labkit.errors import ConfigurationError, LabkitError

__all__ = [
    "check", "register", "CheckFailed", "CheckResult", "NotDoneYet", "RESULT_MIME", "Fail", "CHECK_LOCK_ENV",
]

#: MIME type of the record each check displays; readers find results by it.
RESULT_MIME = "application/vnd.labkit.check+json"

#: Environment variable naming the machine-wide lock file that :func:`check` holds while a check
#: runs. Unset (the normal case for a student), checks take no lock.
CHECK_LOCK_ENV = "LABKIT_CHECK_LOCK"

# How often a waiting check tries the lock again. The wait is on the event loop (an await, not a
# blocking call), so the kernel stays responsive and an interrupt ends the wait at once; 50 ms is
# short next to a check's seconds and costs nothing measurable.
_LOCK_RETRY_SECONDS = 0.05
# Nesting depth of checks holding the lock in this process: a check inside a check must not wait
# for the lock its own process already holds.
_lock_depth = 0

CheckFunction = Callable[..., Awaitable[str]]
_REGISTRY: dict[str, CheckFunction] = {}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: which part, whether it passed, and the message shown."""

    part: str
    passed: bool
    message: str

    def line(self) -> str:
        """The line a student sees, e.g. ``✔ ex01.offload_hash passed: the loop stayed free``."""
        mark = "✔" if self.passed else "✘"
        verdict = "passed" if self.passed else "not yet"
        return f"{mark} {self.part} {verdict}: {self.message}"


class CheckFailed(LabkitError, AssertionError):
    """A self-check found the student's code not yet right; the message says what and why."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.line())
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through labkit's internals; the explanation
        # itself is already displayed just above, as the check's output.
        return ["CheckFailed: this part does not pass yet (see the message above); fix it and run the cell again."]


class Fail(Exception):
    """Raised inside a check function to fail the part with a message for the student."""


class NotDoneYet(Fail):
    """The student's code still raises the exercise stub's ``NotImplementedError``."""


def register(part: str) -> Callable[[CheckFunction], CheckFunction]:
    """Register an async check function for ``part``; it returns the pass message or raises Fail."""

    def decorate(function: CheckFunction) -> CheckFunction:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"check for {part!r} must be an async function")
        _REGISTRY[part] = function
        return function

    return decorate


def _find(part: str) -> CheckFunction:
    if part not in _REGISTRY:
        exercise = part.split(".", 1)[0]
        try:
            importlib.import_module(f"labkit.grading.{exercise}")
        except ModuleNotFoundError:
            pass
    try:
        return _REGISTRY[part]
    except KeyError:
        raise ConfigurationError(
            f"there is no check called {part!r}; is labkit up to date with this notebook? "
            "(pip install -e . in the course folder)"
        ) from None


async def check(part: str, *args, **kwargs) -> None:
    """Run the self-check for ``part`` on the student's code (``args``) and show the verdict.

    Shows the pass line and returns, or raises :class:`CheckFailed` with the explanation. Use it
    with ``await`` in a notebook cell (the kernel's loop runs the check).
    """
    function = _find(part)
    try:
        async with _measurement_lock():
            message = await function(*args, **kwargs)
        result = CheckResult(part, True, message)
    except NotImplementedError as exc:
        hint = f" (hint: {exc})" if str(exc) else ""
        result = CheckResult(part, False, f"not done yet: your code still raises NotImplementedError{hint}. "
                                          "Replace the `# YOUR CODE HERE` stub and run the cell again.")
    except Fail as exc:
        result = CheckResult(part, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - the student's code crashed: say where, in their terms
        result = CheckResult(part, False, f"your code raised {type(exc).__name__}: {exc}")
    _show(result)
    if not result.passed:
        raise CheckFailed(result)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if it is free; never wait."""
    if sys.platform == "win32":  # os.name == "nt", in the form type checkers understand
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # os.name == "nt", in the form type checkers understand
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.asynccontextmanager
async def _measurement_lock() -> AsyncIterator[None]:
    """Hold the lock file named by :data:`CHECK_LOCK_ENV`, if any, for the duration of the block.

    The lock makes measurements fair; it is not needed for a correct verdict. A lock file that
    cannot be opened therefore means measuring without it, never a failed check.
    """
    global _lock_depth
    path = os.environ.get(CHECK_LOCK_ENV)
    fd = None
    if path and not _lock_depth:  # a check inside a check already holds the lock
        try:
            # Read-only is enough for flock and msvcrt.locking: a lock file another user made works.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            fd = None  # measure unlocked rather than fail the student's check
    try:
        if fd is not None:
            import asyncio

            while not _try_lock(fd):
                await asyncio.sleep(_LOCK_RETRY_SECONDS)
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if fd is not None:
                _unlock(fd)
    finally:
        if fd is not None:
            os.close(fd)


def _show(result: CheckResult) -> None:
    """Show the line; in a notebook, carry the machine-readable record in the same output.

    JupyterLab renders the plain-text line and ignores the record's MIME type, which it does not
    know; readers of the saved notebook find the record by that type.
    """
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(result.line())
        return
    display({"text/plain": result.line(), RESULT_MIME: asdict(result)}, raw=True)
