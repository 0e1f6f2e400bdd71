"""Checks of exercise 07, the capstone: a responsive API that uses every core (lab 07).

The student writes ``make_app(pool_workers)``, a tornado app with ``/fast``, ``/primes?n=`` and
``/hash?cost=`` whose heavy work runs on pools the app starts in ``labkit_start`` and stops in
``labkit_close`` (one pool for both endpoints, or one each), and ``layout()``, the
:class:`~labkit.cluster.Cluster` settings that spread it over the machine. The checks serve the
student's own app (sent to the workers by value, so it may live in the notebook) and load it for
real with :func:`labkit.load.run_load_async`. A loaded trial has two phases, one per heavy
endpoint, so that each endpoint's work is judged on its own:

- **/primes only** (pure Python): how many processes of the cluster computed. On a build with a
  GIL, the threads of one process run Python bytecode one at a time, so pure-Python work computes
  in one process however many threads run it; counting busy processes does not depend on how
  busy the machine is. On a free-threaded build that runs without its GIL (asked of the cluster
  worker itself, ``sys._is_gil_enabled()``), threads may really compute in parallel, so the check
  judges the CPU the cluster used instead, as it does for every layout in ``ex07.every_core``;
- **/hash only** (scrypt, which releases the GIL): any pool may run it, threads included, as lab
  07's table says.

In both phases ``/fast`` is asked every 20 ms, on new connections. "Fast" is judged against the
heavy requests of the same phase: a blocked loop makes ``/fast`` wait for whole heavy
computations, so its p99 comes close to a heavy request's median latency; a free loop answers in a
small fraction of it. A loaded machine slows both alike, so the ratio holds on any machine.

- ``ex07.responsive``: one cluster worker with pools of one worker per usable core: right
  answers, ``/fast`` fast in both phases, and /primes computed in as many processes as there are
  usable cores (or, without a GIL, on that many cores' worth of CPU).
- ``ex07.every_core``: the student's layout. Facts first: ``K x M`` heavy workers against the
  usable cores (fewer leave cores idle, more oversubscribe them), and a balancing mode that
  spreads kept-alive connections when ``K > 1``. Then the trial above, plus the CPU the cluster
  used in each phase against the parallelism the machine delivered just before (the course's 60%).
- ``ex07.answers`` (hidden): the answers for edge cases of both heavy endpoints, and for a mix of
  different requests in flight at once (an app that keeps one request's answer where another
  request can overwrite it fails here).
- ``ex07.any_machine`` (hidden): the layout, computed again in a process pinned to fewer CPUs
  (:func:`os.sched_setaffinity`), must fit that machine too: a layout fitted to the machine the
  visible check ran on, rather than computed from the usable cores, fails here. Where there is
  no smaller machine to make (one usable core, or no CPU affinity on this platform), the layout
  is judged on this machine's shape.

No failure message names the pool kind, the worker count or the balancing mode to write: each
says what was measured and which idea of the course applies.

Measured trials are repeated up to three times (:func:`labkit.measure.best_of`), so one disturbed
run on a shared machine does not fail a right answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from labkit.cluster import (
    DEFAULT_BALANCE,  # what a missing 'balance' means
    Cluster,
    resolve_workers,
)
from labkit.cores import measure_parallelism, usable_cores
from labkit.errors import ConfigurationError, ServerStartError
from labkit.load import LoadReport, run_load_async
from labkit.measure import best_of
from labkit.workloads import count_primes, hash_password

from ._settings import settings_from
from ._values import plain
from .checks import Fail, register

__all__ = ["PRIMES_N", "HASH_COST", "PASSWORD", "SALT", "BLOCKED_SHARE", "CPU_SHARE", "BUSY_SHARE", "GIL_PATH",
           "gil_enabled"]

#: The heavy requests of the load: about half a second of pure Python, and a scrypt hash of
#: about a fifth of a second (64 MiB each).
PRIMES_N, HASH_COST = 200_000, 16

#: What ``/hash`` hashes (the exercise says so too).
PASSWORD, SALT = b"capstone", b"labkit-course-salt"

#: ``/fast`` p99 above this share of a heavy request's median latency means the loop computed.
BLOCKED_SHARE = 0.25

#: Share of the parallelism the machine delivered that the cluster's CPU use must reach.
CPU_SHARE = 0.6

#: A process "computed" when it used at least this share of the CPU of the busiest one.
BUSY_SHARE = 0.3

#: Where the check asks a cluster worker whether its interpreter runs with a GIL (an endpoint the
#: check adds to the student's app; its answer is ``{"gil": true}`` or ``{"gil": false}``).
GIL_PATH = "/labkit-check/gil"

# Seconds of heavy load per phase (one phase per heavy endpoint), and how often /fast is asked
# meanwhile (each time on a new connection, so that every cluster worker gets asked).
PHASE_SECONDS = 1.5
PROBE_INTERVAL = 0.02

# Longest any single request may take before the check calls it lost.
REQUEST_TIMEOUT = 60.0

# Longest the hidden check waits for the layout computed in a pinned process.
LAYOUT_TIMEOUT = 60.0

# Cluster keyword arguments the layout may not choose: the check decides what runs and where.
_FIXED = ("app", "host", "port", "on_change")


def _stub_hint(text: str) -> str | None:
    """The hint of an exercise stub's NotImplementedError found in ``text``, or None.

    ``text`` is a worker's boot error (``labkit_start`` still a stub) or the traceback a 500
    answer carries (a handler still a stub). A hint may hold parentheses of its own; only a
    closing one the hint did not open is the message's, not the hint's.
    """
    match = re.search(r"NotImplementedError: ?(.*)$", text, re.MULTILINE)
    if match is None:
        return None
    hint = match[1].strip().strip("'\"")
    while hint.endswith(")") and hint.count(")") > hint.count("("):
        hint = hint[:-1].rstrip()
    return hint


def gil_enabled() -> bool:
    """Whether this interpreter runs Python bytecode under a GIL right now.

    ``sys._is_gil_enabled()`` exists from Python 3.13; a free-threaded build answers False unless
    the GIL was turned back on (``PYTHON_GIL=1``, or an extension module that needs it). Before
    3.13 every build has a GIL.
    """
    probe = getattr(sys, "_is_gil_enabled", None)
    return True if probe is None else bool(probe())


class _GilHandler(tornado.web.RequestHandler):
    """Says whether the cluster worker that answers runs with a GIL (see :data:`GIL_PATH`)."""

    def get(self) -> None:
        self.write({"gil": gil_enabled()})


def _served_app(factory: Callable[..., tornado.web.Application], **options) -> tornado.web.Application:
    """Build the student's app in a cluster worker, with tracebacks in 500 answers and the GIL question."""
    app = factory(**options)
    if isinstance(app, tornado.web.Application):
        app.settings["serve_traceback"] = True
        app.add_handlers(r".*", [(re.escape(GIL_PATH), _GilHandler)])
    return app


