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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import ScalarFormatter

from .cores import usable_cores
from .measure import CpuTimeline, LatencyTrace, Span, SweepResult
from .probe import LoopProbe

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from .load import LoadReport

__all__ = [
    "LabFigure", "plot_lag", "plot_lag_histogram", "plot_latency_trace", "plot_spans", "machine_label",
    "plot_worker_split", "plot_throughput", "plot_answers_timeline", "plot_pool_comparison", "plot_handoff",
    "plot_lost_updates", "plot_scaling", "plot_switches", "plot_cpu_timeline",
]

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


def _figure(width: float = 8, height: float = 3.2) -> tuple[LabFigure, Axes]:
    fig = LabFigure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _leave_room_for_footer(fig: Figure, height: float = 0.04) -> None:
    """Keep the bottom ``height`` of a constrained-layout figure free for :func:`_footer`'s line."""
    engine = fig.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine), "plots are made with layout='constrained'"
    engine.set(rect=(0, height, 1, 1 - height))


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
    bins = np.logspace(-2, np.log10(max(top, 1.0)) + 0.1, 40).tolist()
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
    height = 1.0 + 0.35 * sum(len(s) for s in runs.values()) + 0.6 * len(runs)
    fig = LabFigure(figsize=(8, height), layout="constrained")
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


def _answers_by_pid(run: LoadReport | Mapping[int, int]) -> dict[int, int]:
    per_pid = cast("Mapping[int, int]", getattr(run, "per_pid", run))  # a report's split, or the split itself
    return {int(pid): int(count) for pid, count in dict(per_pid).items()}


def plot_worker_split(
    runs: Mapping[str, LoadReport | Mapping[int, int]],
    *,
    labels: Mapping[int, str] | None = None,
    workers: int | None = None,
    title: str = "Which worker answered? Share of requests per worker process",
) -> LabFigure:
    """One panel per run (say, per balancing mode): each worker's share of the answers, as bars.

    ``runs`` maps a name to a :class:`~labkit.load.LoadReport` (its ``per_pid`` split is used, and
    its throughput is shown in the panel title) or to a plain ``{pid: answers}`` mapping.
    ``labels`` names pids (``{4711: "worker 1 (killed)"}``); others are labelled ``pid N``.
    ``workers`` is how many workers served: a worker that answered nothing has no pid in the
    split, so without it an idle worker would be invisible; with it, idle workers show as empty
    bars. A dashed line marks the fair share, 1/N of the answers for N workers.
    """
    fig = LabFigure(figsize=(max(8, 2.7 * len(runs)), 3.6), layout="constrained")
    _leave_room_for_footer(fig)
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for index, (ax, (name, run)) in enumerate(zip(axes, runs.items())):
        answers = _answers_by_pid(run)
        total = sum(answers.values())
        pids = sorted(answers)
        shares = [100 * answers[pid] / total if total else 0.0 for pid in pids]
        names = [(labels or {}).get(pid, f"pid {pid}") for pid in pids]
        idle = max((workers or 0) - len(pids), 0)
        shares += [0.0] * idle
        names += ["idle worker"] * idle
        bars = ax.bar(range(len(names)), shares, color=f"C{index}", width=0.6)
        ax.bar_label(bars, [f"{share:.0f}%" for share in shares], fontsize=8, padding=2)
        if names:
            ax.axhline(100 / len(names), color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15 if len(names) > 3 else 0)
        ax.set_xlabel("worker process")
        rate = getattr(run, "throughput", None)
        ax.set_title(name + (f"\n{rate:,.0f} answers/s" if rate is not None else ""), fontsize=10)
    axes[0].set_ylabel("share of answers (%)")
    axes[0].set_ylim(0, 112)
    fig.suptitle(title)
    fig.text(0.005, 0.005, "dashed line: the fair share, 1/N of the answers for N workers", ha="left",
             va="bottom", fontsize=7, color="grey")
    _footer(fig)
    return fig


def plot_throughput(
    groups: Mapping[str, Mapping[str, LoadReport | float]],
    *,
    title: str = "Throughput: one worker vs many",
    note: str = "",
) -> LabFigure:
    """One panel per endpoint, one bar per configuration: answers per second, with the speedup.

    ``groups`` maps an endpoint's name to ``{configuration: report or answers per second}``, for
    example ``{"/primes (CPU)": {"1 worker": r1, "2 workers": r2}}``. Each bar after the first is
    labelled with its ratio to the first ("x1.9"). Panels have their own scales, since a CPU-heavy
    endpoint answers orders of magnitude fewer requests than a waiting one. ``note`` is added to the
    footer (say, the parallelism the machine delivered during the run).
    """
    fig = LabFigure(figsize=(max(8, 3.6 * len(groups)), 3.6), layout="constrained")
    _leave_room_for_footer(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, configs) in zip(axes, groups.items()):
        rates = [float(cast(float, getattr(value, "throughput", value))) for value in configs.values()]
        bars = ax.bar(range(len(rates)), rates, color=[f"C{i}" for i in range(len(rates))], width=0.6)
        base = rates[0] if rates else 0.0
        texts = [f"{rate:,.0f}/s" + (f"\nx{rate / base:.2f}" if i and base > 0 else "")
                 for i, rate in enumerate(rates)]
        ax.bar_label(bars, texts, fontsize=8, padding=2)
        ax.set_xticks(range(len(rates)), list(configs), fontsize=9)
        ax.set_ylim(0, 1.3 * max(rates, default=1.0) or 1.0)
        ax.set_ylabel("answers per second")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    _footer(fig, note)
    return fig



