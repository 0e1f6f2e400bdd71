"""How late does the event loop run its timers? A lag probe, like Node's ``monitorEventLoopDelay``.

An event loop can only run one callback at a time. While a callback computes, every timer that
falls due waits. The probe schedules its own timer every ``interval`` and records how late it fires:

    loop time ──────────────────────────────────────────────────────────────────────────▶
    probe timer:  due ▼       due ▼        due ▼ (blocked...............) fired ▼
    lag:            0.1 ms      0.2 ms       ├──────── lag = 187 ms ─────────┤
    callbacks:   [io] [io]   [io]       [ hash_password() running on the loop ]

From those lags it keeps a histogram (count, min, mean, p50, p90, p99, max) and a short timeline
for live views and plots. It also measures *loop utilization*, Node's ``eventLoopUtilization()``:
the fraction of wall time the loop spent running callbacks rather than waiting for I/O. It does so
by timing the loop's wait in its selector; on a loop without one, utilization is ``None``.

Use it as ``async with LoopProbe() as probe:`` in a script, or ``probe = LoopProbe(); probe.start()``
in a notebook, whose kernel already runs a loop, and ``probe.stop()`` later.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigurationError, NoRunningLoopError

__all__ = ["LoopProbe", "LagStats", "LagHistogram"]

# 10 ms matches Node's default resolution for monitorEventLoopDelay. A shorter interval catches
# shorter stalls but costs more CPU (about 10 µs per tick: 0.1% of a core at 10 ms).
DEFAULT_INTERVAL = 0.010

# The timeline behind live views and plots keeps the most recent samples only: 30,000 samples are
# five minutes at the default interval, a few hundred kilobytes.
TIMELINE_SAMPLES = 30_000

# Histogram buckets grow by 1% each, so a percentile is exact to within 1% of its value, with a
# few hundred buckets covering a microsecond to an hour. Min, max and mean are kept exactly.
_BUCKET_GROWTH = 1.01
_BUCKET_FLOOR = 1e-6  # seconds; lags below a microsecond share the first bucket


@dataclass(frozen=True)
class LagStats:
    """A snapshot of a probe's measurements. Lags are in milliseconds.

    Attributes:
        count: how many timer ticks were measured.
        min_ms, mean_ms, p50_ms, p90_ms, p99_ms, max_ms: lag distribution; ``0.0`` when empty.
        utilization: fraction of wall time the loop was busy (0 to 1), or ``None`` when the loop
            offers no way to see its idle time.
        elapsed: seconds of wall time covered.
        interval_ms: the probe's timer interval.
    """

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    utilization: float | None
    elapsed: float
    interval_ms: float

    def summary(self) -> str:
        """One readable line, e.g. ``p50 0.2 ms, p99 1.1 ms, max 187.3 ms, busy 41% (512 ticks)``."""
        busy = "" if self.utilization is None else f", busy {self.utilization:.0%}"
        return (
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"
            f"{busy} ({self.count} ticks)"
        )


class LagHistogram:
    """Lag samples in log-spaced buckets: constant memory, percentiles within 1%.

    Like an HdrHistogram, cut down to what the probe needs. Values are in seconds.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, value: float) -> None:
        """Add one sample (seconds, negative values count as zero)."""
        value = max(0.0, value)
        index = 0 if value <= _BUCKET_FLOOR else 1 + int(math.log(value / _BUCKET_FLOOR, _BUCKET_GROWTH))
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def percentile(self, q: float) -> float:
        """The value below which a fraction ``q`` (0 to 1) of samples fall; 0.0 when empty."""
        if not 0 <= q <= 1:
            raise ConfigurationError(f"percentile must be between 0 and 1, got {q}")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                if index == 0:
                    return self.min  # lags under a microsecond: report the least seen
                upper = _BUCKET_FLOOR * _BUCKET_GROWTH**index
                # Report the bucket's upper edge, clamped to what was really seen.
                return min(max(upper, self.min), self.max)
        return self.max

    @property
    def mean(self) -> float:
        """Mean of the samples, 0.0 when empty."""
        return self.total / self.count if self.count else 0.0


class _IdleMeter:
    """Times how long one loop waits in its selector; shared by all probes on that loop.

    asyncio's selector loops (and the proactor loop on Windows) block in ``<selector>.select()``
    when they have nothing to do. Wrapping that one method tells idle from busy time exactly,
    the way libuv measures Node's loop utilization around its poll phase.
    """

    _by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, selector, clock: Callable[[], float]) -> None:
        self.selector = selector
        self.clock = clock
        self.idle = 0.0
        self.users = 0
        self._original = selector.select

        def timed_select(timeout=None):
            if timeout == 0:  # a poll between ready callbacks: the loop is busy, not waiting
                return self._original(timeout)
            start = self.clock()
            try:
                return self._original(timeout)
            finally:
                self.idle += self.clock() - start

        selector.select = timed_select

    @classmethod
    def acquire(cls, loop, clock) -> _IdleMeter | None:
        meter = cls._by_loop.get(loop)
        if meter is None:
            selector = getattr(loop, "_selector", None) or getattr(loop, "_proactor", None)
            if selector is None or not hasattr(selector, "select"):
                return None
            meter = cls(selector, clock)
            cls._by_loop[loop] = meter
        meter.users += 1
        return meter

    def release(self, loop) -> None:
        self.users -= 1
        if self.users == 0:
            self._by_loop.pop(loop, None)
            try:
                del self.selector.select  # the instance attribute; the class method shows again
            except AttributeError:
                pass


