"""Sampling profiles of a running stack with py-spy: where each process's time goes, by component and by function.

``Profile(root_pid, out)`` runs ``py-spy record --subprocesses --format raw`` over
a process tree (the stack's ``scripts/up.sh``: gunicorn, Celery workers, beat, the
node manager) for as long as the ``with`` block lasts, then folds the collapsed
stacks into a summary: samples per component (named from each process's command
line) and, per component, the functions with the most samples on the stack
(inclusive) and at its top (self). py-spy samples from outside: ESP's code is not
changed or slowed beyond the sampling itself (100 Hz, ``--nonblocking``).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: py-spy prefixes each stack with the process when it samples subprocesses: ``process 123:"cmdline"``.
_PROCESS = re.compile(r'^process (\d+):"(.*)"$')
#: What a process's command line says it is (first match wins).
COMPONENTS = (
    ("api", ("gunicorn",)),
    ("write worker", ("celery", "worker", "esp.calls")),
    ("control worker", ("celery", "worker", "esp.control")),
    ("beat", ("celery", "beat")),
    ("flower", ("flower",)),
    ("node manager", ("-m nodes",)),
    ("process runner", ("supervisord",)),
    ("shell", ("/bin/sh",)),
)
RATE_HZ = 100


def py_spy() -> str:
    """The py-spy installed beside this Python (requirements-dev.txt), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed: `make dev-deps` installs it")
    return found


def component(cmdline: str) -> str:
    for name, words in COMPONENTS:
        if all(word in cmdline for word in words):
            return name
    return cmdline.split(" ", maxsplit=1)[0].rsplit("/", 1)[-1] or "other"


def _frame_name(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: lines vary between samples of one function."""
    match = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    fn, path = match.groups()
    return f"{fn} ({'/'.join(path.split('/')[-2:])})"


@dataclass
class Summary:
    """Samples per component, and per component its top functions (inclusive and self)."""

    seconds: float
    samples: dict[str, int] = field(default_factory=dict)
    inclusive: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    self_time: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "rate_hz": RATE_HZ, "samples": self.samples,
                "inclusive": self.inclusive, "self": self.self_time}

    def markdown(self, title: str, top: int = 12) -> str:
        total = sum(self.samples.values()) or 1
        lines = [f"## {title}", "",
                 f"py-spy at {RATE_HZ} Hz over {self.seconds:.1f} s; a core busy for the whole window is "
                 f"{RATE_HZ * self.seconds:.0f} samples. Idle threads are not sampled (`--idle` off).", "",
                 "| component | samples | share | ≈ cores busy |", "|---|---:|---:|---:|"]
        for name, n in sorted(self.samples.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {n} | {n / total:.0%} | {n / (RATE_HZ * self.seconds):.2f} |")
        for name in sorted(self.samples, key=lambda k: -self.samples[k]):
            lines += ["", f"### {name}: top functions (inclusive / self samples)", "", "| function | inclusive | | function | self |",
                      "|---|---:|---|---|---:|"]
            inc, own = self.inclusive.get(name, [])[:top], self.self_time.get(name, [])[:top]
            for i in range(max(len(inc), len(own))):
                a = inc[i] if i < len(inc) else ("", "")
                b = own[i] if i < len(own) else ("", "")
                lines.append(f"| `{a[0]}` | {a[1]} | | `{b[0]}` | {b[1]} |")
        return "\n".join(lines)


def summarize(raw: str, seconds: float, top: int = 30) -> Summary:
    """Fold py-spy's collapsed stacks (``frame;frame;... count`` lines) into a Summary."""
    samples: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        name = "other"
        # With --subprocesses each stack starts with its process's ancestry (``process N:"cmdline"`` frames, the
        # process runner first): the innermost one is the process sampled; its frames follow it.
        inner = [i for i, f in enumerate(frames) if _PROCESS.match(f)]
        if inner:
            match = _PROCESS.match(frames[inner[-1]])
            assert match is not None
            name = component(match.group(2))
            frames = frames[inner[-1] + 1:]
        frames = [f for f in frames if not f.startswith("thread ")]
        n = int(count)
        samples[name] += n
        for frame in {_frame_name(f) for f in frames}:
            inclusive[name][frame] += n
        if frames:
            own[name][_frame_name(frames[-1])] += n
    return Summary(seconds, dict(samples), {k: v.most_common(top) for k, v in inclusive.items()},
                   {k: v.most_common(top) for k, v in own.items()})


class Profile:
    """py-spy over ``root_pid``'s process tree while the ``with`` block runs; ``summary`` afterwards."""

    def __init__(self, root_pid: int, out: Path) -> None:
        self.root_pid = root_pid
        self.out = out
        self.summary: Summary | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    def __enter__(self) -> Profile:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [py_spy(), "record", "--pid", str(self.root_pid), "--subprocesses", "--nonblocking", "--rate", str(RATE_HZ),
             "--format", "raw", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self._started
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        self.summary = summarize(self.out.read_text(errors="replace"), seconds)
        self.out.with_suffix(".json").write_text(json.dumps(self.summary.as_dict(), indent=1) + "\n")
