"""Cluster: workers serve one port in every balancing mode, and the supervisor keeps them serving.

Real processes and sockets throughout. Timing-sensitive claims are phrased as bounds that noise
cannot flip ("the replacement serves eventually", "failures no more than the connections the
killed worker held"); speed itself belongs in benchmarks/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from helpers import wait_until

from labkit import ConfigurationError, ServerStartError, usable_cores
from labkit.cluster import (
    BALANCE_MODES,
    Cluster,
    RestartPolicy,
    WorkerState,
    diagnose,
    resolve_workers,
)
from labkit.load import run_load

DEMO = "labkit.demo:demo_app"

TEST_APPS = '''
"""Apps that misbehave on purpose, for the cluster tests."""
import os
import time

import tornado.web

from labkit.demo import demo_app


class Block(tornado.web.RequestHandler):
    def get(self):
        time.sleep(float(self.get_argument("s", "1")))  # blocks the event loop, on purpose
        self.write("done")


class Pid(tornado.web.RequestHandler):
    def get(self):
        self.set_header("X-Worker-Pid", str(os.getpid()))
        self.write(str(os.getpid()))


def blocking_app():
    return tornado.web.Application([(r"/block", Block), (r"/pid", Pid)])


def dies_in_slot_2():
    if os.environ.get("LABKIT_WORKER_ID") == "2":
        os._exit(7)  # dies while booting, without a word
    return demo_app()
'''


@pytest.fixture(scope="module", autouse=True)
def resource_tracker_started_up_front():
    """Spawning a process starts multiprocessing's resource tracker: one per interpreter, living
    until the interpreter exits. Start it before any test's leak snapshot, so it is not taken for
    a process a test leaked."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.fixture(scope="module")
def misbehaving_apps(tmp_path_factory):
    """A module of misbehaving apps, importable by forked and spawned workers alike."""
    folder = tmp_path_factory.mktemp("apps")
    (folder / "cluster_test_apps.py").write_text(TEST_APPS)
    sys.path.insert(0, str(folder))
    yield "cluster_test_apps"
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def shared_cluster():
    """A plain two-worker cluster for the tests that only look at it."""
    with Cluster(DEMO, workers=2, start_method="fork") as cluster:
        yield cluster