class LoopProbe:
    """Measure event-loop lag and utilization, like Node's ``monitorEventLoopDelay``.

    Think of a nurse taking a pulse every ``interval``: when the patient (the loop) is busy with a
    long computation, the nurse is kept waiting, and the wait is the lag. A healthy loop answers
    within a millisecond; a loop that hashes a password answers when the hash is done.

    Args:
        interval: seconds between timer ticks (default 10 ms).
        clock: a function returning seconds, for lag arithmetic; tests pass a fake one. The loop's
            own scheduling still uses the loop's clock.
    """

    # Set by _reset_counters() (at construction, start and reset) and by stop().
    _hist: LagHistogram
    _started_at: float
    _stopped_at: float | None
    _stopped_idle: float | None
    _idle_at_reset: float
    _due: float

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, clock: Callable[[], float] = time.perf_counter):
        if not (isinstance(interval, (int, float)) and 0.0005 <= interval <= 10):
            raise ConfigurationError(f"interval must be between 0.0005 and 10 seconds, got {interval!r}")
        self.interval = float(interval)
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._meter: _IdleMeter | None = None
        self._timeline: deque[tuple[float, float]] = deque(maxlen=TIMELINE_SAMPLES)
        self._reset_counters()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the probe's timer is scheduled."""
        return self._handle is not None

    def start(self) -> LoopProbe:
        """Start ticking on the running loop (the kernel's, in a notebook). Returns ``self``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NoRunningLoopError(
                "LoopProbe.start() needs a running asyncio loop. In a notebook, call it in a cell "
                "(the kernel runs a loop); in a script, use 'async with LoopProbe() as probe:' "
                "inside a coroutine started by asyncio.run()."
            ) from None
        if self.running:
            if loop is self._loop:
                return self
            raise ConfigurationError("this probe already runs on another loop; stop() it first")
        self._loop = loop
        self._meter = _IdleMeter.acquire(loop, self._clock)
        self._reset_counters()
        self._schedule()
        return self

    def stop(self) -> LagStats:
        """Stop ticking and return the final :class:`LagStats`. Stopping twice is harmless."""
        stats = self.stats()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._meter is not None and self._loop is not None:
            self._stopped_idle = self._meter.idle - self._idle_at_reset
            self._meter.release(self._loop)
            self._meter = None
        self._stopped_at = self._clock()
        return stats

    async def __aenter__(self) -> LoopProbe:
        return self.start()

    async def __aexit__(self, *exc_info) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every sample so far and start counting afresh (the probe keeps running)."""
        self._reset_counters()

    # -- measurements ----------------------------------------------------------------------

    def stats(self) -> LagStats:
        """A snapshot of the lag histogram and utilization since start or the last reset."""
        hist = self._hist
        now = self._clock() if self.running else self._stopped_at or self._clock()
        elapsed = max(0.0, now - self._started_at)
        return LagStats(
            count=hist.count,
            min_ms=1e3 * (hist.min if hist.count else 0.0),
            mean_ms=1e3 * hist.mean,
            p50_ms=1e3 * hist.percentile(0.50),
            p90_ms=1e3 * hist.percentile(0.90),
            p99_ms=1e3 * hist.percentile(0.99),
            max_ms=1e3 * hist.max,
            utilization=self._utilization(elapsed),
            elapsed=elapsed,
            interval_ms=1e3 * self.interval,
        )

    def timeline(self, last: float | None = None) -> list[tuple[float, float]]:
        """Recent ``(seconds since start, lag ms)`` pairs; ``last`` keeps only the last seconds."""
        points = [(t - self._started_at, 1e3 * lag) for t, lag in self._timeline]
        if last is not None and points:
            cut = points[-1][0] - last
            points = points[bisect.bisect_left(points, (cut, -1.0)) :]
        return points

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopProbe {state} interval={1e3 * self.interval:g}ms {self.stats().summary()}>"

    # -- internals -------------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._hist = LagHistogram()
        self._timeline.clear()
        self._started_at = self._clock()
        self._stopped_at = None
        self._stopped_idle = None
        self._idle_at_reset = self._meter.idle if self._meter is not None else 0.0
        self._due = self._started_at + self.interval

    def _schedule(self) -> None:
        assert self._loop is not None, "a probe ticks only between start() and stop()"
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock()
        lag = max(0.0, now - self._due)
        self._hist.record(lag)
        self._timeline.append((now, lag))
        self._due = now + self.interval
        self._schedule()

    def _utilization(self, elapsed: float) -> float | None:
        if elapsed <= 0:
            return None
        if self._meter is not None:
            idle = self._meter.idle - self._idle_at_reset
        elif self._stopped_idle is not None:
            idle = self._stopped_idle
        else:
            return None
        return min(1.0, max(0.0, 1.0 - idle / elapsed))
