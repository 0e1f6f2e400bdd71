"""Lab 08's Dask dashboard, opened in the headless Chromium of the browser tests and photographed.

A :class:`~labkit.dask_cluster.DaskCluster` runs a stream of tasks while Chromium opens the
scheduler's dashboard: the status page must draw its plots (bokeh) and name the task that runs.
The picture goes to ``dask_dashboard.png`` in the pictures dir (``LABKIT_E2E_SCREENSHOTS=docs/img``
refreshes the README's copy).
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("distributed")
pytest.importorskip("bokeh")

# The dashboard loads bokeh's JavaScript and opens a websocket before it draws: seconds on a busy machine.
DRAW_TIMEOUT_MS = 60_000
# How long the plots get to fill with the running tasks before the picture is taken.
FILL_SECONDS = 3.0

# The titles of the status page's plots, from bokeh's document in the page.
PLOT_TITLES = """() => (window.Bokeh ? Bokeh.documents : []).flatMap(
    doc => doc.roots().map(root => (root.title && root.title.text) || ""))"""
# True once the progress plot counts at least one task.
PROGRESS_SHOWN = """() => (window.Bokeh ? Bokeh.documents : []).some(doc => doc.roots().some(
    root => root.title && /Progress -- total: [1-9]/.test(root.title.text)))"""


# Each task computes for this long: long enough to draw as a bar in the task stream. The task is
# labkit's `spin`, importable in the workers (a function of this test module would not be).
TASK_SECONDS = 0.05


def test_the_dask_dashboard_draws_the_running_tasks_and_is_photographed(browser, pictures_dir):
    from distributed import Client

    from labkit.dask_cluster import DaskCluster
    from labkit.workloads import spin

    stop = threading.Event()
    with DaskCluster(2) as cluster, Client(cluster.address, set_as_default=False) as client:

        def keep_busy() -> None:
            while not stop.is_set():
                client.gather(client.map(spin, [TASK_SECONDS] * 16, pure=False))
            # (stopped before the cluster closes, so no batch is cut off)

        feeder = threading.Thread(target=keep_busy, name="dashboard-feeder", daemon=True)
        feeder.start()
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.goto(cluster.dashboard_link, wait_until="load", timeout=DRAW_TIMEOUT_MS)
            page.wait_for_selector("canvas", state="attached", timeout=DRAW_TIMEOUT_MS)
            # Bokeh draws on canvases, so the plots' titles are read from its document, not the DOM.
            # The progress plot's title counts the tasks once the first batch reached the scheduler.
            page.wait_for_function(PROGRESS_SHOWN, timeout=DRAW_TIMEOUT_MS)
            time.sleep(FILL_SECONDS)
            titles = page.evaluate(PLOT_TITLES)
            assert "Dask" in page.title()
            target = pictures_dir / "dask_dashboard.png"
            page.screenshot(path=str(target), animations="disabled")
        finally:
            context.close()
            stop.set()
            feeder.join(timeout=30)
    assert "Task Stream" in titles, f"the status page drew no task stream; its plots: {titles}"
    assert target.stat().st_size > 20_000, "the screenshot is nearly empty: the dashboard did not draw"