# --------------------------------------------------------------------------------------------
# Worker pools and shared memory (labs 04 and 05)

#: One colour per kind of worker, the same in every figure of labs 04 and 05.
KIND_COLORS = {"serial": "#7f7f7f", "threads": "C0", "processes": "C1", "interpreters": "C2",
               "pickled": "C3", "shared": "C2"}


def plot_pool_comparison(
    speedups: Mapping[str, Mapping[str, float]],
    *,
    delivered: float | None = None,
    title: str = "One batch, three kinds of worker: speedup over running it serially",
) -> LabFigure:
    """Grouped bars: for each workload, how much faster each kind of pool ran the batch than one core.

    ``speedups`` maps a workload's name to ``{kind: speedup}``, for example
    ``{"pure Python (count_primes)": {"threads": 1.0, "processes": 1.9}}``; a kind missing from
    one workload leaves a gap. A solid line marks x1 (no gain over serial); a dashed line marks
    ``delivered``, the parallelism the machine gave when it was measured: the most any pool could
    reach at that moment.
    """
    fig, ax = _figure(8, 3.8)
    _leave_room_for_footer(fig)
    workloads = list(speedups)
    kinds = list(dict.fromkeys(kind for row in speedups.values() for kind in row))
    width = 0.8 / max(len(kinds), 1)
    top = 1.0
    for index, kind in enumerate(kinds):
        offset = (index - (len(kinds) - 1) / 2) * width
        values = [float(speedups[w].get(kind, float("nan"))) for w in workloads]
        bars = ax.bar([g + offset for g in range(len(workloads))], values, width * 0.9, label=kind,
                      color=KIND_COLORS.get(kind, f"C{index}"))
        ax.bar_label(bars, [f"x{v:.2f}" if v == v else "" for v in values], fontsize=8, padding=2)
        top = max([top, *(v for v in values if v == v)])
    ax.axhline(1.0, color="black", linewidth=1)
    if delivered is not None:
        ax.axhline(delivered, color="grey", linestyle="--", linewidth=1.2,
                   label=f"cores delivered when measured ({delivered:.2f})")
        top = max(top, delivered)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("speedup over serial (x)")
    ax.set_ylim(0, 1.3 * top)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    _footer(fig, "solid line: x1, no gain over one core")
    return fig


def plot_handoff(
    seconds: Mapping[str, float],
    extra_bytes: Mapping[str, Sequence[float]],
    *,
    array_bytes: int,
    title: str = "Handing one large array to every worker: copy or share?",
) -> LabFigure:
    """Two panels: the time to hand an array to the workers, and the memory each worker added.

    ``seconds`` maps a way of handing over (``"pickled"``, ``"shared"``) to the wall time it took
    for every worker to receive the array and read it; ``extra_bytes`` maps the same names to each
    worker's added private memory (USS) in bytes. A dashed line on the right marks the array's
    own size, ``array_bytes``: a worker holding a copy sits on or above it.
    """
    fig = LabFigure(figsize=(9, 3.6), layout="constrained")
    _leave_room_for_footer(fig)
    left, right = fig.subplots(1, 2)
    names = list(seconds)
    colors = [KIND_COLORS.get(name, f"C{i}") for i, name in enumerate(names)]
    times = [float(seconds[name]) for name in names]
    bars = left.bar(range(len(names)), times, color=colors, width=0.6)
    left.bar_label(bars, [f"{t * 1e3:,.0f} ms" for t in times], fontsize=8, padding=2)
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("time until every worker had read it (ms)")
    left.yaxis.set_major_formatter(lambda value, _: f"{value * 1e3:,.0f}")
    left.set_ylim(0, 1.25 * max(times, default=1.0) or 1.0)
    left.set_title("time", fontsize=10)
    mb = 1e6
    workers = max((len(extra_bytes.get(name, ())) for name in names), default=0)
    width = 0.8 / max(workers, 1)
    top = array_bytes / mb
    for index, name in enumerate(names):
        values = [float(b) / mb for b in extra_bytes.get(name, ())]
        xs = [index + (w - (len(values) - 1) / 2) * width for w in range(len(values))]
        drawn = right.bar(xs, values, width * 0.9, color=colors[index])
        right.bar_label(drawn, [f"{v:,.0f}" for v in values], fontsize=7, padding=2)
        top = max([top, *values])
    right.axhline(array_bytes / mb, color="grey", linestyle="--", linewidth=1.2,
                  label=f"the array itself ({array_bytes / mb:,.0f} MB)")
    right.set_xticks(range(len(names)), names)
    right.set_ylabel("extra private memory per worker (MB, USS)")
    right.set_ylim(0, 1.25 * top)
    right.set_title(f"memory: one bar per worker ({workers})", fontsize=10)
    right.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    _footer(fig)
    return fig


