"""The worker side of a cluster: one process, one asyncio loop, one copy of the app.

A worker is started by the supervisor with :func:`run_worker` as its ``multiprocessing`` target.
Everything it needs arrives as arguments, so fork and spawn behave alike: the :class:`WorkerSpec`
(plain data), its end of the control pipe, and, depending on the balancing mode, the shared
listening socket (``os``) or its end of the hand-off channel (``round-robin``). Under spawn,
``multiprocessing`` passes those descriptors to the new interpreter itself (its ``DupFd``
reduction puts them in the child's inherited descriptors); under fork the child simply has them.

What the worker says on the control pipe, in order (the tags are the constants below)::

    (BOOT_ERROR, "one line", traceback)  could not import/build the app or bind (traceback: the
                                         full text); exits with status 3
    (READY, pid)                         listening (or taking hand-offs): count me in
    (BEAT, served, in_flight)            every heartbeat interval, from the event loop itself
    (BEAT, served, 0)                    a last one after draining, just before a clean exit

What it hears: ``(STOP, timeout)``, or end of file when the primary is gone. Either way it stops
taking new connections, marks its remaining responses ``Connection: close``, finishes what is in
flight (within ``timeout``) and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from .. import _lifeline
from ._balance import bind_listener, receive_handoffs
from ._settings import ClusterSettings
from ._state import BOOT_ERROR_EXIT

__all__ = ["WorkerSpec", "run_worker", "WORKER_ID_ENV"]

#: Environment variable that tells the app which worker slot it runs in ("1", "2", ...), like
#: PM2's ``NODE_APP_INSTANCE``.
WORKER_ID_ENV = "LABKIT_WORKER_ID"

# Tags of the control-pipe messages (see the module docstring), shared with the arbiter.
#: Primary to worker: finish in-flight requests within the given seconds, then exit.
STOP = "stop"
#: Worker to primary: listening (or taking hand-offs), with its pid.
READY = "ready"
#: Worker to primary: alive, with requests served and in flight.
BEAT = "beat"
#: Worker to primary: could not boot, with a one-line reason and the traceback.
BOOT_ERROR = "boot_error"

# While draining, how often the worker checks whether it is done.
_DRAIN_POLL = 0.05


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to know, as picklable plain data.

    ``settings`` are the cluster's (its address, balancing, heartbeat and drain timing);
    ``port`` is the one the primary bound, which differs from ``settings.port`` when that is 0.
    """

    app: str
    worker_id: int
    primary_pid: int
    port: int
    start_method: str
    settings: ClusterSettings
    options: dict = field(default_factory=dict)
    close_fds: tuple[int, ...] = ()


