"""Run the benchmarks and rewrite their sections of benchmarks/RESULTS.md.

    python benchmarks/run.py            # every benchmark module (bench_*.py)
    python benchmarks/run.py probe      # only bench_probe.py

Each ``bench_<name>.py`` defines ``run() -> str``: a Markdown section (tables of medians and ratios,
measured side by side in one run). RESULTS.md keeps one section per module between markers, so
running one module updates its section and leaves the others as they were. Run on an otherwise
idle machine, with no helpers or builds running: these are timings.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

HEADER = """# Benchmark results

Written by `python benchmarks/run.py`; each section comes from one `benchmarks/bench_*.py` and
says when and where it was measured. Figures are medians of repeated runs, and every comparison
was measured side by side in the same run. They are this machine's numbers, not promises:
run the benchmarks on yours.
"""


def machine() -> str:
    """One line naming the machine, Python and key package versions."""
    from labkit import measure_parallelism, usable_cores

    cores = usable_cores()
    delivered = measure_parallelism(cores.usable)
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("tornado", "numpy", "cryptography"))
    return (
        f"{platform.system()} {platform.machine()}, {cores.usable} usable cores "
        f"(delivered {delivered.delivered:.2f} at start), Python {platform.python_version()}, {versions}"
    )


def section(name: str, body: str, where: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!-- begin {name} -->\n{body.strip()}\n\n_Measured {stamp} on {where}._\n<!-- end {name} -->"


def update(results: dict[str, str]) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    for name, block in results.items():
        pattern = re.compile(rf"<!-- begin {name} -->.*?<!-- end {name} -->", re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    where = machine()
    print(where, flush=True)
    results = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        body = importlib.import_module(f"bench_{name}").run()
        print(body, flush=True)
        results[name] = section(name, body, where)
    update(results)
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
