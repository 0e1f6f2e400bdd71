"""The demo web app of the course, and a way to run any app in a background process.

The demo app is a small tornado application (tornado ships with Jupyter) whose endpoints are the
experiments of the labs:

==============================  ==========================================================
``/fast``                       answers at once: the request whose latency shows the loop's health
``/primes?n=100000&mode=sync``  pure-Python CPU work (:func:`~labkit.workloads.count_primes`)
``/hash?cost=15&mode=sync``     GIL-releasing CPU work (:func:`~labkit.workloads.hash_password`)
``/sleep?ms=100``               an I/O wait that never blocks the loop
``/pid``                        which process answered
``/crash?code=1``               the process exits at once, as a crashing worker would
``/stats``                      requests served and the app's own loop-lag probe (``?reset=1``)
==============================  ==========================================================

``mode`` chooses where the heavy endpoints compute: ``sync`` right on the event loop (blocking it),
``thread`` in a thread pool, ``process`` in a process pool. Every response carries an
``X-Worker-Pid`` header.

:class:`AppServer` runs an app in a child process so a notebook can be its client without sharing
its loop:

    notebook kernel (client)                       child: python -m labkit.apps
    ────────────────────────      stdin pipe       ─────────────────────────────
    AppServer.start()  ───────── lifeline ───────▶ EOF = parent gone: stop
                       ◀──── first stdout line ─── {"port": 41873, "pid": 5120}
    HTTP requests      ─────── 127.0.0.1:port ───▶ tornado on its own asyncio loop
                                                    └─ thread pool, process pool (lazy)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import asdict

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import _lifeline
from .cores import usable_cores
from .errors import ConfigurationError, ServerStartError
from .probe import LoopProbe
from .workloads import DEFAULT_HASH_COST, DEFAULT_PRIMES_LIMIT, count_primes, hash_password

__all__ = ["demo_app", "AppServer", "load_app"]

MODES = ("sync", "thread", "process")

# Largest sizes the demo endpoints accept, so a typo cannot tie up a worker for an hour.
MAX_PRIMES_LIMIT = 5_000_000
MAX_HASH_COST = 18
MAX_SLEEP_MS = 60_000


class _WorkerHandler(tornado.web.RequestHandler):
    """What every labkit demo endpoint does: name its process, and read bounded integer arguments."""

    def set_default_headers(self) -> None:
        self.set_header("X-Worker-Pid", str(os.getpid()))

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_argument(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, reason=f"{name} must be an integer") from None
        if not low <= value <= high:
            raise tornado.web.HTTPError(400, reason=f"{name} must be between {low} and {high}")
        return value


class _Base(_WorkerHandler):
    def prepare(self) -> None:
        self.application.settings["labkit_state"].requests += 1

    async def compute(self, function, *args):
        """Run ``function(*args)`` where ``?mode=`` says: on the loop, in a thread or a process."""
        mode = self.get_argument("mode", "sync")
        if mode not in MODES:
            raise tornado.web.HTTPError(400, reason=f"mode must be one of {', '.join(MODES)}")
        if mode == "sync":
            return function(*args)
        state = self.application.settings["labkit_state"]
        executor = state.threads() if mode == "thread" else state.processes()
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


class _Fast(_Base):
    def get(self) -> None:
        self.write("ok\n")


class _Primes(_Base):
    async def get(self) -> None:
        limit = self.int_argument("n", DEFAULT_PRIMES_LIMIT, 0, MAX_PRIMES_LIMIT)
        self.write({"n": limit, "primes": await self.compute(count_primes, limit)})


class _Hash(_Base):
    async def get(self) -> None:
        cost = self.int_argument("cost", DEFAULT_HASH_COST, 1, MAX_HASH_COST)
        self.write({"cost": cost, "hash": await self.compute(hash_password, b"demo", b"labkit", cost)})


class _Sleep(_Base):
    async def get(self) -> None:
        ms = self.int_argument("ms", 100, 0, MAX_SLEEP_MS)
        await asyncio.sleep(ms / 1000)
        self.write({"slept_ms": ms})


class _Pid(_Base):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


class _Crash(_Base):
    def get(self) -> None:
        code = self.int_argument("code", 1, 0, 255)
        os._exit(code)  # no response, no cleanup: exactly what a crash looks like to clients


class _Stats(_Base):
    def get(self) -> None:
        state = self.application.settings["labkit_state"]
        stats = state.probe.stats() if state.probe.running else None
        if self.get_argument("reset", "0") == "1" and state.probe.running:
            state.probe.reset()
        self.write({"pid": os.getpid(), "requests": state.requests, "lag": asdict(stats) if stats else None})


class _AppState:
    """What one demo app owns: its counters, its probe and its lazily made pools."""

    def __init__(self) -> None:
        self.requests = 0
        self.probe = LoopProbe()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None
        self.workers = usable_cores().usable

    def threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, self.workers), thread_name_prefix="demo-app"
            )
        return self._threads

    def processes(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._processes is None:
            # spawn everywhere: the server has threads, and fork with threads is unsafe (and
            # deprecated from Python 3.12). Pool workers watch this process and exit if it dies.
            self._processes = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lifeline.watch_parent,
                initargs=(os.getpid(),),
            )
        return self._processes

    def close(self) -> None:
        if self.probe.running:
            self.probe.stop()
        for pool in (self._threads, self._processes):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._threads = self._processes = None


class DemoApp(tornado.web.Application):
    """The course's demo application; see the module docstring for its endpoints.

    Besides tornado's ``Application`` it has the two hooks labkit's servers call on any app that
    defines them: ``labkit_start()`` once the loop runs, ``labkit_close()`` when serving ends.
    """

    def __init__(self, *, warm_processes: bool = False) -> None:
        super().__init__(
            [
                (r"/fast", _Fast),
                (r"/primes", _Primes),
                (r"/hash", _Hash),
                (r"/sleep", _Sleep),
                (r"/pid", _Pid),
                (r"/crash", _Crash),
                (r"/stats", _Stats),
            ],
            labkit_state=_AppState(),
            log_function=lambda handler: None,  # no access log: a child's output never reaches a cell
        )
        self.warm_processes = warm_processes

    @property
    def state(self) -> _AppState:
        return self.settings["labkit_state"]

    def labkit_start(self) -> None:
        """Start the app's loop probe (and warm its process pool, if asked)."""
        self.state.probe.start()
        if self.warm_processes:
            pool = self.state.processes()
            concurrent.futures.wait([pool.submit(count_primes, 10) for _ in range(self.state.workers)])

    def labkit_close(self) -> None:
        """Stop the probe and shut the pools down."""
        self.state.close()


