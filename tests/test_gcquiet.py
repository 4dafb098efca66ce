"""Python's full garbage collections between taps, never inside one (``agent.gcquiet``,
``docs/decisions.md`` 52)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Terminal
from agent.gcquiet import NEVER, QuietCollector
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource


@pytest.fixture
def full_collections() -> Iterator[list[float]]:
    """The monotonic start time of every full (generation 2) collection in the process."""
    seen: list[float] = []

    def cb(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(time.monotonic())

    gc.callbacks.append(cb)
    try:
        yield seen
    finally:
        gc.callbacks.remove(cb)


def _survivors(n: int = 300_000) -> list[list[int]]:
    """``n`` small containers that stay alive: enough promotions to the oldest generation
    for CPython's own rule to start a full collection."""
    return [[i] for i in range(n)]


def test_left_to_itself_python_collects_fully_while_allocating(
        full_collections: list[float]) -> None:
    """The control: with the interpreter's own thresholds, the allocations of the next
    test do start a full collection in the allocating thread (a tap's, in the daemon)."""
    assert gc.get_threshold()[2] != NEVER
    keep = _survivors()
    assert full_collections, "no automatic full collection: the next test proves nothing"
    del keep


def test_no_full_collection_starts_while_a_tap_is_being_decided(
        full_collections: list[float]) -> None:
    c = QuietCollector(quiet_s=0.05, every_s=0.0)
    c.start()
    try:
        assert gc.get_threshold()[2] == NEVER and gc.get_freeze_count() > 0
        c.tap_started()
        full_collections.clear()
        keep = _survivors()
        runs = c.runs
        # quiet_s passes six times over, but a tap is in flight: no collection
        assert not c.wait_runs(runs + 1, timeout=0.3)
        assert full_collections == [], "a full collection ran inside the tap"
        c.tap_done()
        done = time.monotonic()
        assert c.wait_runs(runs + 1), "no full collection once the terminal was quiet"
        assert full_collections and full_collections[0] >= done + 0.04
        del keep
    finally:
        c.close()


def test_a_terminal_never_quiet_still_collects_between_taps() -> None:
    """Never 10 s quiet: after ``at_most_s`` the collection runs as soon as the tap then in
    flight is decided — not inside it, and without waiting for quiet."""
    c = QuietCollector(quiet_s=10.0, every_s=0.0, at_most_s=0.2)
    c.start()
    try:
        c.tap_started()
        assert not c.wait_runs(1, timeout=0.4), "collected inside a tap"
        c.tap_done()
        assert c.wait_runs(1, timeout=5), "a terminal never quiet never collected"
    finally:
        c.close()


def test_the_settings_are_process_wide_and_the_last_close_restores_them() -> None:
    before = gc.get_threshold()
    a, b = QuietCollector(), QuietCollector()
    a.start()
    b.start()
    a.close()
    assert gc.get_threshold()[2] == NEVER, "another collector still runs"
    b.close()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    b.close()                                   # twice: nothing more to undo
    assert gc.get_threshold() == before


def test_the_daemon_collects_between_taps(tmp_path: Path) -> None:
    cfg_path = tmp_path / "terminal.toml"
    cfg_path.write_text(
        f'[terminal]\nid = "BUS-GC"\ndata_dir = "{tmp_path / "data"}"\ndemo = true\n'
        '[cards]\nbackend = "sim"\noptions = { rate_per_min = 0, population_size = 3 }\n'
        "[mqtt]\nenabled = false\n")
    before = gc.get_threshold()
    terminal = Terminal(load_config(cfg_path), actuators=[SimPrompter()])
    cards = SimCardSource(terminal.pseudonymizer, population_size=3)
    terminal._sources_override = [cards]
    terminal.start()
    try:
        assert gc.get_threshold()[2] == NEVER and gc.get_freeze_count() > 0
        cards.tap(cards.population.holders[0])
        assert terminal.drain(10) and not terminal.gc.busy
    finally:
        terminal.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
