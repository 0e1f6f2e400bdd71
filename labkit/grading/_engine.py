"""One execution engine for ``labkit check`` and ``labkit grade``: run a notebook's code cells in
a fresh kernel, get through loops and crashes, and keep outputs small.

::

    engine (asyncio, in labkit)                         kernel process group (its own session)
    ---------------------------                         --------------------------------------
    NotebookRun ---cell i---> nbclient ---ZeroMQ---> ipykernel ---> the student's pools, threads
      |  cell over its timeout: SIGINT to the kernel alone, then a probe; no answer -> restart
      |  kernel died: exit status read, its process group ended, fresh kernel, earlier cells
      |              replayed (the cell that broke it is skipped), then on with the next cell
      |  memory watch: every WATCH_SECONDS the group's memory; over the limit -> killed, reason kept
      '- the kernel's own stdout/stderr (log lines, C-level writes): discarded, never the terminal

With ``fresh_dirs`` (grading), each kernel gets a :class:`~labkit.grading._sandbox.Room` of its own
(working folder, sockets, IPython's folders, a 0700 folder for its key), removed when the kernel
stops; with a ``sandbox``, the kernel runs inside bubblewrap (:mod:`labkit.grading._sandbox`).

Cells run one after another, and a cell that fails does not stop the run. Each code cell gets a
:class:`CellRun` saying how it ended. Replaying after a crash costs a little time and buys a fair
result for every later part: a kernel that dies in part 2 does not take part 3 down with it.

Outputs are capped *as they arrive* (per cell and per notebook), so a cell printing gigabytes
costs the grader a few hundred kilobytes of memory. Records of one MIME type can be set aside as
they arrive instead of stored (the grader's seals), so no later output or ``clear_output`` can
touch them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from labkit.errors import ConfigurationError, LabkitError

from ._kernel import CellFate, Kernel, clean_text
from ._sandbox import Room, SandboxInfo

__all__ = ["CellFate", "CellRun", "EngineSettings", "NotebookRun", "KernelStartError", "clean_text", "run_sync",
           "DEFAULT_CELL_TIMEOUT", "MAX_KERNELS", "check_cell_timeout"]

T = TypeVar("T")


class KernelStartError(LabkitError, RuntimeError):
    """No kernel could be started for a notebook; the message names the kernel and what to check."""


@dataclass(frozen=True)
class CellRun:
    """The end of one code cell: its fate, and what went wrong in the student's terms.

    ``error`` is ``"NameError: name 'login' is not defined"`` for :attr:`CellFate.ERROR`; ``reason``
    explains a timeout, a crash or a cell that never ran. ``aside`` holds the records of the
    engine's ``aside_mime`` the cell displayed, in order. ``kernel`` numbers the kernel that ran
    the cell (1 for the first start), so that its records are checked against that kernel's key.
    """

    index: int
    fate: CellFate
    error: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    aside: tuple[Any, ...] = ()
    kernel: int = 0


#: Seconds one cell may run. Checks retry a spoiled measurement up to three times, and the slowest
#: does a few seconds of work each time on a loaded machine; a minute leaves a wide margin.
DEFAULT_CELL_TIMEOUT = 60

#: Kernel starts per run (the first included) before the engine gives up on the notebook. One
#: crash is the student's code; four in a row is a notebook that kills every kernel it gets.
MAX_KERNELS = 4


def check_cell_timeout(timeout: int) -> None:
    """Refuse a cell timeout under one second: the one rule, for the engine, the grader and the CLI."""
    if timeout < 1:
        raise ConfigurationError(f"the cell timeout must be at least 1 second, got {timeout}")


@dataclass(frozen=True)
class EngineSettings:
    """How a notebook run is bounded.

    ``timeout``: seconds per cell. ``budget``: seconds for the whole run, restarts and replays
    included (``None``: no limit). ``memory_limit``: bytes the kernel and its child processes may
    hold together (``None``: no watch). ``max_kernels``: kernel starts per run, the first included.
    ``env``: extra environment variables for the kernel.
    """

    timeout: int = DEFAULT_CELL_TIMEOUT
    budget: float | None = None
    kernel_name: str = "python3"
    memory_limit: int | None = None
    max_kernels: int = MAX_KERNELS
    startup_timeout: int = 60
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_cell_timeout(self.timeout)


class NotebookRun:
    """Execute the code cells of ``nb`` in order, in as many fresh kernels as it takes.

    ``nb`` is an ``nbformat`` notebook; its cells receive their (capped) outputs. Kernels start in
    ``workdir``; with ``fresh_dirs`` (for grading) each kernel gets a new empty folder inside it.

    ``replayable(i)``: whether cell ``i`` is run again in a new kernel after a crash (a check is
    not: its verdict is already known). ``exclusive(i)``: whether cell ``i`` must hold ``turn``
    while it runs (a check that measures speed); the time spent waiting for the turn counts
    neither against the cell's timeout nor the run's budget. ``aside_mime``: records of this MIME
    type are set aside into :attr:`CellRun.aside`. ``kernel_env(room)``: called before each kernel
    start with that kernel's :class:`~labkit.grading._sandbox.Room` (``None`` without
    ``fresh_dirs``), returns extra environment variables for that kernel.

    ``sandbox``: run each kernel in a bubblewrap sandbox (needs ``fresh_dirs``), with
    ``read_only`` files bound into it, ``hidden`` folders covered and ``blanked`` files emptied.
    """

    def __init__(
        self,
        nb: Any,
        settings: EngineSettings,
        *,
        workdir: Path,
        fresh_dirs: bool = False,
        replayable: Callable[[int], bool] = lambda index: True,
        exclusive: Callable[[int], bool] = lambda index: False,
        turn: asyncio.Lock | None = None,
        aside_mime: str | None = None,
        kernel_env: Callable[[Room | None], Mapping[str, str]] | None = None,
        sandbox: SandboxInfo | None = None,
        read_only: tuple[Path, ...] = (),
        hidden: tuple[Path, ...] = (),
        blanked: tuple[Path, ...] = (),
    ) -> None:
        self.nb = nb
        self.settings = settings
        self.workdir = Path(workdir)
        self.fresh_dirs = fresh_dirs
        self.replayable = replayable
        self.exclusive = exclusive
        self.turn = turn
        self.aside_mime = aside_mime
        self.kernel_env = kernel_env or (lambda room: {})
        self.sandbox = sandbox if fresh_dirs else None
        self.read_only = read_only
        self.hidden = hidden
        self.blanked = blanked
        self.kernels_started = 0
        self._timeout_token = secrets.token_hex(16)
        self._deadline: float | None = None

    def __repr__(self) -> str:
        return f"<NotebookRun {len(self.nb.cells)} cells, {self.kernels_started} kernels started>"

    def _cell_timeout(self) -> int | None:
        if self._deadline is None:
            return self.settings.timeout
        remaining = self._deadline - time.monotonic()
        return None if remaining < 1 else min(self.settings.timeout, math.ceil(remaining))

    async def run(self) -> list[CellRun | None]:
        """Run every code cell; one :class:`CellRun` per cell (``None`` for markdown and raw cells).

        Raises :class:`KernelStartError` only when a kernel cannot be started at all.
        """
        code = [i for i, cell in enumerate(self.nb.cells) if cell.cell_type == "code" and cell.source.strip()]
        runs: dict[int, CellRun] = {}
        poisoned: set[int] = set()  # cells that broke a kernel again when replayed
        if self.settings.budget is not None:
            self._deadline = time.monotonic() + self.settings.budget
        position = 0
        while position < len(code):
            if self.kernels_started >= self.settings.max_kernels:
                reason = (f"the kernel died or hung {self.kernels_started} times, so the grader stopped "
                          f"running this notebook here")
                break
            if self._cell_timeout() is None:
                reason = f"the notebook's time budget of {self.settings.budget:g} s ran out before this cell"
                break
            position = await self._run_in_new_kernel(code, position, runs, poisoned)
        else:
            reason = ""
        for index in code[position:]:
            runs[index] = CellRun(index, CellFate.NOT_RUN, reason=reason)
        return [runs.get(index) for index in range(len(self.nb.cells))]

    async def _run_in_new_kernel(self, code: list[int], position: int, runs: dict[int, CellRun],
                                 poisoned: set[int]) -> int:
        """Start a kernel, replay the cells before ``position``, run on; the position reached."""
        self.kernels_started += 1
        settings = self.settings
        room = Room.make(self.workdir, f"kernel-{self.kernels_started}") if self.fresh_dirs else None
        kernel = Kernel(self.nb, kernel_name=settings.kernel_name, startup_timeout=settings.startup_timeout,
                        memory_limit=settings.memory_limit, aside_mime=self.aside_mime,
                        timeout_token=self._timeout_token, room=room, sandbox=self.sandbox,
                        read_only=self.read_only, hidden=self.hidden, blanked=self.blanked)
        cwd = room.work if room is not None else self.workdir
        try:
            try:
                await kernel.start({**self.settings.env, **self.kernel_env(room)}, cwd)
            except Exception as exc:
                raise KernelStartError(
                    f"could not start a {self.settings.kernel_name!r} kernel ({type(exc).__name__}: {exc}); "
                    f"`jupyter kernelspec list` shows the kernels installed") from exc
            for index in code[:position]:
                done = runs[index]
                finished = done.fate in (CellFate.OK, CellFate.ERROR)
                if not finished or index in poisoned or not self.replayable(index):
                    continue
                timeout = self._cell_timeout()
                if timeout is None:
                    return position
                cell = self.nb.cells[index]
                kept = cell.outputs, cell.execution_count  # the first run's outputs are the ones to show
                fate, _ = await kernel.run_cell(index, timeout)
                cell.outputs, cell.execution_count = kept
                kernel.client.aside.pop(index, None)
                kernel.client.dropped.pop(index, None)
                if fate is CellFate.DIED or kernel.stuck:
                    poisoned.add(index)
                    return position
            while position < len(code):
                index = code[position]
                runs[index] = await self._run_one(kernel, index)
                position += 1
                if runs[index].fate is CellFate.DIED or kernel.stuck:
                    break
            return position
        finally:
            await kernel.stop()
            if room is not None:
                room.remove()

    async def _run_one(self, kernel: Kernel, index: int) -> CellRun:
        turn = self.turn if self.turn is not None and self.exclusive(index) else contextlib.nullcontext()
        waited = time.monotonic()
        async with turn:
            waited = time.monotonic() - waited
            if self._deadline is not None:
                self._deadline += waited
            timeout = self._cell_timeout()
            if timeout is None:
                budget = self.settings.budget
                return CellRun(index, CellFate.NOT_RUN,
                               reason=f"the notebook's time budget of {budget:g} s ran out before this cell")
            started = time.monotonic()
            fate, detail = await kernel.run_cell(index, timeout)
            seconds = time.monotonic() - started
        aside = tuple(kernel.client.aside.pop(index, []))
        dropped = kernel.client.dropped.pop(index, 0)
        if dropped:
            from nbformat.v4 import new_output

            note = f"\n[{dropped:,} more characters of output were not kept by labkit]\n"
            self.nb.cells[index].outputs.append(new_output("stream", name="stderr", text=note))
        error = detail if fate is CellFate.ERROR else None
        reason = detail if fate is not CellFate.ERROR else None
        return CellRun(index, fate, error=error, reason=reason, seconds=seconds, aside=aside,
                       kernel=self.kernels_started)


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` to completion, even when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # inside Jupyter: a loop of its own
        return thread.submit(lambda: asyncio.run(make())).result()
