"""The C core builds with -Wall -Wextra -Werror and its host unit tests pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from simulator.gate import FIRMWARE_DIR, build_controller

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and a C compiler")


def test_make_test_passes() -> None:
    proc = subprocess.run(["make", "-C", str(FIRMWARE_DIR), "test"], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout


def test_build_uses_strict_warnings() -> None:
    makefile = (FIRMWARE_DIR / "Makefile").read_text()
    for flag in ("-Wall", "-Wextra", "-Werror", "-std=c11"):
        assert flag in makefile
    exe = build_controller()
    assert exe.exists()


def test_core_is_freestanding() -> None:
    """The core includes nothing an MCU toolchain would lack (no stdio, no POSIX)."""
    for name in ("gc_core.c", "gc_frame.c", "gc_crc.c", "gc_core.h", "gc_frame.h", "gc_hal.h"):
        text = (FIRMWARE_DIR / "src" / name).read_text()
        includes = {line.split()[1] for line in text.splitlines() if line.startswith("#include")}
        assert includes <= {"<stdint.h>", "<stddef.h>", "<stdbool.h>", '"gc_crc.h"',
                            '"gc_frame.h"', '"gc_core.h"', '"gc_hal.h"'}, (name, includes)
