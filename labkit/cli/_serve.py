"""``labkit serve MODULE:APP -w max --balance round-robin --port 8000``: a cluster in the foreground.

Like ``pm2 start app.js -i max`` followed by ``pm2 logs``: prints a status table (``pm2 ls``)
once the workers are ready, one line per event as workers start, crash, restart or stop, and
the table again when things settle. Signals, as gunicorn's arbiter takes them:

======================  ==========================================================
SIGINT (Ctrl-C), TERM   stop gracefully: in-flight requests finish; a second one (either
                        signal) kills the workers at once and exits with status 130
SIGHUP                  reload worker by worker (``kill -HUP PID``), no request fails
======================  ==========================================================

A port in use, an app that does not import, or a factory that raises: one line on stderr,
exit status 1, and nothing left running. So too once every worker has crashed so often that
none is restarted (PM2 marks such an app errored): the line says how often and what to change.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys

from ..errors import ConfigurationError, LabkitError

__all__ = ["configure", "run"]

# After an event, wait this long for more before reprinting the table, so a burst of events
# (a reload, a restart) gives one table, not ten.
SETTLE_SECONDS = 0.3

# Asking for more than this many workers per usable core earns a warning: a few extra can hide
# I/O waits in blocking code, but an event-loop worker already overlaps its waits.
OVERSUBSCRIBED = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``labkit serve``: the app, then the cluster's settings that have a flag."""
    from ..cluster import add_arguments

    parser.add_argument("app", metavar="MODULE:APP", help="import string of a tornado app factory, "
                        "e.g. labkit.demo:demo_app")
    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal says stop; return the exit code."""
    from ..cluster import Cluster, from_arguments

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    try:
        cluster = Cluster(args.app, on_change=lambda event: inbox.put(("event", event)), **from_arguments(args))
    except ConfigurationError as exc:
        return _fail(exc, 2)
    _warn_if_oversubscribed(cluster.workers)
    previous = _install({signal.SIGTERM: _raise_interrupt})  # during start-up, TERM aborts at once
    try:
        cluster.start()
    except LabkitError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        print("labkit serve: interrupted while starting; nothing is left running", file=sys.stderr)
        return 130
    finally:
        _restore(previous)
    return _serve(cluster, inbox)


def _serve(cluster, inbox: queue.SimpleQueue) -> int:
    handlers = {signal.SIGINT: lambda *_: inbox.put(("stop", "SIGINT")),
                signal.SIGTERM: lambda *_: inbox.put(("stop", "SIGTERM"))}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda *_: inbox.put(("reload", "SIGHUP"))
    previous = _install(handlers)
    try:
        _drain(inbox)  # the start-up events are summed up by the first table
        reload_hint = f"; kill -HUP {os.getpid()} reloads" if hasattr(signal, "SIGHUP") else ""
        _say(f"labkit serve: {cluster.app} at {cluster.url} with {cluster.workers} workers "
             f"(balance {cluster.balance}, start method {cluster.start_method}); Ctrl-C stops{reload_hint}")
        _say(cluster.stats().table())
        return _loop(cluster, inbox)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM) while stopping: no more patience
        _install({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})  # killing already
        _say("labkit serve: stopped again while stopping: killing the workers")
        cluster.stop(timeout=0)
        _drain(inbox, show=True)
        _say("labkit serve: killed")
        return 130
    finally:
        cluster.stop()
        _restore(previous)


def _loop(cluster, inbox: queue.SimpleQueue) -> int:
    unsettled = False
    while True:
        try:
            kind, payload = inbox.get(timeout=SETTLE_SECONDS if unsettled else 1.0)
        except queue.Empty:
            gave_up = cluster.stats().gave_up  # in case its event came before this loop did
            if gave_up:
                return _give_up(cluster, gave_up)
            if unsettled:
                _say(cluster.stats().table())
                unsettled = False
            continue
        if kind == "event" and payload.kind == "gave-up":
            return _give_up(cluster, payload.message)
        if kind == "event":
            _say(str(payload))
            unsettled = True
        elif kind == "reload":
            _say(f"labkit serve: {payload}: reloading worker by worker")
            try:
                cluster.reload()
            except LabkitError as exc:
                print(f"labkit serve: {exc}", file=sys.stderr, flush=True)
        elif kind == "stop":
            # From here on, a second Ctrl-C or SIGTERM interrupts the wait and kills (see _serve);
            # armed before the banner, so a signal sent on reading it is never lost in the inbox.
            _install({signal.SIGINT: _raise_interrupt, signal.SIGTERM: _raise_interrupt})
            _say(f"labkit serve: {payload}: stopping gracefully (Ctrl-C again to kill)")
            cluster.stop()
            _drain(inbox, show=True)
            _say("labkit serve: stopped")
            return 0


def _give_up(cluster, why: str) -> int:
    """Every worker crashed for good: nothing will serve again, so stop, say why, exit 1."""
    _say(cluster.stats().table())
    cluster.stop()
    print(f"labkit serve: {' '.join(why.split())}", file=sys.stderr, flush=True)
    return 1


def _warn_if_oversubscribed(workers: int) -> None:
    """One line on stderr when ``-w`` asks for far more workers than there are usable cores."""
    from ..cores import usable_cores

    usable = usable_cores().usable
    if workers > OVERSUBSCRIBED * usable:
        print(f"labkit serve: warning: {workers} workers on {usable} usable cores; lab 06 measured that "
              "CPU-bound throughput stops growing at the usable cores, and each extra worker only adds "
              "waiting, context switches and a whole interpreter's memory (-w max: one per core)",
              file=sys.stderr, flush=True)


def _fail(exc: BaseException, code: int) -> int:
    print(f"labkit serve: {' '.join(str(exc).split())}", file=sys.stderr)
    return code


def _say(text: str) -> None:
    print(text, flush=True)


def _drain(inbox: queue.SimpleQueue, show: bool = False) -> None:
    while True:
        try:
            kind, payload = inbox.get_nowait()
        except queue.Empty:
            return
        if show and kind == "event":
            _say(str(payload))


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def _install(handlers: dict) -> dict:
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
