"""labkit: the library behind the course "Scaling Python across cores".

The names most labs need are importable from here; each lives in a small module of its own:

- :mod:`labkit.cores`: :func:`usable_cores`, :func:`measure_parallelism`
- :mod:`labkit.workloads`: tasks with known answers (:func:`count_primes`, :func:`hash_password`, ...)
- :mod:`labkit.probe`: :class:`LoopProbe`, event-loop lag and utilization
- :mod:`labkit.pool`: :class:`WorkerPool`, one executor over threads, processes or interpreters
- :mod:`labkit.shm`: :class:`SharedArray`, numpy arrays in shared memory
- :mod:`labkit.cluster`: :class:`Cluster`, N worker processes serving one port (Node's cluster, PM2)
- :mod:`labkit.load`: :func:`run_load`, an HTTP load generator in its own process
- :mod:`labkit.demo`: the demo web apps the labs serve (:func:`demo_app`, faulty and combined variants)
- :mod:`labkit.apps`: :class:`AppServer`, any app in a background process; :func:`load_app`
- :mod:`labkit.measure`: experiments' measurements (:func:`trace_latency`, ...)
- :mod:`labkit.plots` and :mod:`labkit.widgets`: pictures and live views of the above
- :mod:`labkit.grading`: exercises, :func:`check` for self-checks, ``labkit assign``
- :mod:`labkit.predict`: :data:`predict`, the student's guess before an experiment, and its reveal after

Importing labkit has no side effects: no signal handlers, no atexit hooks, no plotting styles.
Heavy modules (plots, widgets) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .cores import CoreInfo, Parallelism, measure_parallelism, usable_cores
from .errors import ConfigurationError, LabkitError, NoRunningLoopError, ServerStartError
from .predict import predict  # the book of predictions; it shadows the module's name on purpose
from .probe import LagStats, LoopProbe
from .workloads import async_io_wait, blur, count_primes, hash_password, io_wait, make_image, spin

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # cores
    "CoreInfo",
    "Parallelism",
    "usable_cores",
    "measure_parallelism",
    # errors
    "LabkitError",
    "ConfigurationError",
    "NoRunningLoopError",
    "ServerStartError",
    # predictions
    "predict",
    # probe
    "LoopProbe",
    "LagStats",
    # workloads
    "count_primes",
    "hash_password",
    "blur",
    "make_image",
    "io_wait",
    "async_io_wait",
    "spin",
    # loaded on first use
    "WorkerPool",
    "SharedArray",
    "Cluster",
    "run_load",
    "LoadReport",
    "AppServer",
    "demo_app",
    "trace_latency",
    "LatencyTrace",
    "plots",
    "widgets",
    "check",
]

# name -> module that defines it; imported the first time the name is used (PEP 562), so that
# `import labkit` stays fast and does not pull in tornado, matplotlib or ipywidgets.
_LAZY = {
    "WorkerPool": "labkit.pool",
    "Cluster": "labkit.cluster",
    "run_load": "labkit.load",
    "LoadReport": "labkit.load",
    "SharedArray": "labkit.shm",
    "AppServer": "labkit.apps",
    "demo_app": "labkit.demo",
    "trace_latency": "labkit.measure",
    "LatencyTrace": "labkit.measure",
    "plots": "labkit.plots",
    "widgets": "labkit.widgets",
    "check": "labkit.grading.checks",
}

if TYPE_CHECKING:  # pragma: no cover
    from . import plots, widgets
    from .apps import AppServer
    from .cluster import Cluster
    from .demo import demo_app
    from .grading.checks import check
    from .load import LoadReport, run_load
    from .measure import LatencyTrace, trace_latency
    from .pool import WorkerPool
    from .shm import SharedArray


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
