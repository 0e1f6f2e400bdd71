"""Live meters update from the running loop; plots draw what was measured."""

from __future__ import annotations

import asyncio
import time

import pytest

from labkit import LoopProbe, NoRunningLoopError
from labkit.measure import LatencyTrace
from labkit.plots import plot_lag, plot_lag_histogram, plot_latency_trace
from labkit.widgets import CoreMeter, LagMeter


def test_lag_meter_shows_a_block_and_releases_its_probe():
    async def main():
        meter = LagMeter(refresh=0.02).start()
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # block the loop
        await asyncio.sleep(0.1)
        shown = meter._bar.value
        meter.stop()
        return shown, meter.probe.running, meter.running

    shown, probe_running, meter_running = asyncio.run(main())
    assert shown >= 100
    assert not probe_running and not meter_running


def test_lag_meter_leaves_a_borrowed_probe_running():
    async def main():
        probe = LoopProbe().start()
        with LagMeter(probe, refresh=0.02):
            await asyncio.sleep(0.05)
        still = probe.running
        probe.stop()
        return still

    assert asyncio.run(main())


def test_core_meter_stops_by_itself_after_its_duration():
    async def main():
        meter = CoreMeter(refresh=0.02, duration=0.1).start()
        await asyncio.sleep(0.3)
        return meter.running, [bar.value for bar in meter._bars]

    running, values = asyncio.run(main())
    assert not running
    assert all(0 <= v <= 100 for v in values)


def test_meters_need_the_kernel_loop():
    with pytest.raises(NoRunningLoopError):
        CoreMeter().start()


def test_meters_reject_a_nonsense_refresh():
    with pytest.raises(ValueError):
        CoreMeter(refresh=0)


def test_plots_draw_the_measurements():
    async def main():
        async with LoopProbe() as probe:
            await asyncio.sleep(0.05)
        return probe

    probe = asyncio.run(main())
    assert plot_lag(probe).axes[0].get_ylabel() == "lag (ms)"
    assert len(plot_lag_histogram({"idle": probe, "given": [1.0, 200.0]}).axes[0].patches) > 0
    trace = LatencyTrace(sent=(0.0, 0.1, 0.3), latency_ms=(1.0, 150.0, 1.0), heavy_start=0.05,
                         heavy_end=0.25, heavy_path="/hash", fast_path="/fast")
    fig = plot_latency_trace({"on the loop": trace, "again": trace})
    assert len(fig.axes) == 2
    assert trace.during() == [150.0]
    assert trace.blocked_fraction() == pytest.approx(0.75)