def _preflight(make_app) -> None:
    """Build the app once here: a wrong shape fails now, with a clear message."""
    if not callable(make_app) or inspect.iscoroutinefunction(make_app):
        raise Fail("pass your make_app function (a plain def that returns a tornado Application) to the check")
    app = make_app(pool_workers=1)  # NotImplementedError from a stub surfaces as "not done yet"
    if not isinstance(app, tornado.web.Application):
        raise Fail(f"make_app(pool_workers=1) returned {type(app).__name__}; return a tornado.web.Application")


def _start(make_app, settings: dict) -> Cluster:
    options = dict(settings.get("options") or {})
    rest = {key: value for key, value in settings.items() if key != "options"}
    try:
        return Cluster(functools.partial(_served_app, make_app), options=options, **rest).start()
    except ConfigurationError as exc:
        raise Fail(f"the cluster was refused: {exc}") from None
    except ServerStartError as exc:
        hint = _stub_hint(str(exc))
        if hint is not None:
            raise NotImplementedError(hint) from None
        raise Fail(f"your app did not start in a cluster worker: {exc}") from None


async def _get(client: AsyncHTTPClient, url: str) -> tuple[int, bytes]:
    try:
        response = await client.fetch(url, request_timeout=REQUEST_TIMEOUT, raise_error=False)
    except (OSError, HTTPClientError) as exc:
        raise Fail(f"{url} did not answer ({type(exc).__name__}: {exc})") from None
    return response.code, response.body or b""


