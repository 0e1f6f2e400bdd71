"""The measuring lock: one measurement at a time on a machine shared by several graders.

Timed checks are fair only when nothing else measures at the same moment. ``labkit grade`` runs
several kernels at once and names a lock file in :data:`CHECK_LOCK_ENV`; every timed part of a
check (each :func:`labkit.measure.best_of` trial, each ``async with measuring():`` block) holds an
exclusive lock on that file, like the single key to the one measuring room: whoever holds it
measures, the others wait at the door. The rest of the grading (kernels starting, students' cells,
expected answers computed) goes on beside it. The lock is the operating system's (``flock`` on
POSIX, ``msvcrt.locking`` on Windows), so it is released even when the kernel holding it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

__all__ = ["CHECK_LOCK_ENV", "measuring"]

#: Environment variable naming the machine-wide lock file that measurements hold. Unset (the
#: normal case for a student), nothing locks.
CHECK_LOCK_ENV = "LABKIT_CHECK_LOCK"

# How often a waiting measurement tries the lock again. The wait is on the event loop (an await,
# not a blocking call), so the kernel stays responsive and an interrupt ends the wait at once;
# 50 ms is short next to a check's seconds and costs nothing measurable.
_LOCK_RETRY_SECONDS = 0.05

# Nesting depth of blocks holding the lock in this process: a measurement inside a check that
# holds the lock must not wait for the lock its own process already holds.
_lock_depth = 0


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if it is free; never wait."""
    if os.name == "nt":
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
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.asynccontextmanager
async def measuring() -> AsyncIterator[None]:
    """Hold the machine-wide measuring lock for the duration of the block, when there is one.

    ``async with measuring(): ...`` around code that times something. Without
    :data:`CHECK_LOCK_ENV` set (a student's own kernel, a lab) it does nothing. The lock makes
    measurements fair; it is not needed for a correct verdict, so a lock file that cannot be
    opened means measuring without it, never a failed check. Nested blocks in one process take
    the lock once.
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
