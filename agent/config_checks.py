"""Every check start-up makes of a valid configuration, made without creating anything.

The TOML model (:mod:`agent.config`) already refuses unknown keys, unknown backends and
mistyped driver options with ``file:line: key: problem``. What a model cannot see is the
machine: the files a configuration names (TLS CA, certificate and key, the policy anchor,
the trust file, the identity directory) must exist and be readable, and the data
directory must be writable — or creatable — by this user. ``ykt config validate`` and
``ykt agent run`` both call :func:`startup_problems` before anything is opened, so a
mistake is reported the same way by both and ``agent run`` creates no ``journal.db``
first. A full disk is not among them: it is an alarm the terminal handles
(:mod:`agent.diskguard`), never a configuration error.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import AgentConfig

__all__ = ["startup_problems"]


def _file(where: str, key: str, path: Path | None, what: str) -> list[str]:
    if path is None:
        return []
    if not path.exists():
        return [f"{where}{key}: {path} does not exist: give the path of the {what}"]
    if not path.is_file():
        return [f"{where}{key}: {path} is not a file: give the path of the {what}"]
    if not os.access(path, os.R_OK):
        return [f"{where}{key}: {path} is not readable by this user (uid {os.getuid()}): "
                f"fix its owner or mode"]
    return []


def _writable_dir(where: str, key: str, path: Path) -> list[str]:
    if path.exists():
        if not path.is_dir():
            return [f"{where}{key}: {path} is not a directory"]
        if not os.access(path, os.W_OK | os.X_OK):
            return [f"{where}{key}: {path} is not writable by this user (uid {os.getuid()}): "
                    "run as the ykt user or fix its owner"]
        return []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where}{key}: {path} does not exist and {parent} is not writable by this "
                f"user (uid {os.getuid()}): create it for the ykt user (the unit's "
                "StateDirectory does)"]
    return []


def startup_problems(cfg: AgentConfig, source: str | Path | None = None) -> list[str]:
    """What would stop the daemon from starting with ``cfg`` on this machine, each as
    ``FILE: key: what to do``; empty when nothing would."""
    where = f"{source}: " if source else ""
    problems = _writable_dir(where, "terminal.data_dir", cfg.terminal.data_dir)
    if cfg.mqtt.enabled:
        m = cfg.mqtt
        problems += _file(where, "mqtt.tls_ca_file", m.tls_ca_file, "broker's CA certificate")
        problems += _file(where, "mqtt.tls_cert_file", m.tls_cert_file, "client certificate")
        problems += _file(where, "mqtt.tls_key_file", m.tls_key_file, "client private key")
    if cfg.policy.enabled:
        problems += _file(where, "policy.anchor_file", cfg.policy.anchor_file,
                          "policy root of trust (roots/1.json from `ykt hub policy keygen`)")
    if cfg.codes.enabled:
        problems += _file(where, "codes.trust_file", cfg.codes.trust_file,
                          "trusted issuer keys")
    if cfg.identity.dir is not None and not cfg.identity.dir.is_dir():
        problems.append(f"{where}identity.dir: {cfg.identity.dir} is not a directory: run "
                        "`ykt enroll` first")
    return problems
