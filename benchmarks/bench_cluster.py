"""Cluster: does it scale, is it as fast as its peers, how fast does it heal, and is labkit.load honest?

Four measurements, each side by side in one run, on 127.0.0.1:

1. **CPU scaling.** ``/primes?n=20000`` (pure Python on the worker's loop) on a one-worker cluster
   and on a ``max`` cluster, both round-robin, timed in turns round after round; the speedup is
   the per-round paired ratio, reported as min, median and max. Target: a median of at least
   1.8x on an idle 2-core machine.
2. **Hello world against the peers**, with the same number of worker processes, all driven by
   ``wrk`` with the same settings: labkit's ``Cluster`` (each balancing mode) serving the demo
   app's ``/fast``; tornado's own multi-process mode (``tornado.process.fork_processes``) serving
   the same app; gunicorn serving a minimal WSGI hello app (sync workers, gunicorn's default, and
   gthread workers, which keep connections alive as wrk expects). The servers take turns in a
   rotating order each round; each is compared with the round's fastest peer (min, median, max
   of those ratios). Target: labkit's best mode at a median of at least 0.9x the faster peer.
3. **Restart latency**: ``SIGKILL`` one worker of a round-robin cluster, and time until its
   replacement has answered a request. Target: under one second.
4. **labkit.load against wrk** on the same server (the ``max`` cluster's ``/fast``), alternating:
   throughput and latency ratios. labkit.load is a Python asyncio client; this shows how much of a
   measured rate is the client's own limit.
5. **A hung worker**: probes on fresh connections, ten a second, while one of two workers is
   stopped with ``SIGSTOP`` (for less than the heartbeat timeout, so nothing is replaced), in
   each balancing mode; round-robin twice, without and with passing over a stalled worker (the
   "without" row switches that off, which is how round-robin behaved before). Target: no failed
   probe in round-robin beyond the connections the hung worker already held.

Per-round paired ratios (as ``bench_pool`` computes them) keep a drift in the machine's load out
of a comparison: both sides of each ratio ran in the same round, seconds apart.

Needs ``wrk`` (``apt-get install wrk``, ``brew install wrk``); without it, parts 2 and 4 say so
and part 1 uses labkit.load. gunicorn is installed into this environment with pip if missing.
Every server binds 127.0.0.1, and every process started here is stopped before ``run()`` returns.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from labkit import measure_parallelism, usable_cores
from labkit.cluster import Cluster, WorkerState
from labkit.load import run_load

APP = "labkit.demo:demo_app"
CPU_PATH = "/primes?n=20000"
REPEATS = 5  # rounds; each times every contender once, in turns; ratios are per round
SECONDS = 5  # length of each load run
CONNECTIONS = 64  # hello-world connections (wrk -c, run_load concurrency)
WRK_THREADS = 1  # one wrk thread leaves the other cores to the servers
RESTARTS = 5  # kills for the restart latency
PROBE_INTERVAL = 0.1  # seconds between hung-worker probes (each on a fresh connection)
PROBE_TIMEOUT = 2.0  # a probe unanswered this long has failed (a client would have given up)
HUNG_SECONDS = 10.0  # how long the worker stays stopped: well under the 30 s heartbeat timeout

HELLO_WSGI = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\\n"]
'''

TORNADO_FORKED = '''
import asyncio, sys
import tornado.httpserver, tornado.netutil, tornado.process
from labkit.demo import demo_app

sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
print(sockets[0].getsockname()[1], flush=True)
tornado.process.fork_processes(int(sys.argv[1]), max_restarts=0)

async def serve():
    server = tornado.httpserver.HTTPServer(demo_app())
    server.add_sockets(sockets)
    await asyncio.Event().wait()

asyncio.run(serve())
'''


@dataclass(frozen=True)
class Rate:
    """One load run: answers per second, latency percentiles (ms), failures."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# ---------------------------------------------------------------------------------- drivers


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> Rate:
    """Read ``wrk --latency`` output: requests/s, p50 and p99 latency, socket errors and non-2xx."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    percentiles = {int(p): float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$",
                                                                         text, re.M)}
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return Rate(rps, percentiles.get(50, 0.0), percentiles.get(99, 0.0), errors)


def wrk(url: str, connections: int = CONNECTIONS, seconds: int = SECONDS) -> Rate:
    """Drive ``url`` with wrk and return its rate."""
    out = subprocess.run(["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return parse_wrk(out)


def labkit_load(url: str, connections: int = CONNECTIONS, seconds: int = SECONDS) -> Rate:
    """Drive ``url`` with labkit.load and return its rate."""
    report = run_load(url, concurrency=connections, duration=seconds)
    return Rate(report.throughput, report.p50_ms, report.p99_ms, report.failed)


def median_rate(rates: list[Rate]) -> Rate:
    return Rate(statistics.median(r.rps for r in rates), statistics.median(r.p50_ms for r in rates),
                statistics.median(r.p99_ms for r in rates), sum(r.errors for r in rates))


def spread(ratios: list[float]) -> str:
    """``x1.84 (1.71-1.90)``: the median of per-round ratios, then their min and max."""
    return f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def rotated(names: list[str], round_: int) -> list[str]:
    """``names`` starting at a different one each round, so that going first is nobody's habit."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------- servers


