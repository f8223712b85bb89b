"""bench.profile folds py-spy's collapsed stacks into per-component figures."""

from __future__ import annotations

from bench.profile import component, summarize

RAW = """\
process 10:"/v/bin/python /v/bin/gunicorn --config gunicorn.conf.py app:create_app()";thread (0x1);handle (gunicorn/workers/gthread.py:10);submit (services/submit.py:60);create (services/records.py:80) 7
process 10:"/v/bin/python /v/bin/gunicorn --config gunicorn.conf.py app:create_app()";thread (0x1);handle (gunicorn/workers/gthread.py:11);submit (services/submit.py:61) 3
process 11:"/v/bin/python /v/bin/celery -A tasks.worker worker -Q esp.deploy,esp.accounts,esp.calls -c 2";thread (0x2);send (services/sending.py:120);broadcast (wallet/broadcast.py:200) 5
process 12:"/v/bin/python -m nodes";thread (0x3);replay (nodes/devnet/replay.py:40) 2
not a stack line
"""


def test_components_are_named_from_the_command_line() -> None:
    assert component("/v/bin/python /v/bin/gunicorn --config gunicorn.conf.py app") == "api"
    assert component("/v/bin/celery -A tasks.worker worker -Q esp.control -P solo") == "control worker"
    assert component("/v/bin/celery -A tasks.worker beat --schedule x") == "beat"
    assert component("/usr/bin/something else") == "something"


def test_samples_fold_by_component_inclusive_and_self() -> None:
    s = summarize(RAW, seconds=2.0)
    assert s.samples == {"api": 10, "write worker": 5, "node manager": 2}
    inclusive = dict(s.inclusive["api"])
    assert inclusive["submit (services/submit.py)"] == 10  # both lines, different line numbers, one function
    assert inclusive["create (services/records.py)"] == 7
    assert dict(s.self_time["api"]) == {"create (services/records.py)": 7, "submit (services/submit.py)": 3}
    assert dict(s.self_time["write worker"]) == {"broadcast (wallet/broadcast.py)": 5}
    page = s.markdown("t")
    assert "| api | 10 | 59% | 0.05 |" in page  # 10 samples of 17; 10 / (100 Hz x 2 s) cores


def test_a_subprocess_is_named_by_its_innermost_process_frame() -> None:
    raw = ('process 1:"/v/bin/python /v/bin/honcho start -f Procfile";process 2:"/bin/sh -c gunicorn";'
           'process 3:"/v/bin/python /v/bin/gunicorn --config gunicorn.conf.py app";thread (0x1);scrypt (Protocol/KDF.py:90) 4\n')
    s = summarize(raw, seconds=1.0)
    assert s.samples == {"api": 4}
    assert dict(s.self_time["api"]) == {"scrypt (Protocol/KDF.py)": 4}
