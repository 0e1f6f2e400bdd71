"""Checks of exercise 03: make a flaky service survive its crashes (lab 03, crash isolation).

The service is :func:`labkit.demo.faulty.flaky_app`. The checks crash things for real and count
what survives; where a duration matters, the margin is wide and the verdict rests on a count or on
a decision the supervisor logged, not on how fast this machine happens to be.

- ``ex03.survive_crashes``: the student's Cluster settings, in two rounds.

  1. *Isolation, as on a one-CPU machine.* The student's ``service_settings()`` is called, and
     the cluster's worker count resolved, with this process pinned to one CPU (as ``ex06`` pins
     it), so ``"max"`` means what it means on a single core (where a process cannot be pinned, as
     on macOS, the count is this machine's). That cluster serves ``/fast`` on a new connection
     every 20 ms while a request for the corrupt document crashes a worker, twice.
     Each time, some request sent while the crashed worker was being replaced must be answered by
     *another* worker (told by the ``X-Worker-Pid`` header), and the slot must serve again within
     :data:`BACK_WITHIN` seconds. Who answered is a fact, not a timing.
  2. *A steady crash rate.* The renderer leaks: the check kills every worker with ``SIGKILL`` once
     it has served for :data:`LIFETIME` seconds (as the out-of-memory killer would), until each slot
     has died :data:`CRASHES_PER_WORKER` times, while asking for ``/fast`` every
     :data:`ASK_EVERY` seconds. It fails if the supervisor gave up on a slot (a crash-loop guard
     that mistakes a worker that served for seconds for one that cannot boot), if it chose to wait
     longer than :data:`LONGEST_WAIT` before a restart (a backoff that keeps growing although
     every worker served before it died), or if fewer than :data:`AVAILABILITY` of the requests
     were answered. Lifetimes are counted from the moment a worker is ready, so however slowly a
     loaded machine starts workers, each one serves as long, the supervisor (which counts from the
     start) sees it live at least that long, and the n-th crash in a row meets the same decision.
     A machine so slow that the crashes do not all happen within :data:`ROUND_LIMIT` has the rest
     judged by the policy's own rule (:class:`~labkit.cluster.RestartPolicy`, which the
     supervisor applies), so slowness cannot let a growing backoff pass.
- ``ex03.faster_crashes`` (hidden): round 2 again, with workers that serve :data:`HIDDEN_LIFETIME`
  seconds and twice as many crashes per slot: a policy fitted to the visible round (a backoff that
  grows, but too slowly to show in six crashes; a guard that allows six young deaths) fails it.
- ``ex03.isolate_render``: the student's ``render_batch(docs, render)``, run in a sacrificial
  process of its own (a wrong answer crashes that process, not the student's kernel), with a
  renderer the check makes: it crashes on documents of its own choosing (not the multiples of 13
  that :func:`labkit.demo.faulty.is_corrupt` knows), never finishes on others, and signs each
  page with the pid of the process that rendered it. It passes when the process survives and
  returns in time, every good page was rendered by another process, and each crashed or stuck
  document maps to ``None``.
- ``ex03.many_crashes`` (hidden): the same with another renderer: more crashes, more stuck
  documents, other numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import pickle
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
from tornado.httpclient import AsyncHTTPClient

from labkit._exits import signal_name
from labkit.cluster import Cluster, ClusterSettings, RestartPolicy, WorkerState
from labkit.demo.faulty import CORRUPT_DOC, crash_hard
from labkit.errors import ConfigurationError, ServerStartError
from labkit.measure import who_answers

from ._settings import settings_from
from ._values import plain, plain_dict
from .checks import Fail, register

__all__ = ["SERVICE", "BACK_WITHIN", "CRASHES", "LIFETIME", "CRASHES_PER_WORKER", "HIDDEN_LIFETIME",
           "HIDDEN_CRASHES_PER_WORKER", "LONGEST_WAIT", "AVAILABILITY", "BATCH_WITHIN", "Renderer", "page"]

#: The flaky document service the exercise is about.
SERVICE = "labkit.demo.faulty:flaky_app"

#: Seconds within which a crashed worker's slot must be serving again.
BACK_WITHIN = 10.0

#: How many workers round 1 crashes with the corrupt document, one after the other.
CRASHES = 2

#: Round 2: seconds a worker serves, once ready, before the check kills it (the renderer's leak).
#: Counted from readiness, because starting takes 0.15 s on an idle machine and up to about 2 s on
#: a loaded one: a worker killed soon after it got ready would take with it every connection
#: that queued while it started, and the verdict would follow the machine's load.
LIFETIME = 2.0

#: The hidden check's lifetime, shorter than :data:`LIFETIME`, and its number of crashes per slot,
#: twice as many: a backoff that grows too slowly to show in six crashes (a factor of 1.3, a tiny
#: first delay), or a crash-loop guard that tolerates six young deaths but not twelve, fails it.
HIDDEN_LIFETIME = 1.2
HIDDEN_CRASHES_PER_WORKER = 12

#: Round 2 ends once every slot has died this many times. Six crashes in a row are enough for a
#: backoff that never resets to pass :data:`LONGEST_WAIT` (0.1 s growing 1.5 times per crash
#: reaches 0.76 s), and few enough to finish in well under half a minute.
CRASHES_PER_WORKER = 6

#: Longest wait before a restart that still counts as "promptly": five times labkit's first wait.
LONGEST_WAIT = 0.5

#: Share of round 2's requests that must be answered. A killed worker takes its in-flight requests
#: with it; everything else is answered, late at worst, so a good policy answers well above this.
AVAILABILITY = 0.8

#: Seconds a round-2 request may wait for its answer (a refused one fails at once).
ANSWER_WITHIN = 5.0

#: How often round 2 sends a request, on a new connection.
ASK_EVERY = 0.05

#: Round 2 gives up waiting for its crashes after this long, and judges what it saw so far.
ROUND_LIMIT = 35.0

# How often round 1 asks for /fast on a new connection, and for how long before and after a
# crash. Every 20 ms gives several requests inside even a short restart gap.
WATCH_INTERVAL = 0.02
WATCH_BEFORE = 0.3
WATCH_AFTER = 0.2

#: Seconds render_batch may take for a whole batch. A good page takes milliseconds; a stuck one
#: never ends, so only a batch that stops waiting for it finishes at all.
BATCH_WITHIN = 30.0

#: How long a stuck document keeps its renderer busy: "forever", as far as any batch can tell.
#: A sleep, not a busy loop, so a wrong answer does not burn a shared machine's CPU meanwhile.
STUCK_SECONDS = 3600.0

_FIXED = ("app", "host", "port", "options", "on_change")
_WAIT = re.compile(r"restarting in ([0-9.]+) s")

# The sacrificial process: load the function and its arguments, call it, write the result to a
# file (not stdout: what the function prints must not be mistaken for its answer).
_SANDBOX = """
import pickle, sys
import cloudpickle
function, args = pickle.loads(sys.stdin.buffer.read())
try:
    outcome = ("returned", function(*args))
