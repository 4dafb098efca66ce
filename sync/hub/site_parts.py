"""Building the ``site`` and ``reservations`` policy parts (``ykt hub policy build --site
--reservations``; the terminal side is :mod:`agent.policy.site_parts`, the design
``docs/sites.md``).

* ``--site`` — TOML (``[[site]]`` tables) or JSON (``{"sites": [...]}``): each site's id,
  its terminals in order (the order is the kiosks' number spaces: only append) and
  optional whole-number weights (the gates' shares of a slot's capacity; default 1). A
  change of weights carries the last weights as ``previous`` until ``--site-settled``.
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
from agent.site import SiteLayout, parse_reservations, parse_site
from sync.hub.policy import PolicyRepo
from sync.hub.policy_sources import SourceError, _hashed, check_ssn
from sync.hub.policy_sources import records as _records

__all__ = ["last_site_part", "reservations_part", "site_part", "site_parts"]


def site_part(path: Path | None, last: bytes | None = None, *, settled: bool = False,
              renumber: bool = False) -> bytes:
    """The canonical ``site`` part from ``path`` (None: the last one, ``last``, again).

    A site whose weights differ from ``last``'s carries ``last``'s weights as
    ``previous`` (joint quotas: each gate keeps the smaller share until the change is
    settled), unless ``settled`` — the operator's word that every gate of the site has
    applied the change (``ykt hub fleet``), which drops ``previous``. A change of a
    site's terminal list (order or number: the kiosks' number spaces) is refused unless
    ``renumber`` — the operator's word that the site is closed for the day. Raises
    :class:`SourceError` for a bad file, a second change while one is unsettled, or an
    unconfirmed renumbering.
    """
    if path is None:
        if last is None:
            raise SourceError("--site-settled: no site part was published yet")
        doc: Any = json.loads(last)
        where = "the last site part"
    else:
        where = str(path)
        try:
            raw = path.read_bytes()
            doc = (tomllib.loads(raw.decode("utf-8")) if path.suffix.lower() == ".toml"
                   else json.loads(raw))
        except (OSError, ValueError) as err:
            raise SourceError(f"{path}: {err}") from None
        if isinstance(doc, dict) and "site" in doc and "sites" not in doc:
            doc = {"sites": doc["site"]}          # the TOML form: [[site]] tables
    try:
        parse_site(_dump(doc))
        if isinstance(doc, dict) and isinstance(doc.get("sites"), list):
            before = parse_site(last) if last is not None else {}
            _joint(doc["sites"], before, settled)
            if not renumber:
                _same_numbering(doc["sites"], before)
        data = _dump(doc)
        parse_site(data)
    except ValueError as err:
        raise SourceError(f"{where}: {err}") from None
    return data


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _joint(sites: list[dict[str, Any]], last: dict[str, SiteLayout], settled: bool) -> None:
    """Set or carry each site's ``previous`` weights (in place)."""
    before = {lay.site: lay for lay in last.values()}
    for s in sites:
        s.pop("previous", None)
        old = before.get(s["site"])
        if settled or old is None:
            continue
        new = dict(s.get("weights", {}))
        effective = {t: new.get(t, 1) for t in s["terminals"]}
        if old.previous is not None:
            if effective != dict(old.weights):
                raise ValueError(f"site {s['site']}: the last weight change is not settled; "
                                 "when every gate has applied it (ykt hub fleet), build "
                                 "with --site-settled first")
            s["previous"] = dict(old.previous)
        elif effective != dict(old.weights):
            s["previous"] = dict(old.weights)


def _same_numbering(sites: list[dict[str, Any]], last: dict[str, SiteLayout]) -> None:
    before = {lay.site: lay for lay in last.values()}
    for s in sites:
        old = before.get(s["site"])
        if old is not None and tuple(s["terminals"]) != old.terminals:
            raise ValueError(f"site {s['site']}: the terminal list changes the kiosks' queue "
                             "number spaces (numbers could repeat today); build with "
                             "--renumber while the site is closed")


def last_site_part(repo: PolicyRepo) -> bytes | None:
    """The ``site`` part of the last version built in ``repo``, or None."""
    for p in json.loads(repo._meta("parts", "[]")):
        if p.get("name") == "site":
            data: bytes = (repo.parts_dir / p["sha256"]).read_bytes()
            return data
    return None


def reservations_part(path: Path, pseudonymizer: Pseudonymizer) -> bytes:
    """The ``reservations`` part from ``path`` (holder keys only, sorted, deduplicated).
    Raises :class:`SourceError` naming the file and line."""
    rows: set[tuple[str, str, str]] = set()
    try:
        for n, r in _records(path):
            try:
                if r.get("holder_key"):
                    hk = _hashed(str(r["holder_key"]), "holder_key")
                elif r.get("ssn"):
                    hk = pseudonymizer.holder_key(check_ssn(str(r["ssn"])))
                else:
                    raise ValueError("needs 'ssn' or 'holder_key'")
            except ValueError as err:
                raise SourceError(f"{path}:{n}: ssn: {err}") from None
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


def site_parts(site: Path | None, reservations: Path | None, pseudonymizer: Pseudonymizer,
               *, repo: PolicyRepo | None = None, settled: bool = False,
               renumber: bool = False) -> dict[str, bytes]:
    """The parts to add to a build (``BundleSources.parts``): name → bytes. ``repo``
    gives the last site part (joint quotas, :func:`site_part`)."""
    parts: dict[str, bytes] = {}
    if site is not None or settled:
        last = last_site_part(repo) if repo is not None else None
        parts["site"] = site_part(site, last, settled=settled, renumber=renumber)
    if reservations is not None:
        parts["reservations"] = reservations_part(reservations, pseudonymizer)
    return parts
