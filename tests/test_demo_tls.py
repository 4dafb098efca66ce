"""The demo over mutual TLS: hub CA, the generated broker, the terminal enrolled over the
hub's HTTPS endpoint — and still 0 lost, 0 duplicated across a broker outage."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.demo import run_demo


@pytest.mark.slow
def test_the_demo_runs_over_mutual_tls_with_an_enrolled_terminal(tmp_path: Path) -> None:
    s = run_demo(40, workdir=tmp_path / "demo", gap_s=0.0, tls=True)
    assert (s.lost, s.duplicated) == (0, 0)
    assert s.records_at_hub > 0 and s.chain_verifies
    ident = tmp_path / "demo" / "terminal-identity"
    assert (ident / "terminal.crt").exists() and (ident / "ca.crt").exists()
    hub_log = (tmp_path / "demo" / "hub.log").read_text()
    assert "connected to 127.0.0.1" in hub_log
