"""Measurements the labs make: latency seen by a client, scaling sweeps, and verdicts drawn from them.

- :func:`trace_latency`: what a client sees while a heavy request runs (below);
- :func:`timed_gather`, :func:`overlapped`: when each task of a batch ran;
- :func:`who_answers`, :func:`watch_answers`: which worker process answers, over time (lab 03);
- :func:`sweep`, :func:`speedup`, :func:`judge_speedup`: a batch at several worker counts, judged
  against the parallelism the machine delivered (see ``labkit/_sweep.py``);
- :func:`cpu_timeline`: which cores did the work (see ``labkit/_timeline.py``);
- :func:`best_of`: retry an experiment a busy machine spoiled.

:func:`trace_latency` is the experiment of lab 01. It plays a user who keeps asking a server for a
cheap page (``/fast``) while another user asks for an expensive one (``/hash``):

    time ──────────────────────────────────────────────────────────────────────────▶
    /fast   ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪ ▪     one request every `interval`
    /hash         ├──────── heavy request ────────┤
    result  fast answers stay fast if the server's loop is free while it hashes,
            and queue up behind the hash if the loop itself is hashing.

It runs on the caller's event loop (the notebook kernel's) and only awaits, so the kernel stays
responsive; the server must run elsewhere (see :class:`labkit.apps.AppServer`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ._sweep import SweepPoint, SweepResult, Verdict, default_worker_counts, judge_speedup, speedup, sweep
from ._timeline import CpuTimeline, cpu_timeline
from .errors import ConfigurationError

__all__ = [
    "LatencyTrace",
    "trace_latency",
    "Span",
    "timed_gather",
    "overlapped",
    "who_answers",
    "watch_answers",
    "best_of",
    # scaling sweeps and CPU timelines (defined in private modules, part of this module's API)
    "SweepPoint",
    "SweepResult",
    "sweep",
    "speedup",
    "default_worker_counts",
    "Verdict",
    "judge_speedup",
    "CpuTimeline",
    "cpu_timeline",
]

T = TypeVar("T")

# Time allowed for any single request of a trace. A heavy request on a loaded 2-core machine can
# take seconds; anything past this is a hung server, not a slow one.
REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class LatencyTrace:
    """What :func:`trace_latency` saw. Times are seconds from the start of the trace.

    Attributes:
        sent: when each fast request was sent.
        latency_ms: how long each fast request took, in the same order.
        heavy_start, heavy_end: when the heavy request was sent and answered.
        heavy_path, fast_path: what was requested.
    """

    sent: tuple[float, ...]
    latency_ms: tuple[float, ...]
    heavy_start: float
    heavy_end: float
    heavy_path: str
    fast_path: str

    @property
    def heavy_ms(self) -> float:
        """How long the heavy request took, in milliseconds."""
        return 1e3 * (self.heavy_end - self.heavy_start)

    def during(self) -> list[float]:
        """Latencies (ms) of fast requests sent while the heavy request was in flight."""
        return [lat for t, lat in zip(self.sent, self.latency_ms) if self.heavy_start <= t < self.heavy_end]

    def outside(self) -> list[float]:
        """Latencies (ms) of fast requests sent before or after the heavy request."""
        return [lat for t, lat in zip(self.sent, self.latency_ms) if not self.heavy_start <= t < self.heavy_end]

    @property
    def worst_during_ms(self) -> float:
        """The slowest fast request sent during the heavy one (0.0 if none was sent)."""
        return max(self.during(), default=0.0)

    @property
    def typical_outside_ms(self) -> float:
        """Median latency of fast requests outside the heavy request (0.0 if none)."""
        outside = self.outside()
        return statistics.median(outside) if outside else 0.0

    def blocked_fraction(self) -> float:
        """Worst fast latency during the heavy request as a fraction of the heavy request's time.

        Near 1: a fast request waited for the whole heavy one (the loop was blocked). Near 0: fast
        requests were served while the heavy one computed elsewhere.
        """
        return self.worst_during_ms / self.heavy_ms if self.heavy_ms > 0 else 0.0

    def summary(self) -> str:
        """One line: heavy time, typical and worst fast latency."""
        return (
            f"{self.heavy_path} took {self.heavy_ms:.0f} ms; {self.fast_path} took "
            f"{self.typical_outside_ms:.1f} ms before/after and up to {self.worst_during_ms:.0f} ms during it"
        )


async def trace_latency(
    base_url: str,
    heavy_path: str = "/hash?mode=sync",
    fast_path: str = "/fast",
    *,
    interval: float = 0.02,
    before: float = 0.3,
    after: float = 0.3,
) -> LatencyTrace:
    """Send ``fast_path`` every ``interval`` seconds, with one ``heavy_path`` request in the middle.

    The fast requests start ``before`` seconds ahead of the heavy one and go on until ``after``
    seconds past its answer. Every request must succeed; an HTTP error raises with its status.
    """
    if interval <= 0 or before < 0 or after < 0:
        raise ConfigurationError("interval must be positive and before/after non-negative")
    client = AsyncHTTPClient(force_instance=True, max_clients=1000)
    start = time.perf_counter()
    fast_tasks: list[asyncio.Task] = []
    heavy_window: list[float] = []
    done = asyncio.Event()

    async def timed_get(path: str) -> tuple[float, float]:
        sent = time.perf_counter() - start
        try:
            await client.fetch(base_url + path, request_timeout=REQUEST_TIMEOUT)
        except HTTPClientError as exc:
            raise ConfigurationError(f"GET {path} failed with HTTP {exc.code}: {exc.message}") from None
        return sent, time.perf_counter() - start

    async def heavy() -> None:
        await asyncio.sleep(before)
        sent, answered = await timed_get(heavy_path)
        heavy_window.extend((sent, answered))
        await asyncio.sleep(after)
        done.set()

    heavy_task = asyncio.ensure_future(heavy())
    try:
        while not done.is_set():
            fast_tasks.append(asyncio.ensure_future(timed_get(fast_path)))
            try:
                await asyncio.wait_for(done.wait(), interval)
            except asyncio.TimeoutError:
                pass
        await heavy_task
        results = await asyncio.gather(*fast_tasks)
    finally:
        for task in [heavy_task, *fast_tasks]:
            task.cancel()
        await asyncio.gather(heavy_task, *fast_tasks, return_exceptions=True)
        client.close()
    return LatencyTrace(
        sent=tuple(s for s, _ in results),
        latency_ms=tuple(1e3 * (a - s) for s, a in results),
        heavy_start=heavy_window[0],
        heavy_end=heavy_window[1],
        heavy_path=heavy_path,
        fast_path=fast_path,
    )


# --------------------------------------------------------------------------------------------
# When did each task run?


@dataclass(frozen=True)
class Span:
    """When one task ran, in seconds from the start of :func:`timed_gather`, and what it returned."""

    label: str
    start: float
    end: float
    result: Any

    @property
    def seconds(self) -> float:
        """How long the task took from its first step to its last."""
        return self.end - self.start


async def timed_gather(tasks: dict[str, Callable[[], Awaitable[Any]]]) -> list[Span]:
    """Run the coroutine functions in ``tasks`` concurrently; report when each started and ended.

    A task "starts" when its coroutine first runs and "ends" when it returns, so the spans show
    what really overlapped: waits that overlap on one loop, and CPU work that cannot.
    """
    origin = time.perf_counter()

    async def timed(label: str, function: Callable[[], Awaitable[Any]]) -> Span:
        start = time.perf_counter() - origin
        result = await function()
        return Span(label, start, time.perf_counter() - origin, result)

    return list(await asyncio.gather(*(timed(label, fn) for label, fn in tasks.items())))


def overlapped(spans: list[Span]) -> bool:
    """Whether any two spans ran at the same time (beyond a millisecond of bookkeeping)."""
    ordered = sorted(spans, key=lambda span: span.start)
    return any(b.start < a.end - 1e-3 for a, b in zip(ordered, ordered[1:]))


# --------------------------------------------------------------------------------------------
# Who answers: which worker process a client reaches, over time


async def who_answers(url: str, timeout: float = REQUEST_TIMEOUT, client: AsyncHTTPClient | None = None) -> int | None:
    """The pid of the worker that answers one GET of ``url`` on a new connection, or ``None``.

    The pid comes from the ``X-Worker-Pid`` header that labkit's demo apps send. ``None`` means
    no answer: the connection was refused or reset (a dying worker), or ``timeout`` passed.
    """
    own = client is None
    client = client or AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(url, request_timeout=timeout)
    except Exception:  # noqa: BLE001 - refused, reset, timed out, cut off mid-reply: all mean no answer
        return None
    finally:
        if own:
            client.close()
    pid = response.headers.get("X-Worker-Pid")
    return int(pid) if pid and pid.isdigit() else None


async def watch_answers(url: str, seconds: float, interval: float = 0.02,
                        origin: float | None = None) -> list[tuple[float, int | None]]:
    """Ask ``url`` on a new connection every ``interval`` seconds; see who answers each time.

    Asks until ``seconds`` after ``origin`` (a ``time.monotonic()`` reading; default: when the
    watch begins). Returns ``(sent, pid)`` pairs, ``sent`` in seconds since ``origin`` and ``pid``
    as :func:`who_answers` gives it, ready for :func:`labkit.plots.plot_answers_timeline`. Requests
    are sent on schedule whether or not earlier ones were answered, so a gap in the service shows
    as a gap, not as a slower watcher.
    """
    origin = time.monotonic() if origin is None else origin
    client = AsyncHTTPClient(force_instance=True, max_clients=1000)

    async def ask() -> tuple[float, int | None]:
        sent = time.monotonic() - origin
        return sent, await who_answers(url, client=client)

    asked = []
    try:
        while time.monotonic() - origin < seconds:
            asked.append(asyncio.ensure_future(ask()))
            await asyncio.sleep(interval)
        return list(await asyncio.gather(*asked))
    finally:
        for pending in asked:
            pending.cancel()
        client.close()


# --------------------------------------------------------------------------------------------
# Verdicts that hold on a busy machine

#: How many times a verdict may retry an experiment before it reports what it saw.
DEFAULT_TRIES = 3


async def best_of(
    trial: Callable[[], Awaitable[T]], accept: Callable[[T], bool], tries: int = DEFAULT_TRIES
) -> tuple[T, bool]:
    """Run ``trial`` until ``accept(result)`` or ``tries`` runs; return the last result and the verdict.

    A machine shared with other work can spoil one measurement (another program takes the core
    at the wrong moment); it rarely spoils three in a row. Retrying until the expected behaviour
    shows, and saying so when it never does, keeps a lab's verdict from flipping under load
    without hiding a real failure.
    """
    if tries < 1:
        raise ConfigurationError(f"tries must be at least 1, got {tries}")
    for _ in range(tries):
        result = await trial()
        if accept(result):
            return result, True
    return result, False
