"""The installer into a throw-away root (never this machine): users, groups, directories,
the sample config, units that `systemd-analyze verify` accepts and whose exposure is at
most 3.0; an upgrade keeps the journal and the config; uninstall keeps the state.

The staging test installs the project without its dependencies (``--no-deps``): it checks
the layout the units rely on, not the dependency set (``make test`` already runs every
test against the full one)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install"
UNITS = ("ykt-agent.service", "ykt-hub.service")
MAX_EXPOSURE = 3.0


def _install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INSTALL), *args, "--destdir", str(stage), "--role", "both"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "YKT_PIP_ARGS": "--no-deps"})


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("stage")
    r = _install(root)
    assert r.returncode == 0, r.stderr
    # the target system's own units (sysinit.target, …) that `verify --root` resolves
    # default dependencies against: this machine's stand in for them
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    yield root


def _ids(stage: Path, name: str, db: str) -> int:
    for line in (stage / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {db}")


def test_users_groups_and_state_directories(stage: Path) -> None:
    uid = _ids(stage, "ykt", "passwd")
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in (stage / "etc/group").read_text().splitlines()}
    for g in ("dialout", "gpio", "video", "audio", "input"):
        assert "ykt" in groups[g], f"ykt is not in group {g}"
    state = (stage / "var/lib/ykt").stat()
    assert state.st_uid == uid and stat.S_IMODE(state.st_mode) == 0o750
    # the agent (User=ykt) reads its config: ExecStartPre=ykt config validate
    conf = (stage / "etc/ykt/terminal.toml").stat()
    ykt_gid = next(int(line.split(":")[2]) for line in (stage / "etc/group").read_text()
                   .splitlines() if line.startswith("ykt:"))
    assert (conf.st_uid, conf.st_gid, stat.S_IMODE(conf.st_mode)) == (0, ykt_gid, 0o640)
    creds = (stage / "etc/ykt/credentials").stat()
    assert creds.st_uid == 0 and stat.S_IMODE(creds.st_mode) == 0o700
    assert os.access(stage / "opt/ykt/.venv/bin/ykt", os.X_OK)


def test_the_sample_config_is_valid_and_matches_the_state_directory(stage: Path) -> None:
    sample = stage / "etc/ykt/terminal.toml"
    assert 'data_dir = "/var/lib/ykt"' in sample.read_text(encoding="utf-8")
    unit = (stage / "etc/systemd/system/ykt-agent.service").read_text()
    assert "StateDirectory=ykt\n" in unit
    r = subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(sample)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_units_verify_in_the_installed_root(stage: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", f"--root={stage}", "--man=no", *UNITS],
                       capture_output=True, text=True, timeout=120, cwd=stage)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened(stage: Path, unit: str) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={stage}",
                        unit], capture_output=True, text=True, timeout=120, cwd=stage)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_upgrade_keeps_state_and_config_and_uninstall_keeps_state(tmp_path: Path) -> None:
    stage = tmp_path / "root"
    first = _install(stage)
    assert first.returncode == 0, first.stderr
    # a staging install has no dependencies to self-test SM2 with: it claims nothing
    assert "SM2 (国密) codes: not claimed: the check did not run" in first.stdout
    journal = stage / "var/lib/ykt/journal.db"
    journal.write_bytes(b"the journal")
    config = stage / "etc/ykt/terminal.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("BUS-0001", "BUS-0042"),
                      encoding="utf-8")
    again = _install(stage)                                    # an upgrade
    assert again.returncode == 0, again.stderr
    assert journal.read_bytes() == b"the journal"
    assert 'id = "BUS-0042"' in config.read_text(encoding="utf-8")
    gone = subprocess.run([str(INSTALL), "uninstall", "--destdir", str(stage), "--role",
                           "both"], capture_output=True, text=True, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert not (stage / "opt/ykt").exists()
    assert not (stage / "etc/systemd/system/ykt-agent.service").exists()
    assert journal.read_bytes() == b"the journal" and config.exists()


def test_bad_arguments_are_refused() -> None:
    r = subprocess.run([str(INSTALL), "--role", "gate"], capture_output=True, text=True)
    assert r.returncode == 2 and "--role is agent, hub or both" in r.stderr


def test_the_bare_image_check_is_a_separate_target() -> None:
    """`make install-check` (minutes, not in `make test`) refuses what it does not know."""
    r = subprocess.run([str(ROOT / "scripts" / "install-check"), "--bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown argument" in r.stderr
    assert "install-check:" in (ROOT / "Makefile").read_text()
