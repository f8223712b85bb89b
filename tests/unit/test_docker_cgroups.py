"""Finding a container's cgroup files and reading its counters, from the contents those files had here.

The samples are what this machine's dockerd 20.10 (cgroup v1) showed for an anvil container limited to
512 MB and one core; the v2 ones follow the kernel's cgroup-v2 file formats. The files are written into a
temporary folder that stands in for /sys/fs/cgroup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.docker.cgroups import (
    Cgroup,
    Mount,
    find_cgroup,
    parse_mountinfo,
    parse_proc_cgroup,
    read_cgroup,
    stat_value,
)

CONTAINER = "/docker/c945f24e9a1b7fc8e70d209d65b7fd3f2e7feb3bb6a6841f2863b710eea1348d"

# /proc/self/mountinfo here: a tmpfs at /sys/fs/cgroup holding one v1 hierarchy per controller.
MOUNTINFO_V1 = """\
25 1 0:23 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / {root}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {root}/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""

# /proc/<pid>/cgroup of the container's anvil.
PROC_CGROUP_V1 = f"""\
9:name=systemd:{CONTAINER}
8:pids:{CONTAINER}
4:memory:{CONTAINER}
3:cpuset:{CONTAINER}
2:cpuacct:{CONTAINER}
1:cpu:{CONTAINER}
0::{CONTAINER}
"""

MEMORY_STAT_V1 = (
    "cache 0\nrss 3903488\nrss_huge 0\nshmem 0\nmapped_file 0\ninactive_anon 3887104\nactive_anon 4096\n"
    "inactive_file 0\nactive_file 0\nhierarchical_memory_limit 536870912\ntotal_cache 1048576\ntotal_rss 3903488\n"
    "total_shmem 0\ntotal_inactive_anon 3887104\ntotal_active_anon 4096\ntotal_inactive_file 581632\ntotal_active_file 0\n"
)

MOUNTINFO_V2 = """\
30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
PROC_CGROUP_V2 = "0::/system.slice/docker-4b1e.scope\n"
CPU_STAT_V2 = "usage_usec 42009\nuser_usec 30000\nsystem_usec 12009\nnr_periods 1\nnr_throttled 0\nthrottled_usec 0\n"
MEMORY_STAT_V2 = "anon 3903488\nfile 1048576\nshmem 0\nactive_anon 4096\ninactive_anon 3887104\nactive_file 466944\ninactive_file 581632\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def v1(tmp_path: Path) -> tuple[list[Mount], Path]:
    """A v1 hierarchy under tmp_path holding the container's counters (limit 512 MB)."""
    for controller in ("cpu", "cpuacct", "memory", "pids", "systemd"):
        (tmp_path / controller / CONTAINER.lstrip("/")).mkdir(parents=True)
    write(tmp_path / "cpuacct" / CONTAINER.lstrip("/") / "cpuacct.usage", "42009405\n")
    memory = tmp_path / "memory" / CONTAINER.lstrip("/")
    write(memory / "memory.stat", MEMORY_STAT_V1)
    write(memory / "memory.usage_in_bytes", "4485120\n")
    write(memory / "memory.limit_in_bytes", "536870912\n")
    return parse_mountinfo(MOUNTINFO_V1.format(root=tmp_path)), tmp_path


@pytest.fixture
def v2(tmp_path: Path) -> tuple[list[Mount], Path]:
    """A unified (v2) hierarchy under tmp_path with no memory limit."""
    unified = tmp_path / "system.slice" / "docker-4b1e.scope"
    write(unified / "cpu.stat", CPU_STAT_V2)
    write(unified / "memory.current", "5533696\n")
    write(unified / "memory.max", "max\n")
    write(unified / "memory.stat", MEMORY_STAT_V2)
    return parse_mountinfo(MOUNTINFO_V2.format(root=tmp_path)), unified