async def _answer(client: AsyncHTTPClient, url: str, path: str, key: str):
    """GET ``path`` and return the ``key`` field of its JSON answer, or fail saying what came back."""
    code, body = await _get(client, url + path)
    if code != 200:
        text = body.decode(errors="replace")
        hint = _stub_hint(text)
        if hint is not None:
            raise NotImplementedError(hint)
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no body)"]
        raise Fail(f"{path} answered {code}: {last[0].strip()[:200]}")
    try:
        return json.loads(body)[key]
    except (ValueError, KeyError, TypeError):
        raise Fail(f"{path} answered {body[:120]!r}; answer a JSON object with a {key!r} field, "
                   "as self.write(dict) does") from None


async def _check_answers(client: AsyncHTTPClient, url: str, cases: list[tuple[str, object]],
                         at_once: bool = False) -> None:
    """Ask every case (one after another, or all ``at_once``) and fail on the first wrong answer."""

    async def one(path: str) -> object:
        return await _answer(client, url, path, "primes" if path.startswith("/primes") else "hash")

    if at_once:
        answers = await asyncio.gather(*(one(path) for path, _ in cases))
    else:
        answers = [await one(path) for path, _ in cases]
    for (path, expected), got in zip(cases, answers):
        if got != expected:
            key = "primes" if path.startswith("/primes") else "hash"
            together = f" while {len(cases) - 1} other requests were in flight" if at_once else ""
            raise Fail(f"{path} answered {key}={got!r}{together}, expected {expected!r}"
                       + (": does one request's answer end up where another request reads it?" if at_once else ""))


def _cases(primes: list[int], costs: list[int]) -> list[tuple[str, object]]:
    return ([(f"/primes?n={n}", count_primes(n)) for n in primes]
            + [(f"/hash?cost={cost}", hash_password(PASSWORD, SALT, cost)) for cost in costs])


