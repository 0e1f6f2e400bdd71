"""A cluster's settings, each declared once: name, default, help, validation, command-line flag.

In the spirit of gunicorn's ``config.py``: every setting a user may choose is one field of
:class:`ClusterSettings`, declared with :func:`setting`. Everything else is derived from those
declarations:

- :class:`~labkit.cluster.Cluster` takes them as keyword arguments with these defaults, and
  checks them by building a :class:`ClusterSettings` (each field's check runs in ``__post_init__``);
- the supervisor's :class:`~labkit.cluster._arbiter.ArbiterConfig` and each worker's
  :class:`~labkit.cluster._worker.WorkerSpec` carry the :class:`ClusterSettings` itself;
- ``labkit serve`` adds one option per setting that has a flag (:func:`add_arguments`), whose
  help states the default as it really is.

Fields declared with :func:`tunable` are fixed by labkit (no keyword argument of ``Cluster``, no
flag); tests may still pick other values.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..cores import check_start_method
from ..errors import ConfigurationError
from ._balance import BALANCE_MODES, DEFAULT_BALANCE, check_balance
from ._state import RestartPolicy

__all__ = ["ClusterSettings", "Setting", "declared", "add_arguments", "from_arguments"]

# ---------------------------------------------------------------------------------- tunables
# Every number below trades one good thing for another; the comment says which.

# First restart comes this soon after a crash. Small, so a one-off crash costs little capacity;
# not zero, so a worker that dies instantly cannot make the primary fork in a tight loop.
RESTART_DELAY = 0.1

# Each further restart in a row waits this many times longer. 2 (the classic) reaches the cap in
# a handful of crashes and then leaves a slot empty for long after a brief outage; 1.5 backs off
# more gently, so a flapping dependency is retried often while it recovers.
BACKOFF_FACTOR = 1.5

# The longest wait between restarts. Longer spares the machine from a hopeless worker; shorter
# brings the capacity back sooner once the cause is fixed.
MAX_RESTART_DELAY = 10.0

# A worker up this long has proved itself: its next crash is bad luck again and waits only
# RESTART_DELAY. Shorter forgives a flapping worker too soon; longer punishes a healthy one.
STABLE_UPTIME = 30.0

# Dying within this many seconds of starting counts as "crashing at boot" for the crash-loop
# guard (PM2's min_uptime). Too short and a slow-to-crash app loops forever; too long and a
# genuine runtime crash soon after start is mistaken for a broken app.
MIN_UPTIME = 1.0

# A worker that crashes at boot more than this many times in a row is marked errored and left
# alone: the app is broken, and restarting it forever only burns CPU and hides the error.
MAX_RESTARTS = 5

# How often a worker's event loop tells the primary it is alive (and how many requests it has
# served), at most. More often: fresher stats and faster hang detection, but more wake-ups for
# everyone. A short heartbeat_timeout shortens it (see ClusterSettings.heartbeat_interval).
HEARTBEAT_INTERVAL = 1.0

# A worker silent for this long is hung (its loop blocked by a long synchronous computation, a
# deadlock, ...) and is killed and replaced. gunicorn's default; shorter also kills workers that
# are merely busy with a legitimately long synchronous request.
HEARTBEAT_TIMEOUT = 30.0

# How long a stopping worker may take to finish its in-flight requests before it is killed. Long
# enough for slow requests; short enough that a reload or Ctrl-C does not seem to hang.
GRACEFUL_TIMEOUT = 10.0

# Extra time after GRACEFUL_TIMEOUT before the primary kills a worker that has not exited (it
# may be writing its last responses).
KILL_MARGIN = 2.0

# A connection that sends nothing (an idle keep-alive) or only part of a request's header for this
# long is closed by the worker (tornado's idle_connection_timeout, whose default is an hour). Long
# enough for a client to reuse its kept-alive connection between requests; short enough that
# slow or stuck clients cannot hold a worker's connections (and descriptors) for long.
IDLE_TIMEOUT = 15.0

# How long a worker may take to import, build its app and listen. Spawned workers import
# tornado and numpy afresh: well under a second on a laptop, several on a loaded CI machine.
STARTUP_TIMEOUT = 60.0

# A draining worker exits once no request is in flight and none has started for this long. Its
# last responses say "Connection: close", so clients move on; the pause lets a request already
# on its way over a kept-alive connection arrive and be served instead of cut off.
DRAIN_QUIET = 0.3

# Longest the supervisor sleeps with nothing due. It wakes earlier for any deadline or message;
# this only bounds how stale a missed deadline could get. Once a second costs nothing.
SUPERVISOR_MAX_WAIT = 1.0

# Connections the kernel queues for accept() before refusing more. Deep enough for a burst of a
# load test's connections; a deeper queue turns overload into latency instead of refusals.
BACKLOG = 1024

# ------------------------------------------------------------------------------- validation
# Each check takes the setting's name and value and raises ConfigurationError, or returns None.


# The longest duration any setting accepts. Longer is never meant (a typo, or "forever", which
# the settings that can be switched off spell as 0); and the clocks and waits that take these
# values overflow somewhere above 2**31 seconds, so a bound keeps the failure a clear message.
MAX_DURATION = 7 * 24 * 3600.0


def _duration(name: str, value: float, zero_means: str | None = None) -> None:
    """Seconds: the one rule every duration setting follows.

    A finite number, from above 0 up to :data:`MAX_DURATION`; 0 too where the setting gives it a
    meaning (``zero_means``, such as "off"), which the message then names.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds; got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds; got {value}")
    if value < 0:
        raise ConfigurationError(f"{name} must be non-negative; got {value}")
    if value == 0 and zero_means is None:
        raise ConfigurationError(f"{name} must be more than 0 seconds; got {value}")
    if value > MAX_DURATION:
        raise ConfigurationError(f"{name} must be at most {MAX_DURATION:g} seconds (a week); got {value:g}")


