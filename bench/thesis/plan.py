"""What the thesis experiment runs: the cases, the quick plan, the full matrix in named parts, and their time estimates.

The full matrix of issue 11 as one run (C = 200/600/1,000/1,200 x pools 1/3/5/8 x
seven policies x three scenarios, plus the node-bound regime) is ~284 runs, 7-8 hours
on 2 cores, which no session can run. It is split into parts that each answer one
of the issue's questions and fit well under an hour; each writes its own
results (``full-<part>.*``), and ``python -m bench.thesis report`` merges them.

- ``scale``: the thesis mix, all nodes healthy, the esp policy, C = 200/600/1,000/1,200
  x pools 1/3/5/8, and the control at each C: ESP-3 ÷ control, and the cost of a pool.
- ``policies``: pool 3, C = 600, one node degraded (SIGSTOPped 300 ms of every second),
  every policy; and one node killed a third of the way, for esp and round_robin.
- ``mixes``: the read-heavy and the write-heavy mix at C = 600, ESP-3 and the control.
- ``node-bound``: nodes in docker containers, each capped to a fraction of a core,
  pools 1/3/5, the thesis and read-heavy mixes at C = 200 and 600.

The estimates are rates measured by the full run of 2026-11-28 (bench/results/thesis/full.md,
2 cores, scrypt N=2^17): an estimate, not a promise (a higher scrypt cost is slower); the cap
bounds each run, and the worst case is every run reaching it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from balancer import POLICY_NAMES
from bench.thesis.workloads import READ_HEAVY, THESIS, WRITE_HEAVY

LEVELS = (200, 600, 1000, 1200)
POOL_SIZES = (1, 3, 5, 8)
NODE_BOUND_POOLS = (1, 3, 5)
QUICK_LEVELS = (200, 600)
QUICK_COUNT = 1000
# 4 runs x 130 s + 2 starts and setups stays under 10 minutes. At geth's scrypt cost (2^18) ESP took 98-120+ s for
# 1,200 operations on 2 cores (a fresh clone's quick run, 2026-11-28), so the quick run fires 1,000.
QUICK_CAP_S = 130.0

# Estimation, from the full run of 2026-11-28. Healthy thesis mix, ops/s (ESP-3 26-28, the control 33-50).
RATE_OPS_S = {"esp": 27.0, "control": 36.0}
# Relative speed by pool size (measured 1.0 / 1.0 / 0.98 / 0.92 for pools 1 / 3 / 5 / 8).
POOL_SPEED = {1: 1.0, 3: 1.0, 5: 0.98, 8: 0.92}
SCENARIO_SPEED = {"healthy": 1.0, "degraded": 1.1, "killed": 1.0}  # C=600, 2,400 ops: 28-31 ops/s
MIX_SPEED = {THESIS.name: 1.0, READ_HEAVY.name: 1.9, WRITE_HEAVY.name: 0.52}
BACKEND_SPEED = {"process": 1.0, "docker": 0.9}  # nodes capped to 0.05 core each
START_S = {"control": 15.0, "process": 20.0, "docker": 60.0}  # start, setup and smoke of one system
PER_RUN_S = 5.0  # waiting for the pool to be whole, the sampler, the summary


@dataclass(frozen=True)
class Case:
    """One measured run: which system, how configured, which load."""

    system: str  # "esp" or "control"
    nodes: int
    policy: str | None
    scenario: str
    mix: str
    concurrency: int
    count: int
    seed: int
    backend: str = "process"


def esp(nodes: int, policy: str, scenario: str, mix: str, c: int, count: int, backend: str = "process") -> Case:
    return Case("esp", nodes, policy, scenario, mix, c, count, seed=c, backend=backend)


def control(mix: str, c: int, count: int) -> Case:
    return Case("control", 1, None, "healthy", mix, c, count, seed=c)


# A plan is a list of groups; each group shares one started system (the control, or one ESP stack).
Plan = list[list[Case]]


def quick_plan(count: int, levels: Sequence[int]) -> Plan:
    return [[esp(3, "esp", "healthy", THESIS.name, c, count) for c in levels],
            [control(THESIS.name, c, count) for c in levels]]


def scale_plan(count: int, levels: Sequence[int]) -> Plan:
    groups = [[control(THESIS.name, c, count) for c in levels]]
    groups += [[esp(n, "esp", "healthy", THESIS.name, c, count) for c in levels] for n in POOL_SIZES]
    return groups


def policies_plan(count: int, levels: Sequence[int]) -> Plan:
    groups = []
    for policy in POLICY_NAMES:
        # The degraded run first: the killed node is restarted by ESP, and the next run waits for it (wait_pool_up).
        scenarios = ("degraded", "killed") if policy in ("esp", "round_robin") else ("degraded",)
        groups.append([esp(3, policy, s, THESIS.name, c, count) for s in scenarios for c in levels])
    return groups


def mixes_plan(count: int, levels: Sequence[int]) -> Plan:
    mixes = (READ_HEAVY.name, WRITE_HEAVY.name)
    return [[esp(3, "esp", "healthy", m, c, count) for m in mixes for c in levels],
            [control(m, c, count) for m in mixes for c in levels]]


def node_bound_plan(count: int, levels: Sequence[int]) -> Plan:
    return [[esp(n, "esp", "healthy", m, c, count, backend="docker") for m in (THESIS.name, READ_HEAVY.name) for c in levels]
            for n in NODE_BOUND_POOLS]


@dataclass(frozen=True)
class Part:
    """A named piece of the full matrix: its plan, its operations per run, its levels and its per-run cap."""

    name: str
    question: str
    build: Callable[[int, Sequence[int]], Plan]
    count: int
    levels: tuple[int, ...]
    cap_s: float

    def plan(self, count: int | None = None, levels: Sequence[int] | None = None) -> Plan:
        return self.build(count or self.count, levels or self.levels)


PARTS = {p.name: p for p in (
    Part("scale", "thesis mix, healthy: ESP-3 ÷ control at each C, and pools 1/3/5/8", scale_plan, 1200, LEVELS, 150.0),
    Part("policies", "one node degraded (every policy) or killed (esp, round_robin), pool 3", policies_plan, 2400, (600,),
         240.0),
    Part("mixes", "read-heavy and write-heavy mixes, ESP-3 and the control", mixes_plan, 2400, (600,), 300.0),
    Part("node-bound", "nodes capped in containers: 1 vs 3 vs 5 nodes, thesis and read-heavy", node_bound_plan, 1200,
         (200, 600), 240.0),
)}


def run_estimate_s(case: Case) -> float:
    """Seconds one case's operations are expected to take (without the cap)."""
    rate = RATE_OPS_S[case.system] * MIX_SPEED[case.mix] * SCENARIO_SPEED[case.scenario] * BACKEND_SPEED[case.backend]
    if case.system == "esp":
        rate *= POOL_SPEED.get(case.nodes, 0.65)
    return case.count / rate


