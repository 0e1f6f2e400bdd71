"""Live views for JupyterLab: event-loop lag and per-core CPU, updating while work runs.

Each meter refreshes from a small task on the kernel's own event loop, so it keeps moving while a
cell awaits (``await asyncio.sleep(3)``, ``await trace_latency(...)``) and freezes while a cell
blocks the loop, which is itself the lesson. A meter stops when told (``stop()``), when its
``duration`` runs out, or at the end of a ``with`` block; a stopped meter keeps its last picture.

    meter = CoreMeter(duration=10)   # one bar per core, like a task manager
    meter                            # display it; it starts updating
"""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING

import ipywidgets
import psutil

from .errors import ConfigurationError, NoRunningLoopError
from .probe import LoopProbe

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import Cluster, ClusterStats

__all__ = ["LagMeter", "CoreMeter", "ClusterMonitor"]

# Four refreshes a second look live to a person and cost the kernel next to nothing; faster
# refreshes flood the browser with widget messages.
DEFAULT_REFRESH = 0.25


class _LiveView:
    """Shared lifecycle of the meters: a refresh task on the running loop, auto-stop, display."""

    widget: ipywidgets.Widget

    def __init__(self, refresh: float, duration: float | None) -> None:
        if refresh <= 0:
            raise ConfigurationError(f"refresh must be positive seconds, got {refresh}")
        if duration is not None and duration <= 0:
            raise ConfigurationError(f"duration must be positive seconds or None, got {duration}")
        self.refresh = refresh
        self.duration = duration
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        """Whether the meter is updating."""
        return self._task is not None and not self._task.done()

    def start(self):
        """Start updating on the running loop (the kernel's). Returns ``self``."""
        if self.running:
            return self
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise NoRunningLoopError(
                f"{type(self).__name__} updates from the kernel's event loop: create it in a notebook cell"
            ) from None
        self._begin()
        self._task = loop.create_task(self._run())
        return self

    def stop(self) -> None:
        """Stop updating; the widget keeps showing its last values."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._end()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if self.duration is None else loop.time() + self.duration
        try:
            while deadline is None or loop.time() < deadline:
                self.update()
                await asyncio.sleep(self.refresh)
            self.update()
        finally:
            self._end()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _repr_mimebundle_(self, **kwargs):
        self.start()
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # The widget's own text form lists every value it shows, which changes run to run; a
        # fixed line keeps stored notebooks comparable and says what a plain console misses.
        bundle["text/plain"] = f"{type(self).__name__}: a live view (open the notebook in JupyterLab to see it)"
        return bundle

    def _begin(self) -> None:
        """Hook: prepare before the first update."""

    def _end(self) -> None:
        """Hook: release what ``_begin`` took."""

    def update(self) -> None:  # pragma: no cover - overridden
        """Refresh the widget once from fresh measurements."""
        raise NotImplementedError


def _level(value: float, warn: float, bad: float) -> str:
    return "danger" if value >= bad else "warning" if value >= warn else "success"


class LagMeter(_LiveView):
    """A live gauge of event-loop lag and utilization, like a heart-rate monitor for the loop.

    It shows the worst lag of the last ``window`` seconds on a bar (full at ``scale_ms``), the
    p50/p99/max so far, and how busy the loop was. Without a ``probe`` it makes and owns one on
    the kernel's loop.
    """

    def __init__(self, probe: LoopProbe | None = None, *, window: float = 2.0, scale_ms: float = 500.0,
                 refresh: float = DEFAULT_REFRESH, duration: float | None = None) -> None:
        super().__init__(refresh, duration)
        self.probe = probe if probe is not None else LoopProbe()
        self._owns_probe = probe is None
        self.window = window
        self.scale_ms = scale_ms
        self._bar = ipywidgets.FloatProgress(value=0, min=0, max=scale_ms, description="lag now",
                                    layout=ipywidgets.Layout(width="60%"))
        self._busy = ipywidgets.FloatProgress(value=0, min=0, max=1, description="loop busy",
                                     layout=ipywidgets.Layout(width="60%"))
        self._text = ipywidgets.HTML()
        self.widget = ipywidgets.VBox([ipywidgets.HTML("<b>Event-loop lag</b>"), self._bar, self._busy, self._text])

    def _begin(self) -> None:
        if self._owns_probe and not self.probe.running:
            self.probe.start()

    def _end(self) -> None:
        if self._owns_probe and self.probe.running:
            self.probe.stop()

    def update(self) -> None:
        """Redraw from the probe's latest samples."""
        recent = [lag for _, lag in self.probe.timeline(self.window)]
        worst = max(recent, default=0.0)
        self._bar.value = min(worst, self.scale_ms)
        self._bar.bar_style = _level(worst, 20, 100)
        stats = self.probe.stats()
        if stats.utilization is not None:
            self._busy.value = stats.utilization
            self._busy.bar_style = _level(stats.utilization, 0.5, 0.9)
        self._text.value = html.escape(
            f"last {self.window:g} s: worst {worst:.1f} ms | overall: {stats.summary()}"
        )


