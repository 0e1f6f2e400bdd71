"""``labkit serve``: a foreground cluster with a status table, signals, and one-line errors."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import psutil
import pytest
from helpers import is_interpreter_helper, wait_until


class Serve:
    """``python -m labkit serve ...`` in a child process, its output read line by line."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.mark = uuid.uuid4().hex  # in the environment of the command and every worker it starts
        environment = {**os.environ, **(env or {}), "LABKIT_TEST_MARK": self.mark}
        self.process = subprocess.Popen([sys.executable, "-m", "labkit", "serve", *args], env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matched {pattern!r}; saw:\n" + "\n".join(self.seen))

    def workers(self) -> list[psutil.Process]:
        # Under forkserver the workers are children of multiprocessing's fork server, not of
        # the command itself; the server (and the resource tracker) are not workers.
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [child for child in children if not is_interpreter_helper(child)]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        error = self.process.stderr.read()
        self._reader.join(10)  # it ends at end of file, now that the command has exited
        self.process.stdout.close()
        self.process.stderr.close()
        return code, error

    def stragglers(self, timeout: float = 10) -> list[psutil.Process]:
        """Processes still alive that this command (or anything it started) began."""
        def marked() -> list[psutil.Process]:
            found = []
            for process in psutil.process_iter():
                try:
                    if process.environ().get("LABKIT_TEST_MARK") == self.mark:
                        found.append(process)
                except psutil.Error:
                    pass  # gone, or not ours to read
            return found

        wait_until(lambda: not marked(), timeout, interval=0.1)
        return marked()


def test_serve_prints_a_status_table_serves_and_stops_gracefully_on_sigterm():
    serve = Serve("labkit.demo:demo_app", "-w", "2", "--port", "0")
    url = serve.wait_for(r"at (http://127\.0\.0\.1:\d+) with 2 workers").group(1)
    serve.wait_for(r"\| id \| pid")
    serve.wait_for(r"2/2 ready, balance round-robin")  # the default mode where send_fds exists; the table's last line
    workers = serve.workers()
    table = "\n".join(serve.seen)
    assert all(re.search(rf"\| \d+ +\| {worker.pid} +\| ready", table) for worker in workers), table
    with urllib.request.urlopen(url + "/fast", timeout=30) as response:
        assert response.read() == b"ok\n"
    serve.process.send_signal(signal.SIGTERM)
    serve.wait_for("stopping gracefully")
    code, error = serve.finish()
    assert code == 0, error
    serve.wait_for("labkit serve: stopped", timeout=5)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive and not serve.stragglers()


def test_serve_reloads_worker_by_worker_on_sighup():
    serve = Serve("labkit.demo:demo_app", "-w", "2", "--port", "0")
    serve.wait_for(r"2/2 ready")
    before = {worker.pid for worker in serve.workers()}
    serve.process.send_signal(signal.SIGHUP)
    serve.wait_for("reloaded 2 workers")
    after = {worker.pid for worker in serve.workers()}
    serve.process.send_signal(signal.SIGINT)
    code, error = serve.finish()
    assert code == 0, error
    assert len(after) == 2 and not before & after


@pytest.fixture
def busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("case", ["port in use", "module does not import", "factory raises"])
def test_serve_reports_a_failed_start_in_one_line_and_leaves_nothing_running(case, busy_port, tmp_path):
    (tmp_path / "broken_app.py").write_text("def make():\n    raise RuntimeError('database is down')\n")
    app, expected, extra = {
        "port in use": ("labkit.demo:demo_app", "already in use", ["--port", str(busy_port)]),
        "module does not import": ("no_such_module:app", "No module named 'no_such_module'", []),
        "factory raises": ("broken_app:make", "RuntimeError: database is down", []),
    }[case]
    serve = Serve(app, "-w", "2", "--port", "0", *extra, env={"PYTHONPATH": str(tmp_path)})
    code, error = serve.finish()
    assert code != 0
    assert len(error.strip().splitlines()) == 1, error
    assert error.startswith("labkit serve: ") and expected in error
    assert "Traceback" not in error
    assert not serve.stragglers()


def test_serve_uses_the_start_method_its_help_names_as_the_default():
    help_text = subprocess.run([sys.executable, "-m", "labkit", "serve", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    options = " ".join(help_text.split("options:")[1].split())
    promised = re.search(r"--start-method \S+ .*?\(default (\w+)\)", options).group(1)
    serve = Serve("labkit.demo:demo_app", "-w", "1", "--port", "0")
    used = serve.wait_for(r"start method (\w+)\)").group(1)
    serve.process.send_signal(signal.SIGINT)
    code, error = serve.finish()
    assert code == 0, error
    assert used == promised
    assert not serve.stragglers()