async def _probe(client: AsyncHTTPClient, url: str, seconds: float) -> list[float | None]:
    """Ask ``/fast`` every PROBE_INTERVAL for ``seconds``; each answer's latency (None: no answer)."""

    async def once() -> float | None:
        start = time.perf_counter()
        try:
            response = await client.fetch(url + "/fast", request_timeout=REQUEST_TIMEOUT, raise_error=False)
        except (OSError, HTTPClientError):
            return None
        return time.perf_counter() - start if response.code == 200 else None

    asked = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        asked.append(asyncio.ensure_future(once()))
        await asyncio.sleep(PROBE_INTERVAL)
    return await asyncio.gather(*asked)


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class _Tree:
    """CPU seconds used by each process of a cluster (its loop processes and all they started)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.start = self._read()
        self.began = time.monotonic()

    def _read(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        for pid in self.cluster.pids.values():
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    times = proc.cpu_times()
                    seen[proc.pid] = times.user + times.system
            except psutil.Error:
                continue  # a process that ended meanwhile: what it used is lost, not counted
        return seen

    def used(self) -> tuple[float, dict[int, float]]:
        """(seconds of wall time since the start, CPU seconds used meanwhile by each process)."""
        end, wall = self._read(), time.monotonic() - self.began
        return wall, {pid: cpu - self.start.get(pid, 0.0) for pid, cpu in end.items()}


class _Phase:
    """What one phase of a loaded trial measured: one heavy endpoint under load, /fast probed."""

    def __init__(self, path: str, heavy: LoadReport, probes: list[float | None],
                 wall: float, cpu: dict[int, float]) -> None:
        self.path, self.heavy = path, heavy
        answered = [latency for latency in probes if latency is not None]
        self.probes, self.lost = len(probes), len(probes) - len(answered)
        self.fast_p99 = _p99(answered) if answered else float("inf")
        self.heavy_p50 = heavy.p50_ms / 1e3 if heavy.ok else float("inf")
        self.cpu_cores = sum(cpu.values()) / wall if wall > 0 else 0.0
        busiest = max(cpu.values(), default=0.0)
        self.busy = sum(1 for used in cpu.values() if busiest > 0 and used >= BUSY_SHARE * busiest)

    @property
    def failed(self) -> int:
        return self.heavy.failed + self.lost

    @property
    def responsive(self) -> bool:
        return self.fast_p99 <= BLOCKED_SHARE * self.heavy_p50

    def failures(self) -> str:
        parts = [f"{self.heavy.failed} of {self.heavy.requests} {self.path} requests failed ({self.heavy.errors})"
                 ] if self.heavy.failed else []
        if self.lost:
            parts.append(f"{self.lost} of {self.probes} /fast requests got no answer while {self.path} ran")
        return "; ".join(parts)

    def blocked_message(self) -> str:
        return (f"the loop is blocked: while {self.path} requests loaded the app, /fast took up to "
                f"{1e3 * self.fast_p99:.0f} ms (p99 of {self.probes - self.lost} answers), "
                f"{100 * self.fast_p99 / self.heavy_p50:.0f}% of a {self.path} request's median "
                f"{1e3 * self.heavy_p50:.0f} ms, so /fast waited for whole computations (three tries). A loop "
                f"that computes answers nothing else meanwhile (lab 01): the {self.path} handler should hand "
                "its work to a pool and await the answer, so that the loop only waits.")


class _Run:
    """What one loaded trial measured: a /primes phase, a /hash phase, and the machine around them."""

    def __init__(self, primes: _Phase, hashes: _Phase, delivered: float, gil: bool) -> None:
        self.primes, self.hashes, self.delivered, self.gil = primes, hashes, delivered, gil

    @property
    def phases(self) -> tuple[_Phase, _Phase]:
        return self.primes, self.hashes

    @property
    def failed(self) -> bool:
        return any(phase.failed for phase in self.phases)

    @property
    def blocked(self) -> _Phase | None:
        return next((phase for phase in self.phases if not phase.responsive), None)

    def cpu_fair(self, phase: _Phase, usable: int) -> bool:
        return phase.cpu_cores >= CPU_SHARE * min(self.delivered, usable)

    def primes_spread(self, usable: int) -> bool:
        """Whether the pure-Python work computed on every usable core (see the module docstring)."""
        return self.primes.busy >= usable if self.gil else self.cpu_fair(self.primes, usable)


async def _phase(cluster: Cluster, client: AsyncHTTPClient, path: str, heavy: int) -> _Phase:
    tree = _Tree(cluster)
    report, probes = await asyncio.gather(
        run_load_async(cluster.url + path, concurrency=heavy, duration=PHASE_SECONDS, timeout=REQUEST_TIMEOUT),
        _probe(client, cluster.url, PHASE_SECONDS),
    )
    wall, cpu = tree.used()
    return _Phase(path.split("?")[0], report, probes, wall, cpu)


async def _gil_of(client: AsyncHTTPClient, cluster: Cluster) -> bool:
    """Whether the cluster's workers run with a GIL (any one that does counts)."""
    answers = []
    for _ in range(len(cluster.pids)):  # new connections: the balancing spreads them over the workers
        code, body = await _get(client, cluster.url + GIL_PATH)
        try:
            answers.append(bool(json.loads(body)["gil"]) if code == 200 else True)
        except (ValueError, KeyError, TypeError):
            answers.append(True)
    return any(answers) or not answers


async def _loaded_trial(cluster: Cluster, client: AsyncHTTPClient, heavy: int) -> _Run:
    """Measure the delivered parallelism, then load each heavy endpoint in turn while probing /fast."""
    delivered = (await asyncio.to_thread(measure_parallelism)).delivered
    primes = await _phase(cluster, client, f"/primes?n={PRIMES_N}", heavy)
    hashes = await _phase(cluster, client, f"/hash?cost={HASH_COST}", heavy)
    return _Run(primes, hashes, delivered, await _gil_of(client, cluster))


