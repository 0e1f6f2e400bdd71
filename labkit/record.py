"""Saved runs as evidence: each measurement leaves a record, and a notebook is recorded only when they hold.

The committed notebooks are the first thing a student reads. A saved run that shows x1.01 "with
0.49 cores delivered" and then ``True`` under it is honest, and teaches nothing. So a lab cell that
measures a claim of the course also calls :func:`evidence`, which leaves a machine-readable record
in the cell's output: the claim, the value measured, the band that counts as showing the claim,
and the parallelism the machine delivered at that moment. The record is invisible in JupyterLab
(an empty output whose metadata carries it) and nbval does not compare output metadata, so it
never makes a notebook fail.

The recording command runs notebooks and writes them back only when every record holds::

    python -m labkit.record notebooks/ solutions/

For each notebook it starts a fresh kernel in the notebook's folder, runs every cell, and refuses
to write the notebook back when any record shows its claim not shown (the value outside its band,
or fewer than :data:`MIN_DELIVERED_SHARE` of the usable cores delivered) or an output says that an
experiment could not show its effect. Accepted records are copied into each cell's metadata
(``labkit.evidence``), where ``tests/test_evidence.py`` reads them: CI rejects a notebook recorded
on a busy machine. Record on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Evidence", "evidence", "records_in", "stored_records", "could_not_show", "stored_problems",
           "record_notebook", "main", "EVIDENCE_KEY", "MIN_DELIVERED_SHARE", "COULD_NOT_SHOW"]

#: Metadata key under which an output carries its record, and a cell keeps its records.
EVIDENCE_KEY = "labkit.evidence"

#: A saved run counts only if the machine delivered at least this share of its usable cores.
MIN_DELIVERED_SHARE = 0.9

#: Phrases with which a lab admits that a run could not show its effect; a saved run has none.
#: The last is how :func:`labkit.measure.judge_speedup` says that too few cores were delivered.
COULD_NOT_SHOW = ("could not show", "cannot show", "too few to show")


@dataclass(frozen=True)
class Evidence:
    """One measurement of one claim, as a saved run shows it.

    Attributes:
        claim: the claim's id in the course map (``"C10"``) and a short name, e.g.
            ``"C10 pure Python on processes"``.
        what: what was measured, in words, with its unit (``"speedup over serial (x)"``).
        value: the measured value.
        low, high: the band within which the value shows the claim on the recording machine
            (``None`` for an open end). Choose it per claim, reachable on a 2-core machine.
        delivered: the cores' worth of CPU the machine delivered when it was measured.
        usable: the usable cores of the machine (:func:`labkit.usable_cores`).
    """

    claim: str
    what: str
    value: float
    low: float | None
    high: float | None
    delivered: float
    usable: int

    @property
    def in_band(self) -> bool:
        """Whether the value lies in its band."""
        if not math.isfinite(self.value):
            return False
        return (self.low is None or self.value >= self.low) and (self.high is None or self.value <= self.high)

    @property
    def machine_was_free(self) -> bool:
        """Whether the machine delivered at least :data:`MIN_DELIVERED_SHARE` of its usable cores."""
        return self.delivered >= MIN_DELIVERED_SHARE * self.usable

    @property
    def shows_claim(self) -> bool:
        """Whether this record counts as evidence: a free machine, and the value in its band."""
        return self.in_band and self.machine_was_free

    def problem(self) -> str | None:
        """Why the record does not count, in one sentence; ``None`` when it does."""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        band = f"[{low}, {high}]"
        outside = f"{self.what} was {self.value:.3g}, outside {band}"
        if not self.machine_was_free:
            busy = (f"{self.claim}: the machine delivered {self.delivered:.2f} of {self.usable} usable cores "
                    f"(needs {MIN_DELIVERED_SHARE:.0%}): record on an idle machine")
            return busy if self.in_band else f"{busy}; and {outside}"
        if not self.in_band:
            return f"{self.claim}: {outside}"
        return None

    def _ipython_display_(self) -> None:
        # A record is invisible in a notebook, also when a cell ends with evidence(...): its repr
        # holds raw measurements, which must never reach an output that nbval compares.
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        """A record read back from a notebook's JSON."""
        return cls(str(data["claim"]), str(data["what"]), float(data["value"]),
                   None if data.get("low") is None else float(data["low"]),
                   None if data.get("high") is None else float(data["high"]),
                   float(data["delivered"]), int(data["usable"]))


