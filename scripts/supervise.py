"""Run the stack under supervisord: its configuration generated from the Procfile (``python -m scripts.supervise``).

The Procfile stays the one list of the stack's processes. At each start this writes
``<ESP_RUN_DIR>/supervisord.conf`` (one ``[program:x]`` per Procfile line) and replaces itself
with supervisord in the foreground, so ``scripts/up.sh`` (``make up``) runs what it always ran,
with one difference: a process that exits is restarted on its own instead of stopping the whole
stack, as honcho did. One that keeps dying at start is given up on after ``START_RETRIES`` tries
(supervisord prints ``gave up: <name> entered FATAL state``) while the rest keep serving.

Ctrl-C (SIGINT to supervisord) still stops every process, the node manager last: each gets
SIGTERM, and SIGKILL with its process group after ``STOP_GRACE_S`` seconds. Operators see and
restart single processes with ``supervisorctl -c run/supervisord.conf status|restart worker``.

Each Procfile line is one command: it is ``exec``'d (after bash expands its variables), so that
supervisord's pid is the process itself; ``a && b`` would run ``a`` only.

``--write-only`` writes the configuration and prints its path, without starting anything.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from errors import ConfigError
from settings import ROOT, Settings, stack_environment

PROCFILE = ROOT / "Procfile"
CONF_NAME = "supervisord.conf"
SOCKET_NAME = "supervisor.sock"

#: Seconds a process must stay up to count as started; an exit sooner is a failed start.
START_SECS = 5
#: Failed starts in a row (supervisord waits 1, 2, 3 ... s between them) before a process is given up on (FATAL).
START_RETRIES = 5
#: Seconds between SIGTERM and SIGKILL when a process (and its process group) is stopped.
STOP_GRACE_S = 10
#: Start order: the node pool first (and stopped last, since supervisord stops in reverse order), the API and workers
#: after it; the rest in between.
PRIORITIES = {"nodes": 100}
DEFAULT_PRIORITY = 200
#: Longest path of a unix socket (sun_path is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


@dataclass(frozen=True)
class Program:
    """One line of the Procfile: a process name and its shell command."""

    name: str
    command: str


def read_procfile(text: str) -> list[Program]:
    """The Procfile's processes, in order (blank lines and ``#`` comments skipped, as honcho did)."""
    programs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line.strip())
        if not match:
            raise ConfigError(f"Procfile line {number} is not 'name: command': {line!r}")
        programs.append(Program(match.group(1), match.group(2).strip()))
    if len({p.name for p in programs}) != len(programs):
        raise ConfigError("Procfile names a process twice")
    return programs


def program_command(program: Program, bash: str) -> str:
    """The ``command=`` value: the Procfile's line through bash, its output prefixed with the process's name.

    bash expands ``${VAR:-default}`` as honcho's shell did, then ``exec``s the command so that
    supervisord's pid is the process itself (a signal reaches it, not a shell). Its output goes
    through a ``sed`` that prefixes every line with the name (supervisord cannot), and that ignores
    SIGINT and SIGTERM: it outlives the process's last words and exits when their pipe closes.
    """
    prefix = program.name.ljust(8)
    script = (f'exec > >(trap "" INT TERM; exec sed -u "s/^/{prefix}| /") 2>&1; '
              f"exec {program.command}")
    # supervisord expands %(name)s in a command: a literal % (celery's -n writer@%h) is written %%.
    return f"{bash} -c {shlex.quote(script)}".replace("%", "%%")


def render(programs: list[Program], run_dir: Path, *, root: Path = ROOT, bash: str = "/bin/bash") -> str:
    """supervisord's configuration for ``programs``, its files in ``run_dir``."""
    socket = run_dir / SOCKET_NAME
    if len(str(socket)) > MAX_SOCKET_PATH:
        raise ConfigError(f"ESP_RUN_DIR is too long for supervisord's unix socket ({socket}): use a shorter folder")
    lines = [
        f"; Generated from {PROCFILE.name} by `python -m scripts.supervise` at each start: edit the Procfile, not this file.",
        f"; supervisorctl -c {run_dir / CONF_NAME} status | restart <name> | tail -f <name>",
        "",
        "[unix_http_server]",
        f"file={socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        "nodaemon=true",  # in the foreground of `make up`, its own log echoed to the terminal
        f"logfile={run_dir / 'supervisord.log'}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={run_dir / 'supervisord.pid'}",
        f"childlogdir={run_dir}",
        f"directory={root}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket}",
    ]
    for program in programs:
        lines += [
            "",
            f"[program:{program.name}]",
            f"command={program_command(program, bash)}",
            f"directory={root}",
            f"priority={PRIORITIES.get(program.name, DEFAULT_PRIORITY)}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={START_SECS}",
            f"startretries={START_RETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_GRACE_S}",
            "stopasgroup=true",  # a process's children (gunicorn's and celery's workers, sed) get the signal too
            "killasgroup=true",
            # Every process's output in supervisord's own, as honcho showed it: one terminal for the whole stack.
            "stdout_logfile=/dev/stdout",
            "stdout_logfile_maxbytes=0",
            "redirect_stderr=true",
        ]
    return "\n".join(lines) + "\n"


def write_config(settings: Settings, procfile: Path = PROCFILE) -> Path:
    """Write ``<run dir>/supervisord.conf`` from ``procfile``; its path."""
    bash = shutil.which("bash")
    if bash is None:
        raise ConfigError("bash is not on PATH: the Procfile's commands run through it")
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONF_NAME
    path.write_text(render(read_procfile(procfile.read_text()), run_dir, bash=bash))
    return path


def append_to_stdout() -> None:
    """Make our standard output append-only, as supervisord's own opening of /dev/stdout is.

    supervisord writes its programs' output through a /dev/stdout it opens itself, in append mode,
    and its own lines through the descriptor it inherited: into a file (``make up > stack.log``)
    opened without O_APPEND, its own lines would overwrite its programs' from an older offset.
    """
    flags = fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sys.stdout.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
        path = write_config(settings)
    except ConfigError as exc:
        print(f"esp: {exc}", file=sys.stderr)
        return 2
    if "--write-only" in argv:
        print(path)
        return 0
    supervisord = Path(sys.executable).parent / "supervisord"
    print(f"  One process: {supervisord.parent / 'supervisorctl'} -c {path} status | restart <name>", flush=True)
    # The programs inherit this environment: ours over .env's ESP_ variables, so that the Procfile's ${ESP_...}
    # expansions see .env as the processes' Settings do (a variable set in the environment wins, as in Settings).
    append_to_stdout()
    # PYTHONUNBUFFERED: a print reaches the terminal when it is made, not when a pipe's buffer fills.
    environment = {"PYTHONUNBUFFERED": "1", **stack_environment()}
    os.execve(supervisord, [str(supervisord), "--configuration", str(path)], environment)  # noqa: S606 - our own binary, no shell
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
