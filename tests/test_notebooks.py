"""The labs as documents: links resolve, compared outputs hold no timings, the README lists them.

nbval replays the notebooks (see pyproject.toml); these tests check what nbval cannot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A number followed by a time unit: what a raw timing looks like in printed text.
TIMING = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds|µs|us)\b")
IGNORED = {"nbval-ignore-output", "nbval-skip"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def compared_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        parts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def ids(paths):
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_there_are_labs_to_check():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_every_relative_link_resolves(path):
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for target in LINK.findall("".join(cell["source"])):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_compared_outputs_hold_no_raw_timings(path):
    for index, cell in enumerate(load(path)["cells"]):
        tags = set(cell.get("metadata", {}).get("tags", []))
        source = "".join(cell.get("source", ""))
        if cell["cell_type"] != "code" or tags & IGNORED or "NBVAL_IGNORE_OUTPUT" in source:
            continue
        found = TIMING.findall(compared_text(cell))
        assert not found, f"{path.name} cell {index} compares a timing {found}: tag it nbval-ignore-output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_stored_notebooks_hold_no_errors_and_open_and_close_with_navigation(path):
    nb = load(path)
    for cell in nb["cells"]:
        assert all(o.get("output_type") != "error" for o in cell.get("outputs", [])), path.name
    first, last = ("".join(nb["cells"][i]["source"]) for i in (0, -1))
    assert "Contents" in first.splitlines()[0] and "Contents" in last.splitlines()[-1]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_the_readme_outline_links_every_lab():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"(notebooks/{path.name})" in readme, f"README outline does not link {path.name}"
