"""The C core builds with -Wall -Wextra -Werror (a warning fails the build) and its host
unit tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from simulator.gate import FIRMWARE_DIR, build_controller

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and a C compiler")


def test_make_test_passes() -> None:
    proc = subprocess.run(["make", "-C", str(FIRMWARE_DIR), "test"], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout


@pytest.mark.parametrize(("snippet", "warning"), [
    ("int ykt_probe(int unused) { return 0; }", "unused-parameter"),          # -Wextra
    ("int ykt_probe(void) { int x; return 0; }", "unused-variable"),           # -Wall
    ("unsigned char ykt_probe(int v) { return v; }", "conversion"),            # -Wconversion
    ("int ykt_probe(int v) { { int v = 2; return v; } }", "shadow"),          # -Wshadow
])
def test_a_warning_in_the_core_fails_the_build(tmp_path: Path, snippet: str,
                                               warning: str) -> None:
    """The Makefile's flags at work: the pristine core builds, the same core with one
    warning added does not (-Werror), naming the warning."""
    tree = tmp_path / "gate_controller"
    shutil.copytree(FIRMWARE_DIR, tree, ignore=shutil.ignore_patterns("build"))
    clean = subprocess.run(["make", "-s", "-C", str(tree)], capture_output=True, text=True,
                           check=False, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with open(tree / "src" / "gc_crc.c", "a") as src:
        src.write(f"\n{snippet}\n")
    broken = subprocess.run(["make", "-s", "-C", str(tree)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert broken.returncode != 0
    assert f"-Werror={warning}" in broken.stderr, broken.stderr


def test_build_controller_returns_the_executable() -> None:
    exe = build_controller()
    assert exe.is_file() and os.access(exe, os.X_OK)


def test_core_is_freestanding() -> None:
    """The core includes nothing an MCU toolchain would lack (no stdio, no POSIX)."""
    for name in ("gc_core.c", "gc_frame.c", "gc_crc.c", "gc_core.h", "gc_frame.h", "gc_hal.h"):
        text = (FIRMWARE_DIR / "src" / name).read_text()
        includes = {line.split()[1] for line in text.splitlines() if line.startswith("#include")}
        assert includes <= {"<stdint.h>", "<stddef.h>", "<stdbool.h>", '"gc_crc.h"',
                            '"gc_frame.h"', '"gc_core.h"', '"gc_hal.h"'}, (name, includes)
