"""Topic names of the ykt/v1 protocol."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.topics import (
    TerminalTopics,
    Topic,
    TopicFilter,
    parse_terminal_topic,
    policy_manifest,
    validate_terminal_id,
)


def test_terminal_topics_have_the_documented_names() -> None:
    t = TerminalTopics("bus-0042")
    assert str(t.tx) == "ykt/v1/t/bus-0042/tx"
    assert str(t.ack) == "ykt/v1/t/bus-0042/ack"
    assert str(t.status) == "ykt/v1/t/bus-0042/status"
    assert str(t.cmd) == "ykt/v1/t/bus-0042/cmd"
    assert str(t.cmd_result) == "ykt/v1/t/bus-0042/cmd/result"
    assert str(policy_manifest("jinan-bus")) == "ykt/v1/policy/jinan-bus/manifest"
    assert (str(policy_manifest("city/370302/bus"))
            == "ykt/v1/policy/city/370302/bus/manifest")
    for bad in ("city//bus", "city/+/bus", "city/#", "/city", "a/b/c/d/e/f/g/h/i", ""):
        with pytest.raises(ValueError):
            policy_manifest(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#", "has space", "x" * 65, "-lead",
                                 "中文"])
def test_invalid_terminal_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="terminal id"):
        TerminalTopics(bad)


def test_topics_and_filters_validate() -> None:
    with pytest.raises(ValueError, match="wildcards"):
        Topic("ykt/v1/t/+/tx")
    with pytest.raises(ValueError, match="whole level"):
        TopicFilter("ykt/v1/t/a+/tx")
    with pytest.raises(ValueError, match="last level"):
        TopicFilter("ykt/#/tx")
    f = TerminalTopics.all_of("tx")
    assert f.matches("ykt/v1/t/bus-1/tx")
    assert not f.matches("ykt/v1/t/bus-1/ack")
    assert not f.matches("ykt/v1/t/bus-1/tx/extra")
    assert TopicFilter("ykt/#").matches("ykt/v1/t/x/cmd/result")
    assert f.shared("ykt-hub") == "$share/ykt-hub/ykt/v1/t/+/tx"
    with pytest.raises(ValueError):
        f.shared("bad/group")


def test_parse_terminal_topic() -> None:
    assert parse_terminal_topic("ykt/v1/t/gate-7/cmd/result") == ("gate-7", "cmd/result")
    assert parse_terminal_topic("ykt/v1/t/gate-7/nope") is None
    assert parse_terminal_topic("ykt/v2/t/gate-7/tx") is None
    assert parse_terminal_topic("ykt/v1/t/bad id/tx") is None


@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z"))
def test_valid_ids_round_trip(terminal: str) -> None:
    assert validate_terminal_id(terminal) == terminal
    for kind in ("tx", "ack", "status", "cmd", "cmd/result"):
        topic = TerminalTopics(terminal)._topic(kind)  # type: ignore[arg-type]
        assert parse_terminal_topic(topic) == (terminal, kind)
