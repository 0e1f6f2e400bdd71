"""A prefork cluster: N worker processes serving one port, supervised from the calling process.

This is Node.js's ``cluster`` module, or ``pm2 start app.js -i max``, in Python. One event loop
uses one core; to use every core, run one loop per core, each in its own process::

    primary process: a notebook kernel, or `labkit serve`
    ┌──────────────────────────────────────────────────────────────────────────┐
    │ Cluster (your thread) ── command queue ──▶ arbiter thread                │
    │   stats(), events  ◀──── state, under a lock ── wait · reap · restart    │
    │                                                heartbeat · diagnose      │
    │ listening socket 127.0.0.1:port          acceptor thread (round-robin)   │
    └──────┬────────────────────────────────────────────┬────────────┬─────────┘
           │ os: every worker has a copy, all accept()  │ control    │ hand-off
           │ reuseport: each worker binds its own       │ pipe       │ socketpair,
           │   SO_REUSEPORT socket on the same port     │ (duplex)   │ one fd per
           │ round-robin: only the acceptor accepts     │            │ connection
           ▼                                            ▼            ▼
    ┌──────────────────────────────────────┐   ┌──────────────────────────────┐
    │ worker 1: own process, own asyncio   │   │ worker 2 ... worker N        │
    │ loop, own copy of the app            │   │                              │
    │   hears: ("stop", timeout)           │   │                              │
    │   says:  ("ready", pid), ("beat", n) │   │                              │
    └──────────────────────────────────────┘   └──────────────────────────────┘
      a worker exits ─▶ its sentinel wakes the arbiter ─▶ reap, diagnose ("killed by
      SIGKILL: out of memory, or killed by hand?"), restart after a backoff, or give up

How sockets reach workers: each worker is a ``multiprocessing.Process`` whose arguments are its
control ``Connection`` and, as the mode needs, the listening socket or its end of the hand-off
socketpair. Under fork the child inherits them (and closes the primary's other descriptors);
under spawn, ``multiprocessing`` pickles each one as a ``DupFd``, which hands the descriptor to
the new interpreter at exec time: the socket is passed explicitly, never re-opened by name.

Workers also watch the primary (:func:`labkit._lifeline.watch_parent`) and their control pipe, so
a killed notebook kernel takes its workers with it.

Which ``balance``? ``round-robin`` is the default wherever the platform can pass sockets between
processes (``socket.send_fds``; ``os`` on Windows, as in Node.js). ``os`` is the simplest and the
kernel's choice is often uneven: a worker that has just accepted tends to win again, and kept-alive
connections stay where they landed.
``reuseport`` spreads connections by a hash of the client's address (on Linux; macOS accepts the
option but does not spread). ``round-robin`` is the evenest, but every connection passes through
one thread of the primary, which shares its GIL with whatever the primary is doing (a notebook
cell crunching numbers slows the accepting down). It is also the only mode that can route around
a hung worker: once a worker's heartbeat is two intervals late and its CPU time stands still,
the acceptor passes it over until it beats again (``os`` gets that for free, since a hung worker
stops calling ``accept()``; ``reuseport`` keeps queueing connections on the hung worker's socket
until the heartbeat timeout replaces it).

Which ``start_method``? ``fork`` starts a worker in milliseconds as a copy of the primary, but
the primary runs threads (the supervisor's, and a notebook kernel's), and copying a threaded
process is unsafe; ``spawn`` starts a fresh interpreter that imports the app (slower, safe, the only
choice on Windows); ``forkserver`` forks from a clean helper process (fast and safe, the default
where it exists). Under spawn, a script that makes a cluster must keep
its top-level code under ``if __name__ == "__main__":``, since each worker imports it again.
"""

from __future__ import annotations

from ._balance import DEFAULT_BALANCE
from ._cluster import (
    BALANCE_MODES,
    WORKER_ID_ENV,
    Cluster,
    ClusterEvent,
    ClusterStats,
    RestartPolicy,
    WorkerState,
    WorkerStats,
    diagnose,
    resolve_workers,
)
from ._settings import ClusterSettings, add_arguments, from_arguments

__all__ = [
    "Cluster",
    "WorkerState",
    "WorkerStats",
    "ClusterStats",
    "ClusterEvent",
    "RestartPolicy",
    "diagnose",
    "resolve_workers",
    "BALANCE_MODES",
    "DEFAULT_BALANCE",
    "WORKER_ID_ENV",
    # every setting declared once; labkit serve's options are derived from them
    "ClusterSettings",
    "add_arguments",
    "from_arguments",
]
