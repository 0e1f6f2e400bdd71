"""Progress bars for ``WorkerPool.map(..., progress=True)`` and ``sweep(..., progress=True)``, drawn by tqdm.

``tqdm.auto`` picks the drawing for where the code runs: a widget in a Jupyter kernel (JupyterLab,
VS Code, Colab), a text line redrawn on stderr anywhere else. tqdm is imported on first use, not
when labkit is, so that it decides inside the kernel that will show the bar.

The text line keeps the look the course used before tqdm, ``map [##########..........] 12/40``,
so a terminal, a log and a test read the same; the widget is tqdm's own.
"""

from __future__ import annotations

import threading
from typing import Any

# The text bar redraws at most this often: smooth to the eye, and a map of a million tiny tasks
# does not spend its time writing to the terminal (tqdm's own default, stated here on purpose).
TEXT_REDRAW_SECONDS = 0.1
TEXT_WIDTH = 30
# A tqdm bar_format: the doubled braces are tqdm's fields, {TEXT_WIDTH} is filled in here.
TEXT_FORMAT = f"{{desc}} [{{bar:{TEXT_WIDTH}}}] {{n_fmt}}/{{total_fmt}}{{postfix}}"


class Progress:
    """A tqdm bar advanced from whichever thread completes a task; closed once, as done or stopped."""

    def __init__(self, total: int, description: str = "map") -> None:
        from tqdm.auto import tqdm

        self.widget = _is_widget(tqdm)
        options: dict[str, Any] = {"total": total, "desc": description, "mininterval": TEXT_REDRAW_SECONDS}
        if not self.widget:
            options.update(bar_format=TEXT_FORMAT, ascii=".#")
        self.bar = tqdm(**options)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def done(self) -> int:
        """How many items have been counted so far."""
        return int(self.bar.n)  # tqdm types n as a float too; advance() counts whole items

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items as done."""
        with self._lock:
            if not self._closed:
                self.bar.update(n)

    def close(self, ok: bool = True) -> None:
        """Finish the bar: as complete (green widget), or ``ok=False`` as stopped (red, "stopped")."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not ok:
                self.bar.set_postfix_str("stopped", refresh=False)
            self.bar.close()
            if not ok and self.widget:
                # tqdm colours a closed widget green when every item was counted, even if one failed.
                # disp is the notebook widget's (self.widget says this is one); tqdm.auto is typed as text.
                self.bar.disp(bar_style="danger", check_delay=False)  # type: ignore[attr-defined]


def make_progress(total: int, description: str = "map") -> Progress:
    """A progress bar for ``total`` items: a widget in a Jupyter kernel, else a text line on stderr."""
    return Progress(total, description)


def _is_widget(tqdm_class: type) -> bool:
    """Whether ``tqdm.auto`` chose the notebook widget (it decides once, when first imported)."""
    return any(cls.__module__ == "tqdm.notebook" for cls in tqdm_class.__mro__)
