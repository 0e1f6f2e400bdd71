"""JupyterLab and a headless Chromium for the end-to-end tests, started once and stopped cleanly.

    pytest ──Popen──▶ python -m jupyter lab       temporary root (a copy of the labs), config, data and
       │                 └─ one kernel per notebook  runtime dirs; random token; port from its runtime file
       └─ playwright ──▶ node driver ──▶ chromium --headless      one browser, a new context per notebook

Nothing lands in the repository (no checkpoints, no workspaces) and no user setting leaks in. Each test
shuts its notebook's kernel down through the server's REST API and checks with psutil that the kernel
and everything it started are gone; stopping the server checks the same for anything it started.

The tests skip, saying why, only when the ``playwright`` package or a Chromium binary is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The fixture notebooks are broken on purpose: neither pytest nor nbval may collect them as labs.
collect_ignore_glob = ["fixtures/*"]

# Debian names the binary chromium, Ubuntu chromium-browser. LABKIT_E2E_CHROMIUM points elsewhere.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Headless, sandbox-free (we run as root in CI) and silent: this machine has no outside network, so
# anything that phones home would only slow the browser down.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# JupyterLab starts in a few seconds on a laptop; a shared 2-core CI machine can take ten times longer.
SERVER_START_TIMEOUT = 120.0
SERVER_STOP_TIMEOUT = 30.0
# A kernel's children (the labs' servers and pools) notice their parent is gone within about a
# second; this is how long they get before they count as left behind and are killed.
KERNEL_EXIT_GRACE = 10.0
REST_TIMEOUT = 60.0

# Settings a fresh JupyterLab reads from its (temporary) user-settings dir.
LAB_SETTINGS = {
    # Keep every cell in the page, so the tests see every output, not only those scrolled into view.
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # No "would you like news?" toast over the outputs, and no update checks without a network.
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    # The tests save the notebook themselves and wait for that save to finish.
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def find_chromium() -> str | None:
    """The Chromium to drive: ``$LABKIT_E2E_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    chosen = os.environ.get("LABKIT_E2E_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def describe(proc: psutil.Process) -> str:
    """``pid 123 (python -c ...)``: enough to recognise a process in a failure message."""
    try:
        command = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        command = "?"
    return f"pid {proc.pid} ({command[:100]})"


def is_gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie waiting to be reaped has exited too)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def end_processes(procs: list[psutil.Process], grace: float) -> list[str]:
    """Wait up to ``grace`` seconds for ``procs`` to exit; kill the rest and describe them."""
    deadline = time.monotonic() + grace
    while any(not is_gone(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in procs if not is_gone(p)]
    described = [describe(p) for p in survivors]
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=5)
    return described


