"""The engine's stats answer and container attributes read into CPU and memory figures.

The stats answer is what dockerd 20.10 gave here (``stats(stream=False, one_shot=True)``) for an anvil
container limited to 512 MB and one core, trimmed to the fields ESP reads and a few it does not.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodes.docker.stats import cpu_allowance, parse_engine_stats, parse_time

READ = "2026-11-28T00:16:39.575167299Z"
READ_SECONDS = 1_795_824_999  # 2026-11-28T00:16:39Z since the epoch

STATS: dict[str, Any] = {
    "read": READ,
    "preread": "0001-01-01T00:00:00Z",
    "cpu_stats": {
        "cpu_usage": {"total_usage": 41932249, "percpu_usage": [24549404, 17382845], "usage_in_kernelmode": 10000000},
        "system_cpu_usage": 6217020000000,
        "online_cpus": 2,
    },
    "memory_stats": {
        "usage": 4485120,
        "max_usage": 4485120,
        "stats": {"active_anon": 4096, "inactive_anon": 3887104, "inactive_file": 0, "total_inactive_file": 581632, "rss": 3903488},
        "limit": 536870912,
    },
}

# A stopped container: the engine answers, with nothing in it.
STOPPED: dict[str, Any] = {"read": "0001-01-01T00:00:00Z", "cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}


def test_engine_stats_give_cpu_time_read_stamp_and_memory_in_use() -> None:
    parsed = parse_engine_stats(STATS)
    assert parsed is not None
    cpu_ns, read, memory, limit = parsed
    assert cpu_ns == 41_932_249
    assert read == READ_SECONDS * 1_000_000_000 + 575_167_299
    assert memory == 4_485_120 - 581_632  # v1 reports total_inactive_file; inactive cache is not counted
    assert limit == 536_870_912


def test_engine_stats_of_cgroup_v2_use_inactive_file() -> None:
    v2 = {**STATS, "memory_stats": {"usage": 5533696, "stats": {"inactive_file": 581632, "anon": 3903488}, "limit": 536870912}}
    parsed = parse_engine_stats(v2)
    assert parsed is not None and parsed[2] == 5_533_696 - 581_632


def test_engine_stats_without_a_limit_report_none() -> None:
    unlimited = {**STATS, "memory_stats": {**STATS["memory_stats"], "limit": 9223372036854771712}}
    parsed = parse_engine_stats(unlimited)
    assert parsed is not None and parsed[3] == 0


def test_a_stopped_containers_empty_counters_are_no_sample() -> None:
    assert parse_engine_stats(STOPPED) is None
    assert parse_engine_stats({}) is None


@pytest.mark.parametrize(
    ("value", "nanos"),
    [
        ("2026-11-28T00:16:39.575167299Z", 575_167_299),
        ("2026-11-28T00:16:39Z", 0),
        ("2026-11-28T01:16:39.5+01:00", 500_000_000),  # another zone, a shorter fraction
        ("2026-11-28T00:16:39.5751672991234Z", 575_167_299),  # beyond nanoseconds: cut
    ],
)
def test_engine_timestamps_keep_their_nanoseconds(value: str, nanos: int) -> None:
    assert parse_time(value) == READ_SECONDS * 1_000_000_000 + nanos


@pytest.mark.parametrize("value", [None, "", "0001-01-01T00:00:00Z", "yesterday", "2026-13-45T99:00:00Z"])
def test_absent_or_unreadable_timestamps_are_zero(value: Any) -> None:
    assert parse_time(value) == 0


@pytest.mark.parametrize(
    ("host_config", "cores"),
    [
        ({"NanoCpus": 1_000_000_000, "CpuQuota": 0, "CpuPeriod": 0}, 1.0),  # --cpus 1 (what the backend sets)
        ({"NanoCpus": 500_000_000}, 0.5),
        ({"NanoCpus": 0, "CpuQuota": 150_000, "CpuPeriod": 100_000}, 1.5),  # --cpu-quota / --cpu-period
        ({"NanoCpus": 0, "CpuQuota": 0, "CpuPeriod": 0}, 2.0),  # no limit: every core of the machine
        ({}, 2.0),
    ],
)
def test_cpu_allowance_comes_from_the_host_config(host_config: dict[str, Any], cores: float) -> None:
    assert cpu_allowance(host_config, cpu_count=2) == cores
