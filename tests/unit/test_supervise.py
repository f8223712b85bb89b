"""supervisord's configuration from the Procfile (scripts/supervise.py): one program per line, commands intact."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from errors import ConfigError
from scripts.supervise import PROCFILE, Program, read_procfile, render


def test_every_procfile_line_becomes_a_program_run_by_bash_exec() -> None:
    programs = read_procfile(PROCFILE.read_text())
    assert [p.name for p in programs] == ["nodes", "api", "rpc", "worker", "control", "beat", "flower"]
    conf = configparser.RawConfigParser()
    conf.read_string(render(programs, Path("/srv/esp/run"), root=Path("/srv/esp")))
    for program in programs:
        section = conf[f"program:{program.name}"]
        # supervisord expands %(x)s in a command, so a literal % is doubled; bash then gets the script whole.
        bash, flag, script = shlex.split(section["command"].replace("%%", "%"))
        assert (bash, flag) == ("/bin/bash", "-c")
        assert script.endswith(f"; exec {program.command}")
        assert section["autorestart"] == "true" and section["stopasgroup"] == "true" and section["killasgroup"] == "true"
        assert section["stdout_logfile"] == "/dev/stdout" and section["stdout_logfile_maxbytes"] == "0"
    assert "-n writer@%%h" in conf["program:worker"]["command"]
    assert int(conf["program:nodes"]["priority"]) < int(conf["program:api"]["priority"])  # started first, stopped last
    assert conf["supervisord"]["nodaemon"] == "true"
    assert conf["unix_http_server"]["file"] == "/srv/esp/run/supervisor.sock"
    assert conf["supervisorctl"]["serverurl"] == "unix:///srv/esp/run/supervisor.sock"


def test_comments_and_blank_lines_are_skipped_and_a_bad_line_is_refused() -> None:
    assert read_procfile("# the stack\n\nweb: run it\n") == [Program("web", "run it")]
    with pytest.raises(ConfigError, match="line 2"):
        read_procfile("web: run it\nnot a process line\n")
    with pytest.raises(ConfigError, match="twice"):
        read_procfile("web: a\nweb: b\n")


def test_a_run_folder_too_long_for_a_unix_socket_is_refused() -> None:
    with pytest.raises(ConfigError, match="too long"):
        render([Program("web", "run")], Path("/" + "x" * 120))
