"""The ``site`` and ``reservations`` policy parts on the terminal (see ``docs/sites.md``).

:func:`check_site_parts` runs in the applier before the switch (a bundle whose site
layout or reservations do not parse is refused ``malformed`` and the terminal keeps the
policy it has); :func:`site_listener` hands the engine its
:class:`~agent.site.SiteState` after each switch and at startup, from the parts the store
now holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from agent.policy.apply import AppliedPolicy, Listener
from agent.policy.errors import BundleRefused, Refusal
from agent.site import SiteLayout, SiteState, parse_reservations, parse_site

__all__ = ["SITE_PARTS", "check_site_parts", "site_listener", "site_state"]

log = logging.getLogger(__name__)

SITE_PARTS = ("site", "reservations")
"""Part names (and kinds) of this module."""


class ArtifactStore(Protocol):
    def artifact(self, name: str) -> bytes | None: ...


class SiteEngine(Protocol):
    site: SiteState | None

    def between_taps(self) -> Any: ...


def check_site_parts(small: Mapping[str, bytes]) -> None:
    """Parse the bundle's ``site`` and ``reservations`` parts, if any. Raises
    :class:`BundleRefused` (``malformed``) naming the fault."""
    try:
        if "site" in small:
            parse_site(small["site"])
        if "reservations" in small:
            parse_reservations(small["reservations"])
    except ValueError as err:
        raise BundleRefused(Refusal.MALFORMED, str(err)) from None


def site_state(store: ArtifactStore, terminal: str, site: str = "") -> SiteState:
    """This terminal's :class:`SiteState` from the parts ``store`` holds. ``site`` is the
    configured site id (``[location] site``): a terminal its site's layout does not list
    gets a quota of 0 (it admits nobody into a limited slot rather than oversell) and
    queue numbers from :data:`~agent.site.UNLISTED_QUEUE_BASE`. Raises ``ValueError``."""
    raw = store.artifact("site")
    layout: SiteLayout | None = None
    if raw is not None:
        layouts = parse_site(raw)
        layout = layouts.get(terminal)
        if layout is None and site:
            layout = next((lay for lay in layouts.values() if lay.site == site), None)
            if layout is not None:
                log.warning("terminal %s is not in the layout of site %s: quota 0, queue "
                            "numbers from 901", terminal, site)
    res = store.artifact("reservations")
    return SiteState(terminal, layout, parse_reservations(res) if res is not None else None)


def site_listener(engine: SiteEngine, store: ArtifactStore, terminal: str,
                  site: str = "") -> Listener:
    """A policy listener that gives ``engine`` the site state of each applied bundle
    (between taps). A state that does not build (the applier checked it before the
    switch, so only a damaged store) is logged and the previous one stays."""

    def on_applied(applied: AppliedPolicy) -> None:
        try:
            state = site_state(store, terminal, site)
        except ValueError as err:
            log.error("site parts of %s unusable (%s); keeping the current site state",
                      applied.info.label, err)
            return
        with engine.between_taps():
            engine.site = state
        if state.layout is not None or state.reservations is not None:
            log.info("site %s from policy %s: %d terminal(s), %s reservations",
                     state.layout.site if state.layout else "-", applied.info.label,
                     len(state.layout.terminals) if state.layout else 0,
                     len(state.reservations) if state.reservations is not None else "no")

    return on_applied
