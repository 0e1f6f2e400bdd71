"""Checks of exercise 07, the capstone: a responsive API that uses every core (lab 07).

The student writes ``make_app(pool_workers)``, a tornado app with ``/fast``, ``/primes?n=`` and
``/hash?cost=`` whose heavy work runs on a pool the app starts in ``labkit_start`` and stops in
``labkit_close``, and ``layout()``, the :class:`~labkit.cluster.Cluster` settings that spread it
over the machine. The checks serve the student's own app (sent to the workers by value, so it
may live in the notebook) and load it for real with :func:`labkit.load.run_load_async`:

- ``ex07.responsive``: one cluster worker with a pool of one worker per usable core. The answers
  must be right, and ``/fast`` must stay fast while heavy requests load the app. "Fast" is judged
  against the heavy requests of the same run: a blocked loop makes ``/fast`` wait for a whole heavy
  computation, so its p99 comes close to a heavy request's median latency; a free loop answers in
  a small fraction of it. A loaded machine slows both alike, so the ratio holds on any machine.
- ``ex07.every_core``: the student's layout. Facts first: ``K x M`` heavy workers against the usable
  cores (fewer leave cores idle, more oversubscribe them), and a balancing mode that spreads
  kept-alive connections when ``K > 1``. Then a measurement under heavy load: how many processes
  of the cluster really computed (pure-Python work in threads shares one GIL, so it computes in one
  process however many threads there are), the CPU the cluster used against the parallelism the
  machine delivered just before (the course's 60%), and ``/fast`` as above.
- ``ex07.answers`` (hidden): the answers for edge cases of both heavy endpoints.

Measured trials are repeated up to three times (:func:`labkit.measure.best_of`), so one disturbed
run on a shared machine does not fail a right answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import time
from collections.abc import Callable

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
from .checks import Fail, register

__all__ = ["PRIMES_N", "HASH_COST", "PASSWORD", "SALT", "BLOCKED_SHARE", "CPU_SHARE", "BUSY_SHARE"]

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

# Seconds of heavy load per measurement, and how often /fast is asked meanwhile (each time on a
# new connection, so that every cluster worker gets asked).
LOAD_SECONDS = 3.0
PROBE_INTERVAL = 0.02

# Longest any single request may take before the check calls it lost.
REQUEST_TIMEOUT = 60.0

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


def _served_app(factory: Callable[..., tornado.web.Application], **options) -> tornado.web.Application:
    """Build the student's app in a cluster worker, with tracebacks in 500 answers (for the check)."""
    app = factory(**options)
    if isinstance(app, tornado.web.Application):
        app.settings["serve_traceback"] = True
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


async def _check_answers(client: AsyncHTTPClient, url: str, cases: list[tuple[str, object]]) -> None:
    for path, expected in cases:
        key = "primes" if path.startswith("/primes") else "hash"
        got = await _answer(client, url, path, key)
        if got != expected:
            raise Fail(f"{path} answered {key}={got!r}, expected {expected!r}")


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


class _Run:
    """What one loaded trial measured."""

    def __init__(self, primes: LoadReport, hashes: LoadReport, probes: list[float | None],
                 wall: float, cpu: dict[int, float], delivered: float) -> None:
        self.primes, self.hashes, self.delivered = primes, hashes, delivered
        answered = [latency for latency in probes if latency is not None]
        self.probes, self.lost = len(probes), len(probes) - len(answered)
        self.fast_p99 = _p99(answered) if answered else float("inf")
        self.heavy_p50 = primes.p50_ms / 1e3 if primes.ok else float("inf")
        self.cpu_cores = sum(cpu.values()) / wall if wall > 0 else 0.0
        busiest = max(cpu.values(), default=0.0)
        self.busy = sum(1 for used in cpu.values() if busiest > 0 and used >= BUSY_SHARE * busiest)

    @property
    def failed(self) -> int:
        return self.primes.failed + self.hashes.failed + self.lost

    @property
    def responsive(self) -> bool:
        return self.fast_p99 <= BLOCKED_SHARE * self.heavy_p50

    def blocked_message(self) -> str:
        return (f"the loop is blocked: while heavy requests ran, /fast took up to {1e3 * self.fast_p99:.0f} ms "
                f"(p99 of {self.probes - self.lost} answers), {100 * self.fast_p99 / self.heavy_p50:.0f}% of a heavy "
                f"request's median {1e3 * self.heavy_p50:.0f} ms, so /fast waited for whole computations. "
                "Await the pool's answer in the heavy handlers (asyncio.wrap_future(pool.submit(...))) instead of "
                "computing on the loop.")


