"""usable_cores() reads affinity and cgroup quotas; measure_parallelism() asks the OS for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit import ConfigurationError, measure_parallelism, usable_cores
from labkit.cores import cgroup_cpu_quota, default_start_method


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cgroup_v2(root: Path, path: str = "/user.slice/app.scope") -> None:
    write(root, "proc/self/cgroup", f"0::{path}\n")


def test_no_proc_means_no_quota(sys_root):
    assert cgroup_cpu_quota(root=sys_root) is None


def test_v2_quota_is_read_from_cpu_max(sys_root):
    cgroup_v2(sys_root)
    write(sys_root, "sys/fs/cgroup/user.slice/app.scope/cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(root=sys_root) == pytest.approx(1.5)


def test_v2_max_means_unlimited(sys_root):
    cgroup_v2(sys_root)
    write(sys_root, "sys/fs/cgroup/user.slice/app.scope/cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root=sys_root) is None


def test_v2_a_parent_limit_binds_the_child(sys_root):
    cgroup_v2(sys_root)
    write(sys_root, "sys/fs/cgroup/user.slice/app.scope/cpu.max", "400000 100000\n")
    write(sys_root, "sys/fs/cgroup/user.slice/cpu.max", "200000 100000\n")
    assert cgroup_cpu_quota(root=sys_root) == pytest.approx(2.0)


def test_v2_container_sees_its_cgroup_at_the_mount_root(sys_root):
    cgroup_v2(sys_root, path="/")
    write(sys_root, "sys/fs/cgroup/cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(root=sys_root) == pytest.approx(0.5)


def test_v1_quota_is_read_from_cfs_files(sys_root):
    write(sys_root, "proc/self/cgroup", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    write(sys_root, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(sys_root, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root=sys_root) == pytest.approx(3.0)


def test_v1_minus_one_means_unlimited(sys_root):
    write(sys_root, "proc/self/cgroup", "4:cpu,cpuacct:/\n")
    write(sys_root, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(sys_root, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root=sys_root) is None


def test_v1_container_path_missing_below_the_mount_falls_back_to_its_root(sys_root):
    write(sys_root, "proc/self/cgroup", "4:cpu:/kubepods/pod1/ctr\n")
    write(sys_root, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "250000\n")
    write(sys_root, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root=sys_root) == pytest.approx(2.5)


def test_malformed_cgroup_files_are_ignored(sys_root):
    cgroup_v2(sys_root)
    write(sys_root, "sys/fs/cgroup/user.slice/app.scope/cpu.max", "lots\n")
    write(sys_root, "sys/fs/cgroup/user.slice/cpu.max", "abc 100000\n")
    assert cgroup_cpu_quota(root=sys_root) is None


def test_usable_is_the_ceiling_of_a_fractional_quota(sys_root):
    cgroup_v2(sys_root)
    write(sys_root, "sys/fs/cgroup/cpu.max", "50000 100000\n")
    info = usable_cores(root=sys_root)
    assert info.quota == pytest.approx(0.5)
    assert info.usable == 1
    if len(info.affinity or range(info.logical)) > 1:
        assert info.limited_by() == "quota"


def test_usable_never_exceeds_affinity_or_logical_count():
    info = usable_cores()
    assert 1 <= info.usable <= info.logical
    if info.affinity is not None:
        assert info.usable <= len(info.affinity)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="this OS has no CPU affinity API")
def test_usable_follows_cpu_affinity():
    before = os.sched_getaffinity(0)
    one = {min(before)}
    os.sched_setaffinity(0, one)
    try:
        info = usable_cores()
        assert info.affinity == frozenset(one)
        assert info.usable == 1
    finally:
        os.sched_setaffinity(0, before)


def test_usable_cores_is_frozen():
    with pytest.raises(AttributeError):
        usable_cores().usable = 99


def test_default_start_method_does_not_fix_the_start_method():
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    assert default_start_method() in multiprocessing.get_all_start_methods()
    assert multiprocessing.get_start_method(allow_none=True) == before


def test_measured_parallelism_is_between_zero_and_the_workers_asked():
    result = measure_parallelism(2, seconds=0.1)
    assert result.asked == 2
    assert len(result.per_worker) == 2
    assert 0 < result.delivered <= 2.0
    assert all(0 < share <= 1 for share in result.per_worker)


def test_one_spinner_gets_at_most_one_core():
    result = measure_parallelism(1, seconds=0.1)
    assert 0 < result.delivered <= 1.0


def test_measure_parallelism_rejects_nonsense():
    with pytest.raises(ConfigurationError, match="at least 1"):
        measure_parallelism(0)
    with pytest.raises(ConfigurationError, match="seconds"):
        measure_parallelism(1, seconds=-1)
