"""Module-scoped fixtures for tests on a real two-worker DaskCluster: import them into a test module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A DaskCluster of two workers, stopped when the module's tests are done."""
    from labkit.dask_cluster import DaskCluster

    with DaskCluster(2) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    """A Client connected to :func:`cluster`'s scheduler."""
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as connected:
        yield connected
