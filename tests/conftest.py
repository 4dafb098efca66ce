"""Shared fixtures. Each module in ``tests/fixtures/`` is loaded as a pytest plugin, so
every area (broker, pcscd, camera, gate) keeps its fixtures in its own file."""

from __future__ import annotations

from pathlib import Path

# the log guard first: other fixture modules import its watch_stderr()
_OTHERS = sorted(p.stem for p in (Path(__file__).parent / "fixtures").glob("*.py")
                 if p.stem not in ("__init__", "logguard"))
pytest_plugins = [f"tests.fixtures.{stem}" for stem in ("logguard", *_OTHERS)]
