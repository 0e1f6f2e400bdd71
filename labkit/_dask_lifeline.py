"""A Dask preload that ties a scheduler or a nanny to the process that started it.

Dask's servers are built to outlive their clients: on real machines a scheduler runs for days. On
one machine, started from a notebook, they must die with the kernel, however it ends (a restart, a
crash, ``kill -9``). :class:`labkit.dask_cluster.DaskCluster` adds this module to the commands it
runs (``dask scheduler --preload labkit._dask_lifeline``, ``dask worker ... --preload-nanny
labkit._dask_lifeline``); Dask imports it in the server and calls :func:`dask_setup`, which starts
labkit's orphan watcher (:func:`labkit._lifeline.watch_parent`)::

    kernel ◀──poll── scheduler            exits at once when the kernel is gone
    kernel ◀──poll── nanny ── worker      the nanny exits, and Dask's worker dies with its nanny

The process to watch comes from ``$LABKIT_DASK_PARENT`` (set by the launcher), so a server whose
parent died before the preload ran still finds out; without it, the parent process is watched.
"""

from __future__ import annotations

import os
from typing import Any

from ._lifeline import watch_parent

#: The environment variable naming the pid a scheduler or nanny must not outlive.
PARENT_ENV = "LABKIT_DASK_PARENT"


def dask_setup(server: Any) -> None:
    """Called by Dask once ``server`` (a Scheduler or a Nanny) has started: watch our parent."""
    wanted = os.environ.get(PARENT_ENV, "")
    watch_parent(int(wanted) if wanted.isdigit() else None)