except BaseException as exc:
    outcome = ("raised", f"{type(exc).__name__}: {exc}")
with open(sys.argv[1], "wb") as out:
    cloudpickle.dump(outcome, out)
"""


# ------------------------------------------------------------------------------ survive_crashes


@contextlib.contextmanager
def _one_cpu() -> Iterator[bool]:
    """Pin this process to its first allowed CPU for the block (False where that cannot be done)."""
    me = psutil.Process()
    if not hasattr(me, "cpu_affinity"):
        yield False  # macOS: no affinity to pin
        return
    before = me.cpu_affinity()
    if len(before) < 2:
        yield False  # one CPU already
        return
    me.cpu_affinity(before[:1])
    try:
        yield True
    finally:
        me.cpu_affinity(before)


def _settings(function: Callable[[], dict]) -> tuple[dict, int]:
    """The student's settings and the worker count they give on a one-CPU machine."""
    with _one_cpu():
        settings = settings_from(function, "service_settings", example="{'workers': 3}", fixed=_FIXED,
                                 yours="settings like workers, balance and the restart policy")
        try:
            workers = Cluster(SERVICE, **settings).workers
        except (ConfigurationError, TypeError) as exc:
            raise Fail(f"Cluster(**service_settings()) is refused: {exc}") from None
    return settings, workers