class JupyterLabServer:
    """A JupyterLab server in a child process, serving a temporary copy of the labs.

    ``workdir`` receives ``root/`` (what the server serves: ``notebooks/`` and ``fixtures/``) and
    the server's own ``config/``, ``data/`` and ``runtime/`` dirs, so that neither the repository
    nor the user's Jupyter settings are touched.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.token = secrets.token_hex(24)
        # Every process the server starts inherits this mark, so strays can be found after it stops.
        self.mark = secrets.token_hex(8)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "jupyterlab.log"

    def __repr__(self) -> str:
        state = "running" if self.process and self.process.poll() is None else "stopped"
        return f"<JupyterLabServer {state} port={self.port} root={self.root}>"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> dict[str, str]:
        ignore = shutil.ignore_patterns(".ipynb_checkpoints")
        shutil.copytree(REPO / "notebooks", self.root / "notebooks", ignore=ignore)
        shutil.copytree(FIXTURES, self.root / "fixtures", ignore=ignore)
        dirs = {name: self.workdir / name for name in ("config", "data", "runtime")}
        for path in dirs.values():
            path.mkdir()
        for plugin, values in LAB_SETTINGS.items():
            settings = dirs["config"] / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(json.dumps(values), encoding="utf-8")
        # The kernel is this very interpreter, whatever kernels the machine has installed.
        kernel = dirs["data"] / "kernels" / "python3" / "kernel.json"
        kernel.parent.mkdir(parents=True)
        kernel.write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "MPLBACKEND"))}
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            LABKIT_E2E_MARK=self.mark,
        )
        return env

    def start(self) -> JupyterLabServer:
        """Start the server and wait until its REST API answers. Returns ``self``."""
        env = self._prepare()
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LabApp.extension_manager=readonly",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.root)
        runtime_file = self.workdir / "runtime" / f"jpserver-{self.process.pid}.json"
        self._wait(runtime_file.exists, "write its runtime file")
        self.port = json.loads(runtime_file.read_text(encoding="utf-8"))["port"]
        self._wait(self._answers, "answer on its REST API")
        return self

    def _answers(self) -> bool:
        try:
            self.api("GET", "/api/status", timeout=5)
            return True
        except OSError:
            return False

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not condition():
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode} before it could {what}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not {what} within {SERVER_START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server logged."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, method: str, endpoint: str, *, timeout: float = REST_TIMEOUT):
        """Call the server's REST API with the token; return the decoded JSON answer (or None)."""
        request = urllib.request.Request(self.base_url + endpoint, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, path: str, workspace: str) -> str:
        """The address that opens ``path`` (relative to the root) in a fresh, empty workspace."""
        return f"{self.base_url}/lab/workspaces/{workspace}/tree/{path}?token={self.token}"

    def kernel_ids(self, path: str) -> list[str]:
        """The ids of the kernels the server runs for the notebook at ``path``."""
        return [s["kernel"]["id"] for s in self.api("GET", "/api/sessions") if s["path"] == path and s.get("kernel")]

    def kernel_processes(self, kernel_id: str) -> list[psutil.Process]:
        """The kernel's process and all its descendants, found by the connection file it was given."""
        connection_file = f"kernel-{kernel_id}.json"
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if any(arg.endswith(connection_file) for arg in proc.cmdline()):
                    return [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
        return []

    def shut_down_kernels(self, path: str) -> tuple[list[int], list[str]]:
        """Shut the notebook's kernels down through the REST API; check with psutil that they are gone.

        Returns the pids of the kernels and their descendants, and a description of each one that
        was still running after :data:`KERNEL_EXIT_GRACE` seconds (those were killed).
        """
        procs: list[psutil.Process] = []
        for kernel_id in self.kernel_ids(path):
            procs += self.kernel_processes(kernel_id)
            self.api("DELETE", f"/api/kernels/{kernel_id}")
        return [p.pid for p in procs], end_processes(procs, KERNEL_EXIT_GRACE)

    def marked_processes(self) -> list[psutil.Process]:
        """Every process, but the server itself, that inherited this server's mark."""
        found = []
        server_pid = self.process.pid if self.process else None
        for proc in psutil.process_iter():
            try:
                if proc.pid != server_pid and proc.environ().get("LABKIT_E2E_MARK") == self.mark:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self) -> list[str]:
        """Shut the server down (REST first, then signals); describe whatever it left running."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            self.api("POST", "/api/shutdown", timeout=10)
        except OSError:
            self.process.terminate()
        try:
            self.process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return end_processes(self.marked_processes(), KERNEL_EXIT_GRACE)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The Chromium binary; skips the browser tests, saying why, when there is none."""
    found = find_chromium()
    if found is None:
        chosen = os.environ.get("LABKIT_E2E_CHROMIUM")
        missing = f"LABKIT_E2E_CHROMIUM={chosen} is not a file" if chosen else "no Chromium installed"
        pytest.skip(f"{missing}: `apt-get install chromium` (Debian/Ubuntu), or set LABKIT_E2E_CHROMIUM "
                    "to a Chromium or Chrome binary, to run the JupyterLab end-to-end tests")
    return found


# The browser and the server live as long as this module of tests: one of each for every notebook,
# and both gone before the rest of the suite runs.


@pytest.fixture(scope="module")
def browser(chromium_executable):
    """One headless Chromium driven by Playwright, shared by every notebook."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is missing: `pip install -e '.[test]'` brings it (never run "
               "`playwright install`; the tests drive the system's Chromium)",
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def jupyter_lab(browser, tmp_path_factory):
    """One JupyterLab server, on a temporary copy of the labs (started only once a browser is there)."""
    server = JupyterLabServer(tmp_path_factory.mktemp("jupyterlab")).start()
    try:
        yield server
    finally:
        left = server.stop()
    if left:
        pytest.fail("JupyterLab left processes running after it stopped (killed): " + "; ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def pictures_dir(tmp_path_factory) -> Path:
    """Where screenshots go: ``$LABKIT_E2E_SCREENSHOTS`` (e.g. ``docs/img``), else a temporary dir."""
    chosen = os.environ.get("LABKIT_E2E_SCREENSHOTS")
    if not chosen:
        return tmp_path_factory.mktemp("lab-pictures")
    path = Path(chosen).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