@contextmanager
def process_group(command: list[str], **kwargs):
    """Run ``command`` in a session of its own; on exit, SIGTERM the whole group, then SIGKILL."""
    process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, **kwargs)
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                time.sleep(0.2)  # let the forked children go too
            except subprocess.TimeoutExpired:
                continue
        if process.stdout:
            process.stdout.close()
        if process.poll() is None:
            process.kill()
            process.wait()


@contextmanager
def tornado_forked(workers: int):
    """The demo app in tornado's own multi-process mode; yields its base URL."""
    with process_group([sys.executable, "-c", TORNADO_FORKED, str(workers)], stdout=subprocess.PIPE,
                       text=True) as process:
        port = int(process.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        wait_serving(url + "/fast")
        yield url


def ensure_gunicorn() -> bool:
    if importlib.util.find_spec("gunicorn") is None:
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "gunicorn"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return False
        importlib.invalidate_caches()
    return importlib.util.find_spec("gunicorn") is not None


@contextmanager
def gunicorn(workers: int, worker_class: str):
    """A minimal WSGI hello app under gunicorn; yields its base URL."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "bench_hello.py"), "w") as module:
            module.write(textwrap.dedent(HELLO_WSGI))
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--chdir", folder, "-w", str(workers), "-k", worker_class,
                   "-b", f"127.0.0.1:{port}", "--log-level", "warning", "bench_hello:app"]
        with process_group(command, stdout=subprocess.DEVNULL):
            url = f"http://127.0.0.1:{port}"
            wait_serving(url + "/fast")
            yield url


# ------------------------------------------------------------------------------ measurements


def cpu_scaling(workers: int, driver, driver_name: str) -> str:
    one_name, many_name = "1 worker", f"{workers} workers"
    rates: dict[str, list[Rate]] = {one_name: [], many_name: []}
    with Cluster(APP, workers=1, balance="round-robin") as one, \
            Cluster(APP, workers=workers, balance="round-robin") as many:
        urls = {one_name: one.url, many_name: many.url}
        for round_ in range(REPEATS):
            for name in rotated(list(urls), round_):
                rates[name].append(driver(urls[name] + CPU_PATH, 4 * workers))
    ratios = [m.rps / o.rps for o, m in zip(rates[one_name], rates[many_name])]
    median = statistics.median(ratios)
    verdict = "meets" if median >= 1.8 or workers < 2 else "misses"
    return "\n".join([
        "### CPU-heavy endpoint: one worker vs one per core",
        "",
        f"`{CPU_PATH}`, round-robin, {4 * workers} connections, {REPEATS} rounds of {SECONDS} s runs, the two "
        f"clusters in turns (medians), driven by {driver_name}.",
        "",
        "| cluster | answers/s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {rate.rps:,.0f} | {rate.p50_ms:.1f} | {rate.p99_ms:.1f} | {rate.errors} |"
          for name, rate in ((name, median_rate(r)) for name, r in rates.items())),
        "",
        f"Speedup with {workers} workers, per round: **{spread(ratios)}** (median, min-max; {verdict} the "
        "target of x1.8 on 2 idle cores).",
    ])


def hello_world(workers: int) -> str:
    runs: dict[str, list[Rate]] = {}
    servers = {f"labkit Cluster, balance={mode}": (lambda mode=mode: _labkit_url(workers, mode))
               for mode in ("os", "reuseport", "round-robin")}
    servers["tornado fork_processes"] = lambda: tornado_forked(workers)
    notes = []
    if ensure_gunicorn():
        servers["gunicorn, sync workers"] = lambda: gunicorn(workers, "sync")
        servers["gunicorn, gthread workers"] = lambda: gunicorn(workers, "gthread")
    else:
        notes.append("gunicorn could not be installed with pip: its rows are missing.")
    for round_ in range(REPEATS):  # servers in turns, so drifting background load hits all alike
        for name in rotated(list(servers), round_):
            with servers[name]() as url:
                runs.setdefault(name, []).append(wrk(url + "/fast"))
    medians = {name: median_rate(rates) for name, rates in runs.items()}
    peers = [name for name in runs if not name.startswith("labkit")]
    # Each server's rate over the fastest peer's in the same round: drift cancels out of the ratio.
    best_peer = [max(runs[peer][i].rps for peer in peers) for i in range(REPEATS)]
    ratios = {name: [rate.rps / peer for rate, peer in zip(rates, best_peer)] for name, rates in runs.items()}
    labkit_best = max((name for name in runs if name.startswith("labkit")),
                      key=lambda name: statistics.median(ratios[name]))
    best = statistics.median(ratios[labkit_best])
    return "\n".join([
        "### Hello world: labkit's Cluster and its peers",
        "",
        f"{workers} worker processes each; `wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency`, "
        f"{REPEATS} rounds with the servers in turns (a different one first each round). labkit and tornado "
        "serve the demo app's `/fast`; gunicorn serves a three-line WSGI hello app. The last column is each "
        "server's requests/s over the fastest peer's in the same round: median (min-max) over the rounds; "
        "the other columns are medians.",
        "",
        "| server | requests/s | p50 ms | p99 ms | errors | vs fastest peer, per round |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {name} | {rate.rps:,.0f} | {rate.p50_ms:.2f} | {rate.p99_ms:.2f} | {rate.errors} | "
          f"{spread(ratios[name])} |" for name, rate in medians.items()),
        "",
        f"labkit's best mode ({labkit_best.split('=')[-1]}): **{spread(ratios[labkit_best])}** the fastest peer "
        f"({'meets' if best >= 0.9 else 'misses'} the target of at least x0.9).",
        *notes,
    ])


@contextmanager
def _labkit_url(workers: int, balance: str):
    with Cluster(APP, workers=workers, balance=balance) as cluster:
        yield cluster.url


def restart_latency() -> str:
    seconds = []
    with Cluster(APP, workers=2, balance="round-robin") as cluster:
        for _ in range(RESTARTS):
            victim = cluster.pids[1]
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            while not any(w.id == 1 and w.pid != victim and w.state is WorkerState.READY
                          for w in cluster.stats().workers):
                time.sleep(0.002)
            newcomer = cluster.pids[1]
            while True:  # round-robin: a few new connections reach the newcomer
                with urllib.request.urlopen(cluster.url + "/pid", timeout=5) as response:
                    if int(response.headers["X-Worker-Pid"]) == newcomer:
                        break
            seconds.append(time.perf_counter() - killed)
            time.sleep(0.5)
        start_method = cluster.start_method
    worst = max(seconds)
    return "\n".join([
        "### Restart latency",
        "",
        f"SIGKILL to worker 1 of a 2-worker round-robin cluster (start method {start_method}), until its "
        f"replacement has answered a request; {RESTARTS} kills.",
        "",
        f"Median **{1e3 * statistics.median(seconds):.0f} ms**, worst {1e3 * worst:.0f} ms "
        f"({'meets' if worst < 1.0 else 'misses'} the target of under 1 s). The restart delay after a first "
        "crash is 0.1 s of that.",
    ])


def _probe(url: str) -> tuple[float, bool]:
    """When one request on a fresh connection started, and whether it was answered in time."""
    started = time.time()
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            response.read()
        return started, True
    except OSError:
        return started, False


def _probe_while_stopped(balance: str, pass_over: bool) -> tuple[int, int, int | None]:
    """Probes sent while worker 1 of 2 is stopped: (sent, failed, failed after it was passed over)."""
    from labkit.cluster import _arbiter

    saved = _arbiter.STALL_AFTER_BEATS
    if not pass_over:
        _arbiter.STALL_AFTER_BEATS = float("inf")  # round-robin as it was: never pass a worker over
    try:
        with Cluster(APP, workers=2, balance=balance) as cluster:
            victim = cluster.pids[1]
            with ThreadPoolExecutor(int(2 * PROBE_TIMEOUT / PROBE_INTERVAL) + 8) as pool:
                os.kill(victim, signal.SIGSTOP)
                try:
                    futures = []
                    until = time.monotonic() + HUNG_SECONDS
                    while time.monotonic() < until:
                        futures.append(pool.submit(_probe, cluster.url + "/fast"))
                        time.sleep(PROBE_INTERVAL)
                    outcomes = [future.result() for future in futures]  # each within PROBE_TIMEOUT
                finally:
                    os.kill(victim, signal.SIGCONT)
            stalled = [e.time for e in cluster.events if e.kind == "stalled" and e.pid == victim]
    finally:
        _arbiter.STALL_AFTER_BEATS = saved
    failed = [started for started, ok in outcomes if not ok]
    after = sum(started > stalled[0] for started in failed) if stalled else None
    return len(outcomes), len(failed), after


def hung_worker() -> str:
    cases = [("os", "os", True), ("reuseport", "reuseport", True),
             ("round-robin, never passing over (before)", "round-robin", False),
             ("round-robin, passing over a stalled worker", "round-robin", True)]
    rows = []
    for label, balance, pass_over in cases:
        sent, failed, after = _probe_while_stopped(balance, pass_over)
        rows.append(f"| {label} | {sent} | {failed} | {'-' if after is None else after} |")
    return "\n".join([
        "### A hung worker: probes while one of two workers is stopped",
        "",
        f"Worker 1 of 2 stopped with SIGSTOP for {HUNG_SECONDS:g} s (under the 30 s heartbeat timeout, so it is "
        f"not replaced); a request to `/fast` on a fresh connection every {PROBE_INTERVAL:g} s, failed if "
        f"unanswered within {PROBE_TIMEOUT:g} s. The last column counts failed probes sent after round-robin "
        "marked the worker stalled (two heartbeat intervals late, no CPU used): the target is 0, the probes "
        "before that are the connections the hung worker already held.",
        "",
        "| balance | probes | failed | failed after it was passed over |",
        "|---|---:|---:|---:|",
        *rows,
    ])


def load_vs_wrk(workers: int) -> str:
    rates: dict[str, list[Rate]] = {"wrk": [], "labkit.load": []}
    with Cluster(APP, workers=workers, balance="round-robin") as cluster:
        drivers = {"wrk": wrk, "labkit.load": labkit_load}
        for round_ in range(REPEATS):
            for name in rotated(list(drivers), round_):
                rates[name].append(drivers[name](cluster.url + "/fast"))
    w, lk = median_rate(rates["wrk"]), median_rate(rates["labkit.load"])
    ratios = [b.rps / a.rps for a, b in zip(rates["wrk"], rates["labkit.load"])]
    return "\n".join([
        "### labkit.load against wrk, same server",
        "",
        f"The {workers}-worker round-robin cluster's `/fast`, {CONNECTIONS} connections, {SECONDS} s runs, "
        f"in turns, {REPEATS} rounds (medians).",
        "",
        "| client | requests/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
        f"| wrk | {w.rps:,.0f} | {w.p50_ms:.2f} | {w.p99_ms:.2f} | {w.errors} |",
        f"| labkit.load | {lk.rps:,.0f} | {lk.p50_ms:.2f} | {lk.p99_ms:.2f} | {lk.errors} |",
        "",
        f"labkit.load measured **{spread(ratios)}** wrk's throughput per round (median, min-max), with a median "
        f"p50 latency x{lk.p50_ms / w.p50_ms:.2f} "
        "wrk's. On a hello-world endpoint, labkit.load (Python) competes with the servers for the same cores, so "
        "it reports less than the server can do; for the labs' endpoints, whose requests take milliseconds, "
        "it is not the limit.",
    ])


def run() -> str:
    """All five measurements, as one Markdown section."""
    workers = usable_cores().usable
    have_wrk = shutil.which("wrk") is not None
    sections = ["## Cluster mode", ""]
    delivered = measure_parallelism().delivered
    sections.append(f"{workers} workers (usable cores); the machine delivered {delivered:.2f} cores just before.")
    driver, driver_name = (wrk, "wrk") if have_wrk else (labkit_load, "labkit.load")
    sections += ["", cpu_scaling(workers, driver, driver_name), ""]
    if have_wrk:
        sections += [hello_world(workers), "", load_vs_wrk(workers), ""]
    else:
        sections += ["`wrk` is not installed (`apt-get install wrk`): the hello-world comparison with tornado and "
                     "gunicorn, and the labkit.load vs wrk comparison, were skipped.", ""]
    sections += [restart_latency(), "", hung_worker()]
    return "\n".join(sections)
