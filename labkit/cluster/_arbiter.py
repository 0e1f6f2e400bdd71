"""The supervisor loop of a cluster, running in a background thread of the primary.

Shaped like gunicorn's arbiter: whoever wants something (the notebook calling ``reload()``, a
signal handler of ``labkit serve``) only *queues* a command; one loop does everything else::

    while not finished:
        run queued commands            spawn, retire, shut down; start a reload or a scale
        tick                           restarts that are due, late heartbeats (round-robin
                                       passes over a stalled worker; a silent one is killed),
                                       workers that overstay their start or stop deadline
        advance reloads and scales     each waits for a worker to get ready or to exit
        wait(control pipes + sentinels + wake pipe, until the next deadline)
        read what workers said         ready, beat, boot_error
        reap workers that exited       diagnose, then restart with backoff, or give up

Only this thread touches processes and pipes. Other threads read state under :attr:`Arbiter.lock`
and wait on :attr:`Arbiter.changed`, which is notified after every pass.

A reload or a scale takes many passes (start a worker, wait until it is ready, retire the old one,
wait until it has exited, ...). Each is a generator of :class:`Until` conditions: the loop resumes
it when its condition holds or its deadline (by the arbiter's clock) has passed, and answers the
caller's future with what it returns or raises (:meth:`Arbiter.perform`).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from .._format import format_host
from ..errors import ServerStartError
from ._balance import Acceptor, bind_listener
from ._settings import ClusterSettings
from ._state import (
    LIFECYCLE,
    ClusterEvent,
    ClusterStats,
    WorkerState,
    WorkerStats,
    diagnose,
)
from ._worker import BEAT, BOOT_ERROR, READY, STOP, WorkerSpec, run_worker

__all__ = ["Arbiter", "ArbiterConfig"]

# How many events a cluster remembers for late readers (a widget opened after the fact).
EVENT_HISTORY = 500

# Beyond its graceful timeout and the kill margin, how long a reload or scale waits for a retired
# worker to be reaped. The kill comes at the margin; this only covers a slow reap on a loaded machine.
EXIT_SLACK = 5.0


@dataclass(frozen=True)
class ArbiterConfig:
    """Everything the supervisor needs; :class:`labkit.cluster.Cluster` fills it in.

    ``settings`` are the cluster's checked settings (timeouts, restart policy, address, ...);
    the rest is what the workers run and how they start.
    """

    app: str
    settings: ClusterSettings
    context: Any  # a multiprocessing context
    options: dict = field(default_factory=dict)
    name: str = ""  # how messages and stats name the app, when ``app`` is not what the user wrote


@dataclass(frozen=True)
class Until:
    """What a multi-step command waits for: ``predicate()`` to hold, or the clock to reach ``deadline``."""

    predicate: Callable[[], bool]
    deadline: float


#: A multi-step command: yields what it waits for, returns its answer (see :meth:`Arbiter.perform`).
Steps = Generator[Until, None, Any]


class _Operation:
    """A multi-step command in progress, and the future that awaits its answer."""

    def __init__(self, steps: Steps, future: Future) -> None:
        self.steps = steps
        self.future = future
        self.waiting: Until | None = None


class _Slot:
    """A numbered place for one worker; its process may be replaced, its id stays."""

    def __init__(self, slot_id: int) -> None:
        self.id = slot_id
        self.wanted = True
        self.first_boot = True  # until a worker of this slot has been ready once
        self.errored = False
        self.restarts = 0
        self.backoff = 0
        self.young_deaths = 0
        self.restart_at: float | None = None
        self.last_exit: str | None = None
        self.boot_error: str | None = None
        self.boot_traceback: str | None = None
        self.latest: _Worker | None = None


class _CpuWindow:
    """A process's CPU use over the last few seconds: the same for every caller, however often asked.

    psutil's ``cpu_percent(None)`` measures since its own previous call, so a widget refreshing
    twice a second would leave a notebook's ``stats()`` only the last half second. Here samples
    arrive with every heartbeat and every snapshot, and the percentage spans from the newest
    sample back to the newest one at least :data:`CPU_WINDOW` old.
    """

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()

    def sample(self, ps: psutil.Process | None, now: float) -> None:
        if ps is None:
            return
        try:
            times = ps.cpu_times()
        except psutil.Error:
            return  # exiting: keep what we had
        self.samples.append((now, times.user + times.system))
        while len(self.samples) > 2 and now - self.samples[1][0] >= CPU_WINDOW:
            self.samples.popleft()

    def percent(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (start, cpu_start), (end, cpu_end) = self.samples[0], self.samples[-1]
        return 100.0 * max(cpu_end - cpu_start, 0.0) / (end - start) if end > start else 0.0


#: Seconds of history behind each worker's ``cpu_percent`` (see :class:`_CpuWindow`).
CPU_WINDOW = 2.0

# Round-robin passes over a worker whose heartbeat is this many intervals late and whose CPU time
# stands still (stopped, deadlocked): one late beat is mere scheduling noise on a loaded machine,
# two are not. Fewer would skip healthy workers; more would hand the hung one more connections,
# each of which waits (until heartbeat_timeout kills it, or for ever with the check off).
STALL_AFTER_BEATS = 2

# CPU seconds a late worker must have used since the last look to count as busy, not hung. A
# stopped or deadlocked process uses none; a loop crunching a request uses nearly a core's worth.
CPU_PROGRESS = 0.01


def _cpu_seconds(ps: psutil.Process | None) -> float | None:
    if ps is None:
        return None
    try:
        times = ps.cpu_times()
    except psutil.Error:
        return None  # exiting: its sentinel will say so
    return times.user + times.system


class _Worker:
    """One worker process, as the primary tracks it."""

    def __init__(self, slot: _Slot, process, control, handoff, now: float) -> None:
        self.slot = slot
        self.process = process
        self.pid: int = process.pid
        self.control = control
        self.control_open = True
        self.handoff = handoff
        self.sentinel: int = process.sentinel
        self.state = WorkerState.STARTING
        self.started_at = now
        self.ready_at: float | None = None
        self.last_beat = now
        self.requests = 0
        self.in_flight = 0
        self.stop_deadline: float | None = None
        self.planned = False  # we asked it to stop: its exit is not a crash
        self.kill_reason: str | None = None
        self.boot_error: str | None = None
        self.exitcode: int | None = None
        try:
            self.ps: psutil.Process | None = psutil.Process(self.pid)
        except psutil.Error:
            self.ps = None
        self.cpu = _CpuWindow()
        self.stalled = False  # round-robin passes it over (see Arbiter._pass_over_stalled)
        self.progress_cpu: float | None = None  # its CPU seconds when last beaten or looked at
        self.progress_at: float | None = None  # when it was last looked at while late


class Arbiter:
    """Supervise the worker processes of one cluster (see the module docstring)."""

    def __init__(self, config: ArbiterConfig, on_event: Callable[[ClusterEvent], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.settings = config.settings
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.slots: dict[int, _Slot] = {}
        self.workers: list[_Worker] = []
        self.events: deque[ClusterEvent] = deque(maxlen=EVENT_HISTORY)
        self.finished = False
        self.crashed: BaseException | None = None
        self.port: int | None = None
        self.served_by_exited = 0
        self.gave_up: str | None = None  # why every worker was given up on, while none runs
        self._on_event = on_event
        self._pending_events: list[ClusterEvent] = []
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._operations: list[_Operation] = []
        self._closing = False
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- used by other threads

    def open(self) -> None:
        """Bind the cluster's socket and start the supervisor thread (no workers yet)."""
        self.port = self._listen(self.settings.port).getsockname()[1]
        # A pipe, not a socketpair: multiprocessing.connection.wait takes pipes on every OS.
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._run, name="labkit-cluster-arbiter", daemon=True)
        self._thread.start()

    def _listen(self, port: int) -> socket.socket:
        """Bind the cluster's socket (and start the round-robin acceptor on it)."""
        settings = self.settings
        try:
            listener = self._listener = bind_listener(
                settings.host, port, reuse_port=settings.balance == "reuseport",
                listen=settings.balance != "reuseport", backlog=settings.backlog,
            )
        except OSError as exc:
            raise ServerStartError(_bind_failure(settings.host, port, exc)) from exc
        if settings.balance == "round-robin":
            self._acceptor = Acceptor(listener)
            self._acceptor.start()
        return listener

    def call(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` in the supervisor thread; its result arrives in the future."""
        return self._queue(function, args, multi_step=False)

    def perform(self, steps: Callable[..., Steps], *args: Any) -> Future:
        """Run the multi-step command ``steps(*args)`` (such as :meth:`reload`) in the supervisor thread.

        The future receives what the generator returns, or the exception it raises, once it is done.
        """
        return self._queue(steps, args, multi_step=True)

    def _queue(self, function: Callable[..., Any], args: tuple, *, multi_step: bool) -> Future:
        future: Future = Future()
        if self.finished:
            future.set_exception(ServerStartError("the cluster has stopped; start a new one"))
            return future
        self._commands.put((function, args, future, multi_step))
        self._wake()
        return future

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (checked under the lock) holds, or ``timeout`` passes."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate() or self.finished, timeout)

    def join(self, timeout: float) -> None:
        """Wait for the supervisor thread to end; if it does not, kill the workers directly."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._kill_everything("the supervisor did not stop in time")

    def snapshot(self) -> ClusterStats:
        """The current :class:`ClusterStats`."""
        with self.lock:
            now = self.clock()
            records: list[WorkerStats] = []
            for slot in sorted(self.slots.values(), key=lambda s: s.id):
                live = [w for w in self.workers if w.slot is slot]
                shown = live or ([slot.latest] if slot.latest is not None and slot.wanted else [])
                records.extend(self._record(w, now) for w in shown)
            total = self.served_by_exited + sum(w.requests for w in self.workers)
            wanted = sum(slot.wanted for slot in self.slots.values())
            url = None if self.finished or self.port is None else _url(self.settings.host, self.port)
            return ClusterStats(self.config.name or self.config.app, url, self.settings.balance, wanted, tuple(records),
                                total, self.gave_up)

    def wanted_slots(self) -> list[int]:
        """Ids of the slots the cluster wants filled, in order."""
        with self.lock:
            return sorted(i for i, slot in self.slots.items() if slot.wanted)

    def settled(self, slot_ids) -> bool:
        """Whether each of these slots has a ready worker or has given up (errored)."""
        return all(self._slot_settled(self.slots[i]) for i in slot_ids)

    def failed_boot(self, slot_ids) -> _Slot | None:
        """A slot among these that failed its very first boot with a reported error."""
        for i in slot_ids:
            slot = self.slots[i]
            if slot.errored and slot.boot_error and slot.first_boot:
                return slot
        return None

    # ------------------------------------------------ commands: run in the supervisor thread

    def add_slots(self, count: int) -> list[int]:
        """Create ``count`` new worker slots and start a worker in each."""
        for slot_id in [i for i, s in self.slots.items() if not s.wanted and not self._live(s)]:
            del self.slots[slot_id]
        ids = []
        for _ in range(count):
            slot_id = next(i for i in range(1, len(self.slots) + 2) if i not in self.slots)
            slot = self.slots[slot_id] = _Slot(slot_id)
            self._spawn(slot)
            ids.append(slot_id)
        return ids

    def retire_slots(self, slot_ids) -> list[_Worker]:
        """Stop wanting these slots; their workers finish in-flight requests and exit."""
        retired = []
        for slot_id in slot_ids:
            slot = self.slots[slot_id]
            slot.wanted = False
            slot.restart_at = None
            for worker in self._live(slot):
                self._retire(worker, self.settings.graceful_timeout)
                retired.append(worker)
        return retired

    def replace(self, slot_id: int) -> _Worker | None:
        """Start a fresh worker in ``slot_id`` beside the current one (for a rolling reload)."""
        slot = self.slots[slot_id]
        if slot.errored:  # a reload is the user's "I fixed it, try again"
            slot.errored, slot.young_deaths, slot.backoff = False, 0, 0
            slot.first_boot = True
        slot.restart_at = None
        return self._spawn(slot)

    def retire_workers(self, workers) -> None:
        """Ask these workers to stop gracefully."""
        for worker in workers:
            self._retire(worker, self.settings.graceful_timeout)

    def reload(self, timeout: float) -> Steps:
        """Replace every worker, one slot at a time; with :meth:`perform`, answers how many.

        For each slot: start a new worker beside the old one, wait (up to ``timeout``) until it is
        ready, retire the old one and wait until it has exited. A new worker that does not get
        ready stops the reload there (:class:`ServerStartError`); the old workers keep serving.
        """
        ids = self.wanted_slots()
        for slot_id in ids:
            if self._closing:
                raise ServerStartError(f"reload stopped at worker {slot_id}: the cluster is stopping")
            old = self._live(self.slots[slot_id])
            new = self.replace(slot_id)
            if new is None:
                raise ServerStartError(f"reload stopped at worker {slot_id}: no new process could be started")
            yield self._until(functools.partial(_done_starting, new), timeout)
            if new.state is not WorkerState.READY:
                why = new.boot_error or new.kill_reason or diagnose(new.exitcode)
                raise ServerStartError(f"reload stopped at worker {slot_id}: the new process {why}; "
                                       "the other workers keep serving the previous code")
            self.retire_workers(old)
            yield self._until(functools.partial(_all_exited, old), self._exit_allowance())
        return len(ids)

    def scale(self, target: int, timeout: float) -> Steps:
        """Start or retire workers until ``target`` slots are wanted; with :meth:`perform`, answers
        how many were wanted before.

        New workers are waited for (up to ``timeout``) until ready or errored; retired ones (the
        newest slots) until they have exited.
        """
        current = self.wanted_slots()
        if target > len(current):
            ids = self.add_slots(target - len(current))
            yield self._until(lambda: self.settled(ids), timeout)
        elif target < len(current):
            retired = self.retire_slots(current[target:])
            yield self._until(lambda: _all_exited(retired), self._exit_allowance())
        return len(current)

    def _until(self, predicate: Callable[[], bool], timeout: float) -> Until:
        return Until(predicate, self.clock() + timeout)

    def _exit_allowance(self) -> float:
        """How long a retired worker may take to exit: its graceful stop, the kill margin, and slack."""
        return self.settings.graceful_timeout + self.settings.kill_margin + EXIT_SLACK

    def shutdown(self, timeout: float) -> None:
        """Stop taking connections, then stop every worker gracefully (killed after ``timeout``).

        Asked again while stopping (a second Ctrl-C), the shorter patience wins: ``timeout=0``
        kills every worker still running at once; a positive one brings their deadlines closer.
        """
        if self._closing:
            self._hurry(timeout)
            return
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.stop()
        for slot in self.slots.values():
            slot.restart_at = None
        for worker in list(self.workers):
            self._retire(worker, timeout)

    def _hurry(self, timeout: float) -> None:
        """A stop under way, asked again: kill now (``timeout <= 0``) or bring the deadlines closer."""
        now = self.clock()
        for worker in list(self.workers):
            if worker.kill_reason is not None:
                continue
            if timeout <= 0:
                self._kill(worker, "killed at once: asked to stop again while stopping")
            elif worker.stop_deadline is None or worker.stop_deadline > now + timeout:
                worker.stop_deadline = now + timeout

    # ------------------------------------------------------------------- the loop itself

    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    self._run_commands()
                    self._tick()
                    self._advance_operations()
                    if self._closing and not self.workers:
                        self.finished = True
                    waitables = self._waitables()
                    timeout = self._next_wakeup()
                    self.changed.notify_all()
                self._dispatch_events()
                if self.finished:
                    break
                ready = multiprocessing.connection.wait(waitables, timeout)
                with self.lock:
                    self._handle_ready(ready)
                    self._give_up_if_hopeless()
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave workers without a supervisor
            self.crashed = exc
            self._kill_everything(f"the supervisor crashed: {exc!r}")
        finally:
            self._close_sockets()
            with self.lock:
                self.finished = True
                self.changed.notify_all()
            self._dispatch_events()
            self._refuse_pending_commands()

    def _run_commands(self) -> None:
        while True:
            try:
                function, args, future, multi_step = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            if multi_step:
                self._operations.append(_Operation(function(*args), future))
                continue
            try:
                future.set_result(function(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                future.set_exception(exc)

    def _advance_operations(self) -> None:
        """Resume each multi-step command whose condition holds or whose deadline has passed."""
        for operation in list(self._operations):
            try:
                while operation.waiting is None or operation.waiting.predicate() \
                        or self.clock() >= operation.waiting.deadline:
                    operation.waiting = next(operation.steps)
            except StopIteration as done:
                self._operations.remove(operation)
                operation.future.set_result(done.value)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                self._operations.remove(operation)
                operation.future.set_exception(exc)

    def _refuse_pending_commands(self) -> None:
        refusal = "the cluster stopped before it could do that"
        for operation in self._operations:
            operation.steps.close()
            operation.future.set_exception(ServerStartError(refusal))
        self._operations.clear()
        while True:
            try:
                _, _, future, _ = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(ServerStartError(refusal))

    def _waitables(self) -> list:
        """What may wake the loop: the wake pipe, each worker's sentinel and open control pipe."""
        waitables: list = [self._wake_r]
        for worker in self.workers:
            waitables.append(worker.sentinel)
            if worker.control_open:
                waitables.append(worker.control)
        return waitables

    def _handle_ready(self, ready: list) -> None:
        """Act on what woke the loop: drain the wake pipe, read messages, reap exited workers."""
        if self._wake_r is not None and self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        for worker in list(self.workers):
            if worker.control_open and worker.control in ready:
                self._read_control(worker)
            if worker.sentinel in ready:
                self._reap(worker)

    def _next_wakeup(self) -> float:
        now = self.clock()
        settings = self.settings
        deadlines = [slot.restart_at for slot in self.slots.values() if slot.restart_at is not None]
        deadlines.extend(op.waiting.deadline for op in self._operations if op.waiting is not None)
        for worker in self.workers:
            if worker.state is WorkerState.READY:
                if settings.heartbeat_timeout > 0:  # 0: the hung-worker check is off
                    deadlines.append(worker.last_beat + settings.heartbeat_timeout)
                if self._acceptor is not None:  # round-robin looks at late workers (_pass_over_stalled)
                    interval = settings.heartbeat_interval
                    late_at = worker.last_beat + STALL_AFTER_BEATS * interval
                    looked = worker.progress_at + interval if worker.progress_at is not None else late_at
                    deadlines.append(max(late_at, looked))
            elif worker.state is WorkerState.STARTING:
                deadlines.append(worker.started_at + settings.startup_timeout)
            elif worker.stop_deadline is not None:
                deadlines.append(worker.stop_deadline)
        soonest = min(deadlines, default=now + settings.max_wait)
        return min(max(soonest - now, 0.0), settings.max_wait)

    def _tick(self) -> None:
        """Everything that is due by the clock, step by step."""
        now = self.clock()
        self._restart_due(now)
        self._pass_over_stalled(now)
        self._kill_silent(now)
        self._kill_overdue(now)

    def _restart_due(self, now: float) -> None:
        """Start a worker in each wanted, empty slot whose restart backoff has run out."""
        if self._closing:
            return
        for slot in self.slots.values():
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                if slot.wanted and not self._live(slot):
                    slot.restarts += 1
                    self._spawn(slot)

    def _pass_over_stalled(self, now: float) -> None:
        """Round-robin: stop handing connections to a worker that is late and makes no progress.

        Long before ``heartbeat_timeout`` replaces a hung worker, every connection handed to it
        would wait. A worker whose beat is :data:`STALL_AFTER_BEATS` intervals late is looked at
        once an interval: if its CPU time advanced since the last look (or beat), it is busy with
        a heavy request and keeps its turn; if not, the acceptor passes it over until it beats.
        """
        if self._acceptor is None:
            return
        interval = self.settings.heartbeat_interval
        for worker in self.workers:
            if worker.state is not WorkerState.READY or worker.kill_reason is not None:
                continue
            if now - worker.last_beat < STALL_AFTER_BEATS * interval:
                continue
            if worker.control_open:
                self._read_control(worker)  # beats may be waiting if *we* were the slow ones
                if now - worker.last_beat < STALL_AFTER_BEATS * interval or worker.state is not WorkerState.READY:
                    continue
            if worker.progress_at is not None and now - worker.progress_at < interval:
                continue  # looked at recently
            cpu = _cpu_seconds(worker.ps)
            if cpu is None:
                continue
            baseline, worker.progress_cpu, worker.progress_at = worker.progress_cpu, cpu, now
            if baseline is None:
                continue  # nothing to compare with yet (no beat since ready): judge at the next look
            progressing = cpu - baseline >= CPU_PROGRESS
            if progressing == (not worker.stalled):
                continue  # no change
            worker.stalled = not progressing
            self._acceptor.set_stalled(worker, worker.stalled)
            if worker.stalled:
                self._emit("stalled", f"no heartbeat for {now - worker.last_beat:.1f} s and no CPU used: "
                           "passed over by round-robin until it beats again", worker)
            else:
                self._emit("recovered", "busy, not hung (its CPU time advances): back in the rotation", worker)

    def _kill_silent(self, now: float) -> None:
        """Kill ready workers whose loop has sent no heartbeat for ``heartbeat_timeout`` (0: never)."""
        timeout = self.settings.heartbeat_timeout
        if timeout == 0:
            return
        for worker in list(self.workers):
            if worker.kill_reason is not None or worker.state is not WorkerState.READY:
                continue
            if now - worker.last_beat <= timeout:
                continue
            if worker.control_open:
                self._read_control(worker)  # beats may be waiting if *we* were the slow ones
            if now - worker.last_beat <= timeout or worker not in self.workers:
                continue
            reason = (f"no heartbeat for {now - worker.last_beat:.1f} s (heartbeat_timeout={timeout:g} s): "
                      "its event loop was blocked or it hung; killed so it can be replaced")
            self._emit("hung", reason, worker)
            self._kill(worker, reason)

    def _kill_overdue(self, now: float) -> None:
        """Kill workers past a deadline: not ready within ``startup_timeout``, or a stop overdue."""
        for worker in list(self.workers):
            if worker.kill_reason is not None:
                continue
            if worker.state is WorkerState.STARTING and now - worker.started_at > self.settings.startup_timeout:
                self._kill(worker, f"did not get ready within startup_timeout={self.settings.startup_timeout:g} s")
            elif worker.stop_deadline is not None and now > worker.stop_deadline:
                self._kill(worker, "was still busy when its graceful stop timed out; killed")

    # ---------------------------------------------------------------- worker bookkeeping

    def _spawn(self, slot: _Slot) -> _Worker | None:
        config, settings = self.config, self.settings
        if self.gave_up is not None:
            self._start_over()  # a reload or a scale after giving up: listen again first
        context = config.context
        primary_end, worker_end = context.Pipe(duplex=True)
        handoff_primary = handoff_worker = None
        if settings.balance == "round-robin":
            handoff_primary, handoff_worker = socket.socketpair()
            handoff_primary.setblocking(False)
        start_method = context.get_start_method()
        close_fds: tuple[int, ...] = ()
        if start_method == "fork":
            mine = [primary_end.fileno()] + ([handoff_primary.fileno()] if handoff_primary else [])
            close_fds = tuple(self._primary_fds() + mine)
        spec = WorkerSpec(
            app=config.app, worker_id=slot.id, primary_pid=os.getpid(), port=self.port or 0,
            start_method=start_method, settings=settings, options=dict(config.options), close_fds=close_fds,
        )
        listener = self._listener if settings.balance == "os" else None
        process = context.Process(target=run_worker, args=(spec, worker_end, listener, handoff_worker),
                                  name=f"labkit-worker-{slot.id}")
        try:
            process.start()
        except Exception as exc:  # noqa: BLE001 - no process: out of memory or descriptors, or unpicklable options
            primary_end.close()
            if handoff_primary is not None:
                handoff_primary.close()
            slot.errored = True
            slot.last_exit = f"could not start a worker process: {exc}"
            self._emit("errored", slot.last_exit, None, slot_id=slot.id)
            return None
        finally:
            worker_end.close()
            if handoff_worker is not None:
                handoff_worker.close()
        worker = _Worker(slot, process, primary_end, handoff_primary, self.clock())
        self.workers.append(worker)
        slot.latest = worker
        self._emit("starting", "starting", worker)
        return worker

    def _primary_fds(self) -> list[int]:
        """Descriptors a forked worker must close: everything that is the primary's alone."""
        fds = [s.fileno() for s in (self._wake_r, self._wake_w) if s is not None]
        if self._listener is not None and self.settings.balance != "os":
            fds.append(self._listener.fileno())
        if self._acceptor is not None:
            fds.extend(self._acceptor.fds())
        for worker in self.workers:
            if worker.control_open:
                fds.append(worker.control.fileno())
            if worker.handoff is not None:
                fds.append(worker.handoff.fileno())
        return fds

    def _read_control(self, worker: _Worker) -> None:
        try:
            while worker.control.poll():
                self._on_message(worker, worker.control.recv())
        except (EOFError, OSError):
            worker.control_open = False  # it is exiting; its sentinel will say when it is gone

    def _on_message(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        now = self.clock()
        if kind == BEAT:
            worker.last_beat = now
            worker.requests, worker.in_flight = int(message[1]), int(message[2])
            worker.cpu.sample(worker.ps, now)
            worker.progress_cpu = worker.cpu.samples[-1][1] if worker.cpu.samples else None
            worker.progress_at = None
            if worker.stalled:
                worker.stalled = False
                if self._acceptor is not None:
                    self._acceptor.set_stalled(worker, False)
                self._emit("recovered", "beating again: back in the rotation", worker)
        elif kind == READY and worker.state is WorkerState.STARTING:
            self._set_state(worker, WorkerState.READY)
            worker.ready_at = worker.last_beat = now
            worker.slot.first_boot = False
            if self._acceptor is not None:
                self._acceptor.add(worker, worker.handoff)
            self._emit("ready", f"ready in {now - worker.started_at:.2f} s", worker)
        elif kind == BOOT_ERROR:
            worker.boot_error = worker.slot.boot_error = message[1]
            worker.slot.boot_traceback = message[2] if len(message) > 2 else None
            self._emit("boot-error", f"could not boot: {message[1]}", worker)

    def _reap(self, worker: _Worker) -> None:
        if worker.control_open:
            self._read_control(worker)  # a boot error may have arrived with the exit
        worker.process.join(5)
        worker.exitcode = worker.process.exitcode
        self._release(worker)
        self.workers.remove(worker)
        self.served_by_exited += worker.requests
        self._set_state(worker, WorkerState.EXITED)
        slot = worker.slot
        reason = worker.kill_reason or diagnose(worker.exitcode, boot_error=worker.boot_error)
        if worker.planned and worker.kill_reason is None:
            self._emit("exited", "stopped" if worker.exitcode == 0 else f"stopped: {reason}", worker)
            return
        if self._closing:
            self._emit("exited", reason, worker)
            return
        slot.last_exit = reason
        if not slot.wanted or self._live(slot):
            self._emit("exited", reason, worker)  # a retired slot, or a failed reload replacement
            return
        uptime = self.clock() - worker.started_at
        decision = self.settings.policy.after_exit(uptime, slot.backoff, slot.young_deaths)
        slot.backoff, slot.young_deaths = decision.backoff, decision.young_deaths
        # A worker that reports a boot error before its slot ever served is not unlucky: the app
        # does not import, or its factory raises. Restarting would fail the same way; halt, as
        # gunicorn does.
        halt = slot.first_boot and worker.boot_error is not None
        if halt or decision.delay is None:
            self._set_state(worker, WorkerState.ERRORED)
            slot.errored = True
            self._emit("errored", self._give_up_message(slot, reason), worker)
        else:
            slot.restart_at = self.clock() + decision.delay
            self._emit("exited", f"{reason}; restarting in {decision.delay:.2f} s", worker)

    def _give_up_message(self, slot: _Slot, reason: str) -> str:
        if slot.first_boot and slot.boot_error:
            return f"{reason}; not restarting: fix the app, then start again (or call reload())"
        policy = self.settings.policy
        return (f"{reason}; it died {slot.young_deaths} times in a row within min_uptime={policy.min_uptime:g} s "
                "of starting, so it is not restarted again: fix the app, then call reload()")

    def _give_up_if_hopeless(self) -> None:
        """Close the port once every wanted worker has errored and none runs or will restart.

        Holding the port with nobody behind it makes clients hang until they time out; a closed
        port refuses them at once, which tells them (and their load balancer) the truth. The
        supervisor stays, so :meth:`reload` can start over (see :meth:`_start_over`).
        """
        if self._closing or self.gave_up is not None or self.workers:
            return
        wanted = [slot for slot in self.slots.values() if slot.wanted]
        if not wanted or not all(slot.errored for slot in wanted):
            return
        crashes = sum(slot.restarts + 1 for slot in wanted)
        last = wanted[-1].last_exit or "exited"
        policy = self.settings.policy
        self.gave_up = (
            f"every worker of {self.config.name or self.config.app!r} crashed and is not restarted: "
            f"{crashes} crashes over {len(wanted)} worker(s), the last: {last}. The port is closed so clients "
            f"are refused instead of left waiting. Fix the app (a worker that dies within min_uptime="
            f"{policy.min_uptime:g} s of starting, max_restarts={policy.max_restarts} times in a row, counts as "
            "broken; raise them only if it is just slow to settle), then reload() or start it again")
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._emit("gave-up", self.gave_up, None)

    def _start_over(self) -> None:
        """Listen again on the cluster's port after giving up (raises ServerStartError if it is taken)."""
        self._listen(self.port or self.settings.port)
        self.gave_up = None
        self._emit("listening", f"listening again on port {self.port}", None)

    def _retire(self, worker: _Worker, timeout: float) -> None:
        if worker.state not in (WorkerState.STARTING, WorkerState.READY):
            return
        self._set_state(worker, WorkerState.STOPPING)
        worker.planned = True
        if self._acceptor is not None:
            self._acceptor.remove(worker)  # no hand-off after this line
        worker.stop_deadline = self.clock() + timeout + self.settings.kill_margin
        try:
            worker.control.send((STOP, timeout))
        except OSError:
            pass  # it is already dying; the sentinel will tell
        self._emit("stopping", "finishing in-flight requests", worker)

    def _kill(self, worker: _Worker, reason: str) -> None:
        worker.kill_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass  # already gone

    def _release(self, worker: _Worker) -> None:
        worker.control_open = False
        worker.control.close()
        if worker.handoff is not None:
            if self._acceptor is not None:
                self._acceptor.remove(worker)
            worker.handoff.close()
        try:
            worker.process.close()
        except ValueError:
            pass  # still running: cannot happen after join() unless join timed out

    def _set_state(self, worker: _Worker, state: WorkerState) -> None:
        worker.state = LIFECYCLE.move(worker.state, state, f"worker {worker.slot.id}")

    def _live(self, slot: _Slot) -> list[_Worker]:
        return [w for w in self.workers if w.slot is slot]

    def _slot_settled(self, slot: _Slot) -> bool:
        if slot.errored:
            return True
        return any(w.state is WorkerState.READY for w in self._live(slot))

    def _record(self, worker: _Worker, now: float) -> WorkerStats:
        cpu, rss = 0.0, 0
        if worker.state.alive and worker.ps is not None:
            worker.cpu.sample(worker.ps, now)
            cpu = worker.cpu.percent()
            try:
                rss = worker.ps.memory_info().rss
            except psutil.Error:
                pass  # it exited meanwhile; report zero
        uptime = now - worker.started_at if worker.state.alive else 0.0
        return WorkerStats(
            id=worker.slot.id, pid=worker.pid, state=worker.state, uptime=uptime,
            restarts=worker.slot.restarts, requests=worker.requests, in_flight=worker.in_flight,
            cpu_percent=cpu, rss=rss, last_exit=worker.slot.last_exit,
        )

    # -------------------------------------------------------------------------- plumbing

    def _emit(self, kind: str, message: str, worker: _Worker | None, *, slot_id: int | None = None) -> None:
        event = ClusterEvent(kind, message, worker.slot.id if worker else slot_id, worker.pid if worker else None)
        self.events.append(event)
        self._pending_events.append(event)

    def _dispatch_events(self) -> None:
        with self.lock:
            pending, self._pending_events = self._pending_events, []
        for event in pending:
            if self._on_event is None:
                return
            try:
                self._on_event(event)
            except Exception as exc:  # noqa: BLE001 - a broken callback must not take the supervisor down
                self._on_event = None
                with self.lock:
                    self.events.append(ClusterEvent("error", f"on_change raised {exc!r}; it is no longer called"))

    def _wake(self) -> None:
        if self._wake_w is None:
            return  # not open yet: the loop is not running to be woken
        try:
            self._wake_w.send_bytes(b"x")
        except OSError:
            pass  # closed: the loop has ended, and the command will be refused

    def _kill_everything(self, why: str) -> None:
        with self.lock:
            self._closing = True
            for worker in list(self.workers):
                self._kill(worker, why)
            for worker in list(self.workers):
                worker.process.join(5)
                self._release(worker)
                self.workers.remove(worker)
                self._set_state(worker, WorkerState.EXITED)
                self._emit("exited", why, worker)
            if self._acceptor is not None:
                self._acceptor.stop()
                self._acceptor = None

    def _close_sockets(self) -> None:
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()


def _done_starting(worker: Any) -> bool:
    """Whether a new worker has left STARTING (ready, or failed)."""
    return worker.state is not WorkerState.STARTING


def _all_exited(workers) -> bool:
    return all(not w.state.alive for w in workers)


def _url(host: str, port: int) -> str:
    return f"http://{format_host(host)}:{port}"


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return (f"{host}:{port} is already in use: another server listens there. Stop it, or choose "
                "another port (port 0 lets the system pick a free one)")
    if exc.errno == errno.EACCES:
        return f"not allowed to bind {host}:{port}: ports below 1024 need privileges; use a port above 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; use 127.0.0.1 (or 0.0.0.0 for every interface)"
    return f"cannot bind {host}:{port}: {exc.strerror or exc}"
