"""Load any app by its import string, and run it in a background process.

:func:`load_app` turns ``"module:factory"`` into a tornado application; the cluster's workers and
:class:`AppServer` both build their apps with it. :class:`AppServer` runs an app in a child process
so a notebook can be its client without sharing its loop:

    notebook kernel (client)                       child: python -m labkit.apps
    ────────────────────────      stdin pipe       ─────────────────────────────
    AppServer.start()  ───────── lifeline ───────▶ EOF = parent gone: stop
                       ◀──── first stdout line ─── {"port": 41873, "pid": 5120}
    HTTP requests      ─────── 127.0.0.1:port ───▶ tornado on its own asyncio loop
                                                    └─ thread pool, process pool (lazy)

The course's demo app lives in :mod:`labkit.demo`; ``labkit.demo:demo_app``, the name used before
the demo had a package of its own, still resolves to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import _lifeline
from ._format import format_host
from .errors import ConfigurationError, ServerStartError

__all__ = ["AppServer", "load_app", "DEMO_APP"]

#: The import string of the course's demo app, the default app of :class:`AppServer`.
DEMO_APP = "labkit.demo:demo_app"


def __getattr__(name: str) -> Any:
    # Exercises already handed out name "labkit.demo:demo_app": keep that working without making
    # every importer of this module (the cluster's workers among them) import the demo.
    if name in ("demo_app", "DemoApp"):
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module 'labkit.apps' has no attribute {name!r}")


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

        with AppServer("labkit.demo:demo_app") as server:
            ...  # requests to server.url

    The child stops by itself when this process dies (it watches a pipe from us), so a crashed or
    restarted kernel leaves no server behind.

    Args:
        app: import string ``"module:factory"`` of an app factory.
        host: address to bind; 127.0.0.1 keeps the server private to this machine.
        port: 0 lets the OS pick a free port.
        options: keyword arguments for the factory; JSON-serialisable values only.
    """

    def __init__(self, app: str = DEMO_APP, *, host: str = "127.0.0.1", port: int = 0, **options):
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
        return f"http://{format_host(self.host)}:{self.port}"

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

        def stop_soon() -> None:  # runs in the watcher's thread
            loop.call_soon_threadsafe(stop.set)

        _lifeline.watch_stdin(stop_soon)
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
    parser.add_argument("--app", default=DEMO_APP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--options", default="{}", help="factory keyword arguments as JSON")
    args = parser.parse_args(argv)
    return serve_child(args.app, args.host, args.port, json.loads(args.options))


if __name__ == "__main__":
    sys.exit(_main())
