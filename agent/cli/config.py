"""``ykt config show|get|set``: read and change a terminal's configuration safely.

``set KEY VALUE`` edits the TOML file with ``tomlkit`` (comments and layout kept), checks
the result with everything start-up checks (the model, then :func:`startup_problems`),
and only then writes it: to a temporary file in the same directory, fsynced, renamed over
the old one, with the previous version kept as ``FILE.previous`` for ``ykt config set
--rollback``. A value is parsed as TOML (``true``, ``7``, ``"text"``, ``[1, 2]``); a bare
word that is not TOML is taken as a string. ``validate`` lives in ``agent.cli.agent``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from agent.cli.common import add_command, load_or_report
from agent.config import AgentConfig, ConfigFileError, load_config

__all__ = ["register"]


def _lookup(cfg: AgentConfig, key: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _show(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    data = cfg.model_dump(mode="json")
    if args.key:
        try:
            data = _lookup(cfg, args.key)
        except KeyError:
            print(f"ykt config get: no key {args.key!r} (see `ykt config show`)",
                  file=sys.stderr)
            return 2
    if args.json or not isinstance(data, dict):
        print(json.dumps(data, ensure_ascii=False, indent=None if not args.json else 2))
    else:
        print(tomlkit.dumps(data).rstrip())
    return 0


def _parse_value(text: str) -> Any:
    try:
        return tomlkit.parse(f"v = {text}")["v"]
    except TOMLKitError:
        return text


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            st = path.stat()
            os.chmod(tmp, st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                # root:ykt 0640 stays so: the agent (group ykt) must still read it
                with contextlib.suppress(PermissionError):   # not root: it stays ours
                    os.chown(tmp, st.st_uid, st.st_gid)
            previous = path.with_name(path.name + ".previous")
            previous.write_bytes(path.read_bytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check(path: Path, text: str) -> list[str]:
    """What start-up would refuse in ``text`` (checked as if it were ``path``)."""
    from agent.config_checks import startup_problems

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.check.", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            cfg = load_config(tmp)
        except ConfigFileError as err:
            return [p.replace(tmp, str(path)) for p in err.problems]
        return startup_problems(cfg, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _set(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if args.rollback:
        previous = path.with_name(path.name + ".previous")
        if not previous.exists():
            print(f"ykt config set: no {previous} to roll back to", file=sys.stderr)
            return 1
        _write_atomically(path, previous.read_text(encoding="utf-8"))
        print(f"{path}: rolled back to the previous version")
        return 0
    if not args.key or args.value is None:
        print("ykt config set: give KEY VALUE (e.g. journal.retention_days 14) or --rollback",
              file=sys.stderr)
        return 2
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() \
            else tomlkit.document()
    except (OSError, TOMLKitError, UnicodeDecodeError) as err:
        print(f"ykt config set: cannot read {path}: {err}", file=sys.stderr)
        return 2
    *sections, leaf = args.key.split(".")
    node: Any = doc
    for part in sections:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
        if not isinstance(node, dict):
            print(f"ykt config set: {args.key}: {part} is not a section", file=sys.stderr)
            return 2
    node[leaf] = _parse_value(args.value)
    text = tomlkit.dumps(doc)
    problems = _check(path, text)
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print(f"{path} not changed", file=sys.stderr)
        return 2
    _write_atomically(path, text)
    print(f"{path}: {args.key} = {node[leaf]} (previous version: {path.name}.previous; "
          "restart the agent to apply)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    config = sub.choices["config"]          # ``config validate`` is agent.cli.agent's
    csub = next(a for a in config._actions if isinstance(a, argparse._SubParsersAction))
    add_command(csub, "show", _show, "the whole configuration, defaults filled in"
                ).set_defaults(key=None)
    add_command(csub, "get", _show, "one key, e.g. journal.retention_days").add_argument("key")
    p = add_command(csub, "set", _set, "change one key, checked like start-up, written "
                    "atomically, the previous file kept for --rollback", json=False)
    p.add_argument("key", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("--rollback", action="store_true", help="restore FILE.previous")
