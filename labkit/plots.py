"""Matplotlib figures of what the probes and measurements saw.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is
drawn twice in a notebook, no global state changes, and a figure can be saved or shown as the
caller likes (in Jupyter, a returned figure is displayed once). Each figure is labelled with the
machine it came from, since the same experiment looks different on a 2-core laptop and a 64-core
server.
"""

from __future__ import annotations

import io
import platform
from collections.abc import Sequence

from matplotlib.figure import Figure

from .cores import usable_cores
from .measure import LatencyTrace, Span
from .probe import LoopProbe

__all__ = ["LabFigure", "plot_lag", "plot_lag_histogram", "plot_latency_trace", "plot_spans", "machine_label"]

BLOCKED_COLOR = "#d62728"
FREE_COLOR = "#1f77b4"
HEAVY_SHADE = "#ffcc80"


class LabFigure(Figure):
    """A matplotlib figure that shows itself in Jupyter, with no pyplot and no backend set up.

    Without pyplot, a figure has no notebook display of its own; this one renders itself to PNG
    when Jupyter asks, and its text form stays the short, stable ``<Figure size ...>`` line.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def machine_label() -> str:
    """A short description of this machine for figure footers, e.g. ``Linux, 2 usable cores``."""
    cores = usable_cores()
    return f"{platform.system()}, {cores.usable} usable core{'s' if cores.usable != 1 else ''}"


def _figure(width: float = 8, height: float = 3.2) -> tuple[LabFigure, object]:
    fig = LabFigure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _footer(fig: Figure, extra: str = "") -> None:
    fig.text(0.995, 0.005, machine_label() + (f"; {extra}" if extra else ""), ha="right", va="bottom",
             fontsize=7, color="grey")


def plot_lag(
    runs: LoopProbe | dict[str, LoopProbe | Sequence[tuple[float, float]]],
    *,
    title: str = "Event-loop lag over time",
    last: float | None = None,
) -> LabFigure:
    """Lag of every probe tick against time: flat near zero while the loop is free, a spike when blocked.

    ``runs`` is a probe, or named runs to overlay, each a probe or its ``timeline()`` points.
    """
    if isinstance(runs, LoopProbe):
        runs = {"lag": runs}
    fig, ax = _figure()
    for index, (name, run) in enumerate(runs.items()):
        points = run.timeline(last) if isinstance(run, LoopProbe) else list(run)
        if points:
            times, lags = zip(*points)
            color = f"C{index}"
            # One stem per tick, drawn when the tick fired: a blocked loop shows as one tall stem
            # right after the block, as tall as the block was long.
            ax.vlines(times, 0, lags, color=color, linewidth=1.5)
            ax.plot(times, lags, ".", color=color, markersize=4, label=f"{name} (max {max(lags):.0f} ms)")
    ax.set_xlabel("seconds since the probe started")
    ax.set_ylabel("lag (ms)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    _footer(fig)
    return fig


def plot_lag_histogram(
    runs: dict[str, Sequence[float] | LoopProbe], *, title: str = "How late did the loop's timers fire?"
) -> Figure:
    """Histograms of lag (ms, log scale) for several named runs, e.g. ``{"blocking": p1, "offloaded": p2}``."""
    import numpy as np

    fig, ax = _figure()
    samples = {}
    for name, run in runs.items():
        values = [lag for _, lag in run.timeline()] if isinstance(run, LoopProbe) else list(run)
        samples[name] = np.maximum(np.asarray(values, dtype=float), 0.01)
    top = max((s.max() for s in samples.values() if s.size), default=1.0)
    bins = np.logspace(-2, np.log10(max(top, 1.0)) + 0.1, 40)
    for name, values in samples.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (max {values.max():.0f} ms)" if values.size else name)
    ax.set_xscale("log")
    ax.set_xlabel("lag (ms, log scale)")
    ax.set_ylabel("ticks")
    ax.set_title(title)
    ax.legend()
    _footer(fig)
    return fig


def plot_latency_trace(traces: dict[str, LatencyTrace] | LatencyTrace, *, title: str | None = None) -> Figure:
    """Fast-request latency before, during and after a heavy request, one panel per trace."""
    if isinstance(traces, LatencyTrace):
        traces = {traces.heavy_path: traces}
    fig = LabFigure(figsize=(8, 2.6 * len(traces)), layout="constrained")
    axes = fig.subplots(len(traces), 1, sharey=True, squeeze=False)[:, 0]  # one scale: comparable at a glance
    for ax, (name, trace) in zip(axes, traces.items()):
        ax.axvspan(trace.heavy_start, trace.heavy_end, color=HEAVY_SHADE, alpha=0.6,
                   label=f"{trace.heavy_path} in flight ({trace.heavy_ms:.0f} ms)")
        blocked = trace.blocked_fraction() > 0.5
        ax.plot(trace.sent, trace.latency_ms, "o", markersize=3,
                color=BLOCKED_COLOR if blocked else FREE_COLOR, label=f"{trace.fast_path} latency")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title(name, fontsize=10, loc="left")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds since the first request (when each /fast request was sent)")
    fig.suptitle(title or "Does a heavy request slow everyone else down?")
    _footer(fig)
    return fig



def plot_spans(runs: dict[str, list[Span]], *, title: str = "When did each task run?") -> Figure:
    """One row per task, a bar from its start to its end; one panel per named run.

    Waits on one event loop show as bars stacked on top of each other (they overlap); CPU work on
    one loop shows as a staircase (each task waits for the one before).
    """
    fig = LabFigure(figsize=(8, 1.0 + 0.35 * sum(len(s) for s in runs.values()) + 0.6 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, spans) in zip(axes, runs.items()):
        for row, span in enumerate(spans):
            ax.barh(row, span.seconds, left=span.start, height=0.6, color=FREE_COLOR)
        ax.set_yticks(range(len(spans)), [span.label for span in spans], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_title(name, fontsize=10, loc="left")
    axes[-1].set_xlabel("seconds")
    fig.suptitle(title)
    _footer(fig)
    return fig