def _duration_or(zero_means: str) -> Callable[[str, float], None]:
    """The :func:`_duration` check of a setting for which 0 means ``zero_means``."""
    def check(name: str, value: float) -> None:
        _duration(name, value, zero_means)
    return check


def _count(name: str, value: int) -> None:
    if value < 0:
        raise ConfigurationError(f"{name} must be non-negative; got {value}")


def _factor(name: str, value: float) -> None:
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1; got {value}")


def _port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigurationError(f"{name} must be between 0 and 65535; got {value}")


def _balance(name: str, value: str) -> None:
    check_balance(value)


def _start_method(name: str, value: str | None) -> None:
    if value is not None:
        check_start_method(value)


def _folder(name: str, value: str) -> None:
    if not isinstance(value, str) or not os.path.isdir(value):
        raise ConfigurationError(f"{name} must be an existing folder (the one holding your app's module); "
                                 f"got {value!r}")


def _default_start_method() -> str:
    """The start method a cluster uses when none is given, here: $LABKIT_START_METHOD, else the safe one."""
    try:
        return check_start_method(None)
    except ConfigurationError:  # --help must still work; using the cluster will say what is wrong
        from ..cores import safe_start_method

        return f"{safe_start_method()}, as $LABKIT_START_METHOD names no method available here"


# ------------------------------------------------------------------------------ declarations


_SAME = "same as Cluster's"  # a Setting's serve_default when labkit serve keeps the default


@dataclass(frozen=True)
class Setting:
    """How one setting is declared: help, check and command line (its name and default are its field's).

    ``check(name, value)`` raises :class:`~labkit.errors.ConfigurationError` for a bad value.
    ``flags`` are its options on ``labkit serve``'s command line (none: not offered there), read
    with ``parse``; ``serve_default`` replaces the default there when the command wants another
    (``labkit serve`` serves on a fixed port). ``default_text`` says what the default is when the
    value alone would not (``None`` for the start method means a choice made on this machine).
    """

    help: str
    check: Callable[[str, Any], None] | None = None
    flags: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: Callable[[], tuple[str, ...]] | None = None
    serve_default: Any = _SAME
    default_text: Callable[[], str] | None = None
    name: str = ""
    default: Any = None


def setting(default: Any, help: str, **how: Any) -> Any:
    """Declare a setting: a dataclass field with its :class:`Setting` attached."""
    return field(default=default, metadata={"setting": Setting(help, **how)})


def tunable(default: Any) -> Any:
    """Declare a value labkit fixes (not a keyword argument of ``Cluster``, not a flag)."""
    return field(default=default, metadata={"tunable": True})


