"""How connections reach a cluster's workers: bound sockets, and the round-robin hand-off.

Three ways, chosen by ``Cluster(balance=...)``:

``os``           the primary binds and listens; every worker gets a copy of that one socket and
                 calls ``accept()`` on it. The kernel decides which waiting worker wins each
                 connection (often unevenly: a worker that just woke up tends to win again).
``reuseport``    every worker binds its own socket to the same port with ``SO_REUSEPORT``; the
                 kernel spreads connections over them by a hash of the client's address and port.
                 The primary only holds a bound, non-listening placeholder so the port stays ours.
``round-robin``  the primary alone accepts, and passes each connection's file descriptor to the
                 next ready worker over a private ``socketpair`` (SCM_RIGHTS fd passing, via
                 :func:`socket.send_fds`). That is Node.js's default cluster scheduling.

The hand-off channel is an anonymous socketpair: it has no name in the filesystem or on the
network, so no other process can connect to it; only the primary and that one worker hold its ends.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

from ..errors import ConfigurationError

__all__ = ["BALANCE_MODES", "DEFAULT_BALANCE", "check_balance", "bind_listener", "Acceptor", "receive_handoffs"]

BALANCE_MODES = ("os", "reuseport", "round-robin")

# The default: round-robin wherever sockets can be passed between processes (socket.send_fds),
# os elsewhere (Windows), as Node.js does. With os, a newcomer's first cluster often serves every
# kept-alive connection from one worker (lab 02 measured 100% on one); round-robin spreads them
# by design, and passes over a hung worker (see Arbiter._pass_over_stalled).
DEFAULT_BALANCE = "round-robin" if hasattr(socket, "send_fds") else "os"

# How many connections the acceptor takes per wake-up before looking at its stop signal again.
# Larger batches accept bursts with fewer system calls; smaller ones stop a little sooner.
ACCEPT_BATCH = 64

# After an accept() error that is not the client's doing (no descriptors left), wait this long
# before trying again, instead of spinning on a socket that stays readable.
ACCEPT_ERROR_PAUSE = 0.1

# One byte travels with each passed descriptor: a stream socket cannot carry ancillary data alone.
_HANDOFF_BYTE = b"c"


def check_balance(balance: str) -> None:
    """Raise :class:`ConfigurationError` if ``balance`` is unknown or unsupported on this platform."""
    if balance not in BALANCE_MODES:
        raise ConfigurationError(f"balance must be one of {', '.join(BALANCE_MODES)}; got {balance!r}")
    if balance == "reuseport" and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigurationError(
            "balance='reuseport' needs SO_REUSEPORT, which this platform does not have "
            "(Windows, for one); use balance='os' or 'round-robin'"
        )
    if balance == "round-robin" and not hasattr(socket, "send_fds"):
        raise ConfigurationError(
            "balance='round-robin' passes sockets between processes with socket.send_fds, "
            "which this platform does not have (Windows would need socket.share); use balance='os'"
        )


def bind_listener(host: str, port: int, *, reuse_port: bool = False, listen: bool = True,
                  backlog: int = 1024) -> socket.socket:
    """Bind a TCP socket to ``host:port`` (port 0: the OS picks) and, unless told not to, listen."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":
            # Rebinding a port with connections in TIME_WAIT is fine for a server.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def receive_handoffs(channel: socket.socket) -> list[socket.socket] | None:
    """Take every connection waiting on a worker's end of the hand-off channel.

    Returns the connections (possibly none, if nothing was waiting), or ``None`` once the primary
    has closed its end. ``channel`` must be non-blocking.
    """
    received: list[socket.socket] = []
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(channel, 256, 16)
        except (BlockingIOError, InterruptedError):
            return received
        received.extend(socket.socket(fileno=fd) for fd in fds)
        if not data and not fds:
            return received or None