async def _warm_up(cluster: Cluster, heavy: int) -> None:
    """Let every pool start its workers before anything is measured."""
    for path in (f"/primes?n={PRIMES_N // 20}", "/hash?cost=4"):
        await run_load_async(cluster.url + path, concurrency=heavy, duration=None,
                             requests=4 * heavy, timeout=REQUEST_TIMEOUT)


def _build(gil: bool) -> str:
    """How a message names the Python that ran the check, GIL-wise."""
    if gil:
        before = "" if hasattr(sys, "_is_gil_enabled") else " (every build before 3.13 does)"
        return "this Python runs with a GIL" + before
    return "this Python is a free-threaded build running without its GIL"


def _gil_message(run: _Run, usable: int) -> str:
    """/primes computed in fewer processes than usable cores on a build with a GIL."""
    processes = f"{run.primes.busy} process{'es' if run.primes.busy != 1 else ''}"
    return (f"cores idle: while only /primes requests loaded the app, {processes} of the cluster computed, for "
            f"{usable} usable cores (the cluster used {run.primes.cpu_cores:.2f} cores). /primes is pure Python, "
            f"and {_build(run.gil)}: the threads of one process run Python bytecode one at a time, so however "
            "many threads count primes in a process, they use one core between them (lab 04). Which workers "
            "give pure-Python work a core each?")


def _cpu_message(run: _Run, phase: _Phase) -> str:
    return (f"cores idle: while only {phase.path} requests loaded the app, the cluster used "
            f"{phase.cpu_cores:.2f} cores while the machine delivered {run.delivered:.2f} (three tries). Compare "
            f"the pools your app starts with the options['pool_workers'] it is given, and check that the "
            f"{phase.path} handler sends its work to them.")


def _verdict(run: _Run, usable: int, *, judge_cpu: bool) -> None:
    """Fail with what the last run measured; return if it passed."""
    if run.failed:
        raise Fail("under load, " + "; ".join(phase.failures() for phase in run.phases if phase.failed)
                   + ": every request should get its answer")
    blocked = run.blocked
    if blocked is not None:
        gil = ""
        if blocked is run.primes and run.gil and run.primes.busy < usable:
            busy = f"{run.primes.busy} process{'es' if run.primes.busy != 1 else ''}"
            gil = (f" Only {busy} of the cluster computed meanwhile, and {_build(run.gil)}: "
                   "threads that run pure Python hold the GIL the loop needs too (lab 04).")
        raise Fail(blocked.blocked_message() + gil)
    if not run.primes_spread(usable):
        raise Fail(_gil_message(run, usable) if run.gil else _cpu_message(run, run.primes))
    if judge_cpu:
        for phase in run.phases:
            if not run.cpu_fair(phase, usable):
                raise Fail(_cpu_message(run, phase))


# ------------------------------------------------------------------------------ responsive


@register("ex07.responsive")
async def check_responsive(make_app) -> str:
    """One worker, heavy load: right answers, /fast answered while the pools compute on every core."""
    _preflight(make_app)
    usable = usable_cores().usable
    client = AsyncHTTPClient(force_instance=True, max_clients=500)

    def good(run: _Run) -> bool:
        return not run.failed and run.blocked is None and run.primes_spread(usable)

    try:
        with _start(make_app, {"workers": 1, "options": {"pool_workers": usable}}) as cluster:
            await _check_answers(client, cluster.url, _cases([1000, 20_000], [4, 10]))
            await _warm_up(cluster, usable)
            run, passed = await best_of(lambda: _loaded_trial(cluster, client, 2 * usable), good)
    finally:
        client.close()
    if passed:
        return ("the answers are right, and /fast stayed fast while the pools computed: the event loop only awaits "
                "the heavy work.")
    _verdict(run, usable, judge_cpu=False)
    raise AssertionError("unreachable: a run that failed must fail one of the tests above")