@dataclass(frozen=True)
class ClusterSettings:
    """Every setting of one cluster, checked once when made; plain data, so workers receive it too.

    :class:`~labkit.cluster.Cluster` makes one from its keyword arguments; each field's
    declaration (see :func:`declared`) holds its help, its check and its command-line flag.
    """

    workers: int | str = setting(
        "max", "'max' (one per usable core), -1 (all but one) or a count",
        flags=("-w", "--workers"))
    balance: str = setting(
        DEFAULT_BALANCE, "who spreads connections over workers: round-robin where the platform can pass "
        "sockets between processes, else os", check=_balance, flags=("--balance",),
        choices=lambda: BALANCE_MODES)
    host: str = setting(
        "127.0.0.1", "address to bind; 127.0.0.1 keeps the cluster to this machine", flags=("--host",))
    port: int = setting(
        0, "port to serve on; 0 lets the system pick a free one", check=_port, flags=("--port",),
        parse=int, serve_default=8000)
    start_method: str | None = setting(
        None, "how worker processes start: fork, spawn or forkserver", check=_start_method,
        flags=("--start-method",),
        choices=lambda: tuple(multiprocessing.get_all_start_methods()), default_text=_default_start_method)
    app_dir: str = setting(
        ".", "folder put first on the workers' import path, so 'MODULE' may be a module of this folder "
        "(as gunicorn's --chdir and uvicorn's --app-dir do); '.' is the folder the cluster starts in",
        check=_folder, flags=("--app-dir",), metavar="FOLDER")
    min_uptime: float = setting(
        MIN_UPTIME, "a worker that dies sooner than this after starting counts as crashing at boot "
        "(0: no crash counts, so the crash-loop guard is off)", check=_duration_or("off"))
    max_restarts: int = setting(
        MAX_RESTARTS, "crashes at boot in a row before a worker is left errored", check=_count)
    restart_delay: float = setting(
        RESTART_DELAY, "seconds before the first restart after a crash (0: at once)", check=_duration_or("at once"))
    max_restart_delay: float = setting(
        MAX_RESTART_DELAY, "the longest wait between restarts (0: restart at once)",
        check=_duration_or("at once"))
    backoff_factor: float = setting(
        BACKOFF_FACTOR, "each further restart in a row waits this many times longer", check=_factor)
    stable_uptime: float = setting(
        STABLE_UPTIME, "a worker up this long starts its backoff afresh (0: every restart does)",
        check=_duration_or("always afresh"))
    heartbeat_timeout: float = setting(
        HEARTBEAT_TIMEOUT, "replace a worker whose event loop is silent this long; 0 switches the hung-worker "
        "check off", check=_duration_or("off"),
        flags=("--heartbeat-timeout",), parse=float, metavar="SECONDS")
    graceful_timeout: float = setting(
        GRACEFUL_TIMEOUT, "how long stopping workers may finish in-flight requests; 0 cuts them off at once",
        check=_duration_or("no grace"),
        flags=("--graceful-timeout",), parse=float, metavar="SECONDS")
    idle_timeout: float = setting(
        IDLE_TIMEOUT, "close a client connection idle this long, or still sending its request header",
        check=_duration, flags=("--idle-timeout",), parse=float, metavar="SECONDS")
    startup_timeout: float = setting(
        STARTUP_TIMEOUT, "how long a worker may take to get ready (more than 0)", check=_duration,
        flags=("--startup-timeout",), parse=float, metavar="SECONDS")
    kill_margin: float = tunable(KILL_MARGIN)
    drain_quiet: float = tunable(DRAIN_QUIET)
    max_wait: float = tunable(SUPERVISOR_MAX_WAIT)
    backlog: int = tunable(BACKLOG)

    def __post_init__(self) -> None:
        for declaration in declared():
            if declaration.check is not None:
                declaration.check(declaration.name, getattr(self, declaration.name))

    @property
    def policy(self) -> RestartPolicy:
        """The restart backoff and crash-loop guard these settings describe."""
        return RestartPolicy(self.restart_delay, self.backoff_factor, self.max_restart_delay, self.stable_uptime,
                             self.min_uptime, self.max_restarts)

    @property
    def heartbeat_interval(self) -> float:
        """How often workers beat: :data:`HEARTBEAT_INTERVAL`, or a quarter of a shorter timeout.

        With the hung-worker check off (``heartbeat_timeout=0``) workers still beat at the usual
        pace: the beats carry the request counts that stats show.
        """
        if self.heartbeat_timeout == 0:
            return HEARTBEAT_INTERVAL
        return min(HEARTBEAT_INTERVAL, max(self.heartbeat_timeout / 4, 0.05))


def declared() -> Iterator[Setting]:
    """Each setting a user may choose, in order, with its name and default filled in."""
    for f in dataclasses.fields(ClusterSettings):
        if "setting" in f.metadata:
            yield dataclasses.replace(f.metadata["setting"], name=f.name, default=f.default)


# ------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per setting that has a flag; each help ends with the real default."""
    for declaration in declared():
        if not declaration.flags:
            continue
        default = declaration.default
        if declaration.serve_default is not _SAME:
            default = declaration.serve_default
        shown = declaration.default_text() if declaration.default_text is not None else default
        if isinstance(shown, float):
            shown = f"{shown:g}"
        options: dict[str, Any] = {"default": default, "dest": declaration.name,
                                   "help": f"{declaration.help} (default {shown})".replace("%", "%%")}
        if declaration.parse is not None:
            options["type"] = declaration.parse
        if declaration.metavar is not None:
            options["metavar"] = declaration.metavar
        if declaration.choices is not None:
            options["choices"] = declaration.choices()
        parser.add_argument(*declaration.flags, **options)


def from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments for ``Cluster`` that :func:`add_arguments`'s options were given."""
    return {declaration.name: getattr(args, declaration.name) for declaration in declared() if declaration.flags}
