"""What a policy child process (the staged apply, the overlay merge) writes to stderr
reaches the daemon's log, so nothing it reports is lost in a pipe (and the log guard sees
it)."""

from __future__ import annotations

import logging

import pytest

from agent.policy.runners import relay_child_stderr


@pytest.mark.expect_log("agent.policy.runners", r"policy apply child: ERROR:agent\.policy\.stage:boom")
@pytest.mark.expect_log("agent.policy.runners", r"policy apply child crashed: ValueError: bad")
def test_child_errors_and_tracebacks_are_relayed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    relay_child_stderr("INFO:agent.policy.stage:fine\n"
                       "WARNING:agent.policy.stage:careful\n"
                       "ERROR:agent.policy.stage:boom\n"
                       "Traceback (most recent call last):\n"
                       '  File "stage.py", line 1, in <module>\n'
                       "ValueError: bad\n", "policy apply child")
    got = [(r.levelname, r.getMessage()) for r in caplog.records
           if r.name == "agent.policy.runners"]
    assert got == [("WARNING", "policy apply child: WARNING:agent.policy.stage:careful"),
                   ("ERROR", "policy apply child: ERROR:agent.policy.stage:boom"),
                   ("ERROR", "policy apply child crashed: ValueError: bad")]


def test_a_refused_priority_is_relayed_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """What ``nice`` says when a seccomp filter refuses ``setpriority`` (the child then
    runs at the daemon's priority, docs/decisions.md 51) reaches the log once, at
    WARNING; other lines of a tool stay out."""
    caplog.set_level(logging.INFO)
    relay_child_stderr("nice: cannot set niceness: Operation not permitted\n"
                       "niceness is fine\n", "policy apply child")
    got = [(r.levelname, r.getMessage()) for r in caplog.records
           if r.name == "agent.policy.runners"]
    assert got == [("WARNING", "policy apply child: nice: cannot set niceness: "
                    "Operation not permitted")]
