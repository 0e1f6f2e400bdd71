"""One kernel process for the engine: started, given cells, watched, stopped with its whole group.

The kernel starts in a session of its own, so its process group holds it and every process it
starts (a student's process pool, the multiprocessing resource tracker). That group is what the
memory watch measures, and what is ended when the kernel is done, dead or stuck: nothing a
student's notebook started outlives its grading.

A timeout interrupts the kernel process alone (SIGINT to its pid, not to its group), as Jupyter's
stop button would with a process pool that survives: the pool's workers are not the ones looping.

When the grader sandboxes its kernels (:mod:`labkit.grading._sandbox`), the process jupyter_client
starts is bwrap: the group then holds bwrap, its init and, inside the PID namespace, everything the
submission started; the interrupt goes to the kernel's own host pid below bwrap's two processes,
and the kernel's channels are Unix sockets in its room, not TCP ports.
The kernel's own stdout and stderr (log lines, writes from native code) go nowhere, so they never
reach the terminal; everything a cell shows arrives through the notebook protocol, capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import signal
import time
from collections import defaultdict
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from .._exits import ending
from ._sandbox import Room, SandboxInfo, kernel_process, sandbox_command

__all__ = ["CellFate", "Kernel", "KERNEL_MARK_ENV", "clean_text", "describe_exit"]

#: Environment variable every kernel gets, with a random value of its own. Without a sandbox it is
#: how the grader finds, when the kernel stops, the processes that left its process group
#: (``start_new_session``, a double fork): they inherit the value, and ``/proc/PID/environ`` keeps
#: showing it whatever the process does to ``os.environ`` later.
KERNEL_MARK_ENV = "LABKIT_GRADE_KERNEL"

#: Seconds a timed-out cell's kernel has, after the interrupt, to answer a probe before it is
#: called stuck and restarted. An interrupted Python loop answers in milliseconds; code that
#: ignores SIGINT never does, and waiting longer would only spend the submission's time budget.
INTERRUPT_GRACE = 5.0
#: How often the memory watch looks at the kernel's processes. A faster watch catches a runaway
#: allocation earlier and costs a little CPU on a machine that is also measuring checks.
WATCH_SECONDS = 0.5
#: Characters of output kept per cell, and per notebook; plots of a few tens of kB fit easily.
CELL_OUTPUT_CHARS = 200_000
NOTEBOOK_OUTPUT_CHARS = 5_000_000
#: Outputs kept per cell (many small prints arrive as many stream messages).
CELL_OUTPUTS = 200
#: Set-aside records (the grader's seals) kept per cell, and characters per record: a check shows
#: one seal; a notebook that displays thousands of records of that type keeps only these, and the
#: records also count against the cell's and the notebook's output characters above.
ASIDE_RECORDS = 20
ASIDE_RECORD_CHARS = 20_000
#: Traceback lines kept per error, and characters per line.
TRACEBACK_LINES = 60
LINE_CHARS = 2_000
#: Seconds the other processes of a finished kernel's group get to exit on their own (a
#: multiprocessing resource tracker cleans shared memory as it goes) before they are killed.
REAP_GRACE = 2.0
#: Seconds a resource tracker gets, once the rest of its group is dead, to remove what they left.
TRACKER_GRACE = 2.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Control characters (escape sequences start with one) and the Unicode controls that reorder text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str, limit: int) -> str:
    """Text safe to show: no terminal escapes or control characters, at most ``limit`` characters."""
    text = _CONTROL.sub("", _ANSI.sub("", str(text)))
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


class CellFate(Enum):
    """How one code cell's execution ended."""

    OK = "ok"
    ERROR = "error"  # raised an exception; the kernel is fine
    TIMEOUT = "timeout"  # ran over its time and was stopped
    DIED = "died"  # the kernel died while it ran
    NOT_RUN = "not run"  # never started: time budget spent, too many restarts, or skipped


def describe_exit(code: int | None) -> str:
    """Why a kernel process ended, from its exit status, for a student to read.

    What each signal means is known in :mod:`labkit._exits`; this puts it in a student's words.
    """
    end = ending(code)
    if end.exitcode is None:
        return "the kernel stopped unexpectedly"
    if end.signal is not None:
        return f"the kernel {end.signal.plainly}"
    return f"the kernel exited with status {code} (os._exit, or a fatal error in the interpreter)"


