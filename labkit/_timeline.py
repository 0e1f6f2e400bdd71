"""A per-core CPU timeline: which cores did the work, moment by moment.

    recorder thread ── every `interval` ──▶ psutil.cpu_percent(percpu=True)
                                            └─▶ (t, [load of cpu 0, cpu 1, ...])

A single event loop lights one core; a cluster or a process pool lights them all. The recorder is
a thread so that it keeps sampling while the caller blocks (a synchronous batch, a blocked event
loop); it measures the whole machine, so other programs' load shows too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

from .errors import ConfigurationError

__all__ = ["CpuTimeline", "cpu_timeline"]

# Ten samples a second resolve a 0.3 s task and cost well under 1% of a core.
DEFAULT_INTERVAL = 0.1


@dataclass(frozen=True)
class CpuTimeline:
    """Per-core load samples: ``times[i]`` seconds after the start, ``loads[i][core]`` percent."""

    times: tuple[float, ...]
    loads: tuple[tuple[float, ...], ...]

    @property
    def cores(self) -> int:
        """How many logical CPUs were sampled."""
        return len(self.loads[0]) if self.loads else 0

    def busy_cores(self, threshold: float = 50.0) -> int:
        """How many cores were above ``threshold`` percent on average over the recording."""
        if not self.loads:
            return 0
        averages = [sum(sample[c] for sample in self.loads) / len(self.loads) for c in range(self.cores)]
        return sum(1 for a in averages if a >= threshold)


class cpu_timeline:  # noqa: N801 - used like a function: `with cpu_timeline() as recording:`
    """Record per-core CPU load while a ``with`` block runs; read ``.result`` afterwards.

    Example::

        with cpu_timeline() as recording:
            run_the_experiment()
        plot_cpu_timeline(recording.result)
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        if not 0.01 <= interval <= 5:
            raise ConfigurationError(f"interval must be between 0.01 and 5 seconds, got {interval}")
        self.interval = interval
        self.result: CpuTimeline | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._times: list[float] = []
        self._loads: list[tuple[float, ...]] = []

    def __enter__(self) -> cpu_timeline:
        psutil.cpu_percent(percpu=True)  # sets the baseline; the first real sample follows
        start = time.perf_counter()

        def record() -> None:
            while not self._stop.wait(self.interval):
                self._loads.append(tuple(psutil.cpu_percent(percpu=True)))
                self._times.append(time.perf_counter() - start)

        self._thread = threading.Thread(target=record, name="labkit-cpu-timeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.result = CpuTimeline(tuple(self._times), tuple(self._loads))
