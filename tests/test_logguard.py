"""The log guard itself: an undeclared ERROR fails a test (in-process or from a watched
subprocess's stderr), a declared one passes, and a declared one that never came fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.logguard import scan_stderr

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

INNER = '''
import logging, subprocess, sys
import pytest
from tests.fixtures.logguard import watch_stderr

log = logging.getLogger("agent.thing")

def test_undeclared_error_fails():
    log.error("boom %d", 1)

@pytest.mark.expect_log("agent.thing", r"boom \\d")
def test_declared_error_passes():
    log.error("boom %d", 2)

@pytest.mark.expect_log("agent.thing", r"never")
def test_declared_but_missing_fails():
    log.warning("only a warning")

def test_warnings_pass():
    log.warning("a warning is not an error")

def test_error_in_another_thread_fails():
    import threading
    t = threading.Thread(target=lambda: log.critical("from a thread"))
    t.start(); t.join()

def test_subprocess_error_fails(tmp_path):
    err = tmp_path / "child.log"
    code = ("import logging, sys; logging.basicConfig(stream=sys.stderr, "
            "format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
            "logging.getLogger('sync.hub').error('child failed')")
    watch_stderr(err, "child")
    with open(err, "w") as f:
        subprocess.run([sys.executable, "-c", code], stderr=f, check=True)

def test_subprocess_traceback_fails(tmp_path):
    err = tmp_path / "child.log"
    watch_stderr(err, "child")
    with open(err, "w") as f:
        subprocess.run([sys.executable, "-c", "raise SystemExit(1/0)"], stderr=f)
'''


def test_the_guard_fails_undeclared_and_missing_errors(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess("-p", "tests.fixtures.logguard", "-p",
                                           "no:cacheprovider", "-rA")
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 7, out      # every test body itself passes
    assert outcomes.get("errors") == 5, out      # ... and the guard fails five at teardown
    for name in ("test_undeclared_error_fails", "test_declared_but_missing_fails",
                 "test_error_in_another_thread_fails", "test_subprocess_error_fails",
                 "test_subprocess_traceback_fails"):
        assert f"ERROR test_inner.py::{name}" in out, name
    for name in ("test_declared_error_passes", "test_warnings_pass"):
        assert f"ERROR test_inner.py::{name}" not in out, name
    assert "[child] ERROR sync.hub: child failed" in out
    assert "<traceback>: ZeroDivisionError: division by zero" in out
    assert "declared errors that were never logged" in out


def test_scan_attributes_a_logged_exception_traceback_to_its_record() -> None:
    text = ("2026-11-26 10:00:00,001 INFO sync.hub: hub ready\n"
            "2026-11-26 10:00:01,002 ERROR sync.hub: ingest failed\n"
            "Traceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\n'
            "ValueError: bad\n"
            "\n"
            "The above exception was the direct cause of the following exception:\n"
            "\n"
            "Traceback (most recent call last):\n"
            '  File "z.py", line 3, in <module>\n'
            "agent.journal.JournalError: cannot append\n"
            "2026-11-26 10:00:02,003 WARNING sync.link: disconnected\n"
            "Traceback (most recent call last):\n"
            '  File "y.py", line 2, in <module>\n'
            "KeyError: 'k'\n")
    found = scan_stderr(text, "hub")
    assert [(e.logger, e.level, e.message) for e in found] == [
        ("sync.hub", "ERROR", "ingest failed"),
        ("<traceback>", "CRITICAL", "KeyError: 'k'"),
    ]
