"""Trusted issuer keys: the keys whose holder certificates a terminal accepts.

Until signed policy bundles distribute them, the keys come from a local trust file, JSON
or TOML (chosen by the file's suffix), for example::

    version = "2026-11-01"               # optional, shown in logs and status

    [[issuers]]
    kid = "jn-2026a"                     # key id, matched against the certificate's kid
    alg = "ES256"                        # ES256 | EdDSA | SM2
    iss = "370100"                       # optional: certificates must carry this iss
    public_key = \"\"\"
    -----BEGIN PUBLIC KEY-----
    ...
    -----END PUBLIC KEY-----\"\"\"
    not_before = "2026-01-01T00:00:00Z"  # optional, RFC 3339
    not_after  = "2027-01-01T00:00:00Z"  # optional, RFC 3339

The JSON form is the same document: ``{"version": …, "issuers": [{…}, …]}``.

A :class:`TrustStore` is replaceable at runtime and thread-safe: :meth:`TrustStore.replace`
swaps in a new immutable :class:`TrustSnapshot` atomically (a policy update calls it with
the keys of the new bundle); a verification in progress keeps the snapshot it started with.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.codes.algorithms import (
    AlgorithmUnavailable,
    KeyFormatError,
    SignatureAlgorithm,
    algorithm,
)
from agent.errors import ConfigurationError
from agent.journal import parse_utc

__all__ = [
    "IssuerKey",
    "TrustSnapshot",
    "TrustStore",
    "TrustStoreError",
    "parse_trust_document",
    "read_trust_file",
    "trust_entry",
]

log = logging.getLogger(__name__)


class TrustStoreError(ConfigurationError):
    """A trust document is invalid; the message names the file and the key at fault."""


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """One trusted issuer key. Times are epoch seconds; ``None`` means unbounded."""

    kid: str
    alg: str
    public_key: Any
    iss: str = ""
    not_before: float | None = None
    not_after: float | None = None

    def problem_at(self, now: float, allowance_s: float = 0.0) -> str:
        """``""`` if the key is valid at ``now`` (± ``allowance_s``), else a short token."""
        if self.not_before is not None and now + allowance_s < self.not_before:
            return "issuer_key_not_yet_valid"
        if self.not_after is not None and now - allowance_s > self.not_after:
            return "issuer_key_expired"
        return ""


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """An immutable set of issuer keys; ``generation`` increases with every replacement."""

    keys: Mapping[bytes, IssuerKey] = field(default_factory=dict)
    version: str = ""
    generation: int = 0

    def get(self, kid: bytes) -> IssuerKey | None:
        """The key with key id ``kid`` (the certificate header's bytes), or None."""
        return self.keys.get(kid)


class TrustStore:
    """The terminal's trusted issuer keys, swappable at runtime (thread-safe)."""

    def __init__(self, keys: Iterable[IssuerKey] = (), *, version: str = "") -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._snapshot = TrustSnapshot()
        self.replace(keys, version=version)

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        """A store holding the keys of the trust file at ``path``. Raises :class:`TrustStoreError`
        (also when an SM2 key is configured without tongsuopy)."""
        keys, version = read_trust_file(path)
        return cls(keys, version=version)

    def replace(self, keys: Iterable[IssuerKey], *, version: str = "") -> TrustSnapshot:
        """Atomically replace every key (e.g. from a newly applied policy bundle).

        Raises :class:`TrustStoreError` on a duplicate kid; the old keys then stay in force.
        """
        table: dict[bytes, IssuerKey] = {}
        for k in keys:
            kid = k.kid.encode()
            if kid in table:
                raise TrustStoreError(f"duplicate issuer kid {k.kid!r}")
            table[kid] = k
        with self._lock:
            self._generation += 1
            self._snapshot = TrustSnapshot(table, version, self._generation)
        log.info("trust store now holds %d issuer keys (version %r)", len(table), version)
        return self._snapshot

    def snapshot(self) -> TrustSnapshot:
        """The current immutable set of keys."""
        return self._snapshot

    def get(self, kid: bytes) -> IssuerKey | None:
        return self._snapshot.get(kid)

    @property
    def version(self) -> str:
        return self._snapshot.version

    def __len__(self) -> int:
        return len(self._snapshot.keys)


def read_trust_file(path: str | Path) -> tuple[list[IssuerKey], str]:
    """Parse a JSON (``.json``) or TOML (any other suffix) trust file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise TrustStoreError(f"{p}: cannot read trust file: {err.strerror}") from err
    fmt = "JSON" if p.suffix.lower() == ".json" else "TOML"
    try:
        doc = json.loads(raw) if fmt == "JSON" else tomllib.loads(raw.decode())
    except ValueError as err:         # also UnicodeDecodeError, TOMLDecodeError
        raise TrustStoreError(f"{p}: not valid {fmt}: {err}") from err
    except RecursionError:
        raise TrustStoreError(f"{p}: not valid {fmt}: nested too deep") from None
    return parse_trust_document(doc, source=str(p))


def _time(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            t = float(value)
        except OverflowError:
            t = math.inf
        if math.isfinite(t):
            return t
    if isinstance(value, str):
        try:
            return parse_utc(value)
        except ValueError:
            pass
    raise TrustStoreError(f"{where}: expected an RFC 3339 time, got {value!r:.60}")


def _utf8(text: str) -> bool:
    """``text`` can be encoded (no lone surrogate, as JSON's ``"\\ud800"`` gives)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_trust_document(doc: object, *, source: str = "<trust>") -> tuple[list[IssuerKey], str]:
    """Issuer keys and version from a parsed trust document (see the module docstring).

    Raises :class:`TrustStoreError` naming ``source`` and the key at fault, and nothing
    else whatever ``doc`` holds (times must be finite; a kid must be encodable text).
    """
    if not isinstance(doc, Mapping):
        raise TrustStoreError(f"{source}: the document must be a table/object")
    unknown = set(doc) - {"version", "issuers"}
    if unknown:
        raise TrustStoreError(f"{source}: unknown key(s) {sorted(unknown)}")
    version = str(doc.get("version", ""))
    issuers = doc.get("issuers", [])
    if not isinstance(issuers, list):
        raise TrustStoreError(f"{source}: issuers must be a list")
    keys: list[IssuerKey] = []
    seen: set[str] = set()
    for i, entry in enumerate(issuers):
        where = f"{source}: issuers[{i}]"
        if not isinstance(entry, Mapping):
            raise TrustStoreError(f"{where}: must be a table/object")
        extra = set(entry) - {"kid", "alg", "iss", "public_key", "not_before", "not_after"}
        if extra:
            raise TrustStoreError(f"{where}: unknown key(s) {sorted(extra)}")
        kid, alg_name, pem = entry.get("kid"), entry.get("alg", "ES256"), entry.get("public_key")
        if not isinstance(kid, str) or not kid or not _utf8(kid):
            raise TrustStoreError(f"{where}.kid: a non-empty string is required")
        if kid in seen:
            raise TrustStoreError(f"{where}.kid: duplicate kid {kid!r}")
        seen.add(kid)
        if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem or not pem.isascii():
            raise TrustStoreError(f"{where}.public_key: a PEM public key is required")
        try:
            alg = algorithm(str(alg_name))
        except AlgorithmUnavailable as err:
            raise TrustStoreError(f"{where}.alg: issuer {kid!r} uses {alg_name}: {err}") from err
        except ValueError as err:
            raise TrustStoreError(f"{where}.alg: {err}") from err
        try:
            pub = alg.load_public_pem(pem.strip().encode())
        except KeyFormatError as err:
            raise TrustStoreError(f"{where}.public_key: {err}") from err
        keys.append(IssuerKey(
            kid=kid, alg=alg.name, public_key=pub, iss=str(entry.get("iss", "")),
            not_before=_time(entry.get("not_before"), f"{where}.not_before"),
            not_after=_time(entry.get("not_after"), f"{where}.not_after"),
        ))
    return keys, version


def trust_entry(kid: str, alg: SignatureAlgorithm, public_key: Any, *, iss: str = "",
                not_before: str | None = None, not_after: str | None = None
                ) -> dict[str, str]:
    """One ``issuers`` entry of a trust document for ``public_key`` (an ``alg`` key);
    ``not_before``/``not_after`` are RFC 3339 times, left out when not given."""
    entry = {"kid": kid, "alg": alg.name, "iss": iss,
             "public_key": alg.public_pem(public_key).decode()}
    if not_before:
        entry["not_before"] = not_before
    if not_after:
        entry["not_after"] = not_after
    return entry