# ------------------------------------------------------------------------------ every_core


def _layout(layout: Callable[[], dict], resolve: Callable[[Any], int] = resolve_workers) -> tuple[dict, int, int]:
    """Validate the student's layout; return it with K (cluster workers) and M (pool workers each)."""
    settings = settings_from(layout, "layout",
                             example="{'workers': K, 'balance': MODE, 'options': {'pool_workers': M}}",
                             fixed=_FIXED, yours="workers, balance and options={'pool_workers': M}")
    options = settings.get("options")
    if not isinstance(options, dict) or "pool_workers" not in options:
        raise Fail("layout() must say how big each process's pool is: add 'options': {'pool_workers': M}")
    pool_workers = options["pool_workers"]
    if isinstance(pool_workers, bool) or not isinstance(pool_workers, int) or pool_workers < 1:
        raise Fail(f"options['pool_workers'] must be a positive integer, got {pool_workers!r}")
    try:
        workers = resolve(settings.get("workers", "max"))
    except ConfigurationError as exc:
        raise Fail(f"layout()'s workers: {exc}") from None
    return settings, workers, pool_workers


def _judge_layout(settings: dict, workers: int, pool_workers: int, usable: int) -> None:
    """The facts a layout can be judged on before anything runs."""
    heavy = workers * pool_workers
    cores = f"{usable} usable core{'s' if usable != 1 else ''}"
    shape = f"{workers} cluster worker{'s' if workers > 1 else ''} x {pool_workers} pool worker" + \
            ("s" if pool_workers > 1 else "")
    if heavy < usable:
        raise Fail(f"cores idle: {shape} = {heavy} heavy worker{'s' if heavy > 1 else ''} for {cores}, "
                   f"so {usable - heavy} core{'s' if usable - heavy > 1 else ''} "
                   f"never compute{'s' if usable - heavy == 1 else ''}: a core computes only when a heavy worker "
                   "runs on it (lab 07, section 1).")
    if heavy > usable:
        raise Fail(f"oversubscribed: {shape} = {heavy} heavy workers for {cores}. They take turns on "
                   "the same cores, add context switches and memory, and finish no sooner (lab 07, section 1).")
    if workers > 1 and settings.get("balance", DEFAULT_BALANCE) == "os":
        raise Fail("with several cluster workers, balance='os' lets the kernel give every kept-alive connection "
                   "to one of them (lab 02), whose pool would then do all the heavy work while the others idle. "
                   "Which mode spreads connections by design?")


@register("ex07.every_core")
async def check_every_core(make_app, layout) -> str:
    """The layout fits K x M to the cores; under load the cluster uses them, /fast still fast."""
    settings, workers, pool_workers = _layout(layout)
    usable = usable_cores().usable
    _judge_layout(settings, workers, pool_workers, usable)
    _preflight(make_app)
    heavy = 2 * usable  # two heavy requests per heavy worker: none of them ever waits for work

    def fair(run: _Run) -> bool:
        return (not run.failed and run.blocked is None and run.primes_spread(usable)
                and all(run.cpu_fair(phase, usable) for phase in run.phases))

    client = AsyncHTTPClient(force_instance=True, max_clients=500)
    try:
        with _start(make_app, settings) as cluster:
            await _check_answers(client, cluster.url, _cases([1000], [4]))
            await _warm_up(cluster, heavy)
            run, passed = await best_of(lambda: _loaded_trial(cluster, client, heavy), fair)
    finally:
        client.close()
    if passed:
        # No counts in the message: it is a notebook's stored output, the same on every machine.
        return "one heavy worker per usable core: under load they kept the cores busy, and /fast stayed fast."
    _verdict(run, usable, judge_cpu=True)
    raise AssertionError("unreachable: a run that failed must fail one of the tests above")


# ------------------------------------------------------------------------------ answers (hidden)


