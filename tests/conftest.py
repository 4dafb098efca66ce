"""Shared fixtures. Each module in ``tests/fixtures/`` is loaded as a pytest plugin, so
every area (broker, pcscd, camera, gate) keeps its fixtures in its own file."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)
