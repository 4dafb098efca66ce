"""Building the ``site`` and ``reservations`` policy parts (``ykt hub policy build --site
--reservations``; the terminal side is :mod:`agent.policy.site_parts`, the design
``docs/sites.md``).

* ``--site`` — TOML (``[[site]]`` tables) or JSON (``{"sites": [...]}``): each site's id,
  its terminals in order (the order is the kiosks' number spaces: only append) and
  optional whole-number weights (the gates' shares of a slot's capacity; default 1).
* ``--reservations`` — CSV (header row) or JSONL: ``ssn`` (hashed here with the deployment
  key, never stored) or an already hashed ``holder_key``, ``day`` (``YYYY-MM-DD``, the
  site's local day) and optional ``slot`` (``HH:MM``, the slot's start; empty = any time
  that day).

Both are checked with the very parser the terminals use, so a build never publishes a
part a terminal would refuse.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from agent.pseudonym import Pseudonymizer
from agent.site import parse_reservations, parse_site
from sync.hub.policy import SourceError, _records

__all__ = ["reservations_part", "site_part", "site_parts"]


def site_part(path: Path) -> bytes:
    """The canonical ``site`` part from ``path``. Raises :class:`SourceError`."""
    try:
        raw = path.read_bytes()
        doc: Any = (tomllib.loads(raw.decode("utf-8")) if path.suffix.lower() == ".toml"
                    else json.loads(raw))
    except (OSError, ValueError) as err:
        raise SourceError(f"{path}: {err}") from None
    if isinstance(doc, dict) and "site" in doc and "sites" not in doc:
        doc = {"sites": doc["site"]}          # the TOML form: [[site]] tables
    data = json.dumps(doc, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode()
    try:
        parse_site(data)
    except ValueError as err:
        raise SourceError(f"{path}: {err}") from None
    return data


def reservations_part(path: Path, pseudonymizer: Pseudonymizer) -> bytes:
    """The ``reservations`` part from ``path`` (holder keys only, sorted, deduplicated).
    Raises :class:`SourceError` naming the file and line."""
    rows: set[tuple[str, str, str]] = set()
    try:
        for n, r in _records(path):
            if r.get("holder_key"):
                hk = str(r["holder_key"]).strip().lower()
            elif r.get("ssn"):
                hk = pseudonymizer.holder_key(str(r["ssn"]))
            else:
                raise SourceError(f"{path}:{n}: needs 'ssn' or 'holder_key'")
            row = (hk, str(r.get("day") or "").strip(), str(r.get("slot") or "").strip())
            try:
                parse_reservations(json.dumps({"reservations": [list(row)]}).encode())
            except ValueError as err:
                raise SourceError(f"{path}:{n}: {err}") from None
            rows.add(row)
    except OSError as err:
        raise SourceError(f"{path}: {err}") from None
    return json.dumps({"reservations": [list(r) for r in sorted(rows)]},
                      separators=(",", ":")).encode()


def site_parts(site: Path | None, reservations: Path | None,
               pseudonymizer: Pseudonymizer) -> dict[str, bytes]:
    """The parts to add to a build (``BundleSources.parts``): name → bytes."""
    parts: dict[str, bytes] = {}
    if site is not None:
        parts["site"] = site_part(site)
    if reservations is not None:
        parts["reservations"] = reservations_part(reservations, pseudonymizer)
    return parts