class Acceptor:
    """The primary's doorman in round-robin mode: accept, then pass the connection on.

    A thread in the primary waits on the listening socket, accepts each connection, and sends its
    descriptor to the next ready worker in turn, skipping any worker whose channel is full or
    gone. Like a restaurant host who seats each arriving party at the next waiter's table, rather
    than letting the waiters race to the door.

    :meth:`add` and :meth:`remove` are called by the supervisor; after :meth:`remove` returns, no
    further connection goes to that worker. :meth:`set_stalled` marks a worker that seems hung
    (the supervisor decides: its heartbeat is late and it makes no progress): it is passed over
    while any other worker can take the connection, and served in turn again if every worker
    is stalled, since refusing everyone would be worse than a wait. While no worker is there at all
    (a one-worker cluster restarting), it accepts nothing, so clients queue as they would in ``os``.
    """

    def __init__(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._targets: list[tuple[object, socket.socket]] = []
        self._stalled: set[int] = set()  # id() of the keys passed over while others can serve
        self._lock = threading.Lock()
        self._next = 0
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="labkit-cluster-acceptor", daemon=True)
        self.handed = 0
        self.dropped = 0

    def fds(self) -> list[int]:
        """Descriptors only the primary needs (a forked worker closes them)."""
        return [self._wake_r.fileno(), self._wake_w.fileno()]

    def start(self) -> None:
        """Start accepting in a background thread."""
        self._thread.start()

    def add(self, key: object, channel: socket.socket) -> None:
        """Start sending connections to the worker ``key`` over ``channel`` (non-blocking)."""
        with self._lock:
            self._targets.append((key, channel))
        self._poke()

    def remove(self, key: object) -> None:
        """Send nothing more to the worker ``key``."""
        with self._lock:
            self._targets = [(k, c) for k, c in self._targets if k is not key]
            self._stalled.discard(id(key))
        self._poke()

    def set_stalled(self, key: object, stalled: bool) -> None:
        """Pass over the worker ``key`` while another can take connections (or stop doing so)."""
        with self._lock:
            if stalled:
                self._stalled.add(id(key))
            else:
                self._stalled.discard(id(key))

    def stop(self) -> None:
        """Stop accepting and wait for the thread; the listener itself stays open."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the wake channel is already full, so the thread wakes anyway
        if self._thread.is_alive():
            self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            listening = False
            while not self._stopping:
                # With no worker to hand to, leave connections in the kernel's queue: they wait for
                # the next ready worker (a restart, a reload), as in os mode, instead of being closed.
                with self._lock:
                    wanted = bool(self._targets)
                if wanted != listening:
                    if wanted:
                        selector.register(self._listener, selectors.EVENT_READ)
                    else:
                        selector.unregister(self._listener)
                    listening = wanted
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif not self._stopping:
                        self._accept_batch()

    def _poke(self) -> None:
        """Make the thread look at its targets again."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full (it will wake anyway) or closed (stopped)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass  # drained (BlockingIOError), or closed while stopping

    def _accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up between SYN and accept: next one
            except OSError:
                time.sleep(ACCEPT_ERROR_PAUSE)  # out of descriptors, say: do not spin on it
                return
            with connection:  # our copy closes once the worker has its own
                self._hand_off(connection)

    def _hand_off(self, connection: socket.socket) -> None:
        with self._lock:
            count = len(self._targets)
            # First the workers that are not stalled, in turn; only if none of them can take
            # it, the stalled ones, in turn too (every worker late: a wait beats a refusal).
            for passing_over_stalled in (True, False):
                for attempt in range(count):
                    index = (self._next + attempt) % count
                    key, channel = self._targets[index]
                    if (id(key) in self._stalled) is passing_over_stalled:
                        continue
                    try:
                        socket.send_fds(channel, [_HANDOFF_BYTE], [connection.fileno()])
                    except OSError:
                        continue  # full (a stuck worker) or closed (a dead one): try the next
                    self._next = index + 1
                    self.handed += 1
                    return
        self.dropped += 1  # no worker could take it; closing it tells the client at once
