"""The terminal's MQTT side of hub commands (``docs/protocol.md`` §12): subscribe to
``t/{terminal}/cmd`` on the uplink's link, hand each payload to
:class:`agent.commands.CommandResponder` and publish its answer on ``…/cmd/result``.

:func:`terminal_responder` builds the responder of a running daemon: decision time and
wall clock as readings, the identity's keys when there is one, the replay memory in the
journal's meta table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.commands import CommandResponder, ReplayMemory
from agent.identity import TerminalIdentityPaths, load_private_key, load_public_key
from sync.link import Link, NotConnected
from sync.topics import TerminalTopics, TopicFilter

__all__ = ["attach", "terminal_responder"]

log = logging.getLogger(__name__)

def attach(link: Link, terminal: str, responder: CommandResponder) -> None:
    """Answer hub commands for ``terminal`` on ``link`` (before or after it starts)."""
    topics = TerminalTopics(terminal)

    def on_cmd(_topic: str, payload: bytes) -> None:
        result = responder.handle(bytes(payload))
        if result is None:
            return
        try:
            link.publish(topics.cmd_result, result, qos=1)
        except NotConnected:
            log.debug("hub command answered while disconnected; the hub asks again")

    link.subscribe(TopicFilter(str(topics.cmd)), on_cmd, qos=1)


def terminal_responder(t: Any) -> CommandResponder:
    """The responder of a running :class:`agent.daemon.Terminal` ``t``."""
    from agent.control import journal_fields

    def readings() -> dict[str, Any]:
        out: dict[str, Any] = {"time_us": round(t.decision_time() * 1e6),
                               "wall_us": round(t.clock() * 1e6),
                               "clock": t.clock_quality().value}
        if t.journal is not None:
            out.update({k: v for k, v in journal_fields(t.journal, 0).items()
                        if k != "last_decisions"})
        return out

    hub_key = key = None
    ident: Path | None = t.cfg.identity.dir
    if ident is not None:                          # protocol v2: signed both ways
        paths = TerminalIdentityPaths(Path(ident))
        hub_key, key = load_public_key(paths.hub_key), load_private_key(paths.key)
    return CommandResponder(t.cfg.terminal.id, readings, hub_key=hub_key, key=key,
                            memory=ReplayMemory(t.journal),
                            mono=t.mono)
