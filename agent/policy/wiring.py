"""Connecting an applied policy to a running terminal: rules and issuer keys.

The daemon builds a :class:`~agent.policy.apply.PolicyApplier` over its store, registers
:func:`engine_listener` on it, calls the listener once with
:meth:`~agent.policy.apply.PolicyApplier.current` at startup (so a restarted terminal
decides with the rules of the bundle it last applied), and starts a
:class:`sync.downlink.Downlink`. The store itself follows generation switches by
itself (:meth:`agent.store.PolicyStore.refresh`, called by the applier).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agent.policy.apply import AppliedPolicy, Listener

__all__ = ["TrustStoreLike", "engine_listener"]

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    def swap(self, *, ruleset: Any = None, verifier: Any = None, store: Any = None) -> None: ...


class TrustStoreLike(Protocol):
    """What is needed of :class:`agent.codes.trust.TrustStore`."""

    def replace(self, keys: Any, *, version: str = "") -> Any: ...


def engine_listener(engine: EngineLike, profile: str, trust: TrustStoreLike | None = None
                    ) -> Listener:
    """A listener that swaps the engine's rule set for the bundle's ``rules/<profile>``
    (if the bundle has one) and replaces the trusted issuer keys (if it has some).

    Both were parsed and checked by the applier before the switch (they arrive as
    objects on the :class:`AppliedPolicy`); should the swap still fail here, the error is
    logged and the previous rules/keys stay in force (the listener never raises).
    """
    def on_applied(applied: AppliedPolicy) -> None:
        rs = applied.ruleset(profile)
        if rs is not None:
            try:
                engine.swap(ruleset=rs)
                log.info("rules of %s now from policy %s", profile, applied.info.label)
            except Exception:
                log.exception("rules/%s of %s unusable; keeping the current rules", profile,
                              applied.info.label)
        keys = applied.issuer_keys()
        if trust is not None and keys is not None:
            try:
                trust.replace(keys[0], version=keys[1] or applied.info.label)
            except Exception:
                log.exception("issuer keys of %s unusable; keeping the current keys",
                              applied.info.label)

    return on_applied