def plot_lost_updates(
    counts: Mapping[str, tuple[int, int]],
    *,
    title: str = "Workers adding 1 to a shared counter: how many additions survived?",
) -> LabFigure:
    """One bar per way of counting: the share of the increments that the counter really kept.

    ``counts`` maps a method (``"no lock"``, ``"a lock"``, ``"one slot per worker"``) to
    ``(final value, increments made)``. Methods may make different numbers of increments (a lock
    is slow, so it gets fewer); each bar is labelled with how many were lost of how many.
    """
    fig, ax = _figure(8, 3.4)
    _leave_room_for_footer(fig)
    names = list(counts)
    kept = [100 * counts[name][0] / counts[name][1] if counts[name][1] else 100.0 for name in names]
    lost = [counts[name][1] - counts[name][0] for name in names]
    colors = [BLOCKED_COLOR if n > 0 else FREE_COLOR for n in lost]
    bars = ax.bar(range(len(names)), kept, color=colors, width=0.55)
    ax.bar_label(bars, [f"{n:,} of {counts[name][1]:,} lost" if n > 0 else f"none of {counts[name][1]:,} lost"
                        for n, name in zip(lost, names)], fontsize=9, padding=2)
    ax.axhline(100, color="black", linestyle="--", linewidth=1.2, label="every increment kept")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("increments kept (%)")
    ax.set_ylim(0, 125)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper right", fontsize=8)
    _footer(fig)
    return fig




def plot_answers_timeline(
    samples: Sequence[tuple[float, int | None]],
    *,
    labels: Mapping[int, str] | None = None,
    marks: Mapping[str, float] | None = None,
    title: str = "Which worker answered each request, over time",
) -> LabFigure:
    """One dot per request: when it was sent (x) and which worker process answered it (row).

    ``samples`` are ``(seconds, pid)`` pairs, with ``pid`` ``None`` for a request that got no
    answer; those show as red crosses on a row of their own. Rows follow the order in which pids
    first answered, named by ``labels`` (``{4711: "worker 1 (killed)"}``) or ``pid N``. ``marks``
    draws a labelled vertical line at each named moment (``{"kill -9 worker 1": 1.5}``).
    """
    fig, ax = _figure(8, 3.4)
    _leave_room_for_footer(fig, 0.03)
    order: list[int] = []
    for _, pid in samples:
        if pid is not None and pid not in order:
            order.append(pid)
    failed_row = len(order)
    for index, pid in enumerate(order):
        times = [t for t, p in samples if p == pid]
        ax.plot(times, [index] * len(times), "o", markersize=4, color=f"C{index}")
    failures = [t for t, p in samples if p is None]
    ax.plot(failures, [failed_row] * len(failures), "x", markersize=7, color=BLOCKED_COLOR)
    names = [(labels or {}).get(pid, f"pid {pid}") for pid in order]
    ax.set_yticks(range(len(order) + 1), names + [f"no answer ({len(failures)})"], fontsize=8)
    ax.set_ylim(failed_row + 0.7, -0.7)
    for index, (name, moment) in enumerate((marks or {}).items()):
        ax.axvline(moment, color="grey", linestyle="--", linewidth=1)
        ax.annotate(name, (moment, -0.7), xytext=(3, -2 - 11 * index), textcoords="offset points",
                    fontsize=8, color="dimgrey", va="top")
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the start (when each request was sent)")
    ax.set_ylabel("answered by")
    ax.set_title(title)
    _footer(fig)
    return fig


def plot_scaling(*results: SweepResult, title: str = "Throughput against worker count") -> Figure:
    """Speedup against workers for one or more sweeps, with the ideal line and the usable cores.

    The ideal line is "n workers, n times as fast"; it ends at the usable cores, because past
    them there is no core left to give. The dotted line marks what the machine delivered when
    the (first) sweep began.
    """
    fig, ax = _figure(8, 3.6)
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
        ax.plot(workers, [p.throughput / base for p in result.points], "o-",
                label=f"{result.label} ({result.kind} pool)")
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


def plot_switches(*results: SweepResult, title: str = "Context switches against worker count") -> Figure:
    """Involuntary context switches per task at each worker count: the cost of too many workers."""
    fig, ax = _figure(8, 3.6)
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


def plot_cpu_timeline(timeline: CpuTimeline, *, title: str = "Which cores did the work?") -> Figure:
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


def _plain() -> ScalarFormatter:
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    return formatter
