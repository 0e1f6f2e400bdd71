"""Checks of exercise 03: make a flaky service survive its crashes (lab 03, crash isolation).

The service is :func:`labkit.demo.faulty.flaky_app`: its ``/render?doc=13`` segfaults the worker
that serves it. The checks crash things for real and watch what survives:

- ``ex03.survive_crashes``: the student's Cluster settings. The check starts that cluster, asks
  for ``/fast`` on a new connection every 20 ms, and crashes a worker with the corrupt document,
  twice. It passes when, each time, some request sent while the crashed worker was being
  replaced was answered by *another* worker (told by the ``X-Worker-Pid`` header: with one
  worker, only the replacement can answer), and the crashed slot was serving again within
  :data:`BACK_WITHIN` seconds. Who answered is a fact, not a duration compared with a threshold,
  so the verdict is the same on a fast machine and a loaded one.
- ``ex03.isolate_render``: the student's ``render_batch(docs)``, run in a sacrificial process of
  its own (so that a wrong answer crashes that process, not the student's kernel). It passes when
  the process survives, every good document is rendered and the corrupt one maps to ``None``.
- ``ex03.many_crashes`` (hidden): the same with several corrupt documents in one batch.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable

from tornado.httpclient import AsyncHTTPClient

from labkit._exits import signal_name
from labkit.cluster import Cluster, WorkerState
from labkit.demo.faulty import CORRUPT_DOC, is_corrupt, render_document
from labkit.errors import ConfigurationError, ServerStartError
from labkit.measure import who_answers

from ._settings import settings_from
from ._values import plain, plain_dict
from .checks import Fail, register

__all__ = ["SERVICE", "BACK_WITHIN", "CRASHES"]

#: The flaky document service the exercise is about.
SERVICE = "labkit.demo.faulty:flaky_app"

#: Seconds within which a crashed worker's slot must be serving again.
BACK_WITHIN = 10.0

#: How many workers the check crashes, one after the other.
CRASHES = 2

# How often the watcher asks for /fast on a new connection, and for how long before and after a
# crash. Every 20 ms gives several requests inside even a short restart gap.
WATCH_INTERVAL = 0.02
WATCH_BEFORE = 0.3
WATCH_AFTER = 0.2

# Longest a sacrificial process may take (it starts a pool of its own inside).
SANDBOX_TIMEOUT = 120.0

_FIXED = ("app", "host", "port", "options", "on_change")

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


def _settings(function: Callable[[], dict]) -> dict:
    settings = settings_from(function, "service_settings", example="{'workers': 2}", fixed=_FIXED,
                             yours="settings like workers, balance and the restart policy")
    try:
        Cluster(SERVICE, **settings)
    except (ConfigurationError, TypeError) as exc:
        raise Fail(f"Cluster(**service_settings()) is refused: {exc}") from None
    return settings


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


@register("ex03.survive_crashes")
async def check_survive_crashes(service_settings) -> str:
    """Crash workers of the student's cluster for real: others must answer, slots must come back."""
    settings = _settings(service_settings)
    client = AsyncHTTPClient(force_instance=True, max_clients=200)
    try:
        try:
            cluster = Cluster(SERVICE, **settings).start()
        except ServerStartError as exc:
            raise Fail(f"the service did not start with your settings: {exc}") from None
        with cluster:
            for crash in range(1, CRASHES + 1):
                seen = await _crash_once(cluster, client)
                if not seen["back"]:
                    raise Fail(
                        f"after crash {crash}, the crashed worker was not serving again within {BACK_WITHIN:g} s "
                        f"({_describe_slots(cluster)}). Let the supervisor restart it soon, and do not make it "
                        "give up on a worker that has merely crashed once (restart_delay, min_uptime, max_restarts)."
                    )
                if not seen["carried_on"]:
                    raise Fail(
                        f"crash {crash}: for the {seen['gap']:.2f} s until the replacement was ready, no other worker "
                        f"answered ({seen['sent_in_gap']} requests were sent in that time): "
                        "the whole service was down. "
                        "One worker process is one point of failure; run at least two, even on a single core."
                    )
    finally:
        client.close()
    return ("while each crashed worker was being replaced, the others kept answering, and every crashed worker "
            "came back.")


# ------------------------------------------------------------------------------ isolate_render


async def _run_in_sandbox(function: Callable, *args) -> tuple[int, tuple | None]:
    """Call ``function(*args)`` in a new Python process: (exit status, ("returned"|"raised", value))."""
    import cloudpickle

    try:
        payload = cloudpickle.dumps((function, args))
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
        raise Fail(f"render_batch cannot be sent to another process ({type(exc).__name__}: {exc}). Does it use "
                   "something made in the notebook, such as a pool? Create the pool inside render_batch, in a "
                   "`with` block.") from None
    with tempfile.TemporaryDirectory() as folder:
        result_path = os.path.join(folder, "result.pickle")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SANDBOX, result_path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(process.communicate(payload), SANDBOX_TIMEOUT)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        outcome = None
        if os.path.exists(result_path):
            with open(result_path, "rb") as stored:
                outcome = pickle.load(stored)
    assert process.returncode is not None, "communicate() returns once the process has exited"
    return process.returncode, outcome


def _death(status: int) -> str:
    if status < 0:
        return f"was killed by {signal_name(-status)}"
    return f"exited with status {status}"


async def _judge_batch(render_batch, docs: list[int]) -> None:
    if not callable(render_batch) or inspect.iscoroutinefunction(render_batch):
        raise Fail("pass your render_batch function (a plain def) to the check")
    status, outcome = await _run_in_sandbox(render_batch, docs)
    if outcome is None:
        raise Fail(
            f"render_batch({docs}) took its whole process down: the process {_death(status)} while rendering. "
            "A crash in a thread kills every thread of its process; give render_document a process of its own "
            "(WorkerPool('process')) and turn a crashed task into None."
        )
    kind, value = plain(outcome, f"render_batch({docs})")  # the sandbox's pickle: plain values only
    if kind == "raised":
        if value.startswith("NotImplementedError"):
            raise NotImplementedError(value.partition(": ")[2])
        hint = (" Catch WorkerCrashedError for the document that crashed, so one bad document does not fail the "
                "whole batch." if "WorkerCrashedError" in value else "")
        raise Fail(f"render_batch({docs}) raised {value.rstrip('.')}.{hint}")
    value = plain_dict(value, "render_batch", shape="{document: html or None}")
    wrong = [doc for doc in docs if value.get(doc, "missing") != (None if is_corrupt(doc) else render_document(doc))]
    if wrong:
        details = ", ".join(f"{doc}: {value.get(doc, 'missing')!r}" for doc in wrong[:3])
        raise Fail(f"render_batch({docs}) got these documents wrong: {details}. Good documents map to "
                   "render_document(doc), and corrupt ones (13, 26, ...) to None.")


@register("ex03.isolate_render")
async def check_isolate_render(render_batch) -> str:
    """render_batch survives the corrupt document: good ones rendered, the corrupt one None."""
    await _judge_batch(render_batch, [11, 12, CORRUPT_DOC, 14])
    return ("render_batch() renders every good document, returns None for the corrupt one, and its own process "
            "survives the crash.")


@register("ex03.many_crashes")
async def check_many_crashes(render_batch) -> str:
    """Several corrupt documents in one batch: each crash costs only its own document."""
    docs = [CORRUPT_DOC, 1, 2 * CORRUPT_DOC, 2, 3 * CORRUPT_DOC, 3]
    await _judge_batch(render_batch, docs)
    return "render_batch() survives several crashes in one batch, losing only the corrupt documents."