def _start(settings: dict, workers: int) -> Cluster:
    try:
        return Cluster(SERVICE, **{**settings, "workers": workers}).start()
    except ServerStartError as exc:
        raise Fail(f"the service did not start with your settings: {exc}") from None


async def _answered(client: AsyncHTTPClient, url: str, origin: float) -> tuple[float, int | None]:
    """Send one request on a new connection: (seconds since origin when sent, answering pid or None)."""
    sent = time.monotonic() - origin
    return sent, await who_answers(url, timeout=BACK_WITHIN + 10, client=client)


def _ready_pids(cluster: Cluster) -> dict[int, int]:
    return {w.id: w.pid for w in cluster.stats().workers if w.state is WorkerState.READY and w.pid}


async def _crash_once(cluster: Cluster, client: AsyncHTTPClient) -> dict:
    """Crash one worker with the corrupt document while watching /fast; say what clients saw.

    The gap runs from the moment the corrupt request failed (its worker is dead by then) to the
    moment its slot has a ready replacement. A request sent in the gap and answered by one of the
    *other* workers that were serving before shows the service carried on; with a single worker,
    only the replacement can answer, so nothing sent in the gap ever counts.
    """
    before = _ready_pids(cluster)
    origin = time.monotonic()
    watching = True
    asked: list[asyncio.Future] = []

    async def watch() -> None:
        while watching:
            asked.append(asyncio.ensure_future(_answered(client, cluster.url + "/fast", origin)))
            await asyncio.sleep(WATCH_INTERVAL)

    watcher = asyncio.ensure_future(watch())
    crashed_slot = back_at = None
    try:
        await asyncio.sleep(WATCH_BEFORE)
        try:
            await client.fetch(f"{cluster.url}/render?doc={CORRUPT_DOC}", request_timeout=BACK_WITHIN)
        except Exception:  # noqa: BLE001 - the worker died while rendering: no answer is the expected one
            pass
        crash_at = time.monotonic() - origin
        deadline = time.monotonic() + BACK_WITHIN
        while time.monotonic() < deadline:
            if any(w.state is WorkerState.ERRORED for w in cluster.stats().workers):
                break  # the supervisor gave up: it will not come back by itself
            now = _ready_pids(cluster)
            changed = [slot for slot, pid in before.items() if now.get(slot) != pid]
            if changed and all(slot in now for slot in changed):
                crashed_slot, back_at = changed[0], time.monotonic() - origin
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(WATCH_AFTER)
    finally:
        watching = False
        await watcher
    results = await asyncio.gather(*asked)
    others = {pid for slot, pid in before.items() if slot != crashed_slot}
    in_gap = [pid for sent, pid in results if back_at is not None and crash_at <= sent < back_at]
    return {"back": back_at is not None, "gap": (back_at or crash_at) - crash_at, "sent_in_gap": len(in_gap),
            "carried_on": sum(pid in others for pid in in_gap)}


def _describe_slots(cluster: Cluster) -> str:
    return "; ".join(f"worker {w.id}: {w.state.value}" + (f" ({w.last_exit})" if w.last_exit else "")
                     for w in cluster.stats().workers)


def _plural(count: int, word: str, words: str = "") -> str:
    return f"{count} {word if count == 1 else words or word + 's'}"


async def _round_isolation(settings: dict, workers: int, client: AsyncHTTPClient) -> None:
    """Round 1: crash a worker twice; another must answer meanwhile, and the slot must come back."""
    asked = settings.get("workers", "max")
    shape = f"on a machine with one CPU, your settings run {_plural(workers, 'worker')} (workers={asked!r})"
    with _start(settings, workers) as cluster:
        for crash in range(1, CRASHES + 1):
            seen = await _crash_once(cluster, client)
            if not seen["back"]:
                raise Fail(
                    f"{shape}; after crash {crash}, the crashed worker was not serving again within "
                    f"{BACK_WITHIN:g} s ({_describe_slots(cluster)}). The supervisor should bring back a worker "
                    "that merely crashed once (lab 03's restart policy).")
            if not seen["carried_on"]:
                raise Fail(
                    f"{shape}. Crash {crash}: for the {seen['gap']:.2f} s until the replacement was ready, "
                    f"{_plural(seen['sent_in_gap'], 'request')} arrived and no other worker answered any of them: "
                    "the whole service was down. One worker process is one point of failure: while it is "
                    "replaced, nobody is left to answer. Count the workers your settings give on the smallest "
                    "machine, not on this one.")


