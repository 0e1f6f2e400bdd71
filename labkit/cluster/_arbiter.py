"""The supervisor loop of a cluster, running in a background thread of the primary.

Shaped like gunicorn's arbiter: whoever wants something (the notebook calling ``reload()``, a
signal handler of ``labkit serve``) only *queues* a command; one loop does everything else::

    while not finished:
        run queued commands            spawn, retire, replace, shut down
        tick                           restarts that are due, heartbeats that are late,
                                       workers that overstay their start or stop deadline
        wait(control pipes + sentinels + wake pipe, until the next deadline)
        read what workers said         ready, beat, boot_error
        reap workers that exited       diagnose, then restart with backoff, or give up

Only this thread touches processes and pipes. Other threads read state under :attr:`Arbiter.lock`
and wait on :attr:`Arbiter.changed`, which is notified after every pass.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from ._balance import Acceptor, bind_listener
from ._state import (
    LIFECYCLE,
    ClusterEvent,
    ClusterStats,
    RestartPolicy,
    WorkerState,
    WorkerStats,
    diagnose,
)
from ._worker import WorkerSpec, run_worker
from ..errors import ServerStartError

__all__ = ["Arbiter", "ArbiterConfig"]

# How many events a cluster remembers for late readers (a widget opened after the fact).
EVENT_HISTORY = 500


@dataclass(frozen=True)
class ArbiterConfig:
    """Everything the supervisor needs; :class:`labkit.cluster.Cluster` fills it in."""

    app: str
    balance: str
    host: str
    port: int
    context: Any  # a multiprocessing context
    policy: RestartPolicy
    heartbeat_interval: float
    heartbeat_timeout: float
    startup_timeout: float
    graceful_timeout: float
    kill_margin: float
    drain_quiet: float
    max_wait: float
    backlog: int
    options: dict = field(default_factory=dict)
    name: str = ""  # how messages and stats name the app, when ``app`` is not what the user wrote


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


class Arbiter:
    """Supervise the worker processes of one cluster (see the module docstring)."""

    def __init__(self, config: ArbiterConfig, on_event: Callable[[ClusterEvent], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
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
        self._on_event = on_event
        self._pending_events: list[ClusterEvent] = []
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- used by other threads

    def open(self) -> None:
        """Bind the cluster's socket and start the supervisor thread (no workers yet)."""
        config = self.config
        try:
            self._listener = bind_listener(
                config.host, config.port, reuse_port=config.balance == "reuseport",
                listen=config.balance != "reuseport", backlog=config.backlog,
            )
        except OSError as exc:
            raise ServerStartError(_bind_failure(config.host, config.port, exc)) from exc
        self.port = self._listener.getsockname()[1]
        # A pipe, not a socketpair: multiprocessing.connection.wait takes pipes on every OS.
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        if config.balance == "round-robin":
            self._acceptor = Acceptor(self._listener)
            self._acceptor.start()
        self._thread = threading.Thread(target=self._run, name="labkit-cluster-arbiter", daemon=True)
        self._thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` in the supervisor thread; its result arrives in the future."""
        future: Future = Future()
        if self.finished:
            future.set_exception(ServerStartError("the cluster has stopped; start a new one"))
            return future
        self._commands.put((function, args, future))
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
            url = None if self.finished or self.port is None else _url(self.config.host, self.port)
            return ClusterStats(self.config.name or self.config.app, url, self.config.balance, wanted, tuple(records), total)

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
                self._retire(worker, self.config.graceful_timeout)
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
            self._retire(worker, self.config.graceful_timeout)

    def shutdown(self, timeout: float) -> None:
        """Stop taking connections, then stop every worker gracefully (killed after ``timeout``)."""
        if self._closing:
            return
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.stop()
        for slot in self.slots.values():
            slot.restart_at = None
        for worker in list(self.workers):
            self._retire(worker, timeout)

    # ------------------------------------------------------------------- the loop itself

    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    self._run_commands()
                    self._tick()
                    if self._closing and not self.workers:
                        self.finished = True
                    waitables, owners = self._waitables()
                    timeout = self._next_wakeup()
                    self.changed.notify_all()
                self._dispatch_events()
                if self.finished:
                    break
                ready = multiprocessing.connection.wait(waitables, timeout)
                with self.lock:
                    for item in ready:
                        self._handle_ready(item, owners)
        except BaseException as exc:  # a bug here must not leave workers without a supervisor
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
                function, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except Exception as exc:  # handed to the caller, who re-raises it
                    future.set_exception(exc)

    def _refuse_pending_commands(self) -> None:
        while True:
            try:
                _, _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(ServerStartError("the cluster stopped before it could do that"))

    def _waitables(self) -> tuple[list, dict[Any, tuple[str, _Worker | None]]]:
        owners: dict[Any, tuple[str, _Worker | None]] = {id(self._wake_r): ("wake", None)}
        waitables: list = [self._wake_r]
        for worker in self.workers:
            waitables.append(worker.sentinel)
            owners[("fd", worker.sentinel)] = ("sentinel", worker)
            if worker.control_open:
                waitables.append(worker.control)
                owners[id(worker.control)] = ("control", worker)
        return waitables, owners

    def _handle_ready(self, item, owners) -> None:
        kind, worker = owners.get(("fd", item) if isinstance(item, int) else id(item), ("?", None))
        if kind == "wake" and self._wake_r is not None:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        elif kind == "control" and worker in self.workers:
            self._read_control(worker)
        elif kind == "sentinel" and worker in self.workers:
            self._reap(worker)

    def _next_wakeup(self) -> float:
        now = self.clock()
        config = self.config
        deadlines = [slot.restart_at for slot in self.slots.values() if slot.restart_at is not None]
        for worker in self.workers:
            if worker.state is WorkerState.READY:
                deadlines.append(worker.last_beat + config.heartbeat_timeout)
            elif worker.state is WorkerState.STARTING:
                deadlines.append(worker.started_at + config.startup_timeout)
            elif worker.stop_deadline is not None:
                deadlines.append(worker.stop_deadline)
        soonest = min(deadlines, default=now + config.max_wait)
        return min(max(soonest - now, 0.0), config.max_wait)

    def _tick(self) -> None:
        now = self.clock()
        config = self.config
        for slot in self.slots.values():
            if slot.restart_at is not None and now >= slot.restart_at and not self._closing:
                slot.restart_at = None
                if slot.wanted and not self._live(slot):
                    slot.restarts += 1
                    self._spawn(slot)
        for worker in list(self.workers):
            if worker.kill_reason is not None:
                continue
            if worker.state is WorkerState.READY and now - worker.last_beat > config.heartbeat_timeout:
                if worker.control_open:
                    self._read_control(worker)  # beats may be waiting if *we* were the slow ones
                if now - worker.last_beat <= config.heartbeat_timeout or worker not in self.workers:
                    continue
                silent = now - worker.last_beat
                reason = (f"no heartbeat for {silent:.1f} s (heartbeat_timeout={config.heartbeat_timeout:g} s): "
                          "its event loop was blocked or it hung; killed so it can be replaced")
                self._emit("hung", reason, worker)
                self._kill(worker, reason)
            elif worker.state is WorkerState.STARTING and now - worker.started_at > config.startup_timeout:
                self._kill(worker, f"did not get ready within startup_timeout={config.startup_timeout:g} s")
            elif worker.stop_deadline is not None and now > worker.stop_deadline:
                self._kill(worker, "was still busy when its graceful stop timed out; killed")

    # ---------------------------------------------------------------- worker bookkeeping

    def _spawn(self, slot: _Slot) -> _Worker | None:
        config = self.config
        context = config.context
        primary_end, worker_end = context.Pipe(duplex=True)
        handoff_primary = handoff_worker = None
        if config.balance == "round-robin":
            handoff_primary, handoff_worker = socket.socketpair()
            handoff_primary.setblocking(False)
        start_method = context.get_start_method()
        close_fds: tuple[int, ...] = ()
        if start_method == "fork":
            mine = [primary_end.fileno()] + ([handoff_primary.fileno()] if handoff_primary else [])
            close_fds = tuple(self._primary_fds() + mine)
        spec = WorkerSpec(
            app=config.app, worker_id=slot.id, primary_pid=os.getpid(), balance=config.balance,
            host=config.host, port=self.port or 0, heartbeat_interval=config.heartbeat_interval,
            graceful_timeout=config.graceful_timeout, drain_quiet=config.drain_quiet,
            start_method=start_method, options=dict(config.options), close_fds=close_fds,
        )
        listener = self._listener if config.balance == "os" else None
        process = context.Process(target=run_worker, args=(spec, worker_end, listener, handoff_worker),
                                  name=f"labkit-worker-{slot.id}")
        try:
            process.start()
        except Exception as exc:  # no process: out of memory or descriptors, or unpicklable options
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
        if self._listener is not None and self.config.balance != "os":
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
        if kind == "beat":
            worker.last_beat = now
            worker.requests, worker.in_flight = int(message[1]), int(message[2])
            worker.cpu.sample(worker.ps, now)
        elif kind == "ready" and worker.state is WorkerState.STARTING:
            self._set_state(worker, WorkerState.READY)
            worker.ready_at = worker.last_beat = now
            worker.slot.first_boot = False
            if self._acceptor is not None:
                self._acceptor.add(worker, worker.handoff)
            self._emit("ready", f"ready in {now - worker.started_at:.2f} s", worker)
        elif kind == "boot_error":
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
        decision = self.config.policy.after_exit(uptime, slot.backoff, slot.young_deaths)
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
        policy = self.config.policy
        return (f"{reason}; it died {slot.young_deaths} times in a row within min_uptime={policy.min_uptime:g} s "
                "of starting, so it is not restarted again: fix the app, then call reload()")

    def _retire(self, worker: _Worker, timeout: float) -> None:
        if worker.state not in (WorkerState.STARTING, WorkerState.READY):
            return
        self._set_state(worker, WorkerState.STOPPING)
        worker.planned = True
        if self._acceptor is not None:
            self._acceptor.remove(worker)  # no hand-off after this line
        worker.stop_deadline = self.clock() + timeout + self.config.kill_margin
        try:
            worker.control.send(("stop", timeout))
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
            except Exception as exc:  # a broken callback must not take the supervisor down
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


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
