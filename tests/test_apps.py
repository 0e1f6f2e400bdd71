"""The demo app answers every endpoint; AppServer starts, stops and never outlives its parent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest

from labkit import AppServer, ServerStartError
from labkit.apps import load_app
from labkit.errors import ConfigurationError
from labkit.measure import trace_latency


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def server():
    with AppServer() as running:
        yield running


def test_fast_answers_ok_with_the_worker_pid(server):
    status, headers, body = get(server.url + "/fast")
    assert (status, body) == (200, b"ok\n")
    assert headers["X-Worker-Pid"] == str(server.pid)


@pytest.mark.parametrize("mode", ["sync", "thread", "process"])
def test_primes_gives_the_known_answer_in_every_mode(server, mode):
    status, _, body = get(server.url + f"/primes?n=1000&mode={mode}")
    assert status == 200
    assert json.loads(body) == {"n": 1000, "primes": 168}


@pytest.mark.parametrize("mode", ["sync", "thread", "process"])
def test_hash_gives_the_same_digest_in_every_mode(server, mode):
    status, _, body = get(server.url + f"/hash?cost=8&mode={mode}")
    assert status == 200
    assert json.loads(body)["hash"] == json.loads(get(server.url + "/hash?cost=8")[2])["hash"]


def test_sleep_answers_with_the_milliseconds_it_slept(server):
    assert json.loads(get(server.url + "/sleep?ms=5")[2]) == {"slept_ms": 5}


def test_pid_answers_with_the_serving_process_id(server):
    assert json.loads(get(server.url + "/pid")[2]) == {"pid": server.pid}


@pytest.mark.parametrize("query, reason", [
    ("/primes?n=abc", "n must be an integer"),
    ("/primes?n=-1", "n must be between 0 and"),
    ("/hash?cost=99", "cost must be between 1 and"),
    ("/hash?mode=gpu", "mode must be one of sync, thread, process"),
])
def test_bad_parameters_get_a_400_that_says_why(server, query, reason):
    status, _, body = get(server.url + query)
    assert status == 400
    assert reason in body.decode()


def stats(server, query: str = "") -> dict:
    return json.loads(get(server.url + "/stats" + query)[2])


def test_stats_counts_every_request_including_its_own(server):
    before = stats(server)
    for _ in range(3):
        get(server.url + "/fast")
    after = stats(server)
    assert after["pid"] == server.pid
    assert after["requests"] - before["requests"] == 4  # three /fast and the second /stats


def test_stats_reports_the_loop_lag_measured_since_the_last_reset(server):
    time.sleep(0.3)  # ticks that the reset must forget, even when this test runs alone
    started = time.monotonic()
    stats(server, "?reset=1")
    time.sleep(0.5)  # an idle loop, so the probe's timer ticks on time
    lag = stats(server)["lag"]
    elapsed = time.monotonic() - started
    assert lag["count"] > 0
    assert lag["count"] <= elapsed / (lag["interval_ms"] / 1000) + 2  # no tick from before the reset
    assert 0 <= lag["utilization"] <= 1


def test_a_synchronous_hash_blocks_fast_requests_and_a_thread_does_not(server):
    # Behaviour, not speed: on the loop, a /fast request sent during the hash waits for most of it;
    # with the hash in a thread, no /fast request waits for anything like the whole hash.
    blocking = asyncio.run(trace_latency(server.url, "/hash?cost=16&mode=sync", before=0.1, after=0.1))
    offloaded = asyncio.run(trace_latency(server.url, "/hash?cost=16&mode=thread", before=0.1, after=0.1))
    assert blocking.during() and offloaded.during()
    assert blocking.blocked_fraction() > 0.5
    assert offloaded.blocked_fraction() < 0.5


def test_stopping_a_server_ends_it_and_its_pool_processes_with_exit_code_0():
    with AppServer() as server:
        assert get(server.url + "/primes?n=10&mode=process")[0] == 200  # the server now has a process pool
        family = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        assert len(family) > 1
        assert server.stop() == 0
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive
        assert not server.running


def test_crash_ends_the_process_without_an_answer_and_with_the_exit_code_asked_for():
    with AppServer() as server:
        # The process ends without answering: the connection closes under the client.
        with pytest.raises(ConnectionResetError):
            urllib.request.urlopen(server.url + "/crash?code=3", timeout=30)
        assert server.stop() == 3


def test_an_app_that_does_not_import_fails_with_its_error():
    with pytest.raises(ServerStartError, match="no_such_module"):
        AppServer("no_such_module:app").start()


def test_a_factory_that_raises_fails_with_its_message(tmp_path, monkeypatch):
    (tmp_path / "broken_app.py").write_text("def make():\n    raise RuntimeError('database is down')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ServerStartError, match="database is down"):
        AppServer("broken_app:make").start()


def test_load_app_explains_a_malformed_import_string():
    with pytest.raises(ConfigurationError, match="module:factory"):
        load_app("labkit.apps")
    with pytest.raises(ConfigurationError, match="no 'nope'"):
        load_app("labkit.apps:nope")


def test_the_server_dies_with_its_parent():
    # A parent process starts a server, reports its pid, and is then killed with SIGKILL:
    # no chance to clean up. The server must notice and go, as after a kernel crash.
    script = textwrap.dedent(
        """
        import sys, time
        from labkit import AppServer
        server = AppServer().start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        child = psutil.Process(server_pid)
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs([child], timeout=15)
        for survivor in alive:
            survivor.kill()  # an orphan is no longer ours: the leak guard would not see it
        assert not alive, f"the server {server_pid} outlived its killed parent"
    finally:
        parent.stdout.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
