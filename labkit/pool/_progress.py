"""Progress bars for ``WorkerPool.map(..., progress=True)``.

In a Jupyter kernel the bar is an ipywidgets ``IntProgress``; anywhere else a one-line text bar
redrawn on stderr. Both are advanced from whichever thread completes a task, so they lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# The text bar redraws at most this often: smooth to the eye, and a map of a million tiny tasks
# does not spend its time writing to the terminal.
TEXT_REDRAW_SECONDS = 0.1
TEXT_WIDTH = 30


def in_jupyter_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (IPython with a kernel attached)."""
    ipython = sys.modules.get("IPython")  # never import IPython just to ask
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a half-initialised IPython is simply "not a kernel"
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def make_progress(total: int, description: str = "map"):
    """A widget bar in a kernel (if ipywidgets imports), else a text bar on stderr."""
    if in_jupyter_kernel():
        try:
            return WidgetProgress(total, description)
        except ImportError:
            pass
    return TextProgress(total, description, sys.stderr)


class TextProgress:
    """``map [##########··········] 12/40`` on one line, redrawn in place."""

    def __init__(self, total: int, description: str, stream: TextIO) -> None:
        self.total, self.description, self.stream = total, description, stream
        self.done = 0
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._closed = False
        self._draw()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.done >= self.total or now - self._last_draw >= TEXT_REDRAW_SECONDS:
                self._draw()

    def close(self, ok: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draw(suffix="" if ok else " stopped")
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, suffix: str = "") -> None:
        self._last_draw = time.monotonic()
        filled = TEXT_WIDTH * self.done // self.total if self.total else TEXT_WIDTH
        bar = "#" * filled + "." * (TEXT_WIDTH - filled)
        self.stream.write(f"\r{self.description} [{bar}] {self.done}/{self.total}{suffix}")
        self.stream.flush()


class WidgetProgress:
    """An ``ipywidgets.IntProgress``, displayed when created; green when done, red if stopped."""

    def __init__(self, total: int, description: str) -> None:
        import ipywidgets
        from IPython.display import display

        self._lock = threading.Lock()
        self.widget = ipywidgets.IntProgress(value=0, min=0, max=max(total, 1), description=description)
        self._closed = False
        display(self.widget)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.widget.value = min(self.widget.max, self.widget.value + n)

    def close(self, ok: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.widget.bar_style = "success" if ok else "danger"
