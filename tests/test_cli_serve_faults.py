"""``labkit serve`` under faults: a second Ctrl-C, bad values, the app's own folder, idle clients."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import psutil
import pytest
from helpers import wait_until
from test_cli_serve import Serve


def _holds_connection_from(worker: psutil.Process, client_port: int) -> bool:
    try:
        return any(c.raddr and c.raddr.port == client_port and c.status == psutil.CONN_ESTABLISHED
                   for c in worker.net_connections(kind="tcp"))
    except psutil.Error:
        return False


def _closed_unanswered(client: socket.socket) -> bool:
    try:
        return client.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["second Ctrl-C", "second SIGTERM"])
def test_a_second_stop_signal_kills_the_workers_at_once_and_exits_130(second):
    # A graceful timeout far longer than the test may wait: only the kill can end this in time.
    serve = Serve("labkit.demo:demo_app", "-w", "1", "--port", "0", "--graceful-timeout", "600")
    url = serve.wait_for(r"at (http://127\.0\.0\.1:\d+) with 1 workers").group(1)
    serve.wait_for(r"1/1 ready")
    [worker] = serve.workers()
    port = int(url.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    with client:
        client.sendall(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: _holds_connection_from(worker, client.getsockname()[1]), 30)
        serve.process.send_signal(signal.SIGINT)
        serve.wait_for("stopping gracefully")
        assert serve.process.poll() is None  # patiently waiting for the slow request
        serve.process.send_signal(second)
        code, error = serve.finish(timeout=60)
        assert code == 130, error
        assert _closed_unanswered(client)  # the slow request was cut off, not answered
    assert "killing the workers" in "\n".join(serve.seen + list(serve.lines.queue))
    _, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive and not serve.stragglers()
