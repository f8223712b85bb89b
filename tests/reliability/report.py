"""The fault suite's report: one record per fault, written as JSON and markdown when the session ends.

Each test of ``tests/reliability`` measures what a client of ESP saw while one part of the stack failed
under load, records it (before asserting, so a failing run still reports its figures) and then asserts
what ESP promises. The report goes to ``run/reliability/`` (``ESP_RELIABILITY_REPORT_DIR`` elsewhere);
the README's "What ESP guarantees" is drawn from it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from settings import ROOT

REPORT_DIR_ENV = "ESP_RELIABILITY_REPORT_DIR"


@dataclass
class FaultRecord:
    """What one fault cost the clients of ESP."""

    fault: str  #: what failed, and how ("a follower node SIGKILLed")
    load: str  #: the load held while it failed ("3 REST readers, 1 transfer every 0.2 s")
    requests: int  #: client requests sent during the fault window
    client_errors: int  #: requests a client saw fail (an error reply, a refused connection, a timeout)
    errors_allowed: str = "0"  #: what the guarantee allows ("0", or the 503s of a Redis outage)
    accepted: int | None = None  #: transactions ESP accepted (None: the fault sends none)
    mined_once: int | None = None  #: of those, mined exactly once
    lost: int | None = None  #: accepted and never mined
    duplicated: int | None = None  #: mined more than once (by hash or by nonce)
    recover_s: float | None = None  #: from the fault to the part serving again
    passed: bool = False  #: the guarantee held (set by ``Report.add``'s caller after its checks)
    notes: list[str] = field(default_factory=list)


class Report:
    """Records of one test session, written on ``close()``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records: list[FaultRecord] = []
        self.started = time.time()

    def add(self, record: FaultRecord) -> FaultRecord:
        self.records.append(record)
        return record

    def close(self) -> None:
        if not self.records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "commit": _commit(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
        (self.folder / "report.json").write_text(
            json.dumps({**meta, "faults": [asdict(r) for r in self.records]}, indent=2) + "\n")
        (self.folder / "report.md").write_text(render(meta, self.records))


def render(meta: dict, records: list[FaultRecord]) -> str:
    """The report as a markdown table, one row per fault, and the notes under it."""
    def n(value: object) -> str:
        return "-" if value is None else str(value)

    lines = [
        "# ESP fault suite",
        "",
        f"Run {meta['started']} on {meta['commit']} ({meta['machine']}), {meta['seconds']} s.",
        "",
        "| fault | load held | requests | client errors (allowed) | accepted | mined once | lost | duplicated | recovered in | held |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        recover = "-" if r.recover_s is None else f"{r.recover_s:.1f} s"
        lines.append(f"| {r.fault} | {r.load} | {r.requests} | {r.client_errors} ({r.errors_allowed}) | {n(r.accepted)}"
                     f" | {n(r.mined_once)} | {n(r.lost)} | {n(r.duplicated)} | {recover} | {'yes' if r.passed else 'NO'} |")
    notes = [(r.fault, note) for r in records for note in r.notes]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {fault}: {note}" for fault, note in notes]
    return "\n".join(lines) + "\n"


def report_folder() -> Path:
    return Path(os.environ.get(REPORT_DIR_ENV) or ROOT / "run" / "reliability")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"
