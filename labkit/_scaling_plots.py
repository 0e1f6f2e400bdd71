"""Figures for scaling sweeps and CPU timelines (re-exported by :mod:`labkit.plots`)."""

from __future__ import annotations

from ._sweep import SweepResult
from ._timeline import CpuTimeline

__all__ = ["plot_scaling", "plot_switches", "plot_cpu_timeline"]


def _figure(width: float = 8, height: float = 3.6):
    from .plots import LabFigure

    fig = LabFigure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _footer(fig, extra: str = "") -> None:
    from .plots import _footer as footer

    footer(fig, extra)


def plot_scaling(*results: SweepResult, title: str = "Throughput against worker count") -> object:
    """Speedup against workers for one or more sweeps, with the ideal line and the usable cores.

    The ideal line is "n workers, n times as fast"; it ends at the usable cores, because past
    them there is no core left to give. The dotted line marks what the machine delivered when
    the (first) sweep began.
    """
    fig, ax = _figure()
    top = max(p.workers for r in results for p in r.points)
    usable = results[0].usable
    ax.plot([1, usable, top], [1, usable, usable], "--", color="grey", linewidth=1, label="ideal: one worker per core")
    ax.axvline(usable, color="grey", linestyle=":", linewidth=1)
    ax.text(usable, 0.02, f" {usable} usable cores", transform=ax.get_xaxis_transform(), color="grey", fontsize=8)
    ax.axhline(results[0].delivered, color="#2ca02c", linestyle=":", linewidth=1,
               label=f"cores delivered at the start ({results[0].delivered:.1f})")
    for result in results:
        base = result.points[0].throughput
        workers = [p.workers for p in result.points]
        ax.plot(workers, [p.throughput / base for p in result.points], "o-", label=f"{result.label} ({result.kind} pool)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p.workers for r in results for p in r.points}))
    ax.get_xaxis().set_major_formatter(_plain())
    ax.set_xlabel("workers (log scale)")
    ax.set_ylabel("speedup over the first point (x)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    _footer(fig)
    return fig


def plot_switches(*results: SweepResult, title: str = "Context switches against worker count") -> object:
    """Involuntary context switches per task at each worker count: the cost of too many workers."""
    fig, ax = _figure()
    for result in results:
        workers = [p.workers for p in result.points]
        ax.plot(workers, [p.involuntary_switches / result.tasks for p in result.points], "o-",
                label=f"{result.label} ({result.kind} pool)")
    usable = results[0].usable
    ax.axvline(usable, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({p.workers for r in results for p in r.points}))
    ax.get_xaxis().set_major_formatter(_plain())
    ax.set_xlabel("workers (log scale)")
    ax.set_ylabel("involuntary switches per task")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _footer(fig)
    return fig


def plot_cpu_timeline(timeline: CpuTimeline, *, title: str = "Which cores did the work?") -> object:
    """A heat map: one row per logical CPU, time to the right, darker where the core was busier."""
    import numpy as np

    fig, ax = _figure(height=1.2 + 0.35 * max(timeline.cores, 1))
    if timeline.loads:
        data = np.array(timeline.loads).T
        step = timeline.times[1] - timeline.times[0] if len(timeline.times) > 1 else 0.1
        image = ax.imshow(data, aspect="auto", cmap="Oranges", vmin=0, vmax=100, interpolation="nearest",
                          extent=(timeline.times[0] - step, timeline.times[-1], timeline.cores - 0.5, -0.5))
        fig.colorbar(image, ax=ax, label="load (%)")
    ax.set_yticks(range(timeline.cores), [f"cpu {i}" for i in range(timeline.cores)])
    ax.set_xlabel("seconds")
    ax.set_title(title)
    _footer(fig)
    return fig


def _plain():
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    return formatter