class _Tally:
    """Requests counted by the app's transform (start) and log function (finish)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.last_start = 0.0
        self.draining = False

    @property
    def in_flight(self) -> int:
        return max(self.started - self.finished, 0)


def run_worker(spec: WorkerSpec, control: Connection, listener: socket.socket | None,
               handoff: socket.socket | None) -> None:
    """Serve ``spec.app`` until told to stop; the body of every worker process."""
    _settle_process(spec)
    _lifeline.watch_parent(spec.primary_pid)  # never outlive the primary, however it dies
    try:
        app, sockets = _boot(spec, listener)
    except BaseException as exc:  # noqa: BLE001 - any failure to boot is reported, then we exit
        _report_boot_error(control, exc)
        sys.exit(BOOT_ERROR_EXIT)
    asyncio.run(_serve(spec, app, sockets, control, handoff))


def _settle_process(spec: WorkerSpec) -> None:
    """Make this process a worker: signals, inherited descriptors, standard streams."""
    # Ctrl-C in a terminal, or a Jupyter interrupt, goes to the whole process group. The primary
    # decides what it means; a worker only stops when the primary (or SIGTERM) tells it to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if spec.start_method == "fork":
        try:
            signal.set_wakeup_fd(-1)  # a forked child must not poke the primary's wake-up pipe
        except ValueError:
            pass  # not the main thread: nothing was inherited there
        # fork copied every descriptor of the primary. Close the ones that are the primary's
        # alone (its ends of other workers' pipes, a listener we must not hold, ...), so that
        # a dead primary means end-of-file here, and a stopped cluster frees its port.
        for fd in spec.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass  # already closed: nothing to do
        # Fresh stream objects on the same descriptors: the inherited ones may be a notebook
        # kernel's (which forward to threads that did not survive the fork), or have had their
        # lock held by another thread at the moment of the fork (which would then never unlock).
        sys.stdout = _fresh_stream(1, sys.stdout)
        sys.stderr = _fresh_stream(2, sys.stderr)


def _fresh_stream(fd: int, fallback):
    try:
        return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    except OSError:
        return fallback  # no such descriptor: keep what we have


def _boot(spec: WorkerSpec, listener: socket.socket | None):
    """Build the app and the sockets it serves; raises whatever goes wrong."""
    from ..apps import load_app  # imported here: the primary never needs tornado for this

    os.environ[WORKER_ID_ENV] = str(spec.worker_id)
    if spec.settings.app_dir not in sys.path:  # "labkit serve goodapp:app" in goodapp.py's folder
        sys.path.insert(0, spec.settings.app_dir)
    app = load_app(spec.app, **spec.options)
    sockets: list[socket.socket] = []
    if spec.settings.balance == "os":
        assert listener is not None, "os balancing needs the primary's listening socket"
        sockets.append(listener)
    elif spec.settings.balance == "reuseport":
        sockets.append(bind_listener(spec.settings.host, spec.port, reuse_port=True))
    for sock in sockets:
        sock.setblocking(False)
    return app, sockets


def _report_boot_error(control: Connection, exc: BaseException) -> None:
    from ..errors import LabkitError

    text = str(exc) if isinstance(exc, LabkitError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None and "bind" not in text:
        text = f"could not bind its socket: {text}"
    import traceback

    details = "".join(traceback.format_exception(exc))
    try:
        control.send((BOOT_ERROR, " ".join(text.split()), details))
    except OSError:
        pass  # the primary is gone; our exit status still says "boot error"


def _count_requests(app, tally: _Tally) -> None:
    """Count requests as they start (a transform) and finish (the log function)."""
    import tornado.web

    class CountingTransform(tornado.web.OutputTransform):
        def __init__(self, request) -> None:
            tally.started += 1
            tally.last_start = time.monotonic()

        def transform_first_chunk(self, status_code, headers, chunk, finishing):
            if tally.draining:
                # Ask the client to go elsewhere for its next request, so that closing this
                # worker's connections never races with a request sent on them.
                headers["Connection"] = "close"
            return status_code, headers, chunk

    app.add_transform(CountingTransform)
    original = app.settings.get("log_function")

    def count_and_log(handler) -> None:
        tally.finished += 1
        if original is not None:
            original(handler)

    app.settings["log_function"] = count_and_log


async def _serve(spec: WorkerSpec, app, sockets: list[socket.socket], control: Connection,
                 handoff: socket.socket | None) -> None:
    import tornado.httpserver
    import tornado.iostream

    loop = asyncio.get_running_loop()
    tally = _Tally()
    _count_requests(app, tally)
    # idle_connection_timeout bounds both a silent kept-alive connection and a header that
    # arrives too slowly (tornado uses it as the header timeout too).
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=spec.settings.idle_timeout)
    stop = asyncio.Event()
    stop_timeout = [spec.settings.graceful_timeout]

    def on_control() -> None:
        try:
            while control.poll():
                message = control.recv()
                if message[0] == STOP:
                    stop_timeout[0] = float(message[1])
                    stop.set()
        except (EOFError, OSError):  # the primary is gone: stop like a STOP message
            loop.remove_reader(control.fileno())
            stop.set()

    def serve_connection(connection: socket.socket) -> None:
        try:
            connection.setblocking(False)
            address = connection.getpeername()
        except OSError:
            connection.close()  # the client already hung up
            return
        stream = tornado.iostream.IOStream(connection, max_buffer_size=server.max_buffer_size,
                                           read_chunk_size=server.read_chunk_size)
        server.handle_stream(stream, address)

    def take_connections() -> None:
        assert handoff is not None, "only round-robin workers take hand-offs"
        try:
            connections = receive_handoffs(handoff)
        except OSError:
            connections = None
        if connections is None:
            loop.remove_reader(handoff.fileno())
            return
        for connection in connections:
            serve_connection(connection)

    loop.add_reader(control.fileno(), on_control)
    if hasattr(signal, "SIGTERM") and sys.platform != "win32":
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    server.add_sockets(sockets)
    if handoff is not None:
        handoff.setblocking(False)
        loop.add_reader(handoff.fileno(), take_connections)
    try:
        if hasattr(app, "labkit_start"):
            app.labkit_start()
    except BaseException as exc:  # noqa: BLE001 - a failing start hook is a boot error too
        server.stop()
        _report_boot_error(control, exc)
        raise SystemExit(BOOT_ERROR_EXIT) from None
    _send(control, stop, (READY, os.getpid()))
    beating = loop.create_task(_beat(control, tally, spec.settings.heartbeat_interval, stop))
    try:
        await stop.wait()
        tally.draining = True
        if spec.settings.balance == "reuseport":
            # Closing a SO_REUSEPORT socket resets the connections still queued on it (the
            # kernel does not move them to the other workers' sockets). Take them first.
            for sock in sockets:
                for connection in _accept_pending(sock):
                    serve_connection(connection)
        server.stop()
        if handoff is not None:
            take_connections()  # anything the primary sent before it stopped sending to us
            if handoff.fileno() >= 0:
                loop.remove_reader(handoff.fileno())
        await _drain(server, tally, stop_timeout[0], spec.settings.drain_quiet)
    finally:
        beating.cancel()
        if hasattr(app, "labkit_close"):
            app.labkit_close()
    _send(control, None, (BEAT, tally.finished, 0))


def _accept_pending(sock: socket.socket) -> list[socket.socket]:
    """Accept every connection already queued on a non-blocking listening socket."""
    pending: list[socket.socket] = []
    while True:
        try:
            connection, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return pending
        except ConnectionAbortedError:
            continue  # the client gave up before we got to it; look at the next one
        except OSError:
            return pending  # out of descriptors, say: what is left gets reset, as it would anyway
        pending.append(connection)


async def _beat(control: Connection, tally: _Tally, interval: float, stop: asyncio.Event) -> None:
    """Tell the primary we are alive, from the loop itself: a blocked loop sends nothing."""
    while True:
        await asyncio.sleep(interval)
        _send(control, stop, (BEAT, tally.finished, tally.in_flight))


def _send(control: Connection, stop: asyncio.Event | None, message: tuple) -> None:
    try:
        control.send(message)
    except OSError:
        if stop is not None:
            stop.set()  # the primary is gone


async def _drain(server, tally: _Tally, timeout: float, quiet: float) -> None:
    """Wait until no request is in flight and none has started for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if tally.in_flight == 0 and time.monotonic() - tally.last_start >= quiet:
            break
        await asyncio.sleep(_DRAIN_POLL)
    try:
        await asyncio.wait_for(server.close_all_connections(), max(deadline - loop.time(), 0.5))
    except asyncio.TimeoutError:
        pass  # requests still running after the graceful timeout are cut off as we exit