def demo_app(warm_processes: bool = False) -> DemoApp:
    """Make the demo app. ``warm_processes`` starts its process pool before the first request."""
    return DemoApp(warm_processes=warm_processes)


def load_app(spec: str, **options) -> tornado.web.Application:
    """Import ``"package.module:factory"`` and call the factory with ``options``.

    An import string, not a function object, so that a fresh process (spawned, not forked) can
    build the app on its own.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"app must look like 'module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for app {spec!r}: {exc}") from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no {attr!r} (app {spec!r})") from None
    app = factory(**options) if callable(factory) and not isinstance(factory, tornado.web.Application) else factory
    if not isinstance(app, tornado.web.Application):
        raise ConfigurationError(f"{spec!r} gave {type(app).__name__}, not a tornado Application")
    return app


# --------------------------------------------------------------------------------------------
# AppServer: the parent side

# How long a child may take to import, build its app and listen. Imports of numpy and
# cryptography dominate: well under a second on a laptop, several on a loaded CI machine.
STARTUP_TIMEOUT = 60.0

# After the lifeline closes, how long the child gets to finish in-flight requests and shut its
# pools down before it is killed.
STOP_TIMEOUT = 10.0


class AppServer:
    """Run a tornado app in a background process on 127.0.0.1; a notebook can be its client.

    Use it as a context manager, so the server stops when the block ends, even on error::

        with AppServer("labkit.apps:demo_app") as server:
            ...  # requests to server.url

    The child stops by itself when this process dies (it watches a pipe from us), so a crashed or
    restarted kernel leaves no server behind.

    Args:
        app: import string ``"module:factory"`` of an app factory.
        host: address to bind; 127.0.0.1 keeps the server private to this machine.
        port: 0 lets the OS pick a free port.
        options: keyword arguments for the factory; JSON-serialisable values only.
    """

    def __init__(self, app: str = "labkit.apps:demo_app", *, host: str = "127.0.0.1", port: int = 0, **options):
        self.app = app
        self.host = host
        self.options = options
        self.port = port
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:41873``."""
        if self._proc is None:
            raise ServerStartError("the server is not running; call start() or use 'with AppServer(...)'")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> AppServer:
        """Start the child and wait until it listens. Returns ``self``."""
        if self._proc is not None:
            return self
        errors = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "labkit.apps", "--app", self.app, "--host", self.host,
                   "--port", str(self.port), "--options", json.dumps(self.options)]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        self._finalizer = weakref.finalize(self, _terminate, proc, errors)
        line = _read_line(proc.stdout, STARTUP_TIMEOUT)
        try:
            hello = json.loads(line)
        except ValueError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)  # give a dying child a moment, so its exit status can be reported
            message = self._startup_failure(proc, errors, line)
            self._finalizer()
            raise ServerStartError(message) from None
        self._proc, self.port, self.pid = proc, hello["port"], hello["pid"]
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the server gracefully (kill it after ``timeout``); return its exit code."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        code = _terminate(proc, None, timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer()
        return code

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" {self.url} pid={self.pid}" if self.running else ""
        return f"<AppServer {self.app!r} {'running' if self.running else 'stopped'}{where}>"

    def _startup_failure(self, proc, errors, line: bytes) -> str:
        errors.seek(0)
        tail = errors.read()[-4000:].decode(errors="replace").strip().splitlines()
        reason = tail[-1] if tail else (line.decode(errors="replace").strip() or "no output")
        code = proc.poll()
        status = f"exited with status {code}" if code is not None else "did not answer in time"
        return f"app {self.app!r} failed to start ({status}): {reason}"


