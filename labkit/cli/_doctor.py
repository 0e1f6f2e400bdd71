"""``labkit doctor``: the machine as the course sees it.

Prints what each lab depends on: the Python and its start method, the cores this process may use
and why, the parallelism delivered right now, free shared memory, and the Jupyter pieces that
draw the widgets. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from importlib import metadata

from ..cores import measure_parallelism, usable_cores

# distributed runs lab 08's Dask cluster; bokeh draws that cluster's dashboard.
PACKAGES = ("jupyterlab", "ipywidgets", "ipykernel", "tornado", "numpy", "psutil", "cryptography",
            "distributed", "bokeh")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare ``labkit doctor``'s options."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-measure", action="store_true", help="skip the 0.3 s parallelism measurement")


def collect(measure: bool = True) -> dict:
    """Everything ``labkit doctor`` reports, as plain data."""
    cores = usable_cores()
    report = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gil_enabled": getattr(sys, "_is_gil_enabled", lambda: True)(),
        "platform": platform.platform(terse=True),
        "start_method": cores.start_method,
        "labkit_start_method": _labkit_start_method(),
        "cores": {
            "logical": cores.logical,
            "physical": cores.physical,
            "affinity": sorted(cores.affinity) if cores.affinity is not None else None,
            "quota": cores.quota,
            "usable": cores.usable,
            "limited_by": cores.limited_by(),
        },
        "shared_memory_free_mb": _shm_free_mb(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if measure:
        delivered = measure_parallelism(cores.usable)
        report["parallelism"] = {"asked": delivered.asked, "delivered": round(delivered.delivered, 2)}
    return report


def _labkit_start_method() -> str:
    """What pools and clusters use when not told: $LABKIT_START_METHOD, else the safe default."""
    from ..cores import check_start_method
    from ..errors import ConfigurationError

    try:
        return check_start_method(None)
    except ConfigurationError as exc:
        return f"none: {exc}"


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 0."""
    report = collect(measure=not args.no_measure)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    cores = report["cores"]
    affinity = "not available on this OS" if cores["affinity"] is None else _ranges(cores["affinity"])
    rows = [
        ("Python", f"{report['python']} ({report['implementation']}, GIL {'on' if report['gil_enabled'] else 'off'})"),
        ("Platform", report["platform"]),
        ("Start method", f"{report['start_method']} (this Python's default); labkit's pools and clusters use "
                         f"{report['labkit_start_method']}"),
        ("Logical CPUs", str(cores["logical"])),
        ("Physical cores", str(cores["physical"] or "unknown")),
        ("CPU affinity", affinity),
        ("cgroup quota", "none" if cores["quota"] is None else f"{cores['quota']:g} cores"),
        ("Usable cores", f"{cores['usable']} (limited by {cores['limited_by']})"),
    ]
    if "parallelism" in report:
        p = report["parallelism"]
        rows.append(("Delivered now", f"{p['delivered']:.2f} of {p['asked']} cores"))
    shm = report["shared_memory_free_mb"]
    rows.append(("Shared memory", "no /dev/shm (fine on macOS and Windows)" if shm is None else f"{shm:,} MB free"))
    for name, version in report["packages"].items():
        rows.append((name, version or "MISSING: pip install -e ."))
    width = max(len(label) for label, _ in rows)
    print("labkit doctor: this machine as the course sees it\n")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    return 0


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _shm_free_mb() -> int | None:
    try:
        return shutil.disk_usage("/dev/shm").free // 2**20
    except OSError:
        return None


def _ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ", ".join(parts)
