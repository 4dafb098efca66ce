"""The policy part of the terminal's composition root: the applier that verifies and
switches bundles, its listeners (the engine's rules, calendar and site) and the downlink
that feeds it over the uplink's MQTT link. Split from :mod:`agent.daemon` (same role:
this module may wire ``agent`` to ``sync``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.daemon import Terminal

__all__ = ["start_policy"]


def start_policy(terminal: Terminal) -> None:
    """Start the terminal's policy following (nothing when ``[policy] enabled = false``,
    then only the missing-calendar flag). Sets ``terminal.applier`` and
    ``terminal.downlink``. Raises ``OSError``/``PolicyError`` for an unreadable or bad
    anchor file (the configuration checks catch those before a start)."""
    pc = terminal.cfg.policy
    if not pc.enabled:
        from agent.policy.calendar_part import flag_without_policy
        flag_without_policy(terminal.engine)   # no bundle, no calendar: say so if needed
        return
    from agent.policy.apply import PolicyApplier
    from agent.policy.schedule import scheduled_apply
    from agent.policy.signing import load_root
    from agent.policy.site_parts import site_listener
    from agent.policy.wiring import engine_listener
    from sync.downlink import Downlink

    assert terminal.store and terminal.engine and terminal.uplink and pc.anchor_file is not None
    anchor = load_root(pc.anchor_file.read_bytes(), source=str(pc.anchor_file))
    schedule, runner, compactor = scheduled_apply(     # quiet windows: real seconds
        terminal.cfg.maintenance, terminal.store, terminal.ruleset.profile.timezone,
        now=terminal.timebase.peek if terminal.timebase else terminal.clock)
    reserve = 2 * terminal.disk.reserve_bytes if terminal.disk else 0
    applier = PolicyApplier(terminal.store, channel=pc.channel, anchor=anchor,
                            staging_dir=terminal.cfg.terminal.data_dir / "staging",
                            guard=terminal.engine.between_taps, clock=terminal.clock,
                            keep_free_bytes=reserve, runner=runner, compactor=compactor,
                            schedule=schedule)
    verifier = terminal.engine.verifier
    on_applied = engine_listener(terminal.engine, profile=terminal.ruleset.profile.name,
                                 trust=getattr(verifier, "trust", None), base=terminal.ruleset)
    on_site = site_listener(terminal.engine, terminal.store, terminal.cfg.terminal.id,
                            terminal.cfg.location.site)           # docs/sites.md
    for fn in (on_applied, on_site):
        applier.add_listener(fn)
        fn(applier.current())          # a restarted terminal decides by its last bundle
    terminal.applier = applier
    applier.compactor.start()          # an overlay merge cut short by a restart goes on
    # one MQTT identity per terminal: the policy subscription rides on the uplink's link
    terminal.downlink = Downlink(applier, link=terminal.uplink.link)
    terminal.downlink.start()