def test_mountinfo_yields_only_cgroup_mounts_with_their_controllers(tmp_path: Path) -> None:
    mounts = parse_mountinfo(MOUNTINFO_V1.format(root=tmp_path))
    assert [m.mountpoint for m in mounts] == [str(tmp_path / c) for c in ("cpu", "cpuacct", "memory", "pids", "systemd")]
    assert mounts[1] == Mount("cgroup", "/", str(tmp_path / "cpuacct"), {"rw", "cpuacct"})
    assert parse_mountinfo(MOUNTINFO_V2.format(root="/sys/fs/cgroup"))[0].fstype == "cgroup2"
    assert parse_mountinfo("garbage\n\n1 2 3 - cgroup\n") == []


def test_proc_cgroup_names_each_controllers_path_and_the_unified_one() -> None:
    v1, v2 = parse_proc_cgroup(PROC_CGROUP_V1)
    assert v1["cpuacct"] == v1["memory"] == v1["name=systemd"] == CONTAINER
    assert v2 == CONTAINER
    assert parse_proc_cgroup(PROC_CGROUP_V2) == ({"": "/system.slice/docker-4b1e.scope"}, "/system.slice/docker-4b1e.scope")


def test_a_v1_container_is_found_and_read(v1: tuple[list[Mount], Path]) -> None:
    mounts, root = v1
    cg = find_cgroup(PROC_CGROUP_V1, mounts)
    assert cg == Cgroup(1, root / "cpuacct" / CONTAINER.lstrip("/") / "cpuacct.usage", root / "memory" / CONTAINER.lstrip("/"))
    cpu_ns, in_use, limit = read_cgroup(cg)
    assert cpu_ns == 42_009_405
    assert in_use == 4_485_120 - 581_632  # inactive page cache is not the node's memory (as docker stats)
    assert limit == 512 * 1024 * 1024


def test_a_v1_container_without_a_limit_reports_none(v1: tuple[list[Mount], Path]) -> None:
    mounts, root = v1
    write(root / "memory" / CONTAINER.lstrip("/") / "memory.limit_in_bytes", "9223372036854771712\n")
    cg = find_cgroup(PROC_CGROUP_V1, mounts)
    assert cg is not None and read_cgroup(cg)[2] == 0


def test_a_v2_container_is_found_and_read(v2: tuple[list[Mount], Path]) -> None:
    mounts, unified = v2
    cg = find_cgroup(PROC_CGROUP_V2, mounts)
    assert cg == Cgroup(2, unified / "cpu.stat", unified)
    assert read_cgroup(cg) == (42_009_000, 5_533_696 - 581_632, 0)  # "max": no limit
    write(unified / "memory.max", "536870912\n")
    assert read_cgroup(cg)[2] == 536_870_912


def test_counters_out_of_reach_give_no_cgroup(tmp_path: Path) -> None:
    # Another machine's engine, or a container already gone: its folders are not under any mount here.
    mounts = parse_mountinfo(MOUNTINFO_V1.format(root=tmp_path))
    assert find_cgroup(PROC_CGROUP_V1, mounts) is None
    assert find_cgroup(PROC_CGROUP_V1, []) is None


def test_a_mount_of_another_subtree_does_not_hold_the_container(v1: tuple[list[Mount], Path]) -> None:
    # A mount whose root is /other sees only that subtree: the container's path is not under it.
    mounts, _ = v1
    elsewhere = [m._replace(root="/other") for m in mounts]
    assert find_cgroup(PROC_CGROUP_V1, elsewhere) is None


def test_stat_value_reads_one_key_and_zero_when_absent() -> None:
    assert stat_value(MEMORY_STAT_V1, "total_inactive_file") == 581_632
    assert stat_value(MEMORY_STAT_V1, "inactive_file") == 0
    assert stat_value(CPU_STAT_V2, "usage_usec") == 42_009
    assert stat_value(CPU_STAT_V2, "missing") == 0