def get(url: str, timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request on a fresh connection."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def pids_answering(url: str, want: set[int], attempts: int = 200) -> set[int]:
    """Send requests on fresh connections, four at a time, until every pid in ``want`` answered."""
    seen: set[int] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(attempts // 4):
            for _, headers, _ in pool.map(lambda _: get(url + "/pid"), range(4)):
                seen.add(int(headers["X-Worker-Pid"]))
            if want <= seen:
                break
    return seen


def replaced(cluster: Cluster, worker_id: int, old_pid: int) -> bool:
    """Whether ``worker_id`` has a new process that is ready."""
    return any(w.id == worker_id and w.pid != old_pid and w.state is WorkerState.READY
               for w in cluster.stats().workers)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# ------------------------------------------------------------------------------- serving


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("balance", BALANCE_MODES)
def test_every_balancing_mode_serves_from_distinct_worker_processes(balance, start_method):
    with Cluster(DEMO, workers=2, balance=balance, start_method=start_method) as cluster:
        pids = set(cluster.pids.values())
        assert len(pids) == 2
        assert pids_answering(cluster.url, pids) == pids
        assert get(cluster.url + "/fast")[2] == b"ok\n"


def test_a_cluster_binds_127_0_0_1_by_default(shared_cluster):
    assert shared_cluster.url.startswith("http://127.0.0.1:")
    listening = {c.laddr for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == shared_cluster.port}
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_stats_are_frozen_per_worker_records_with_requests_cpu_and_memory(shared_cluster):
    before = shared_cluster.stats().requests
    for _ in range(6):
        get(shared_cluster.url + "/fast")
    assert wait_until(lambda: shared_cluster.stats().requests >= before + 6, 10)  # counted at each heartbeat
    stats = shared_cluster.stats()
    assert [w.id for w in stats.workers] == [1, 2]
    assert all(w.state is WorkerState.READY and w.rss > 0 and w.uptime > 0 for w in stats.workers)
    assert stats.cpu_percent >= 0
    # Memory is each worker's own, as the OS reports it (idle workers barely change size between
    # the two readings), and the cluster's is the workers' together.
    measured = {w.pid: psutil.Process(w.pid).memory_info().rss for w in stats.workers}
    for worker in stats.workers:
        assert 0.8 * measured[worker.pid] <= worker.rss <= 1.25 * measured[worker.pid], (worker, measured)
    assert 0.8 * sum(measured.values()) <= stats.rss <= 1.25 * sum(measured.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.workers[0].requests = 0
    assert all(str(w.pid) in stats.table() for w in stats.workers)
    assert "2/2 ready" in repr(shared_cluster)


def test_an_app_that_does_not_import_fails_the_start_with_its_own_message():
    cluster = Cluster("no_such_module:app", workers=2, start_method="fork")
    with pytest.raises(ServerStartError, match="No module named 'no_such_module'") as caught:
        cluster.start()
    assert "ModuleNotFoundError" in str(caught.value.__cause__)  # the worker's traceback came along
    assert not cluster.running


def test_leaving_the_with_block_even_by_ctrl_c_stops_every_worker():
    with pytest.raises(KeyboardInterrupt):
        with Cluster(DEMO, workers=2, start_method="fork") as cluster:
            workers = [psutil.Process(pid) for pid in cluster.pids.values()]
            raise KeyboardInterrupt
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert not cluster.running
    assert "stopped" in repr(cluster)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_no_worker_survives_its_primary_being_killed(tmp_path, start_method):
    script = tmp_path / "primary.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from labkit.cluster import Cluster

        if __name__ == "__main__":
            cluster = Cluster({DEMO!r}, workers=2, start_method={start_method!r}).start()
            print(json.dumps(list(cluster.pids.values())), flush=True)
            time.sleep(120)
    """))
    primary = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [psutil.Process(pid) for pid in json.loads(primary.stdout.readline())]
        primary.kill()  # SIGKILL: no cleanup code runs in the primary
        primary.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive
    finally:
        primary.stdout.close()
        if primary.poll() is None:
            primary.kill()
            primary.wait()


# --------------------------------------------------------------------------- supervision


def test_killing_one_of_two_workers_under_load_fails_only_its_connections_and_it_is_replaced():
    # Round-robin, so that a fresh connection after the restart is sure to reach the new worker.
    concurrency = 8
    with Cluster(DEMO, workers=2, balance="round-robin", start_method="fork") as cluster:
        victim = cluster.pids[1]
        reports = []
        loader = threading.Thread(target=lambda: reports.append(
            run_load(cluster.url + "/sleep?ms=5", concurrency=concurrency, duration=3.0)))
        loader.start()
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: replaced(cluster, 1, victim), 20)
        newcomer = cluster.pids[1]
        assert newcomer in pids_answering(cluster.url, {newcomer}, attempts=8)
        loader.join(60)
        exits = [e.message for e in cluster.events if e.kind == "exited" and e.pid == victim]
    report = reports[0]
    # Round-robin gave the victim half of the connections; each loses at most its one in-flight
    # request. The slack covers a connection handed over in the instant the victim was dying.
    assert report.failed <= concurrency // 2 + 2, report.summary()
    assert report.errors["refused"] == report.errors["timeout"] == 0
    assert report.ok > 0 and cluster.pids == {}
    assert "killed by SIGKILL" in exits[0] and "restarting" in exits[0]


def test_twenty_kills_in_a_row_under_load_are_all_restarted_and_leave_no_process_behind():
    # Every kill comes right after the replacement is ready, far sooner than a healthy worker
    # would die; min_uptime=0 keeps the crash-loop guard (tested on its own below) out of the way,
    # and short delays keep twenty restarts quick. A load runs all the while.
    kills = 20
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # a module-scoped cluster, say
    with Cluster(DEMO, workers=2, balance="round-robin", start_method="fork", min_uptime=0,
                 restart_delay=0.05, max_restart_delay=0.2) as cluster:
        # The workers and anything they started; not multiprocessing's resource tracker, which
        # belongs to this test process and lives as long as it does.
        descendants = {p.pid for p in psutil.Process().children(recursive=True)
                       if p.pid not in others and "resource_tracker" not in " ".join(p.cmdline())}
        every_pid = set(cluster.pids.values())
        reports = []
        loader = threading.Thread(target=lambda: reports.append(
            run_load(cluster.url + "/sleep?ms=2", concurrency=4, duration=8.0, timeout=5)))
        loader.start()
        started = time.monotonic()
        for kill in range(kills):
            worker_id = 1 + kill % 2
            victim = cluster.pids[worker_id]
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda w=worker_id, v=victim: replaced(cluster, w, v), 20), f"kill {kill + 1}"
            every_pid |= set(cluster.pids.values())
        print(f"{kills} kills and restarts in {time.monotonic() - started:.1f} s")
        stats = cluster.stats()
        living = set(cluster.pids.values())
        # Still serving after the last kill: both new workers answer.
        assert pids_answering(cluster.url, living, attempts=40) == living
        loader.join(60)
    assert sum(w.restarts for w in stats.workers) == kills
    assert all(w.state is WorkerState.READY for w in stats.workers)
    assert len(every_pid) == kills + 2
    survivors = [pid for pid in every_pid | living | descendants
                 if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [psutil.Process(pid).cmdline() for pid in survivors]
    report = reports[0]
    print(report.summary())
    # Each kill costs at most the requests in flight on the victim's connections: one per
    # connection, and a worker can hold all four (those that reconnected while the other one was
    # down all went to it), plus one connection handed over in the instant the victim died.
    assert report.failed <= kills * (4 + 1), report.summary()
    assert report.errors["refused"] == 0 and report.ok > 0


def test_a_worker_that_dies_at_boot_is_errored_after_max_restarts_and_the_primary_stays_idle(misbehaving_apps):
    me = psutil.Process()
    cpu_before, wall_before = cpu_seconds(me), time.monotonic()
    with Cluster(f"{misbehaving_apps}:dies_in_slot_2", workers=2, start_method="fork", max_restarts=3,
                 min_uptime=5) as cluster:
        time.sleep(1.0)  # an errored worker must not keep the primary busy
        cpu, wall = cpu_seconds(me) - cpu_before, time.monotonic() - wall_before
        second = next(w for w in cluster.stats().workers if w.id == 2)
        report = [e.message for e in cluster.events if e.kind == "errored"]
        assert "1 errored" in repr(cluster)
    assert second.state is WorkerState.ERRORED
    assert second.restarts == 3
    assert "status 7" in second.last_exit
    assert "4 times in a row" in report[0] and "reload()" in report[0]
    assert cpu < 0.5 * wall, f"the primary used {cpu:.2f} s of CPU in {wall:.2f} s"


def test_a_worker_whose_loop_blocks_past_the_heartbeat_timeout_is_replaced(misbehaving_apps):
    with Cluster(f"{misbehaving_apps}:blocking_app", workers=1, start_method="fork", heartbeat_timeout=1.0) as cluster:
        stuck = cluster.pids[1]
        failures = []

        def ask_for_a_long_block():
            try:
                get(cluster.url + "/block?s=30")
            except OSError as exc:  # the worker is killed mid-request
                failures.append(exc)

        blocker = threading.Thread(target=ask_for_a_long_block)
        blocker.start()
        assert wait_until(lambda: replaced(cluster, 1, stuck), 20)
        assert any(e.kind == "hung" and e.pid == stuck for e in cluster.events)
        assert get(cluster.url + "/pid")[2] == str(cluster.pids[1]).encode()
        blocker.join(30)
        assert failures, "the blocked request should have failed with its worker"


def test_a_rolling_reload_under_load_fails_no_request():
    with Cluster(DEMO, workers=2, start_method="fork") as cluster:
        before = set(cluster.pids.values())
        reports = []
        loader = threading.Thread(target=lambda: reports.append(
            run_load(cluster.url + "/sleep?ms=5", concurrency=8, duration=3.0)))
        loader.start()
        time.sleep(0.7)
        cluster.reload()
        after = set(cluster.pids.values())
        loader.join(60)
    assert reports[0].failed == 0, reports[0].summary()
    assert reports[0].ok > 0
    assert len(after) == 2 and not before & after


def test_scale_starts_and_retires_workers_while_serving():
    events = []
    with Cluster(DEMO, workers=1, start_method="fork", on_change=events.append) as cluster:
        cluster.scale(2)
        first, second = cluster.pids[1], cluster.pids[2]
        assert get(cluster.url + "/fast")[0] == 200
        cluster.scale(1)
        assert cluster.pids == {1: first}
        assert not psutil.pid_exists(second)
    kinds = [e.kind for e in events]
    assert kinds.count("ready") == 2 and kinds.count("scaled") == 2 and "stopping" in kinds


# --------------------------------------------------------------------- plain values, no processes


def test_workers_accepts_max_all_but_one_and_positive_counts():
    usable = usable_cores().usable
    assert resolve_workers("max") == usable
    assert resolve_workers(-1) == max(1, usable - 1)
    assert resolve_workers(3) == resolve_workers("3") == 3
    for wrong in (0, -2, "lots", True, 1.5):
        with pytest.raises(ConfigurationError, match="'max', -1 or a positive integer"):
            resolve_workers(wrong)


def test_bad_arguments_are_refused_before_anything_starts(monkeypatch):
    with pytest.raises(ConfigurationError, match="module:factory"):
        Cluster("labkit.apps")
    with pytest.raises(ConfigurationError, match="balance must be one of"):
        Cluster(DEMO, balance="random")
    with pytest.raises(ConfigurationError, match="start_method"):
        Cluster(DEMO, start_method="teleport")
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(ConfigurationError, match="SO_REUSEPORT"):
        Cluster(DEMO, balance="reuseport")
    monkeypatch.delattr(socket, "send_fds")
    with pytest.raises(ConfigurationError, match="send_fds"):
        Cluster(DEMO, balance="round-robin")


def test_worker_states_move_only_forward():
    assert WorkerState.STARTING.can_become(WorkerState.READY)
    assert WorkerState.READY.can_become(WorkerState.STOPPING)
    assert WorkerState.EXITED.can_become(WorkerState.ERRORED)
    assert not WorkerState.EXITED.can_become(WorkerState.READY)
    assert not WorkerState.STOPPING.can_become(WorkerState.READY)
    assert not any(WorkerState.ERRORED.can_become(state) for state in WorkerState)


def test_restart_delays_grow_by_half_to_a_cap_and_reset_after_a_stable_run():
    policy = RestartPolicy(base=0.1, factor=1.5, cap=0.5, stable_uptime=30, min_uptime=1, max_restarts=3)
    delays, backoff, young = [], 0, 0
    for _ in range(6):  # crashes after 5 s up: runtime crashes, never a crash loop
        decision = policy.after_exit(5.0, backoff, young)
        backoff, young = decision.backoff, decision.young_deaths
        delays.append(decision.delay)
    assert delays == pytest.approx([0.1, 0.15, 0.225, 0.3375, 0.5, 0.5])
    assert policy.after_exit(60.0, backoff, young).delay == pytest.approx(0.1)


def test_dying_young_more_than_max_restarts_times_in_a_row_gives_up():
    policy = RestartPolicy(base=0.1, factor=1.5, cap=10, stable_uptime=30, min_uptime=1, max_restarts=3)
    backoff = young = 0
    outcomes = []
    for _ in range(4):
        decision = policy.after_exit(0.2, backoff, young)
        backoff, young = decision.backoff, decision.young_deaths
        outcomes.append(decision.delay is not None)
    assert outcomes == [True, True, True, False]
    assert policy.after_exit(2.0, backoff, 2).young_deaths == 0  # one healthy run ends the streak


def test_exit_statuses_become_diagnoses_that_suggest_a_cause():
    assert "killed by SIGKILL" in diagnose(-signal.SIGKILL) and "out of memory" in diagnose(-signal.SIGKILL)
    assert "SIGSEGV" in diagnose(-signal.SIGSEGV) and "C code" in diagnose(-signal.SIGSEGV)
    assert "uncaught exception" in diagnose(1)
    assert "without being asked" in diagnose(0)
    assert "could not boot" in diagnose(3)
    assert diagnose(1, boot_error="ImportError: x") == "failed to boot: ImportError: x"


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_an_app_factory_defined_in_a_test_travels_by_value_under_every_start_method(start_method):
    import tornado.web

    greeting = f"made in {start_method}"  # a closure: the factory is copied by value, not imported

    class Hello(tornado.web.RequestHandler):
        def get(self):
            self.write(f"{greeting}, served by {os.getpid()}")

    def make_app(suffix: str = ""):
        return tornado.web.Application([(r"/", Hello)])

    with Cluster(make_app, workers=2, start_method=start_method) as cluster:
        assert "make_app" in cluster.app and "make_app" in cluster.stats().app
        status, _, body = get(cluster.url + "/")
        pids = set(cluster.pids.values())
    assert status == 200 and body.decode().startswith(greeting)
    assert int(body.decode().rsplit(" ", 1)[1]) in pids


def test_an_app_factory_that_cannot_be_pickled_is_a_clear_error():
    lock = threading.Lock()

    def make_app():
        with lock:  # a lock cannot travel to another process
            return None

    with pytest.raises(ConfigurationError, match="cannot send the app factory .*make_app.*labkit_start"):
        Cluster(make_app, workers=1)


def test_a_by_value_factory_that_raises_at_boot_names_its_error():
    def make_app():
        raise NotImplementedError("write the app here")

    with pytest.raises(ServerStartError, match="NotImplementedError: write the app here"):
        Cluster(make_app, workers=1, start_method="fork", max_restarts=0).start()


def test_cpu_percent_does_not_depend_on_who_asked_for_stats_before():
    # A widget polling stats() must not leave a notebook's own stats() call an empty window.
    with Cluster(DEMO, workers=1, start_method="fork") as cluster:
        run_load(cluster.url + "/primes?n=40000", concurrency=2, duration=1.5)
        first = cluster.stats().workers[0].cpu_percent
        second = cluster.stats().workers[0].cpu_percent  # right after: same window, nearly
    assert first > 0
    assert second >= 0.5 * first, (first, second)