def _read_line(stream, timeout: float) -> bytes:
    """Read one line from a pipe, giving up after ``timeout`` (works on every OS)."""
    box: list[bytes] = [b""]
    reader = threading.Thread(target=lambda: box.__setitem__(0, stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0]


def _terminate(proc: subprocess.Popen, errors, timeout: float = STOP_TIMEOUT) -> int | None:
    """Close the lifeline, wait for a graceful exit, kill after ``timeout``; close our pipes."""
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()  # EOF on the child's stdin: stop serving and exit
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc.stdout and not proc.stdout.closed:
            proc.stdout.close()
        if errors is not None:
            errors.close()
    return proc.returncode


# --------------------------------------------------------------------------------------------
# The child side: python -m labkit.apps --app module:factory --port 0


def serve_child(spec: str, host: str, port: int, options: dict) -> int:
    """Serve ``spec`` until stdin closes or SIGTERM arrives; the body of ``python -m labkit.apps``."""
    app = load_app(spec, **options)
    sockets = tornado.netutil.bind_sockets(port, host)
    bound_port = sockets[0].getsockname()[1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        _lifeline.watch_stdin(lambda: loop.call_soon_threadsafe(stop.set))
        if hasattr(signal, "SIGTERM") and sys.platform != "win32":
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        if hasattr(app, "labkit_start"):
            app.labkit_start()
        sys.stdout.write(json.dumps({"port": bound_port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        _silence_stdout()
        try:
            await stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()
            if hasattr(app, "labkit_close"):
                app.labkit_close()

    asyncio.run(main())
    return 0


def _silence_stdout() -> None:
    """After the handshake nothing may write to the pipe the parent no longer reads."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.apps", description="Serve an app for AppServer.")
    parser.add_argument("--app", default="labkit.apps:demo_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--options", default="{}", help="factory keyword arguments as JSON")
    args = parser.parse_args(argv)
    return serve_child(args.app, args.host, args.port, json.loads(args.options))


if __name__ == "__main__":
    sys.exit(_main())
