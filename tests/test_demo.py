"""The demo: each profile journals its own policy label, and a tap that was never decided
is flagged in the summary (and fails the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.sim_cards import SimCardSource
from simulator.demo import run_demo, summary_dict


@pytest.mark.parametrize(("profile", "label"), [
    ("museum_gate", "demo/370102/museum@1"), ("service_kiosk", "demo/370102/kiosk@1"),
    ("bus_validator", "demo/370302/bus@1")])
def test_each_demo_profile_journals_its_own_policy_label(profile: str, label: str,
                                                         tmp_path: Path) -> None:
    s = run_demo(12, profile=profile, outage=False, workdir=tmp_path, gap_s=0)
    assert s.policy == label
    assert s.undecided == [] and s.ok and s.decided == s.taps == 12
    assert summary_dict(s)["ok"] is True


def test_a_tap_that_is_never_decided_is_flagged(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_tap = SimCardSource.tap
    seen = [0]

    def losing_tap(self: SimCardSource, *args: Any, **kw: Any) -> Any:
        seen[0] += 1
        if seen[0] == 5:          # the card event of the fifth tap never reaches the worker
            return None
        return real_tap(self, *args, **kw)

    monkeypatch.setattr(SimCardSource, "tap", losing_tap)
    s = run_demo(12, profile="museum_gate", outage=False, workdir=tmp_path, gap_s=0)
    assert s.undecided and not s.ok
    assert s.decided == s.taps - len(s.undecided)
