"""挂失联动 at the hub: publish a hotlist change to every channel within seconds.

:func:`publish_change` is the one entry point for every caller (``ykt hub hotlist
add|remove``, the web console's form, the loss-reporting HTTP endpoint of
:mod:`sync.hub.hotlist_http`). For each channel of the policy repository it

1. hashes the card identification code (卡识别码) or 社会保障号码 with the deployment's
   pseudonymisation key (refused when the key's fingerprint is not the repository's);
   the raw identifier is never stored or logged;
2. records the change in the channel's ``online`` table with the next online sequence;
3. signs an **online hotlist manifest** (:class:`agent.policy.online.OnlineManifest`)
   with the online hotlist key, carrying one inline ``hotlist.delta`` part with *every*
   online change since the last offline build (``since``): the retained message alone
   brings any terminal up to date;
4. stores it under ``channels/<channel>/online/<sequence>.json`` and publishes it
   retained, QoS 1, on ``ykt/v1/online/{channel}/hotlist``.

The next offline build (:meth:`sync.hub.policy.PolicyRepo.build`) takes the pending
changes into its hotlist (:func:`merge_pending`) and names the sequence it includes
(``online_through``); later online manifests carry only later changes.
"""

from __future__ import annotations

import base64
import io
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.journal import utc_stamp
from agent.policy.manifest import Envelope, PartRef, SignedManifest, sha256_hex
from agent.policy.online import OnlineManifest
from agent.policy.parts import PartWriter
from agent.policy.signing import SigningKey, sign_document
from agent.pseudonym import Pseudonymizer
from sync.hub.policy import PolicyRepo
from sync.hub.policy_sources import SourceError, check_card_id, check_ssn, key_fingerprint
from sync.topics import online_hotlist

__all__ = ["ONLINE_SCHEMA", "HotlistChange", "HotlistResult", "Publisher", "channels",
           "merge_pending", "mqtt_publisher", "publish_change"]

log = logging.getLogger(__name__)

ONLINE_SCHEMA = ("key TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT, listed TEXT, "
                 "removed INTEGER NOT NULL, seq INTEGER NOT NULL")
"""The ``online`` table of a channel's ``state.db``: changes no offline build holds yet."""

ONLINE_EXPIRES_S = 30 * 86400
"""Validity of an online manifest, seconds (a terminal refuses an expired one; each change
re-signs the whole pending set)."""

Publisher = Callable[[str, bytes], None]
"""``publish(topic, payload)``: retained, QoS 1; raises on failure."""


@dataclass(frozen=True)
class HotlistChange:
    """One loss report (``add``) or its withdrawal (``remove``). ``identifier`` is a card
    identification code (32 hex digits: kind ``card``) or an 18-character 社会保障号码
    (kind ``holder``: every card of the holder). Raises ``ValueError`` naming the fix."""

    action: Literal["add", "remove"]
    identifier: str = field(repr=False)          # never in a repr, a log or the store
    reason: str = "lost"
    kind: str = field(init=False, default="")
    normalized: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        if self.action not in ("add", "remove"):
            raise ValueError(f"action must be add or remove, got {self.action!r}")
        if not self.reason or "\t" in self.reason or "\n" in self.reason \
                or len(self.reason) > 64:
            raise ValueError("reason: 1–64 characters, no tabs or line breaks")
        s = self.identifier.strip()
        if len(s) == 18:
            object.__setattr__(self, "kind", "holder")
            object.__setattr__(self, "normalized", check_ssn(s))
        else:
            try:
                object.__setattr__(self, "normalized", check_card_id(s))
            except ValueError:
                raise ValueError("CARD must be a card identification code (卡识别码, 32 hex "
                                 "digits) or an 18-character 社会保障号码") from None
            object.__setattr__(self, "kind", "card")

    def key(self, pseudo: Pseudonymizer) -> str:
        """The keyed hash terminals match (card or holder key)."""
        return (pseudo.card_key(self.normalized) if self.kind == "card"
                else pseudo.holder_key(self.normalized))


@dataclass(frozen=True)
class HotlistResult:
    """What :func:`publish_change` did: the key prefix (for the audit log; never the raw
    identifier), and per channel the online sequence published and where."""

    key_prefix: str
    published: dict[str, int]
    topics: dict[str, str]
    seconds: float


def channels(repo_root: str | Path) -> list[str]:
    """Every channel of the policy repository at ``repo_root`` (those with a state)."""
    base = Path(repo_root) / "channels"
    return sorted(str(p.parent.relative_to(base)) for p in base.rglob("state.db"))


def merge_pending(db: sqlite3.Connection, table: str) -> int:
    """Apply the channel's pending online changes to the hotlist ``table`` (an offline
    build's new hotlist) and clear them; return the online sequence they reach (0 if
    there never was one). Call inside the build's transaction."""
    db.execute(f"CREATE TABLE IF NOT EXISTS online ({ONLINE_SCHEMA}) WITHOUT ROWID")
    row = db.execute("SELECT v FROM meta WHERE k = 'online_seq'").fetchone()
    seq = int(row[0]) if row else 0
    db.execute(f"INSERT OR REPLACE INTO {table} SELECT key, kind, reason, listed FROM online "
               "WHERE removed = 0")
    db.execute(f"DELETE FROM {table} WHERE key IN (SELECT key FROM online WHERE removed = 1)")
    db.execute("DELETE FROM online")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('online_since', ?)", (str(seq),))
    return seq