@register("ex07.answers")
async def check_answers(make_app) -> str:
    """Edge cases of both heavy endpoints, and a mix of requests in flight at once."""
    _preflight(make_app)
    client = AsyncHTTPClient(force_instance=True)
    try:
        with _start(make_app, {"workers": 1, "options": {"pool_workers": 2}}) as cluster:
            await _check_answers(client, cluster.url, _cases([0, 1, 2, 3, 97, 100_000], [1, 2, 12]))
            await _check_answers(client, cluster.url, _cases([5, 541, 7919, 30_011, 4, 60_000], [3, 5, 9, 11, 6]),
                                 at_once=True)
    finally:
        client.close()
    return "/primes and /hash give the right answers, edge cases and requests in flight together included."


# ------------------------------------------------------------------------------ any_machine (hidden)

# Run in a fresh interpreter pinned to fewer CPUs: read the student's layout (pickled by value) on
# stdin, call it there, and send back what it returned, with "max" and -1 resolved on that machine.
_PINNED = """
import json, os, pickle, sys
out, sys.stdout = sys.stdout.buffer, sys.stderr  # what layout() prints must not mix with the answer
import cloudpickle
cpus = json.loads(sys.argv[1])
if cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cpus)
from labkit.cores import CoreInfo, resolve_workers, usable_cores
layout = cloudpickle.loads(sys.stdin.buffer.read())
usable = usable_cores().usable
# A notebook's own reading of the machine (the exercise's `info = labkit.usable_cores()`) travels
# with the function as a value; on the smaller machine that notebook would have read this one.
names = getattr(layout, "__globals__", {})
for name, value in list(names.items()):
    if isinstance(value, CoreInfo):
        names[name] = usable_cores()
try:
    settings = layout()
except Exception as exc:
    result = {"error": f"{type(exc).__name__}: {exc}"}
else:
    if type(settings) is dict:
        try:
            settings = dict(settings, workers=resolve_workers(settings.get("workers", "max")))
        except Exception:
            pass  # judged, and explained, by the check
    result = {"settings": settings}
result["usable"] = usable
out.write(pickle.dumps(result))
"""


def _smaller_machine() -> set[int] | None:
    """CPUs to pin a process to so that it has fewer usable cores than this one; None if it cannot."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    usable = usable_cores().usable
    cpus = sorted(os.sched_getaffinity(0))
    if usable < 2 or len(cpus) < 2:
        return None
    return set(cpus[: max(1, min(usable, len(cpus)) - 1)])


async def _layout_pinned(layout: Callable[[], dict], cpus: set[int] | None) -> dict:
    import cloudpickle  # labkit's pools and clusters send notebook functions by value with it

    try:
        data = cloudpickle.dumps(layout)
    except Exception as exc:  # noqa: BLE001 - anything pickling raises, said in the student's terms
        raise Fail(f"layout could not be sent to another process ({type(exc).__name__}: {exc})") from None
    try:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _PINNED, json.dumps(sorted(cpus or ()))],
            input=data, capture_output=True, timeout=LAYOUT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Fail(f"layout() did not return within {LAYOUT_TIMEOUT:.0f} s in a process of its own") from None
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no error output)"])[-1]
        raise Fail(f"layout() failed in a process of its own: {last[:300]}")
    result = pickle.loads(done.stdout)
    if "error" in result:
        raise Fail(f"layout() raised {result['error']}")
    return result


@register("ex07.any_machine")
async def check_any_machine(layout) -> str:
    """The layout fits a machine with fewer usable cores too (a process pinned to fewer CPUs)."""
    _layout(layout)  # the shape first, judged here
    cpus = _smaller_machine()
    result = await _layout_pinned(layout, cpus)
    usable = result["usable"]
    returned = plain(result["settings"], "layout()")
    settings, workers, pool_workers = _layout(lambda: returned)
    try:
        _judge_layout(settings, workers, pool_workers, usable)
    except Fail as exc:
        raise Fail(f"on a machine with {usable} usable core{'s' if usable != 1 else ''} (a process pinned to fewer "
                   f"CPUs than this one), {exc} Does layout() compute K and M from the cores it may use?") from None
    return "layout() fits a machine with fewer usable cores too."
