"""Shared fixtures. Each module in ``tests/fixtures/`` is loaded as a pytest plugin, so
every area (broker, pcscd, camera, gate) keeps its fixtures in its own file."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings

# the log guard first: other fixture modules import its watch_stderr()
_OTHERS = sorted(p.stem for p in (Path(__file__).parent / "fixtures").glob("*.py")
                 if p.stem not in ("__init__", "logguard"))
pytest_plugins = [f"tests.fixtures.{stem}" for stem in ("logguard", *_OTHERS)]

# Hypothesis budgets: "ci" (the default, `make test`) keeps every property small and
# reproducible; "fuzz" (`make fuzz`: YKT_HYPOTHESIS_PROFILE=fuzz) runs long and random
# (YKT_FUZZ_EXAMPLES sets its max_examples; docs/testing.md).
# Tests that pin their own max_examples keep it under either profile.
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("YKT_FUZZ_EXAMPLES", "10000")),
                          deadline=None, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("YKT_HYPOTHESIS_PROFILE", "ci"))