def start_s(group: Sequence[Case]) -> float:
    first = group[0]
    return START_S["control" if first.system == "control" else first.backend]


def estimate(plan: Plan, cap_s: float) -> tuple[float, float]:
    """(expected, worst case) seconds of a plan: starts, then each run's expected time or, at worst, the cap."""
    starts = sum(start_s(g) for g in plan)
    cases = [c for g in plan for c in g]
    expected = starts + sum(min(run_estimate_s(c), cap_s) + PER_RUN_S for c in cases)
    worst = starts + len(cases) * (cap_s + PER_RUN_S)
    return expected, worst


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def describe(name: str, plan: Plan, cap_s: float) -> list[str]:
    """The lines ``--dry-run`` prints for one part: its runs, grouped by started system, and its estimate."""
    cases = [c for g in plan for c in g]
    expected, worst = estimate(plan, cap_s)
    counts = sorted({c.count for c in cases})
    lines = [f"{name}: {len(cases)} runs of {', '.join(map(str, counts))} operations, {len(plan)} system starts, "
             f"cap {cap_s:.0f} s per run; estimated {minutes(expected)} (worst case, every run capped: {minutes(worst)})"]
    for group in plan:
        first = group[0]
        system = "control" if first.system == "control" else f"ESP-{first.nodes} {first.policy} ({first.backend})"
        runs = ", ".join(f"{c.mix}{'' if c.scenario == 'healthy' else ' [' + c.scenario + ']'} C={c.concurrency}"
                         f" ~{run_estimate_s(c):.0f}s" for c in group)
        lines.append(f"  {system}: {runs}")
    return lines
