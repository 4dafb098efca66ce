"""Operations side of policy bundles: build from source files, diff, sign, publish.

A :class:`PolicyRepo` keeps one deployment's bundles under a directory::

    <repo>/parts/<sha256>                 content-addressed parts (what the HTTP server serves)
    <repo>/roots/<serial>.json            the signer roots (1 = the terminals' trust anchor)
    <repo>/channels/<channel>/state.db    the last published rows (keyed hashes only)
    <repo>/channels/<channel>/versions/<n>.json   every published envelope

:meth:`PolicyRepo.build` reads entitlement and hotlist source files (CSV or JSONL keyed by
raw 社会保障号码 / card identifiers), hashes every identifier with the deployment's key on
the way in (raw identifiers never reach the repository, a part or the wire), computes the
delta against the last version with SQL, writes sorted snapshot parts and delta parts,
validates rule files (their vectors must pass) and issuer keys, signs the manifest and
stores the envelope. :meth:`PolicyRepo.publish` puts it retained on
``ykt/v1/policy/{channel}/manifest``.

Reading and checking source files: :mod:`sync.hub.policy_sources`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.codes.trust import parse_trust_document
from agent.journal import canonical, utc_stamp
from agent.policy.manifest import (
    DeltaBase,
    Envelope,
    KeyEntry,
    Manifest,
    PartRef,
    Root,
    SignedRoot,
    sha256_hex,
)
from agent.policy.parts import DataKind, PartWriter
from agent.policy.signing import SigningKey, load_root, signed_manifest, signed_root
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from sync.hub.policy_sources import (
    BundleSources,
    SourceError,
    channel_categories,
    check_bundle_parts,
    entitlement_rows,
    hotlist_rows,
    key_fingerprint,
    progress,
)
from sync.topics import policy_manifest, validate_channel

__all__ = ["BuildResult", "BundleSources", "PolicyRepo", "SourceError", "check_bundle_parts",
           "init_root", "key_fingerprint"]

log = logging.getLogger(__name__)

INLINE_MAX = 64 * 1024
"""Parts up to this many bytes travel inside the MQTT envelope."""
INLINE_TOTAL_MAX = 192 * 1024
"""At most this many inline bytes per envelope; bigger parts go over HTTP."""


_SCHEMAS = {
    "ent": "holder_key TEXT NOT NULL, name TEXT NOT NULL, valid_from TEXT, valid_until TEXT, "
           "PRIMARY KEY (holder_key, name)",
    "hot": "key TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT, listed TEXT",
}


@dataclass(frozen=True)
class BuildResult:
    """What a build produced."""

    version: int
    manifest_hash: str
    envelope_path: Path
    envelope_bytes: int
    parts: list[PartRef]
    totals: dict[str, int]
    seconds: float
    unchanged: bool = False
    """Nothing changed since the last version: no new version was made (``version`` is
    the last one)."""


def init_root(repo: str | Path, keys: list[KeyEntry], threshold: int = 1) -> Root:
    """Create signer root #1 in the repository at ``repo``: the trust anchor to install on
    terminals (``<repo>/roots/1.json``). Raises ``FileExistsError`` if it already exists."""
    path = Path(repo) / "roots" / "1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(f"{path} exists: rotate instead")
    root = Root(serial=1, threshold=threshold, keys=keys)
    path.write_bytes(SignedRoot(signed=root.model_dump(mode="json")).model_dump_json().encode())
    return root


class PolicyRepo:
    """The bundles of ``channel`` in the repository at ``root``. Only :meth:`build` needs
    the deployment's pseudonymisation key (to hash source identifiers)."""

    def __init__(self, root: str | Path, channel: str) -> None:
        self.root = Path(root)
        self.channel = validate_channel(channel)
        self.parts_dir = self.root / "parts"
        self.roots_dir = self.root / "roots"
        self.dir = self.root / "channels" / channel
        for d in (self.parts_dir, self.roots_dir, self.dir / "versions"):
            d.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.dir / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA cache_size=-262144")    # 256 MiB: the hub has memory
        for table, cols in _SCHEMAS.items():
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols}) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")

    def close(self) -> None:
        self.db.close()

    # -- signer roots ------------------------------------------------------------------
    def roots(self) -> list[SignedRoot]:
        """Every root, serial order (serial 1 has no signatures: it is the anchor)."""
        out = []
        for p in sorted(self.roots_dir.glob("*.json"), key=lambda p: int(p.stem)):
            out.append(SignedRoot.model_validate_json(p.read_bytes()))
        return out

    def current_root(self) -> Root:
        """The newest root. Raises ``LookupError`` if the repository has none (run keygen)."""
        roots = self.roots()
        if not roots:
            raise LookupError(f"{self.roots_dir}: no signer root; run 'ykt hub policy keygen "
                              "--init'")
        return load_root(canonical(roots[-1].signed))

    def init_root(self, keys: list[KeyEntry], threshold: int = 1) -> Root:
        """Create signer root #1 (see :func:`init_root`)."""
        return init_root(self.root, keys, threshold)

    def rotate(self, old_keys: list[SigningKey], new_keys: list[KeyEntry],
               threshold: int = 1, hotlist_keys: list[KeyEntry] | None = None) -> Root:
        """Root #n+1 with ``new_keys``, signed by ``old_keys`` (keys of root #n);
        ``hotlist_keys`` are its online hotlist keys (None keeps the current ones)."""
        cur = self.current_root()
        root = Root(serial=cur.serial + 1, threshold=threshold, keys=new_keys,
                    hotlist_keys=cur.hotlist_keys if hotlist_keys is None else hotlist_keys)
        sr = signed_root(root, old_keys)
        (self.roots_dir / f"{root.serial}.json").write_bytes(sr.model_dump_json().encode())
        log.info("signer root rotated to #%d (%s)", root.serial,
                 ",".join(k.kid for k in new_keys))
        return root

    # -- state -------------------------------------------------------------------------
    def _meta(self, k: str, default: str = "") -> str:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return default if row is None else str(row[0])

    @property
    def version(self) -> int:
        """The last built version (0 if none)."""
        return int(self._meta("version", "0"))

    def latest_envelope(self) -> bytes:
        """The last built envelope's bytes. Raises ``LookupError`` if none was built."""
        v = self.version
        if not v:
            raise LookupError(f"channel {self.channel} has no bundle yet; build one")
        return (self.dir / "versions" / f"{v}.json").read_bytes()

    # -- building ----------------------------------------------------------------------
    def _store_part(self, data_path: Path) -> tuple[str, int]:
        with open(data_path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        final = self.parts_dir / sha
        size = data_path.stat().st_size
        if final.exists():
            data_path.unlink()
        else:
            os.replace(data_path, final)
        return sha, size

    def _write_table_part(self, kind: DataKind, mode: str, name: str, adds_sql: str,
                          removes_sql: str | None) -> PartRef | None:
        tmp = self.parts_dir / f".{name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            w = PartWriter(f, kind, "delta" if mode == "delta" else "snapshot")
            if removes_sql:
                for r in self.db.execute(removes_sql):
                    w.remove(*r)
            for r in self.db.execute(adds_sql):
                w.add(*r)
            w.close()
        if mode == "delta" and w.rows == 0:
            tmp.unlink()
            return None
        sha, size = self._store_part(tmp)
        return PartRef(name=name, kind=kind, mode=mode,
                       sha256=sha, size=size, rows=w.rows, inline=False)

    def _file_part(self, name: str, kind: str, data: bytes) -> PartRef:
        sha = sha256_hex(data)
        path = self.parts_dir / sha
        if not path.exists():
            tmp = path.with_name(f".{sha}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return PartRef(name=name, kind=kind, mode="file",
                       sha256=sha, size=len(data), rows=0, inline=False)

    def key_fingerprint(self) -> str:
        """The fingerprint of the pseudonymisation key this repository's rows were hashed
        with ('' before the first build): see :func:`key_fingerprint`."""
        return self._meta("key_fingerprint")

    def build(self, sources: BundleSources, signer: SigningKey, *, pseudonymizer: Pseudonymizer,
              expires_s: float = 7 * 86400, base_url: str = "", now: float | None = None,
              renew: bool = False, show_progress: bool = False) -> BuildResult:
        """Build, sign and store the next version. Returns what was built; when nothing
        changed since the last version (same parts, same ``base_url``) no version is made
        and the result says ``unchanged`` (``renew`` re-signs the same content with a new
        expiry instead). ``show_progress`` draws a progress bar per source file on a
        terminal's stderr.

        ``pseudonymizer`` hashes source identifiers with the deployment key (the
        terminals' key); it must be the key the repository was built with so far (its
        fingerprint is stored), or :class:`SourceError` is raised.

        Raises :class:`SourceError` (bad source line), ``RuleSetError``/``ConfigFileError``
        (a rule file or its vectors), ``TrustStoreError`` (issuer keys), ``LookupError``
        (no signer root) or ``PermissionError`` (``signer`` not in the current root).
        :class:`SourceError` also for parts that need HTTP without a ``base_url``, or
        settings the rules refuse. Nothing is published by a failed build.
        """
        t0 = time.monotonic()
        now = time.time() if now is None else now
        root = self.current_root()
        if root.key(signer.public.kid) is None:
            raise PermissionError(f"signing key {signer.public.kid} is not in signer root "
                                  f"#{root.serial}; rotate first")
        fingerprint = key_fingerprint(pseudonymizer)
        if self.key_fingerprint() not in ("", fingerprint):
            raise SourceError(
                f"{self.dir}: this repository was built with another pseudonymisation key "
                f"(fingerprint {self.key_fingerprint()}, this one {fingerprint}): its hashes "
                "would never match on terminals; use the deployment key "
                "($YKT_PSEUDONYM_KEY or $CREDENTIALS_DIRECTORY/pseudonym-key)")
        if base_url and not base_url.startswith(("http://", "https://")):
            raise SourceError(f"--base-url {base_url!r}: must be an http:// or https:// URL")
        prev_version = self.version
        prev_parts = {p["name"]: PartRef.model_validate(p)
                      for p in json.loads(self._meta("parts", "[]"))}
        categories = channel_categories(
            [(str(p), p.read_text(encoding="utf-8")) for p in sources.rules]
            or [(f"rules part {r.name}", (self.parts_dir / r.sha256).read_text(encoding="utf-8"))
                for r in prev_parts.values() if r.kind == "rules"])
        db = self.db
        db.execute("BEGIN")
        try:
            changed: dict[str, bool] = {}
            cur: dict[str, str] = {}          # the table holding the new rows
            from sync.hub.hotlist import has_pending, merge_pending
            online = has_pending(db)        # loss reports published online since the last
            for table, src, extra in (("ent", sources.entitlements, None),
                                      ("hot", sources.hotlist, sources.remove_hotlist)):
                db.execute(f"DROP TABLE IF EXISTS {table}_new")
                if src is None and extra is None and not (table == "hot" and online):
                    changed[table], cur[table] = False, table   # unchanged: no copy
                    continue
                changed[table], cur[table] = True, f"{table}_new"
                db.execute(f"CREATE TABLE {table}_new ({_SCHEMAS[table]}) WITHOUT ROWID")
                if sources.merge or src is None:
                    db.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
                if src is not None:
                    rows = (entitlement_rows(src, pseudonymizer, categories) if table == "ent"
                            else hotlist_rows(src, pseudonymizer))
                    db.executemany(f"INSERT OR REPLACE INTO {table}_new VALUES (?, ?, ?, ?)",
                                   progress(rows, src, show_progress))
                if extra is not None:
                    db.executemany("DELETE FROM hot_new WHERE key = ?",
                                   ((r[0],) for r in hotlist_rows(extra, pseudonymizer)))
                if table == "hot" and online:
                    merge_pending(db, "hot_new")      # a build never undoes a loss report
            parts: list[PartRef] = []
            for table, kind, keys in (("ent", "entitlements", "holder_key, name"),
                                      ("hot", "hotlist", "key")):
                k: DataKind = kind  # type: ignore[assignment]
                snap = prev_parts.get(kind)
                if changed[table] or snap is None:
                    snap = self._write_table_part(
                        k, "snapshot", kind, f"SELECT * FROM {cur[table]} ORDER BY {keys}", None)
                assert snap is not None
                parts.append(snap)
                if prev_version and changed[table]:
                    delta = self._write_table_part(
                        k, "delta", f"{kind}.delta",
                        f"SELECT * FROM {table}_new EXCEPT SELECT * FROM {table} "
                        f"ORDER BY {keys}",     # sorted: the terminal writes pages in order
                        f"SELECT {keys} FROM {table} EXCEPT SELECT {keys} FROM {table}_new "
                        f"ORDER BY {keys}")
                    if delta is not None:
                        parts.append(delta)
            parts += self._small_parts(sources, prev_parts)
            prev_totals: dict[str, int] = json.loads(self._meta("totals", "{}"))
            totals = {}
            for name, table in (("entitlements", "ent"), ("hotlist", "hot")):
                totals[name] = (prev_totals[name] if not changed[table] and name in prev_totals
                                else int(db.execute(f"SELECT count(*) FROM {cur[table]}")
                                         .fetchone()[0]))
            if prev_version and not renew and self._same_as_last(parts, base_url):
                db.execute("ROLLBACK")
                log.info("nothing changed since %s@%d: no new version", self.channel,
                         prev_version)
                last = self.dir / "versions" / f"{prev_version}.json"
                return BuildResult(prev_version, self._meta("hash"), last, last.stat().st_size,
                                   list(prev_parts.values()), prev_totals,
                                   time.monotonic() - t0, unchanged=True)
            inline_total = 0
            final_parts = []
            for p in parts:
                inline = p.size <= INLINE_MAX and inline_total + p.size <= INLINE_TOTAL_MAX \
                    and (p.mode != "snapshot" or p.kind not in ("entitlements", "hotlist")
                         or p.size <= 4096)
                if inline:
                    inline_total += p.size
                final_parts.append(p.model_copy(update={"inline": inline}))
            http = [p.name for p in final_parts if not p.inline]
            if http and not base_url:
                raise SourceError(f"parts {', '.join(http)} are too large to travel inline "
                                  "and go over HTTP: pass --base-url (the parts server, "
                                  "e.g. https://hub.example/parts/; see 'ykt hub policy "
                                  "serve'), or every terminal refuses the bundle")
            version = prev_version + 1
            manifest = Manifest(
                channel=self.channel, version=version, created=utc_stamp(now),
                expires=utc_stamp(now + expires_s), root_serial=root.serial, base_url=base_url,
                delta_from=(DeltaBase(version=prev_version, hash=self._meta("hash"))
                            if prev_version else None),
                totals=totals, parts=final_parts,
                online_through=int(self._meta("online_since", "0")))
            sm = signed_manifest(manifest, [signer])
            env = Envelope(
                manifest=sm, roots=[r for r in self.roots() if r.signatures],
                inline={p.sha256: base64.b64encode((self.parts_dir / p.sha256).read_bytes())
                        .decode() for p in final_parts if p.inline})
            digest = env.digest()
            out = self.dir / "versions" / f"{version}.json"
            data = env.to_bytes()
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, out)
            for table in ("ent", "hot"):
                if changed[table]:
                    db.execute(f"DROP TABLE {table}")
                    db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
            for k2, v in (("version", str(version)), ("hash", digest),
                          ("key_fingerprint", fingerprint), ("base_url", base_url),
                          ("totals", json.dumps(totals)),
                          ("parts", json.dumps([p.model_dump(mode="json")
                                                for p in final_parts]))):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k2, v))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("built %s@%d: %s", self.channel, version,
                 ", ".join(f"{p.name} {p.size} B{' inline' if p.inline else ''}"
                           for p in final_parts))
        return BuildResult(version, digest, out, len(data), final_parts, totals,
                           time.monotonic() - t0)

    def _small_parts(self, sources: BundleSources, prev: dict[str, PartRef]) -> list[PartRef]:
        parts: dict[str, PartRef] = {n: p for n, p in prev.items()
                                     if p.kind in ("rules", "issuers", "settings")}
        if sources.rules:
            parts = {n: p for n, p in parts.items() if p.kind != "rules"}
            for path in sources.rules:
                rs = load_ruleset(path)             # validates and runs the vectors
                name = f"rules/{rs.profile.name}"
                parts[name] = self._file_part(name, "rules", Path(path).read_bytes())
        if sources.issuers is not None:
            raw = sources.issuers.read_bytes()
            if sources.issuers.suffix == ".toml":
                doc = tomllib.loads(raw.decode())
            else:
                doc = json.loads(raw)
            parse_trust_document(doc, source=str(sources.issuers))
            parts["issuers"] = self._file_part("issuers", "issuers",
                                               json.dumps(doc, ensure_ascii=False).encode())
        if sources.settings is not None:
            doc = json.loads(sources.settings.read_bytes())
            if not isinstance(doc, dict):
                raise SourceError(f"{sources.settings}: settings must be a JSON object")
            parts["settings"] = self._file_part("settings", "settings", canonical(doc))
        check_bundle_parts(self.parts_dir, parts, sources.settings)
        return [parts[n] for n in sorted(parts)]

    def _same_as_last(self, parts: list[PartRef], base_url: str) -> bool:
        """Whether ``parts`` (no delta among them) are exactly the last version's
        snapshots and files, served from the same ``base_url``."""
        if any(p.mode == "delta" for p in parts):
            return False
        last = [p for p in (PartRef.model_validate(d)
                            for d in json.loads(self._meta("parts", "[]"))) if p.mode != "delta"]
        env = json.loads(self.latest_envelope())
        return (sorted((p.name, p.sha256) for p in parts)
                == sorted((p.name, p.sha256) for p in last)
                and env["manifest"]["signed"].get("base_url", "") == base_url)

    # -- publishing --------------------------------------------------------------------
    def publish(self, settings: Any, *, client_id: str = "ykt-hub-policy",
                timeout_s: float = 10.0) -> int:
        """Publish the latest envelope retained (QoS 1) on the channel's manifest topic.

        ``settings`` is a :class:`sync.link.MqttSettings`. Returns the published version.
        Raises ``LookupError`` (nothing built) or ``TimeoutError`` (broker unreachable).
        """
        from sync.link import Link

        data = self.latest_envelope()
        link = Link(settings, client_id)
        link.start()
        try:
            if not link.wait_connected(timeout_s):
                raise TimeoutError(f"broker {settings.host}:{settings.port} not reachable")
            info = link.publish(policy_manifest(self.channel), data, qos=1, retain=True)
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                raise TimeoutError("manifest publish not acknowledged by the broker")
        finally:
            link.stop()
        log.info("published %s@%d (%d bytes) retained", self.channel, self.version, len(data))
        return self.version