def evidence(claim: str, what: str, value: float, *, delivered: float, low: float | None = None,
             high: float | None = None) -> Evidence:
    """Record that this cell measured ``claim``; return the record.

    In a notebook the record goes into an invisible output of the current cell; elsewhere
    nothing is shown. Call it with the value the cell's verdict judged, the band that shows the
    claim, and the parallelism delivered when the value was measured (for example
    ``labkit.measure_parallelism().delivered``).
    """
    from .cores import usable_cores
    from .errors import ConfigurationError

    if low is not None and high is not None and low > high:
        raise ConfigurationError(f"{claim}: the band's low end ({low:g}) is above its high end ({high:g})")
    record = Evidence(claim, what, float(value), low, high, float(delivered), usable_cores().usable)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return record
    if get_ipython() is not None:
        display({"text/plain": ""}, raw=True, metadata={EVIDENCE_KEY: asdict(record)})
    return record


def records_in(cell: Any) -> list[Evidence]:
    """The records a cell's outputs carry (a cell of a freshly run notebook)."""
    found = []
    for output in cell.get("outputs", ()):
        data = (output.get("metadata") or {}).get(EVIDENCE_KEY)
        if isinstance(data, dict):
            found.append(Evidence.from_dict(data))
    return found


def stored_records(cell: Any) -> list[Evidence]:
    """The records the recording command kept in a cell's metadata (``labkit`` → ``evidence``)."""
    kept = ((cell.get("metadata") or {}).get("labkit") or {}).get("evidence") or []
    return [Evidence.from_dict(data) for data in kept if isinstance(data, dict)]


def could_not_show(cell: Any) -> str | None:
    """The first output line of ``cell`` that admits an effect was not shown, if any."""
    for output in cell.get("outputs", ()):
        texts = [output.get("text", "")]
        texts += [str(v) for k, v in (output.get("data") or {}).items() if k == "text/plain"]
        for text in texts:
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if any(phrase in line.lower() for phrase in COULD_NOT_SHOW):
                    return line.strip()
    return None


def stored_problems(notebook: Any) -> list[str]:
    """Why a saved notebook does not count as evidence, one line per problem; empty when it does.

    Reads what the recording command stored: each code cell's records (:func:`stored_records`)
    and its outputs (:func:`could_not_show`). ``notebook`` is the notebook's JSON as a dict (or
    an ``nbformat`` node). A notebook without any record has no problem here: whether it should
    carry records is the caller's question.
    """
    problems = []
    for index, cell in enumerate(notebook.get("cells", ())):
        if cell.get("cell_type") != "code":
            continue
        problems += [f"cell {index}: {p}" for p in (r.problem() for r in stored_records(cell)) if p]
        admitted = could_not_show(cell)
        if admitted:
            problems.append(f"cell {index}: the saved run says {admitted!r}")
    return problems


def record_notebook(path: Path, *, timeout: float = 600, write: bool = True) -> list[str]:
    """Run ``path`` in a fresh kernel; write it back if every record holds. Returns the problems.

    An empty list means the notebook was recorded (or, with ``write=False``, would have been).
    A run that fails (a cell raises, the kernel dies, a cell times out) is a problem too, and the
    file is left as it was.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    # No per-cell timestamps: a recorded notebook differs from the last recording only in what it measured.
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        if isinstance(exc, CellExecutionError):
            detail = f"a cell raised {exc.ename}: {exc.evalue}"
        else:
            detail = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or ['no details'])[0]}"
        return [f"the run failed, {detail}"]
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        records = records_in(cell)
        problems += [f"cell {index}: {p}" for p in (r.problem() for r in records) if p]
        admitted = could_not_show(cell)
        if admitted:
            problems.append(f"cell {index}: the run says {admitted!r}")
        labkit_meta = dict(cell.metadata.get("labkit", {}))
        labkit_meta.pop("evidence", None)
        if records:
            labkit_meta["evidence"] = [asdict(r) for r in records]
        if labkit_meta:
            cell.metadata["labkit"] = labkit_meta
        else:
            cell.metadata.pop("labkit", None)
    if not problems and write:
        nbformat.write(notebook, path)
    return problems


def _notebooks(paths: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        found += sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labkit.record PATHS...``: record notebooks whose every measurement shows its claim."""
    parser = argparse.ArgumentParser(prog="python -m labkit.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="notebooks, or folders of them")
    parser.add_argument("--dry-run", action="store_true", help="run and judge, but write nothing")
    args = parser.parse_args(argv)
    notebooks = _notebooks(args.paths)
    if not notebooks:
        print("no notebooks found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    refused = 0
    for path in notebooks:
        problems = record_notebook(path, write=not args.dry_run)
        if problems:
            refused += 1
            print(f"✘ {path}: not recorded")
            for problem in problems:
                print(f"    {problem}")
        else:
            print(f"✔ {path}: {'would be ' if args.dry_run else ''}recorded")
    print(json.dumps({"notebooks": len(notebooks), "refused": refused}))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
