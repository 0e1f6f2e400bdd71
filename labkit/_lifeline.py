"""Keep child processes from outliving their parent.

A notebook kernel can die at any moment (restart, crash, ``kill -9``). Whatever it started must then
go too, on every OS. Two independent signals tell a child that its parent is gone:

    parent ──stdin pipe──▶ child      the parent holds the write end; when the parent dies, the OS
                                      closes it and the child reads EOF        (watch_stdin)
    parent pid  ◀──poll── child       every POLL_SECONDS the child checks that its parent still
                                      exists, with the same creation time   (watch_parent)

Either calls ``on_orphan`` (by default an immediate ``os._exit``) from a daemon thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import psutil

# How often an orphan watcher looks for its parent. Shorter reacts faster after a crash but wakes
# the child more; a second is unnoticeable in CPU and quick enough for a person restarting a kernel.
POLL_SECONDS = 1.0

#: Exit status of a child that ended because its parent disappeared.
ORPHAN_EXIT_CODE = 75


def _exit_now() -> None:
    os._exit(ORPHAN_EXIT_CODE)


def watch_parent(parent_pid: int | None = None, on_orphan: Callable[[], None] = _exit_now) -> threading.Thread:
    """Call ``on_orphan`` once the process ``parent_pid`` (default: our parent) is gone."""
    pid = parent_pid if parent_pid is not None else os.getppid()
    try:
        born = psutil.Process(pid).create_time()
    except psutil.Error:
        on_orphan()
        raise SystemExit(ORPHAN_EXIT_CODE) from None
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL_SECONDS):
            try:
                parent = psutil.Process(pid)
                alive = parent.create_time() == born and parent.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                on_orphan()
                return

    thread = threading.Thread(target=watch, name="labkit-orphan-watch", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread


def watch_stdin(on_eof: Callable[[], None] = _exit_now) -> threading.Thread:
    """Call ``on_eof`` when standard input reaches end of file (the parent closed or died)."""

    def watch() -> None:
        stream = sys.stdin.buffer if sys.stdin is not None else None
        if stream is None:
            return
        while stream.read(4096):
            pass
        on_eof()

    thread = threading.Thread(target=watch, name="labkit-stdin-watch", daemon=True)
    thread.start()
    return thread
