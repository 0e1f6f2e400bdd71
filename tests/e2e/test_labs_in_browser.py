"""Every lab, run in JupyterLab in a real browser, as a student would run it.

For each notebook in ``notebooks/`` the test opens JupyterLab in headless Chromium, clears the
outputs, chooses Run > Run All Cells, and waits until the kernel is idle. Then it checks what the
student would see:

- every code cell ran (has an execution count) and none shows an error;
- every widget rendered: no "Error displaying widget", no "model not found", no widget stuck at
  "Loading widget...", no error view for a widget class the browser could not load;
- the live meters the lab is meant to show (``LABS`` below) kept changing on screen while it ran.

Along the way it photographs each lab's meters at their busiest and its key figures, into
``$LABKIT_E2E_SCREENSHOTS`` or a temporary dir. Problems are reported with the notebook and the cell
(counted from 1, as JupyterLab's status bar counts them).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from .conftest import REPO, JupyterLabServer

try:
    from playwright.sync_api import TimeoutError as PageTimeout
except ImportError:  # the browser tests skip; the others still run
    PageTimeout = TimeoutError

LAB_NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# The live views of labkit.widgets, by the title each one shows at its top (the start of it, for
# the ClusterMonitor, whose title goes on with the app and its address).
METERS = {"LagMeter": "Event-loop lag", "CoreMeter": "CPU load per core", "ClusterMonitor": "Cluster workers"}


@dataclass(frozen=True)
class LabExpectations:
    """What a lab must show in the browser beyond running cleanly, and what to photograph.

    ``moving`` names the meters (keys of :data:`METERS`) that must change on screen while the lab
    runs; each is photographed at its busiest. ``plots`` maps a picture name to a piece of the code
    of the cell whose figure to photograph.
    """

    moving: tuple[str, ...] = ()
    plots: dict[str, str] = field(default_factory=dict)


# The one place that says, per lab, which widgets must move and which figures are its pictures.
# A lab not listed here is still run and checked; it just has no moving widgets or pictures.
LABS: dict[str, LabExpectations] = {
    "00_your_machine": LabExpectations(moving=("CoreMeter",)),
    "01_event_loop_blocking": LabExpectations(
        moving=("LagMeter",), plots={"latency-trace": "plot_latency_trace(", "loop-lag": "plot_lag("}),
    "02_cluster_mode": LabExpectations(moving=("ClusterMonitor",), plots={"throughput": "plot_throughput("}),
    "03_crash_isolation": LabExpectations(moving=("ClusterMonitor",), plots={"answers": "plot_answers_timeline("}),
    "04_worker_pools_and_the_gil": LabExpectations(plots={"pools": "plot_pool_comparison("}),
    "05_shared_memory": LabExpectations(plots={"handoff": "plot_handoff("}),
    "06_cores_equals_workers": LabExpectations(plots={"scaling": "plot_scaling("}),
    "07_cluster_plus_workers": LabExpectations(plots={"latency-trace": "plot_latency_trace("}),
}

# Timeouts are generous: the machine running the tests may be small and shared.
PAGE_TIMEOUT_MS = 120_000  # JupyterLab's page, and a fresh kernel, ready
RUN_TIMEOUT_S = 420.0  # each lab runs in under a minute on a laptop
SETTLE_TIMEOUT_MS = 60_000  # widgets and figures drawn once the kernel is idle
POLL_MS = 250  # how often a wait in the page looks again; a meter refreshes every 250-500 ms
# A meter that changed at least twice was still moving after its first update.
MIN_METER_PICTURES = 3
# A meter is photographed again only when its bars fill this many percentage points more.
PEAK_MARGIN = 5.0
VIEWPORT = {"width": 1280, "height": 900}
# Room for JupyterLab's menu, toolbars and status bar around a picture.
VIEWPORT_MARGIN = 300

# Installed in every page before JupyterLab loads: small queries the test's waits and checks use,
# and a watcher that records each distinct picture of the meters the moment the DOM changes.
PAGE_HELPERS = r"""
window.labkitE2E = (() => {
  const OUTPUT = '.jp-OutputArea-output';
  const LOADING = 'Loading widget';  // what a widget output shows until its view is drawn
  const BROKEN_TEXT = ['Error displaying widget', 'model not found'];
  const cells = () => [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
  const codeCells = () => cells().filter(cell => cell.classList.contains('jp-CodeCell'));
  const prompt = cell => (cell.querySelector('.jp-InputArea-prompt')?.textContent ?? '').trim();
  const blank = text => /^\[\s*\]:?$/.test(text);
  const kernel = () => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status ?? 'unknown';
  // Until its session starts, a notebook shows "No Kernel" and, misleadingly, an idle indicator.
  const kernelName = () => document.querySelector('.jp-Toolbar-kernelName')?.getAttribute('aria-label') ?? 'No Kernel';
  const dialog = () => document.querySelector('.jp-Dialog')?.innerText.replace(/\s+/g, ' ').trim() ?? null;
  let meters = {};
  let warmedUp = 0;
  let observer = null;

  function findMeter(title) {
    return [...document.querySelectorAll('.jp-Notebook .widget-vbox')]
      .find(box => (box.firstElementChild?.textContent ?? '').trim().startsWith(title)) ?? null;
  }

  // How full a meter's bars are, in percent each: progress widgets, and bars drawn in its HTML.
  const BARS = '.progress-bar, .widget-html-content [style*="width"]';
  const barWidths = box => [...box.querySelectorAll(BARS)]
    .filter(bar => bar.style.width.endsWith('%')).map(bar => parseFloat(bar.style.width) || 0);

  function look() {
    for (const [name, meter] of Object.entries(meters)) {
      const box = findMeter(meter.title);
      if (!box) continue;
      if (box.dataset.labkitMeter !== name) box.dataset.labkitMeter = name;
      const bars = barWidths(box);
      const picture = bars.join(',') + '|' + box.textContent;
      if (picture !== meter.last) { meter.last = picture; meter.pictures += 1; }
      // Its first pictures show a meter starting up; how full it is counts only after those.
      meter.fill = meter.pictures >= warmedUp ? bars.reduce((a, b) => a + b, 0) : -1;
      meter.cell = cells().findIndex(cell => cell.contains(box));
    }
  }

  return {
    cleared: () => codeCells().every(cell => blank(prompt(cell))),
    kernelReady: () => kernelName() !== 'No Kernel' && kernel() === 'idle',
    // Run All marks every queued cell [*]; the run is over once none is left and the kernel is idle.
    finished() {
      const prompts = codeCells().map(prompt);
      const started = prompts.length === 0 || prompts.some(text => !blank(text));
      return started && kernel() === 'idle' && !prompts.some(text => text.includes('*'));
    },
    running: () => cells().flatMap((cell, index) => prompt(cell).includes('*') ? [index] : []),
    watch(titles, warmUpPictures) {
      warmedUp = warmUpPictures;
      meters = Object.fromEntries(Object.entries(titles).map(
        ([name, title]) => [name, {title, pictures: 0, last: null, fill: -1, cell: -1}]));
      observer?.disconnect();
      observer = new MutationObserver(look);
      observer.observe(document.body, {subtree: true, childList: true, characterData: true,
                                       attributes: true, attributeFilter: ['style']});
    },
    // null while nothing new happened (so a wait goes on); else whether the run is over and which
    // meters fill more than the thresholds they were given.
    // A dialog (say, "Select Kernel") stops the run until someone answers it: that ends the wait too.
    progress(thresholds) {
      look();
      const busier = Object.keys(meters).filter(name => meters[name].fill > thresholds[name]);
      const done = this.finished();
      const blocked = dialog();
      return done || blocked || busier.length ? {done, blocked, busier, fill: Object.fromEntries(
        Object.entries(meters).map(([name, meter]) => [name, meter.fill]))} : null;
    },
    unwatch() {
      observer?.disconnect();
      look();
      return Object.fromEntries(Object.entries(meters).map(
        ([name, meter]) => [name, {pictures: meter.pictures, cell: meter.cell}]));
    },
    loading: () => [...document.querySelectorAll('.jp-Notebook ' + OUTPUT)].some(
      out => out.textContent.trim().startsWith(LOADING)),
    // [cell index, what is wrong] for every widget that did not render.
    widgetProblems() {
      const found = [];
      cells().forEach((cell, index) => {
        for (const error of cell.querySelectorAll('.jupyter-widgets-error-widget')) {
          // The error view hides its message until clicked, as a person would click it.
          if (error.classList.contains('icon-error')) error.parentElement.click();
          const message = error.textContent.split('\n').map(line => line.trim())
            .find(line => line && !line.startsWith('[Open Browser Console')) ?? 'no message';
          found.push([index, 'a widget failed to render: ' + message.slice(0, 200)]);
        }
        for (const out of cell.querySelectorAll(OUTPUT)) {
          if (out.textContent.trim().startsWith(LOADING)) {
            found.push([index, 'a widget never rendered (still "Loading widget...")']);
          }
        }
        const text = [...cell.querySelectorAll('.jp-OutputArea')].map(area => area.textContent).join('\n');
        for (const line of text.split('\n')) {
          if (BROKEN_TEXT.some(bad => line.includes(bad))) {
            found.push([index, 'shows ' + JSON.stringify(line.trim().slice(0, 200))]);
          }
        }
      });
      const outside = document.body.innerText.split('\n').filter(
        line => BROKEN_TEXT.some(bad => line.includes(bad)) && !cells().some(cell => cell.innerText.includes(line)));
      for (const line of outside) found.push([-1, 'the page shows ' + JSON.stringify(line.trim().slice(0, 200))]);
      return found;
    },
    figureCount: index => cells()[index]?.querySelectorAll('.jp-OutputArea-output img').length ?? 0,
  };
})();
"""


@dataclass
class LabReport:
    """What one notebook did in the browser.

    ``problems`` is empty when everything a student would see was right; ``pictures`` lists the
    screenshots taken; ``kernel_processes`` the pids of the kernel and its descendants, all of
    which were gone (or killed and reported) when the report was made.
    """

    notebook: str
    problems: list[str] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    kernel_processes: list[int] = field(default_factory=list)


def first_line(source: str) -> str:
    """The first non-blank, non-comment line of a cell, shortened: how a reader spots the cell."""
    lines = [line.strip() for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    text = lines[0] if lines else source.strip()
    return text if len(text) <= 60 else text[:57] + "..."


class LabInBrowser:
    """One notebook, opened in its own browser context, cleared, run top to bottom and inspected."""

    def __init__(self, server: JupyterLabServer, browser, path: str, expect: LabExpectations, pictures_dir: Path):
        self.server = server
        self.browser = browser
        self.path = path
        self.name = Path(path).name
        self.stem = Path(path).stem
        self.expect = expect
        self.pictures_dir = pictures_dir
        self.report = LabReport(self.name)
        cells = json.loads((server.root / path).read_text(encoding="utf-8"))["cells"]
        self.sources = ["".join(cell["source"]) for cell in cells]
        self.page = None

    def run(self) -> LabReport:
        """Run the notebook and return what was wrong; the kernel and its children are gone after."""
        context = self.browser.new_context(viewport=VIEWPORT)
        try:
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            context.add_init_script(PAGE_HELPERS)
            self.page = context.new_page()
            self._open()
            self._clear_and_run_all()
            stopped = self._follow_run()
            moved = self.page.evaluate("labkitE2E.unwatch()")
            if stopped:
                self._problem(None, stopped)
                self.page.keyboard.press("Escape")  # close a dialog, if any, so the notebook can be saved
            self._let_widgets_settle()
            for index, what in self.page.evaluate("labkitE2E.widgetProblems()"):
                self._problem(index if index >= 0 else None, what)
            self._check_meters(moved)
            self._save()
            saved = self.server.api("GET", f"/api/contents/{self.path}?type=notebook&content=1")
            self._check_cells(saved["content"]["cells"])
            self._photograph_plots()
        except PageTimeout as error:
            self._problem(None, f"JupyterLab stopped responding as expected: {str(error).splitlines()[0]}")
        finally:
            context.close()
            pids, left = self.server.shut_down_kernels(self.path)
            self.report.kernel_processes = pids
            if left:
                self._problem(None, "left running after its kernel shut down (killed): " + "; ".join(left))
        return self.report

    # -- driving JupyterLab ------------------------------------------------------------------

    def _open(self) -> None:
        workspace = re.sub(r"[^A-Za-z0-9]+", "-", f"e2e-{self.stem}")
        self.page.goto(self.server.lab_url(self.path, workspace))
        self.page.wait_for_selector(".jp-Notebook .jp-Cell")
        self.page.wait_for_function("labkitE2E.kernelReady()", polling=POLL_MS)

    def _menu(self, menu: str, item: str) -> None:
        """Choose ``menu > item`` from JupyterLab's menu bar, as a person would."""
        self.page.get_by_role("menuitem", name=menu, exact=True).click()
        # An item's accessible name ends with its shortcut, if it has one: "Save Notebook Ctrl+S".
        self.page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}(\s+\S*\+\S*)?$")).click()

    def _clear_and_run_all(self) -> None:
        # Clearing first makes "every cell has an execution count" mean "ran in this session".
        self._menu("Edit", "Clear Outputs of All Cells")
        self.page.wait_for_function("labkitE2E.cleared()", polling=POLL_MS)
        titles = {name: METERS[name] for name in self.expect.moving}
        self.page.evaluate("([titles, warmUp]) => labkitE2E.watch(titles, warmUp)", [titles, MIN_METER_PICTURES])
        self._menu("Run", "Run All Cells")

    def _follow_run(self) -> str | None:
        """Wait for the run to end, photographing each meter whenever it is busier than before.

        Returns None when the run finished, else what stopped it.
        """
        thresholds = {name: -1.0 for name in self.expect.moving}
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                state = self.page.wait_for_function("t => labkitE2E.progress(t)", arg=thresholds,
                                                    polling=POLL_MS, timeout=left * 1000).json_value()
            except PageTimeout:
                break
            for name in state["busier"]:
                self._photograph(f'[data-labkit-meter="{name}"]', name.lower())
                thresholds[name] = state["fill"][name] + PEAK_MARGIN
            if state["blocked"]:
                return f"a dialog stopped the run: {state['blocked']!r}"
            if state["done"]:
                return None
        running = self.page.evaluate("labkitE2E.running()")
        return (f"the run did not finish within {RUN_TIMEOUT_S:.0f} s; still running: "
                + (", ".join(self._where(i) for i in running) or "no cell (is the kernel busy?)"))

    def _let_widgets_settle(self) -> None:
        try:
            self.page.wait_for_function("!labkitE2E.loading()", polling=POLL_MS, timeout=SETTLE_TIMEOUT_MS)
        except PageTimeout:
            pass  # what is still loading is reported as a widget problem

    def _save(self) -> None:
        self._menu("File", "Save Notebook")
        self.page.wait_for_function("!document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", polling=POLL_MS)

    # -- checking ----------------------------------------------------------------------------

    def _where(self, index: int | None) -> str:
        if index is None or index >= len(self.sources):
            return self.name if index is None else f"{self.name}, cell {index + 1}"
        return f"{self.name}, cell {index + 1} `{first_line(self.sources[index])}`"

    def _problem(self, index: int | None, what: str) -> None:
        self.report.problems.append(f"{self._where(index)}: {what}")

    def _check_cells(self, cells: list[dict]) -> None:
        not_run = []
        for index, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            for output in cell.get("outputs", []):
                if output["output_type"] == "error":
                    self._problem(index, f"raised {output['ename']}: {output['evalue']}")
            if cell.get("execution_count") is None:
                not_run.append(index)
        if not_run:
            listed = ", ".join(str(i + 1) for i in not_run)
            cells_word = "cell" if len(not_run) == 1 else "cells"
            self._problem(None, f"{cells_word} {listed} did not run (no execution count; Run All stops at an error)")

    def _check_meters(self, moved: dict) -> None:
        for name in self.expect.moving:
            seen = moved[name]
            if seen["pictures"] == 0:
                self._problem(None, f"no {name} appeared on screen (looked for one titled {METERS[name]!r})")
            elif seen["pictures"] < MIN_METER_PICTURES:
                self._problem(seen["cell"], f"the {name} did not move while the lab ran: it showed only "
                                            f"{seen['pictures']} distinct picture(s) of {MIN_METER_PICTURES} wanted")

    # -- pictures ----------------------------------------------------------------------------

    def _photograph(self, selector: str, name: str) -> None:
        target = self.pictures_dir / f"{self.stem}-{name}.png"
        element = self.page.locator(selector).first
        box = element.bounding_box()
        viewport = self.page.viewport_size
        if box and box["height"] + VIEWPORT_MARGIN > viewport["height"]:
            # A tall figure fits the notebook's visible area only in a taller window.
            self.page.set_viewport_size({"width": viewport["width"], "height": int(box["height"]) + VIEWPORT_MARGIN})
        element.screenshot(path=str(target), animations="disabled")
        if target not in self.report.pictures:
            self.report.pictures.append(target)

    def _photograph_plots(self) -> None:
        for name, code in self.expect.plots.items():
            index = next((i for i, source in enumerate(self.sources) if code in source), None)
            if index is None:
                self._problem(None, f"no cell contains {code!r}, whose figure is the picture {name!r}")
            elif self.page.evaluate("i => labkitE2E.figureCount(i)", index) == 0:
                self._problem(index, f"shows no figure (wanted for the picture {name!r})")
            else:
                selector = f".jp-Notebook .jp-Cell >> nth={index} >> .jp-OutputArea-output img >> nth=-1"
                self._photograph(selector, name)


