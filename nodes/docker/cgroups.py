"""A container's CPU and memory counters in its cgroup files (v1 cpuacct + memory, or v2), as this process sees them.

Reading the files is how a local engine's containers are sampled every second:
the engine's own ``stats`` call takes 1-2 s on dockerd. The parsing takes text
(``/proc/<pid>/cgroup``, ``/proc/self/mountinfo``, the counter files), so it can
be checked against sample contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: cgroup v1 reports "no limit" as a number near 2**63; anything above this is no limit.
UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Cgroup:
    """Where one container's CPU and memory counters are, as this process sees them."""

    version: int
    cpu_file: Path  # v1 cpuacct.usage (ns); v2 cpu.stat (usage_usec)
    memory_dir: Path


class Mount(NamedTuple):
    """One cgroup file system mounted here."""

    fstype: str  # "cgroup" (v1) or "cgroup2"
    root: str  # the cgroup path mounted (a container sees its own as "/")
    mountpoint: str
    options: set[str]  # the super options: the v1 controllers among them


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts in a ``/proc/<pid>/mountinfo`` text."""
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """(v1 controller -> cgroup path, the v2 cgroup path or None) from a ``/proc/<pid>/cgroup`` text."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            v1[name] = path
    return v1, v2


def locate(path: str, mounts: list[Mount], fstype: str, controller: str | None) -> Path | None:
    """The folder of cgroup ``path`` under a mount of ``fstype`` (with ``controller``), None when none holds it."""
    for kind, root, mountpoint, options in mounts:
        if kind != fstype or (controller is not None and controller not in options):
            continue
        if path == root or path.startswith(root.rstrip("/") + "/"):
            found = Path(mountpoint) / path[len(root):].lstrip("/")
            if found.is_dir():
                return found
    return None


def find_cgroup(proc_cgroup: str, mounts: list[Mount]) -> Cgroup | None:
    """The counter files of the process whose ``/proc/<pid>/cgroup`` is ``proc_cgroup``, None when out of reach."""
    v1, v2 = parse_proc_cgroup(proc_cgroup)
    if "cpuacct" in v1 and "memory" in v1:
        cpu_dir = locate(v1["cpuacct"], mounts, "cgroup", "cpuacct")
        memory_dir = locate(v1["memory"], mounts, "cgroup", "memory")
        if cpu_dir is not None and memory_dir is not None and (cpu_dir / "cpuacct.usage").is_file():
            return Cgroup(1, cpu_dir / "cpuacct.usage", memory_dir)
    if v2 is not None:
        unified = locate(v2, mounts, "cgroup2", None)
        if unified is not None and (unified / "cpu.stat").is_file() and (unified / "memory.current").is_file():
            return Cgroup(2, unified / "cpu.stat", unified)
    return None


def cgroup_of(pid: int) -> Cgroup | None:
    """The cgroup files of the process ``pid`` (v1 cpuacct+memory, or v2), None when out of reach."""
    try:
        proc_cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    return find_cgroup(proc_cgroup, mounts)


def stat_value(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed stat file (memory.stat, cpu.stat); 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def read_cgroup(cg: Cgroup) -> tuple[int, int, int]:
    """(CPU time in ns, memory in use, memory limit or 0) from a container's cgroup files."""
    memory_stat = (cg.memory_dir / "memory.stat").read_text()
    if cg.version == 1:
        cpu_ns = int(cg.cpu_file.read_text())
        usage = int((cg.memory_dir / "memory.usage_in_bytes").read_text())
        limit = int((cg.memory_dir / "memory.limit_in_bytes").read_text())
        inactive = stat_value(memory_stat, "total_inactive_file")
    else:
        cpu_ns = stat_value(cg.cpu_file.read_text(), "usage_usec") * 1000
        usage = int((cg.memory_dir / "memory.current").read_text())
        raw = (cg.memory_dir / "memory.max").read_text().strip()
        limit = 0 if raw == "max" else int(raw)
        inactive = stat_value(memory_stat, "inactive_file")
    # Like `docker stats`: page cache the kernel can drop is not the node's memory. tmpfs (anvil's
    # cache) is shmem, not inactive file, so it stays counted against the limit, as it should.
    in_use = max(usage - inactive, 0)
    return cpu_ns, in_use, 0 if limit >= UNLIMITED else limit