class CoreMeter(_LiveView):
    """One bar per logical CPU with its current load, like a task manager's CPU view.

    A single busy event loop lights one bar; a cluster or a process pool lights them all.
    """

    def __init__(self, *, refresh: float = 0.5, duration: float | None = None) -> None:
        super().__init__(refresh, duration)
        count = psutil.cpu_count() or 1
        self._bars = [
            ipywidgets.FloatProgress(value=0, min=0, max=100, description=f"cpu {i}",
                                     layout=ipywidgets.Layout(width="60%"))
            for i in range(count)
        ]
        self._text = ipywidgets.HTML()
        self.widget = ipywidgets.VBox([ipywidgets.HTML("<b>CPU load per core</b>"), *self._bars, self._text])
        self.peak: list[float] = [0.0] * count

    def _begin(self) -> None:
        psutil.cpu_percent(percpu=True)  # the first reading only sets the baseline

    def update(self) -> None:
        """Read per-core load since the last update and redraw."""
        loads = psutil.cpu_percent(percpu=True)
        for i, (bar, load) in enumerate(zip(self._bars, loads)):
            bar.value = load
            bar.bar_style = _level(load, 50, 90)
            self.peak[i] = max(self.peak[i], load)
        self._text.value = html.escape(f"total {sum(loads) / 100:.1f} cores busy")


# Colours of a worker's state in the monitor's table: green serving, amber in transition, red given up.
_STATE_COLORS = {"ready": "#2ca02c", "starting": "#ff7f0e", "stopping": "#ff7f0e", "exited": "#7f7f7f",
                 "errored": "#d62728"}


class ClusterMonitor(_LiveView):
    """A live table of a cluster's workers, like ``pm2 monit``: who serves, how busy, how big.

    One row per worker: id, pid, state, uptime, restarts, requests served, CPU (100% = one whole
    core) and resident memory; below it the cluster's totals and its latest events ("worker 1:
    killed by SIGKILL ..., restarting"). Like a departures board, it only shows what the
    supervisor already knows: request counts arrive with each worker's heartbeat (about once a
    second), and a dead worker shows as dead once the supervisor has reaped it.

    The monitor stops by itself when its cluster stops (its last picture stays), after
    ``duration`` seconds, or on :meth:`stop`. ``peak_cpu`` keeps each worker id's highest CPU
    reading, and ``pids`` every process id it has shown, so a cell can say afterwards what the
    monitor saw.
    """

    def __init__(self, cluster: Cluster, *, refresh: float = 0.5, duration: float | None = None,
                 events: int = 4) -> None:
        super().__init__(refresh, duration)
        if events < 0:
            raise ConfigurationError(f"events must be zero or more, got {events}")
        self.cluster = cluster
        self.events = events
        self.last: ClusterStats | None = None
        self.peak_cpu: dict[int, float] = {}
        self.pids: set[int] = set()
        self._title = ipywidgets.HTML("<b>Cluster workers</b>")
        self._table = ipywidgets.HTML()
        self._log = ipywidgets.HTML()
        self.widget = ipywidgets.VBox([self._title, self._table, self._log])

    def update(self) -> None:
        """Read the cluster's stats and events and redraw; stop once the cluster has stopped."""
        stats = self.cluster.stats()
        self.last = stats
        for worker in stats.workers:
            if worker.pid is not None:
                self.pids.add(worker.pid)
            self.peak_cpu[worker.id] = max(self.peak_cpu.get(worker.id, 0.0), worker.cpu_percent)
        where = html.escape(stats.url) if stats.url else "stopped"
        self._title.value = (f"<b>Cluster workers</b> &nbsp; {html.escape(stats.app)} at {where}, "
                             f"balance {html.escape(stats.balance)}")
        self._table.value = _worker_table(stats)
        recent = list(self.cluster.events)[-self.events:] if self.events else []
        self._log.value = "<br>".join(
            f"<span style='font-family:monospace;font-size:85%'>{html.escape(str(e))}</span>" for e in recent
        )
        if not self.cluster.running and self.running:
            self.stop()  # nothing more will change; keep the last picture

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ClusterMonitor {state}, {len(self.pids)} worker processes seen>"


def _worker_table(stats: ClusterStats) -> str:
    """The workers of ``stats`` as an HTML table with a CPU bar per row."""
    from ._format import format_bytes, format_uptime

    head = "".join(f"<th style='text-align:left;padding:0 8px'>{h}</th>"
                   for h in ("id", "pid", "state", "uptime", "restarts", "requests", "CPU", "memory"))
    rows = []
    for w in stats.workers:
        color = _STATE_COLORS.get(w.state.value, "black")
        width = max(0.0, min(w.cpu_percent, 100.0))
        bar = (f"<div style='display:inline-block;width:60px;height:9px;background:#eee;margin-right:4px'>"
               f"<div style='width:{width:.0f}%;height:9px;background:{_bar_color(w.cpu_percent)}'></div></div>")
        cells = [str(w.id), str(w.pid or "-"), f"<span style='color:{color}'><b>{w.state.value}</b></span>",
                 format_uptime(w.uptime), str(w.restarts), str(w.requests), f"{bar}{w.cpu_percent:.0f}%",
                 format_bytes(w.rss)]
        rows.append("<tr>" + "".join(f"<td style='padding:0 8px'>{c}</td>" for c in cells) + "</tr>")
    totals = (f"{stats.ready}/{stats.wanted} ready, {stats.requests} requests, "
              f"{stats.cpu_percent:.0f}% CPU, {format_bytes(stats.rss)} in all")
    gave_up = ""
    if stats.gave_up:  # every worker errored: say so where the eye lands, with what to do
        gave_up = f"<div style='color:#b00'><b>gave up:</b> {html.escape(stats.gave_up)}</div>"
    return (f"<table style='font-family:monospace'><tr>{head}</tr>{''.join(rows)}</table>"
            f"<div>{html.escape(totals)}</div>{gave_up}")


def _bar_color(percent: float) -> str:
    return {"success": "#2ca02c", "warning": "#ff7f0e", "danger": "#d62728"}[_level(percent, 50, 90)]