def run_notebook(server: JupyterLabServer, browser, path: str, pictures_dir: Path) -> LabReport:
    """Run the notebook at ``path`` (relative to the server's root) in the browser; report on it."""
    expect = LABS.get(Path(path).stem, LabExpectations())
    return LabInBrowser(server, browser, path, expect, pictures_dir).run()


def still_running(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still alive (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", LAB_NOTEBOOKS, ids=[p.stem for p in LAB_NOTEBOOKS])
def test_lab_runs_in_jupyterlab_with_live_widgets_and_no_errors(notebook, jupyter_lab, browser, pictures_dir):
    report = run_notebook(jupyter_lab, browser, f"notebooks/{notebook.name}", pictures_dir)
    assert not report.problems, "in the browser:\n  " + "\n  ".join(report.problems)
    assert not still_running(report.kernel_processes), f"{notebook.name}: its kernel or children outlived the test"


def test_a_broken_lab_fails_naming_the_notebook_and_each_broken_cell(jupyter_lab, browser, tmp_path):
    report = run_notebook(jupyter_lab, browser, "fixtures/broken_lab.ipynb", tmp_path)
    text = "\n".join(report.problems)
    # Cells, counted from 1: 2 starts a stray child, 3 shows a widget without a model, 4 a widget
    # whose frontend module does not exist, 5 raises, 6 never runs.
    assert "broken_lab.ipynb, cell 3 `display(`" in text and "model not found" in text, text
    assert "broken_lab.ipynb, cell 4 `import ipywidgets`" in text and "labkit-e2e-missing-module" in text, text
    assert "broken_lab.ipynb, cell 5 `raise RuntimeError(" in text and "fails on purpose" in text, text
    assert "broken_lab.ipynb: cell 6 did not run" in text, text
    assert len(report.kernel_processes) >= 2, "the kernel and its stray child should have been tracked"
    assert not still_running(report.kernel_processes), "the failed lab's kernel or its stray child is still running"


def test_every_lab_that_shows_a_live_meter_expects_it_to_move():
    for notebook in LAB_NOTEBOOKS:
        code = notebook.read_text(encoding="utf-8")
        used = {name for name in METERS if f"{name}(" in code}
        declared = set(LABS.get(notebook.stem, LabExpectations()).moving)
        missing = sorted(used - declared)
        assert not missing, f"{notebook.name} shows {missing}: list them in LABS[{notebook.stem!r}].moving"