@dataclass
class _Measured:
    """What round 2 saw: requests, crashes, and the waits the supervisor chose."""

    sent: int = 0
    answered: int = 0
    crashes: int = 0
    waits: tuple[tuple[int, int, float], ...] = ()  # (slot, its n-th crash, wait chosen)
    gave_up: str | None = None
    complete: bool = False  # every slot crashed as often as the round asks

    def availability(self) -> str:
        share = self.answered / self.sent if self.sent else 0.0
        return f"{self.answered} of {self.sent} requests were answered ({share:.0%})"


def _waits(cluster: Cluster) -> tuple[tuple[int, int, float], ...]:
    """(slot, how many times it had crashed, seconds the supervisor chose to wait) per logged restart."""
    counts: dict[int, int] = {}
    found: list[tuple[int, int, float]] = []
    for event in cluster.events:
        slot = event.worker
        match = _WAIT.search(event.message) if event.kind == "exited" and slot is not None else None
        if match and slot is not None:
            counts[slot] = counts.get(slot, 0) + 1
            found.append((slot, counts[slot], float(match.group(1))))
    return tuple(found)


def _errored(cluster: Cluster) -> str | None:
    stats = cluster.stats()
    for w in stats.workers:
        if w.state is WorkerState.ERRORED:
            return f"worker {w.id}: {w.last_exit}"
    return stats.gave_up


