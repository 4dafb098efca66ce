"""The house rules, read from the source (``ast``): who may import whom, and how big a room
may grow. ``docs/architecture.md`` explains them; this test is what holds them.

* the core (``agent.model``, ``engine``, ``journal``, ``rules``, ``store*``) imports
  nothing from ``drivers``, ``sync`` or ``simulator`` — not even through another module;
* ``agent.config`` and ``agent.policy.*`` never reach ``sync`` or ``simulator`` (and
  ``agent.policy`` no ``drivers`` either), not even through another module;
* inside ``agent``, only the composition root (``agent.daemon``, its policy wiring
  ``agent.daemon_policy``, its hardware-event handler ``agent.hardware_events``, and the
  CLI package
  ``agent.cli``) imports ``sync`` or ``simulator``; ``drivers`` only the composition
  root and ``agent.config`` (for the drivers' option models);
* ``drivers`` never imports ``sync``, nor ``simulator`` except in its ``sim`` backends
  (``drivers.sim_*``, ``drivers.gate.sim``, which drive the simulator's virtual
  devices); ``sync`` never imports ``drivers`` or ``simulator``;
* no module in ``agent/``, ``drivers/``, ``sync/``, ``simulator/`` is over 450 lines.

Imports inside functions count like those at the top: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "drivers", "sync", "simulator", "profiles")
SIZED = ("agent", "drivers", "sync", "simulator")
MAX_LINES = 450

CORE = ("agent.model", "agent.engine", "agent.journal", "agent.records", "agent.timebase",
        "agent.rules", "agent.store", "agent.store_schema", "agent.store_generations")
OUTSIDE_THE_CORE = ("drivers", "sync", "simulator")



def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every project module: dotted name → file."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _package_of(name: str, path: Path) -> list[str]:
    parts = name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


@cache
def imports(name: str) -> frozenset[str]:
    """The project modules ``name`` imports directly (``from a import b`` names ``a.b``
    when that is a module, else ``a``), at any depth of its code."""
    path = modules()[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path)[:len(_package_of(name, path)) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if f"{target}.{alias.name}" in modules())
    return frozenset(m for m in found if m.split(".")[0] in PACKAGES)


def reachable(name: str) -> dict[str, list[str]]:
    """Every project module ``name`` imports, directly or through others, with one import
    chain that leads to it (for the failure message)."""
    chains: dict[str, list[str]] = {name: [name]}
    todo = [name]
    while todo:
        here = todo.pop()
        for target in sorted(imports(here)):
            known = _known(target)
            if known is not None and known not in chains:
                chains[known] = [*chains[here], known]
                todo.append(known)
            elif known is None and target not in chains:
                chains[target] = [*chains[here], target]
    del chains[name]
    return chains


def _known(target: str) -> str | None:
    """``target`` as a module of the project (a package's name is its ``__init__``)."""
    return target if target in modules() else None


def _forbidden(name: str, prefixes: tuple[str, ...]) -> list[str]:
    return [" → ".join(chain) for target, chain in sorted(reachable(name).items())
            if target.split(".")[0] in prefixes]


def _is_composition_root(name: str) -> bool:
    """``agent.daemon`` (with its policy wiring ``agent.daemon_policy`` and its
    hardware-event handler ``agent.hardware_events``) and
    the CLI package ``agent.cli`` with its modules ``agent.cli.*``."""
    head, _, rest = name.partition(".")
    return head == "agent" and (rest in ("daemon", "daemon_policy", "hardware_events")
                                or rest == "cli" or rest.startswith("cli."))


def test_the_walker_sees_the_imports_it_must_see() -> None:
    # the rules below are only as good as this: lazy, relative and "from a import
    # module" imports are all found, and chains go through intermediate modules
    assert "sync.link" in imports("sync.hub.cli_policy")             # lazy, in a function
    assert "agent.policy.stage" in imports("agent.policy.runners")
    assert "agent.mqtt_settings" in imports("sync.link")
    assert "drivers.registry" in reachable("agent.daemon")
    assert reachable("agent.daemon")["sync.link"][0] == "agent.daemon"
    assert _is_composition_root("agent.cli.qr") and _is_composition_root("agent.daemon")
    assert not _is_composition_root("agent.config")
    assert not _is_composition_root("agent.codes.cli_like")


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_no_drivers_sync_or_simulator(name: str) -> None:
    assert name in modules()
    assert _forbidden(name, OUTSIDE_THE_CORE) == []


@pytest.mark.parametrize("name", ["agent.config", *sorted(
    m for m in modules() if m == "agent.policy" or m.startswith("agent.policy."))])
def test_config_and_policy_never_reach_sync(name: str) -> None:
    never = ("sync", "simulator") if name == "agent.config" else OUTSIDE_THE_CORE
    assert _forbidden(name, never) == []


def test_only_the_composition_root_wires_agent_to_drivers_and_sync() -> None:
    def allowed(module: str, target: str) -> bool:
        return target.split(".")[0] == "drivers" and module == "agent.config"

    wiring = {m: sorted(t for t in imports(m)
                        if t.split(".")[0] in OUTSIDE_THE_CORE and not allowed(m, t))
              for m in modules() if m.split(".")[0] == "agent" and not _is_composition_root(m)}
    assert {m: t for m, t in wiring.items() if t} == {}


def _is_sim_backend(name: str) -> bool:
    """A driver's ``sim`` backend (``drivers.sim_*``, ``drivers.gate.sim``): it drives the
    simulator's virtual devices, so it alone in ``drivers`` may import ``simulator``."""
    return name.startswith("drivers.sim_") or name == "drivers.gate.sim"


@pytest.mark.parametrize(("package", "never"), [
    ("drivers", ("sync", "simulator")),
    ("sync", ("drivers", "simulator")),
])
def test_drivers_and_sync_do_not_know_each_other(package: str,
                                                 never: tuple[str, ...]) -> None:
    def allowed(module: str, target: str) -> bool:
        return _is_sim_backend(module) and target.split(".")[0] == "simulator"

    wrong = {m: sorted(t for t in imports(m)
                       if t.split(".")[0] in never and not allowed(m, t))
             for m in modules() if m.split(".")[0] == package}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_no_module_is_over_450_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for pkg in SIZED for p in (ROOT / pkg).rglob("*.py")}
    assert len(sizes) > 50                     # the walk found the packages
    over = {f: n for f, n in sorted(sizes.items())
            if n > MAX_LINES}
    assert over == {}