def has_pending(db: sqlite3.Connection) -> bool:
    """Whether the channel has online changes no offline build holds yet."""
    db.execute(f"CREATE TABLE IF NOT EXISTS online ({ONLINE_SCHEMA}) WITHOUT ROWID")
    return db.execute("SELECT 1 FROM online LIMIT 1").fetchone() is not None


def _delta_part(db: sqlite3.Connection) -> bytes:
    buf = io.BytesIO()
    w = PartWriter(buf, "hotlist", "delta")
    for (key,) in db.execute("SELECT key FROM online WHERE removed = 1 ORDER BY key"):
        w.remove(key)
    for r in db.execute("SELECT key, kind, reason, listed FROM online WHERE removed = 0 "
                        "ORDER BY key"):
        w.add(*r)
    w.close()
    return buf.getvalue()


def _sign_channel(repo: PolicyRepo, change: HotlistChange, key: str, signer: SigningKey,
                  now: float) -> tuple[int, bytes]:
    """Record ``change`` and sign the channel's next online manifest; returns
    ``(sequence, envelope bytes)``. Raises ``PermissionError`` for a key the root does not
    delegate."""
    root = repo.current_root()
    if not any(k.kid == signer.public.kid for k in root.hotlist_keys):
        raise PermissionError(f"key {signer.public.kid} is not the online hotlist key of "
                              f"signer root #{root.serial}: delegate it first ('ykt hub "
                              "policy rotate --hotlist-key')")
    db = repo.db
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS online ({ONLINE_SCHEMA}) WITHOUT ROWID")
        meta = dict(db.execute("SELECT k, v FROM meta WHERE k IN ('online_seq', "
                               "'online_since')").fetchall())
        seq = int(meta.get("online_seq", "0")) + 1
        db.execute("INSERT OR REPLACE INTO online VALUES (?, ?, ?, ?, ?, ?)",
                   (key, change.kind, change.reason, utc_stamp(now)[:10],
                    int(change.action == "remove"), seq))
        data = _delta_part(db)
        sha = sha256_hex(data)
        manifest = OnlineManifest(
            channel=repo.channel, sequence=seq, since=int(meta.get("online_since", "0")),
            created=utc_stamp(now), expires=utc_stamp(now + ONLINE_EXPIRES_S),
            root_serial=root.serial,
            parts=[PartRef(name="hotlist.delta", kind="hotlist", mode="delta", sha256=sha,
                           size=len(data), rows=0, inline=True)])
        signed = manifest.model_dump(mode="json")
        env = Envelope(manifest=SignedManifest(signed=signed,
                                               signatures=sign_document(signed, [signer])),
                       roots=[r for r in repo.roots() if r.signatures],
                       inline={sha: base64.b64encode(data).decode()})
        payload = env.to_bytes()
        out = repo.dir / "online" / f"{seq}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(payload)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('online_seq', ?)", (str(seq),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return seq, payload


def publish_change(repo_root: str | Path, change: HotlistChange, *, signer: SigningKey,
                   pseudonymizer: Pseudonymizer, publish: Publisher,
                   only: Iterable[str] | None = None, now: float | None = None
                   ) -> HotlistResult:
    """Publish ``change`` to every channel of the repository (or those in ``only``):
    see the module docstring. ``publish(topic, payload)`` sends retained, QoS 1.

    Raises ``ValueError`` (:class:`SourceError`: the repository was built with another
    pseudonymisation key; ``LookupError``: no channel or no signer root),
    ``PermissionError`` (``signer`` is not the delegated online hotlist key) or what
    ``publish`` raises (the change stays recorded: the next change or build carries it).
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    names = sorted(only) if only is not None else channels(repo_root)
    if not names:
        raise LookupError(f"{repo_root}: no channel to publish to (build one first)")
    key = change.key(pseudonymizer)
    fingerprint = key_fingerprint(pseudonymizer)
    published: dict[str, int] = {}
    topics: dict[str, str] = {}
    for name in names:
        repo = PolicyRepo(repo_root, name)
        try:
            if repo.key_fingerprint() not in ("", fingerprint):
                raise SourceError(f"channel {name} was built with another pseudonymisation "
                                  "key: the hotlist key would never match there")
            seq, payload = _sign_channel(repo, change, key, signer, now)
        finally:
            repo.close()
        topic = str(online_hotlist(name))
        publish(topic, payload)
        published[name], topics[name] = seq, topic
    log.info("hotlist %s of %s…(%s, %s) published to %d channel(s)", change.action,
             key[:8], change.kind, change.reason, len(published))
    return HotlistResult(key[:8], published, topics, time.monotonic() - t0)


def mqtt_publisher(settings: object, timeout_s: float = 10.0) -> Publisher:
    """A :data:`Publisher` over a broker session per call (``settings`` a
    :class:`sync.link.MqttSettings`). Raises ``PermissionError`` when the broker refuses
    the publication (an identity without the hub role), ``ConnectionError``/
    ``TimeoutError`` when it cannot be reached."""
    from sync.session import BrokerSession

    def publish(topic: str, payload: bytes) -> None:
        with BrokerSession(settings, "") as session:   # type: ignore[arg-type]
            session.connect(timeout_s)
            rc = session.publish(topic, payload, retain=True, timeout=timeout_s)
        if rc >= 0x80:
            raise PermissionError(f"the broker refused {topic} (reason {rc:#x}): publish "
                                  "with the hub's identity")
    return publish