def _null_logger() -> logging.Logger:
    # A logger outside logging's tree: nbclient's and jupyter_client's complaints ("Kernel died",
    # "Timeout waiting for execute reply") are reported by the engine in the student's terms.
    logger = logging.Logger("labkit.grading.engine")
    logger.addHandler(logging.NullHandler())
    return logger


@functools.cache
def _classes() -> tuple[type, type]:
    """The jupyter_client and nbclient subclasses, built on first use (they import slowly)."""
    from jupyter_client import AsyncKernelManager
    from nbclient import NotebookClient

    class GradingKernelManager(AsyncKernelManager):
        """Interrupts the kernel process alone: its process pools keep their workers."""

        #: Wraps the kernel's command line (into a sandbox), or ``None``; set per instance.
        labkit_wrap: Any = None

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            command = super().format_kernel_cmd(extra_arguments)
            return self.labkit_wrap(command) if self.labkit_wrap is not None else command

        # AsyncKernelManager's own interrupt_kernel is a coroutine function too; jupyter_client declares
        # it on KernelManager as a plain function, which is what mypy compares against.
        async def interrupt_kernel(self) -> None:  # type: ignore[override]
            process = getattr(self.provisioner, "process", None)
            if os.name == "posix" and process is not None and process.poll() is None:
                target = kernel_process(process.pid) if self.labkit_wrap is not None else process.pid
                if target is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGINT)
            else:
                await super().interrupt_kernel()

    class CappedClient(NotebookClient):
        """nbclient's client, with outputs capped as they arrive and one MIME type set aside."""

        def __init__(self, nb: Any, *, aside_mime: str | None, **kw: Any) -> None:
            super().__init__(nb, **kw)
            self.aside_mime = aside_mime
            self.aside: dict[int, list[Any]] = defaultdict(list)
            self.replies: dict[int, dict[str, Any]] = {}
            self.used: dict[int, int] = defaultdict(int)
            self.dropped: dict[int, int] = defaultdict(int)
            self.total_used = 0
            self.on_cell_executed = self._note_reply

        def _note_reply(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
            self.replies[cell_index] = execute_reply.get("content", {}) if execute_reply else {}

        def _room(self, index: int, cell: Any) -> int:
            if len(cell.outputs) >= CELL_OUTPUTS:
                return 0
            return max(0, min(CELL_OUTPUT_CHARS - self.used[index], NOTEBOOK_OUTPUT_CHARS - self.total_used))

        def _set_aside(self, index: int, cell: Any, record: Any) -> None:
            """Keep ``record`` for the grader if it is small and the cell's quota allows, else count it."""
            try:
                size = len(json.dumps(record))
            except (TypeError, ValueError, RecursionError):
                size = ASIDE_RECORD_CHARS + 1
            kept = self.aside[index]
            if len(kept) >= ASIDE_RECORDS or size > ASIDE_RECORD_CHARS or size > self._room(index, cell):
                self.dropped[index] += size
                return
            kept.append(record)
            self._spend(index, size)

        def _spend(self, index: int, size: int) -> None:
            self.used[index] += size
            self.total_used += size

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            kind = msg["msg_type"]
            content = msg.get("content", {})
            if kind.startswith("comm"):
                return None  # no widgets when grading
            data = content.get("data") if isinstance(content.get("data"), dict) else None
            if kind == "display_data" and data is not None and self.aside_mime in data:
                self._set_aside(cell_index, cell, data[self.aside_mime])
                return None
            if kind == "stream":
                text = str(content.get("text", ""))
                room = self._room(cell_index, cell)
                if room < len(text):
                    self.dropped[cell_index] += len(text) - room
                    if room == 0:
                        return None
                    content["text"] = text[:room]
                self._spend(cell_index, min(room, len(text)))
            elif kind == "error":
                traceback = [clean_text(line, LINE_CHARS) for line in content.get("traceback", [])]
                content["traceback"] = traceback[-TRACEBACK_LINES:]
                content["evalue"] = clean_text(content.get("evalue", ""), LINE_CHARS)
            elif data is not None and kind in ("display_data", "execute_result", "update_display_data"):
                size = sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())
                room = CELL_OUTPUT_CHARS if kind == "update_display_data" else self._room(cell_index, cell)
                if size > room:
                    self.dropped[cell_index] += size
                    if kind != "update_display_data" and room == 0:
                        return None
                    plain = str(data.get("text/plain", ""))
                    content["data"] = {"text/plain": plain[: max(room - 80, 0)] + "\n[output too large, cut]"}
                    size = min(size, room)
                if kind != "update_display_data":
                    self._spend(cell_index, size)
            return super().process_message(msg, cell, cell_index)

    return GradingKernelManager, CappedClient