async def _round_crash_rate(settings: dict, workers: int, client: AsyncHTTPClient, lifetime: float,
                            crashes_per_worker: int) -> _Measured:
    """Round 2: kill every worker once it has served ``lifetime`` s, under steady requests; count what happens."""
    measured = _Measured()
    answers: list[asyncio.Future] = []
    with _start(settings, workers) as cluster:
        killed: set[int] = set()
        ready_since: dict[int, float] = {}  # pid -> when the check first saw it ready
        deadline = time.monotonic() + ROUND_LIMIT
        next_ask = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_ask:
                answers.append(asyncio.ensure_future(who_answers(cluster.url + "/fast", timeout=ANSWER_WITHIN,
                                                                 client=client)))
                next_ask += ASK_EVERY
            for w in cluster.stats().workers:
                if w.state is not WorkerState.READY or not w.pid or w.pid in killed:
                    continue
                if now - ready_since.setdefault(w.pid, now) >= lifetime:
                    killed.add(w.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
            measured.waits = _waits(cluster)
            measured.gave_up = _errored(cluster)
            crashed = {slot: n for slot, n, _ in measured.waits}
            done = len(crashed) == workers and min(crashed.values()) >= crashes_per_worker
            measured.complete = done
            if measured.gave_up or done or any(wait > LONGEST_WAIT for _, _, wait in measured.waits):
                break
            await asyncio.sleep(0.02)
        measured.crashes = len(killed)
        pids = await asyncio.gather(*answers)
    measured.sent, measured.answered = len(pids), sum(pid is not None for pid in pids)
    return measured


def _project(policy: RestartPolicy, lifetime: float, crashes: int) -> _Measured:
    """The supervisor's own rule, applied to ``crashes`` crashes in a row of workers that served ``lifetime`` s.

    For a round that a very slow machine could not finish in time: each worker did serve at least
    ``lifetime`` s, so this is what the supervisor decides for it, crash after crash.
    """
    projected = _Measured(crashes=crashes, complete=True)
    backoff = young = 0
    waits = []
    for crash in range(1, crashes + 1):
        decision = policy.after_exit(lifetime, backoff, young)
        if decision.delay is None:
            projected.gave_up = f"after crash number {crash} of a worker, by your policy's own rule"
            break
        backoff, young = decision.backoff, decision.young_deaths
        waits.append((1, crash, decision.delay))
        if decision.delay > LONGEST_WAIT:
            break
    projected.waits = tuple(waits)
    projected.crashes = len(waits) + (projected.gave_up is not None)
    return projected


def _judge_crash_rate(measured: _Measured, lifetime: float) -> None:
    story = (f"every worker was killed once it had served for {lifetime:g} s, as a leaking renderer gets killed; "
             f"after {_plural(measured.crashes, 'crash', 'crashes')}")
    if measured.gave_up:
        raise Fail(
            f"{story}, the supervisor gave up ({measured.gave_up}). {measured.availability()}. Each of those "
            f"workers had served for {lifetime:g} s before it died: it was not crashing at boot, but your "
            "crash-loop guard counted it as a worker that cannot start. Decide how young a death must be to "
            "mean a broken app, for a service whose workers do live and serve between crashes.")
    slow = [(slot, n, wait) for slot, n, wait in measured.waits if wait > LONGEST_WAIT]
    if slow:
        slot, n, wait = slow[0]
        first = next(w for s, k, w in measured.waits if s == slot and k == 1)
        raise Fail(
            f"{story}, the supervisor waited {wait:.2f} s before restarting worker {slot} after its crash number "
            f"{n} (after its first: {first:.2f} s). {measured.availability()}. Every one of those workers had "
            f"served for {lifetime:g} s, yet each crash made the next wait longer: at this crash rate the waits "
            "keep growing, up to max_restart_delay, and the slots stay empty longer and longer. Decide after how "
            "long a worker has proved itself, or how long a wait may ever grow (lab 03's restart policy).")
    if measured.answered < AVAILABILITY * measured.sent:
        raise Fail(
            f"{story}, {measured.availability()}, fewer than {AVAILABILITY:.0%}. A crash should cost only the "
            "requests in flight on the worker that died; were there other workers to take the rest, and did "
            "each crashed worker come back promptly?")


async def _check_crash_rate(service_settings, lifetime: float, crashes_per_worker: int, *, isolation: bool) -> None:
    settings, workers = _settings(service_settings)
    client = AsyncHTTPClient(force_instance=True, max_clients=500)
    try:
        if isolation:
            await _round_isolation(settings, workers, client)
        measured = await _round_crash_rate(settings, workers, client, lifetime, crashes_per_worker)
    finally:
        client.close()
    _judge_crash_rate(measured, lifetime)
    if not measured.complete:
        # A machine too slow for the round's crashes in ROUND_LIMIT: judge the rest by the rule the
        # supervisor applies, so a slow machine cannot let a growing backoff pass.
        projected = _project(ClusterSettings(**settings).policy, lifetime, crashes_per_worker)
        projected.sent, projected.answered = measured.sent, measured.answered
        try:
            _judge_crash_rate(projected, lifetime)
        except Fail as exc:
            raise Fail(f"this machine was too slow to see {crashes_per_worker} crashes of every worker within "
                       f"{ROUND_LIMIT:g} s, so the rest was worked out with your restart policy's own rule (the one "
                       f"the supervisor applies): {exc}") from None


@register("ex03.survive_crashes")
async def check_survive_crashes(service_settings) -> str:
    """Crash workers of the student's cluster for real: others answer, and restarts keep pace with crashes."""
    await _check_crash_rate(service_settings, LIFETIME, CRASHES_PER_WORKER, isolation=True)
    return ("even with one CPU, another worker answered while a crashed one was replaced; and with every worker "
            "killed after serving for a few seconds, the supervisor restarted each one promptly, every time, and "
            "the service kept answering.")


@register("ex03.faster_crashes")
async def check_faster_crashes(service_settings) -> str:
    """Round 2, sooner and longer: the policy must hold at any crash rate, not for six crashes."""
    await _check_crash_rate(service_settings, HIDDEN_LIFETIME, HIDDEN_CRASHES_PER_WORKER, isolation=False)
    return "with workers killed even sooner, restarts still kept pace and the service kept answering."


# ------------------------------------------------------------------------------ isolate_render


@dataclass(frozen=True)
class Renderer:
    """A renderer with the bugs the check chooses: some documents crash it, some never finish.

    Made by the check and passed to the student's ``render_batch(docs, render)``; it travels to
    other processes by reference (this module is importable there). Each page it renders names
    the process that rendered it, so the check can tell whether a page came from another process.
    """

    crashes: frozenset[int]
    stuck: frozenset[int] = frozenset()

    def __call__(self, doc: int) -> str:
        """Render ``doc``: crash the process, hang, or return a page signed with this pid."""
        if doc in self.stuck:
            time.sleep(STUCK_SECONDS)  # a renderer caught in an endless loop, minus the CPU it would burn
        if doc in self.crashes:
            crash_hard()
        return f"{page(doc)}<!-- pid {os.getpid()} -->"

    def bad(self, doc: int) -> bool:
        """Whether ``doc`` never renders (it crashes or hangs its renderer)."""
        return doc in self.crashes or doc in self.stuck


def page(doc: int) -> str:
    """The page a renderer makes for a good document ``doc``."""
    return f"<h1>Document {doc}</h1><p>{hashlib.sha256(f'document {doc}'.encode()).hexdigest()[:12]}</p>"


_SIGNED = re.compile(r"^(?P<page>.*)<!-- pid (?P<pid>[0-9]+) -->$", re.DOTALL)

# The visible check: 13 is good here and 5 crashes, so a batch that asks is_corrupt() is wrong twice.
VISIBLE = (Renderer(crashes=frozenset({5}), stuck=frozenset({8})), [3, 5, 8, 13, 21])
# The hidden check: more of everything, elsewhere.
HIDDEN = (Renderer(crashes=frozenset({2, 9, 26}), stuck=frozenset({4, 7})), [1, 2, 3, 4, 6, 7, 9, 11, 26, 39])


async def _run_in_sandbox(function: Callable, *args) -> tuple[int | None, tuple | None]:
    """Call ``function(*args)`` in a new Python process: (exit status or None if it overran, outcome)."""
    import cloudpickle

    try:
        payload = cloudpickle.dumps((function, args))
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
        raise Fail(f"render_batch cannot be sent to another process ({type(exc).__name__}: {exc}). Does it use "
                   "something made in the notebook, such as a pool? Create what it needs inside render_batch."
                   ) from None
    with tempfile.TemporaryDirectory() as folder:
        result_path = os.path.join(folder, "result.pickle")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SANDBOX, result_path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        overran = False
        try:
            await asyncio.wait_for(process.communicate(payload), BATCH_WITHIN)
        except asyncio.TimeoutError:
            overran = True
        finally:
            if process.returncode is None:
                _kill_tree(process.pid)
                await process.wait()
        outcome = None
        if not overran and os.path.exists(result_path):
            with open(result_path, "rb") as stored:
                outcome = pickle.load(stored)
    return (None if overran else process.returncode), outcome


def _kill_tree(pid: int) -> None:
    """Kill the sandbox and what it started (its pool's workers, a stuck renderer), and let it tidy up.

    multiprocessing's resource tracker is spared: once the sandbox is gone it unlinks the named
    semaphores the sandbox's pool made, then exits by itself. Killed with the rest, it would leave
    them in /dev/shm for good.
    """
    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    trackers: list[psutil.Process] = []
    others: list[psutil.Process] = []
    for process in family:
        with contextlib.suppress(psutil.Error):
            tracker = "resource_tracker" in " ".join(process.cmdline())
            (trackers if tracker else others).append(process)
    for process in others:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(others, timeout=5)
    _, left = psutil.wait_procs(trackers, timeout=5)
    for process in left:  # it should have exited with its parent; do not leave it running
        with contextlib.suppress(psutil.Error):
            process.kill()


def _death(status: int) -> str:
    if status < 0:
        return f"was killed by {signal_name(-status)}"
    return f"exited with status {status}"


def _signed_by(html: object) -> tuple[str, int] | None:
    if type(html) is not str:
        return None
    match = _SIGNED.match(html)
    return (match["page"], int(match["pid"])) if match else None


async def _judge_batch(render_batch, renderer: Renderer, docs: list[int]) -> None:
    if not callable(render_batch) or inspect.iscoroutinefunction(render_batch):
        raise Fail("pass your render_batch function (a plain def) to the check")
    call = f"render_batch({docs}, render)"
    status, outcome = await _run_in_sandbox(_call_with_pid, render_batch, docs, renderer)
    if status is None:
        raise Fail(
            f"{call} had not returned after {BATCH_WITHIN:g} s, although a good page renders in milliseconds: "
            "some of these documents never finish rendering, and the batch kept waiting for them. Give each "
            "document a time limit, and make the limit stop the stuck render itself, not only your waiting for "
            "it (a process can be stopped from outside, a thread cannot).")
    if outcome is None:
        raise Fail(
            f"{call} took its whole process down: the process {_death(status)} while rendering. A crash in a "
            "thread, or in the calling process itself, kills every thread of that process; give each render a "
            "process that may die instead, and turn a crashed render into None.")
    kind, value = plain(outcome, call)  # the sandbox's pickle: plain values only
    if kind == "raised":
        if value.startswith("NotImplementedError"):
            raise NotImplementedError(value.partition(": ")[2])
        hint = ""
        if "WorkerCrashedError" in value:
            hint = " One document crashed its renderer; that should cost that one document, not the batch."
        elif "Timeout" in value:
            hint = " One document never finished; that should cost that one document, not the batch."
        elif value.startswith("TypeError") and "positional argument" in value:
            hint = " The check calls render_batch(docs, render): take the renderer as the second parameter."
        raise Fail(f"{call} raised {value.rstrip('.')}.{hint}")
    own_pid, value = value
    value = plain_dict(value, "render_batch", shape="{document: html or None}")
    missing = [doc for doc in docs if doc not in value]
    if missing:
        raise Fail(f"{call} left out documents {missing}: return an entry for every document, None for a lost one")
    at_home = [doc for doc in docs if (signed := _signed_by(value[doc])) and signed[1] == own_pid]
    if at_home:
        raise Fail(f"{call} rendered documents {at_home} in render_batch's own process: any of them could have "
                   "crashed it. Render every document in a process that may die.")
    lost = [doc for doc in docs if not renderer.bad(doc) and value[doc] is None]
    if lost:
        raise Fail(f"{call} returned None for documents {lost}, which render fine: a crash or a stuck render "
                   "of another document cost them too. Only the document that failed should be lost.")
    wrong = [doc for doc in docs if renderer.bad(doc) and value[doc] is not None]
    wrong += [doc for doc in docs if not renderer.bad(doc) and (_signed_by(value[doc]) or ("",))[0] != page(doc)]
    if wrong:
        details = ", ".join(f"{doc}: {value[doc]!r}"[:120] for doc in wrong[:3])
        raise Fail(f"{call} got these documents wrong: {details}. A page is what render(doc) returned, and a "
                   "document whose render crashed or never finished maps to None. Which documents fail is "
                   "known only by trying them.")


def _call_with_pid(render_batch: Callable, docs: list[int], renderer: Renderer) -> tuple[int, object]:
    """Run in the sandbox: the sandbox's own pid, and what render_batch returned."""
    return os.getpid(), render_batch(list(docs), renderer)


@register("ex03.isolate_render")
async def check_isolate_render(render_batch) -> str:
    """render_batch survives a crashing and a stuck document: good ones rendered elsewhere, bad ones None."""
    renderer, docs = VISIBLE
    await _judge_batch(render_batch, renderer, docs)
    return ("render_batch() rendered every good document in another process, returned None for the one that "
            "crashed and the one that never finished, and its own process survived.")


@register("ex03.many_crashes")
async def check_many_crashes(render_batch) -> str:
    """Another renderer: several crashing and stuck documents in one batch, each costing only itself."""
    renderer, docs = HIDDEN
    await _judge_batch(render_batch, renderer, docs)
    return "render_batch() survives several crashes and stuck documents in one batch, losing only those."