async def _loaded_trial(cluster: Cluster, client: AsyncHTTPClient, heavy: int) -> _Run:
    """Measure the delivered parallelism, then load the cluster with heavy requests while probing /fast."""
    delivered = (await asyncio.to_thread(measure_parallelism)).delivered
    tree = _Tree(cluster)
    primes, hashes, probes = await asyncio.gather(
        run_load_async(f"{cluster.url}/primes?n={PRIMES_N}", concurrency=heavy, duration=LOAD_SECONDS,
                       timeout=REQUEST_TIMEOUT),
        run_load_async(f"{cluster.url}/hash?cost={HASH_COST}", concurrency=max(1, heavy // 2),
                       duration=LOAD_SECONDS, timeout=REQUEST_TIMEOUT),
        _probe(client, cluster.url, LOAD_SECONDS),
    )
    wall, cpu = tree.used()
    return _Run(primes, hashes, probes, wall, cpu, delivered)


async def _warm_up(cluster: Cluster, heavy: int) -> None:
    """Let every pool start its workers before anything is measured."""
    await run_load_async(f"{cluster.url}/primes?n={PRIMES_N // 20}", concurrency=heavy, duration=None,
                         requests=4 * heavy, timeout=REQUEST_TIMEOUT)


def _failures(run: _Run) -> str:
    parts = [f"{report.failed} of {report.requests} {name} requests failed ({report.errors})"
             for name, report in (("/primes", run.primes), ("/hash", run.hashes)) if report.failed]
    if run.lost:
        parts.append(f"{run.lost} of {run.probes} /fast requests got no answer")
    return "; ".join(parts)


# ------------------------------------------------------------------------------ responsive


@register("ex07.responsive")
async def check_responsive(make_app) -> str:
    """One worker, heavy load: right answers, /fast answered while the pool computes on every core."""
    _preflight(make_app)
    usable = usable_cores().usable
    client = AsyncHTTPClient(force_instance=True, max_clients=500)
    try:
        with _start(make_app, {"workers": 1, "options": {"pool_workers": usable}}) as cluster:
            await _check_answers(client, cluster.url, _cases([1000, 20_000], [4, 10]))
            await _warm_up(cluster, usable)
            run, passed = await best_of(lambda: _loaded_trial(cluster, client, 2 * usable),
                                        lambda run: not run.failed and run.responsive and run.busy >= usable)
    finally:
        client.close()
    if passed:
        return ("the answers are right, and /fast stayed fast while the pool computed: the event loop only awaits "
                "the heavy work.")
    if run.failed:
        raise Fail(f"under load, {_failures(run)}: every request should get its answer")
    if not run.responsive:
        raise Fail(run.blocked_message() + " (three tries)" + (_GIL_HINT if run.busy < usable else ""))
    raise Fail(_idle_message(run, usable))


_GIL_HINT = (" Only one process computed: if the heavy work runs in threads, pure-Python work there holds the "
             "GIL that the loop needs too (on a build with a GIL, the default).")


def _idle_message(run: _Run, usable: int) -> str:
    return (f"cores idle: under heavy load only {run.busy} process{'es' if run.busy > 1 else ''} of the cluster "
            f"computed, for {usable} usable cores (the cluster used {run.cpu_cores:.2f} cores). On a build with a GIL "
            "(the default), pure-Python work in threads shares one GIL, so a thread pool computes in one "
            "process however many threads it has: "
            "run the heavy work in a process pool of pool_workers workers, and check that every cluster worker "
            "gets requests.")


# ------------------------------------------------------------------------------ every_core


def _layout(layout: Callable[[], dict]) -> tuple[dict, int, int]:
    """Validate the student's layout; return it with K (cluster workers) and M (pool workers each)."""
    settings = settings_from(layout, "layout",
                             example="{'workers': 2, 'balance': 'round-robin', 'options': {'pool_workers': 1}}",
                             fixed=_FIXED, yours="workers, balance and options={'pool_workers': M}")
    options = settings.get("options")
    if not isinstance(options, dict) or "pool_workers" not in options:
        raise Fail("layout() must say how big each process's pool is: add 'options': {'pool_workers': M}")
    pool_workers = options["pool_workers"]
    if isinstance(pool_workers, bool) or not isinstance(pool_workers, int) or pool_workers < 1:
        raise Fail(f"options['pool_workers'] must be a positive integer, got {pool_workers!r}")
    try:
        workers = resolve_workers(settings.get("workers", "max"))
    except ConfigurationError as exc:
        raise Fail(f"layout()'s workers: {exc}") from None
    return settings, workers, pool_workers


def _judge_layout(settings: dict, workers: int, pool_workers: int, usable: int) -> None:
    """The facts a layout can be judged on before anything runs."""
    heavy = workers * pool_workers
    shape = f"{workers} cluster worker{'s' if workers > 1 else ''} x {pool_workers} pool worker" + \
            ("s" if pool_workers > 1 else "")
    if heavy < usable:
        raise Fail(f"cores idle: {shape} = {heavy} heavy worker{'s' if heavy > 1 else ''} for {usable} usable cores, "
                   f"so {usable - heavy} core{'s' if usable - heavy > 1 else ''} "
                   f"never compute{'s' if usable - heavy == 1 else ''}. "
                   "Give the heavy work one worker per usable core in all (K x M = usable cores).")
    if heavy > usable:
        raise Fail(f"oversubscribed: {shape} = {heavy} heavy workers for {usable} usable cores. They take turns on "
                   "the same cores, add context switches and memory, and finish no sooner (lab 07, section 1). "
                   "Choose K and M with K x M = usable cores.")
    if workers > 1 and settings.get("balance", DEFAULT_BALANCE) == "os":
        raise Fail("with several cluster workers, balance='os' lets the kernel give every kept-alive connection "
                   "to one of them (lab 02), whose pool would then do all the heavy work while the others idle. "
                   "Choose a mode that spreads connections by design.")


@register("ex07.every_core")
async def check_every_core(make_app, layout) -> str:
    """The layout budgets K x M to the cores, and under load the cluster uses them with /fast still fast."""
    settings, workers, pool_workers = _layout(layout)
    usable = usable_cores().usable
    _judge_layout(settings, workers, pool_workers, usable)
    _preflight(make_app)
    heavy = 2 * usable  # two heavy requests per heavy worker: none of them ever waits for work

    def fair(run: _Run) -> bool:
        return (not run.failed and run.responsive and run.busy >= usable
                and run.cpu_cores >= CPU_SHARE * min(run.delivered, usable))

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
    if run.failed:
        raise Fail(f"under load, {_failures(run)}: every request should get its answer")
    if not run.responsive:
        raise Fail(run.blocked_message() + " (three tries)" + (_GIL_HINT if run.busy < usable else ""))
    if run.busy < usable:
        raise Fail(_idle_message(run, usable))
    if run.cpu_cores < CPU_SHARE * min(run.delivered, usable):
        raise Fail(
            f"cores idle: under heavy load the cluster used {run.cpu_cores:.2f} cores while the machine delivered "
            f"{run.delivered:.2f} (three tries). Check that every pool runs pool_workers workers and that the "
            "heavy handlers send their work to them.")
    raise AssertionError("unreachable: a run that failed must fail one of the tests above")


# ------------------------------------------------------------------------------ answers (hidden)


@register("ex07.answers")
async def check_answers(make_app) -> str:
    """Edge cases of both heavy endpoints, answered through the pool."""
    _preflight(make_app)
    client = AsyncHTTPClient(force_instance=True)
    try:
        with _start(make_app, {"workers": 1, "options": {"pool_workers": 1}}) as cluster:
            await _check_answers(client, cluster.url, _cases([0, 1, 2, 3, 97, 100_000], [1, 2, 12]))
    finally:
        client.close()
    return "/primes and /hash give the right answers, edge cases included."