class Kernel:
    """One kernel process: started, given cells, stopped together with its process group."""

    def __init__(self, nb: Any, *, kernel_name: str, startup_timeout: int, memory_limit: int | None,
                 aside_mime: str | None, timeout_token: str, room: Room | None = None,
                 sandbox: SandboxInfo | None = None, read_only: tuple[Path, ...] = (),
                 hidden: tuple[Path, ...] = (), blanked: tuple[Path, ...] = ()) -> None:
        manager_class, client_class = _classes()
        log = _null_logger()
        self.memory_limit = memory_limit
        self.timeout_token = timeout_token
        self.room = room
        self.mark = secrets.token_hex(16)
        self.sandboxed = bool(room is not None and sandbox is not None and sandbox.enabled)
        self.km = manager_class(kernel_name=kernel_name, log=log)
        if room is not None:
            # The connection file lives in the kernel's room; with a sandbox (no network of its own
            # to share), the channels are Unix sockets there too.
            self.km.connection_file = str(room.ipc / "connection.json")
        if self.sandboxed:
            assert room is not None and sandbox is not None and sandbox.tool is not None
            tool = sandbox.tool
            self.km.transport = "ipc"
            self.km.ip = str(room.ipc / "kernel")
            self.km.labkit_wrap = lambda command: sandbox_command(tool, command, room, read_only=read_only,
                                                                  hidden=hidden, blanked=blanked,
                                                                  tmpfs_bytes=memory_limit)
        self.client = client_class(
            nb, km=self.km, aside_mime=aside_mime, log=log, kernel_name=kernel_name,
            allow_errors=True, interrupt_on_timeout=True, startup_timeout=startup_timeout,
            error_on_timeout={"ename": "CellTimeout", "evalue": timeout_token, "traceback": []},
        )
        self.watch: asyncio.Task[None] | None = None
        self.pid: int | None = None
        self.pgid: int | None = None
        self.known_pids: set[int] = set()
        self.memory_reason: str | None = None
        self.stuck = False

    def __repr__(self) -> str:
        state = "stuck" if self.stuck else "started" if self.pid else "not started"
        return f"<Kernel pid={self.pid} {state}>"

    async def start(self, env: Mapping[str, str], cwd: Path) -> None:
        """Start the kernel in ``cwd`` and connect to it; its own stdout and stderr are discarded."""
        import subprocess

        room_env = {**(self.room.env() if self.room is not None else {}), KERNEL_MARK_ENV: self.mark}
        await self.client.async_start_new_kernel(
            cwd=str(cwd), env={**os.environ, **room_env, **env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.pid = getattr(self.km.provisioner, "pid", None)
        self.pgid = getattr(self.km.provisioner, "pgid", None)
        await self.client.async_start_new_kernel_client()
        if self.memory_limit or os.name != "posix":
            self.watch = asyncio.ensure_future(self._watch())

    async def run_cell(self, index: int, timeout: int) -> tuple[CellFate, str | None]:
        """Execute cell ``index`` with a timeout; how it ended and, if badly, why."""
        from nbclient.exceptions import DeadKernelError

        client = self.client
        client.timeout = timeout
        client.replies.pop(index, None)
        try:
            await client.async_execute_cell(client.nb.cells[index], index)
        except DeadKernelError:
            return CellFate.DIED, await self.death_reason()
        reply = client.replies.get(index, {})
        if reply.get("evalue") == self.timeout_token:
            if await self.responsive():
                return CellFate.TIMEOUT, f"ran longer than {timeout} s and was stopped"
            self.stuck = True
            if self.memory_reason:
                return CellFate.DIED, self.memory_reason
            return CellFate.TIMEOUT, (f"ran longer than {timeout} s and did not stop when interrupted, "
                                      f"so the kernel was restarted")
        if reply.get("status") == "error":
            return CellFate.ERROR, clean_text(f"{reply.get('ename', 'Error')}: {reply.get('evalue', '')}", 500)
        if reply.get("status") == "aborted":
            return CellFate.ERROR, "the kernel aborted this cell"
        return CellFate.OK, None

    async def responsive(self, grace: float = INTERRUPT_GRACE) -> bool:
        """Whether the kernel answers a trivial request within ``grace`` seconds (it is not stuck)."""
        from queue import Empty

        kc = self.client.kc
        if kc is None or not await self.km.is_alive():
            return False
        msg_id = kc.execute("None", silent=True, store_history=False)
        deadline = time.monotonic() + grace
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                reply = await kc.get_shell_msg(timeout=remaining)
            except Empty:
                return False
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False

    async def death_reason(self) -> str:
        """Why the kernel died: over the memory limit, or what its exit status tells."""
        if self.memory_reason:
            return self.memory_reason
        process = getattr(self.km.provisioner, "process", None)
        code = process.poll() if process is not None else None
        if self.sandboxed and code is not None and code > 128:
            code = -(code - 128)  # bwrap exits with 128 + the signal that killed the kernel
        return describe_exit(code)

    async def _watch(self) -> None:
        import psutil

        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                return  # the kernel is gone; run_cell reports why
            total = 0
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
                    self.known_pids.add(process.pid)
            limit = self.memory_limit
            if limit and total > limit:
                self.memory_reason = (
                    f"the kernel and its processes used {total / 2**20:,.0f} MB, more than the grader's "
                    f"limit of {limit / 2**20:,.0f} MB, and were stopped")
                self.kill_group(spare_trackers=True)  # stop() ends the trackers once they have cleaned up
                return

    def kill_group(self, spare_trackers: bool = False) -> None:
        """Kill the kernel and every process it started (its process group on POSIX).

        ``spare_trackers`` leaves multiprocessing's resource trackers alive: once everything else
        in the group is dead, a tracker reads end-of-file and removes the named semaphores and
        shared memory its users left behind (a killed tracker leaves them in /dev/shm for good).
        """
        if os.name == "posix" and self.pgid:
            if spare_trackers:
                for process in _group_members(self.pgid):
                    if not _is_resource_tracker(process):
                        with contextlib.suppress(Exception):
                            process.kill()
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
            return
        import psutil

        for pid in self.known_pids | ({self.pid} if self.pid else set()):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()

    def _group_alive(self) -> bool:
        if os.name != "posix" or not self.pgid:
            return False
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def stop(self) -> None:
        """Shut the kernel down (politely if it still answers), then end what is left of its group."""
        if self.watch is not None:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
        try:
            if self.km.has_kernel:
                alive = await self.km.is_alive()
                if alive and not self.stuck:
                    await self.km.shutdown_kernel(now=False)
                else:
                    if not alive:  # orphans get a moment to clean up after their dead kernel
                        await self._wait_for_group(REAP_GRACE)
                    # jupyter_client kills the whole group, resource trackers included: end the
                    # rest first, so that the trackers can remove what the dead left behind.
                    await self._end_group_gently()
                    await self.km.shutdown_kernel(now=True)
        finally:
            if self.client.kc is not None:
                self.client.kc.stop_channels()
                self.client.kc = None
            await self._wait_for_group(REAP_GRACE)
            await self._end_group_gently()
            self.kill_group()
            if not self.sandboxed:  # a sandbox's PID namespace is gone; else find the runaways
                self.kill_marked()

    def kill_marked(self) -> list[int]:
        """Kill every process that carries this kernel's mark in its environment; their pids.

        Catches what left the kernel's process group without a sandbox: a child started in a new
        session, a double-forked daemon. A process that cleared its environment with ``execve``
        escapes this; only the sandbox's PID namespace is airtight.
        """
        import psutil

        wanted = f"{KERNEL_MARK_ENV}={self.mark}".encode()
        killed = []
        for pid in psutil.pids():
            if pid == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if wanted not in handle.read().split(b"\0"):
                        continue
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (OSError, ValueError):
                continue  # gone, or not ours to read
        return killed

    async def _wait_for_group(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._group_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _end_group_gently(self) -> None:
        """Kill the group but its resource trackers, then give those TRACKER_GRACE to clean up."""
        if self._group_alive():
            self.kill_group(spare_trackers=True)
            await self._wait_for_group(TRACKER_GRACE)


def _group_members(pgid: int) -> list:
    """The processes of process group ``pgid`` (POSIX)."""
    import psutil

    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


def _is_resource_tracker(process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to read: not a tracker we can spare
        return False
