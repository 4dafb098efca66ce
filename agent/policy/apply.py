"""The terminal side of a policy update: verify, fetch, check, stage, switch, announce.

:meth:`PolicyApplier.offer` takes the bytes of a manifest envelope and either applies the
bundle or raises. In order:

1. parse the envelope; verify the signer-root chain and the manifest signatures
   (``unsigned``, ``unknown_signer``, ``bad_signature``);
2. check the channel (``wrong_channel``), the version against the applied one
   (``rollback``; the same version and hash is a no-op) and the expiry (``expired``);
3. check the inline parts are named by the manifest (``mix_and_match``) and hash-match;
4. choose a delta when it is based on exactly what the store holds, else the snapshot;
5. fetch the needed parts (inline, or via the :class:`PartFetcher`, e.g. HTTP with
   resume), each checked against the manifest's size and SHA-256
   (``part_hash_mismatch``);
6. load every rule set and run its test vectors (``vectors_failed``), parse the issuer keys
   (the checked objects are kept on the :class:`AppliedPolicy`: nothing is parsed twice);
7. stage and switch (:mod:`agent.policy.stage`, by default in a child process: see
   :mod:`agent.policy.runners`);
8. between two taps (the ``guard``, :meth:`agent.engine.Engine.between_taps`), move the
   store's reader to the new snapshot and call the listeners with the
   :class:`AppliedPolicy` (new rules, issuer keys): no decision ever mixes one bundle's
   data with another's rules, and each journals the label of the bundle it used.

Refusals (:class:`BundleRefused`) keep the policy and are not retried; :class:`ApplyFailed`
(download, disk, a killed apply, a snapshot deferred by busy hours) is retried by
:class:`sync.downlink.Downlink`. After a delta, a :class:`Compactor` merges its overlay.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from agent.journal import canonical
from agent.policy.calendar_part import read_calendar, stored_calendar
from agent.policy.compaction import Compactor
from agent.policy.errors import ApplyFailed, BundleRefused, PolicyError, Refusal
from agent.policy.manifest import Envelope, Manifest, PartRef, Root, sha256_hex
from agent.policy.parts import file_sha256
from agent.policy.runners import ApplyRunner, InProcessRunner, SubprocessRunner, stage_command
from agent.policy.signing import load_root, verify_envelope
from agent.policy.small_parts import check_small_parts as _check_small_parts
from agent.policy.stage import ApplyPlan
from agent.rules import RuleSet
from agent.store import PolicyInfo, PolicyStore

if TYPE_CHECKING:
    from agent.codes.trust import IssuerKey
    from agent.policy.schedule import MaintenanceSchedule
    from agent.workdays import WorkCalendar

__all__ = ["AppliedPolicy", "ApplyRunner", "Compactor", "InProcessRunner", "Listener",
           "PartFetcher", "PolicyApplier", "SubprocessRunner", "Verified", "stage_command"]

log = logging.getLogger(__name__)

ROOT_ARTIFACT = "root"


class PartFetcher(Protocol):
    """Downloads a non-inline part to ``dest`` (complete, size and hash checked).

    Raises :class:`BundleRefused` (``part_hash_mismatch``) for wrong bytes and
    :class:`ApplyFailed` (``fetch_failed``) when the part cannot be had right now.
    """

    def fetch(self, ref: PartRef, url: str, dest: Path) -> None: ...


@dataclass(frozen=True)
class AppliedPolicy:
    """The policy now in force: identity and the small parts (rules, issuers, settings).

    ``rulesets`` and ``keys`` are the parsed, checked forms of ``rules`` and ``issuers``
    (checked once, before the switch; at startup parsed once from the store).
    """

    info: PolicyInfo
    rules: Mapping[str, str] = field(default_factory=dict)   # profile name → TOML text
    issuers: bytes | None = None                            # trust document (JSON)
    settings: Mapping[str, Any] = field(default_factory=dict)
    mode: str = "startup"                                   # delta | snapshot | startup
    rulesets: Mapping[str, RuleSet] = field(default_factory=dict)
    keys: tuple[list[IssuerKey], str] | None = None         # (IssuerKey list, version)
    calendar: WorkCalendar | None = None                    # holidays, 调休 (calendar part)

    def ruleset(self, profile: str) -> RuleSet | None:
        """The bundle's (vector-checked) rule set for ``profile``, or None if it has none."""
        return self.rulesets.get(profile)

    def issuer_keys(self) -> tuple[list[IssuerKey], str] | None:
        """``(IssuerKey list, version)`` for :meth:`agent.codes.trust.TrustStore.replace`,
        or None if the bundle carries no issuer keys."""
        return self.keys


Listener = Callable[[AppliedPolicy], None]


class Verified(NamedTuple):
    """What :meth:`PolicyApplier.verify` established about an envelope."""
    envelope: Envelope
    manifest: Manifest
    root: Root                  # the signer root that signed it (after any rotation)
    info: PolicyInfo            # the identity the store will hold once it is applied
    applied: bool               # it is already the applied policy (nothing to do)


class PolicyApplier:
    """Applies bundles of one ``channel`` to ``store``.

    ``anchor`` is the provisioned signer root (serial 1, or later); ``staging_dir`` holds
    downloaded parts between attempts (resume after a crash); ``runner`` stages and
    switches (a child process by default); ``compactor`` merges a delta's overlay after
    its switch (:class:`Compactor`); ``clock`` gives epoch seconds; ``guard``
    returns a context in which no tap is decided (the switch and the listeners run in
    it; a tap waits for at most opening the new generation and the listeners' swaps).
    """

    def __init__(self, store: PolicyStore, *, channel: str, anchor: Root,
                 staging_dir: str | Path | None = None, runner: ApplyRunner | None = None,
                 clock: Callable[[], float] = time.time,
                 guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
                 compactor: Compactor | None = None, keep_free_bytes: int = 0,
                 free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
                 schedule: MaintenanceSchedule | None = None) -> None:
        self.store = store
        self.schedule = schedule     # when a snapshot may start (agent.policy.schedule)
        self.keep_free_bytes = keep_free_bytes   # bytes left free: the journal's reserve ×2
        self._free_bytes = free_bytes
        self.guard = guard
        self.compactor = compactor or Compactor(store)
        self.channel = channel
        self.anchor = anchor
        self.staging = Path(staging_dir or str(store.path) + ".parts")
        self.staging.mkdir(parents=True, exist_ok=True)
        self.runner: ApplyRunner = runner or SubprocessRunner()
        self.clock = clock
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(applied)`` after each successful apply (exceptions are logged)."""
        self._listeners.append(fn)

    def trusted_root(self) -> Root:
        """The signer root in force: the stored one if newer than the anchor."""
        raw = self.store.artifact(ROOT_ARTIFACT)
        if raw is not None:
            try:
                stored = load_root(raw, "store:root")
                if stored.serial >= self.anchor.serial:
                    return stored
            except ValueError:
                log.error("stored signer root unreadable; falling back to the anchor")
        return self.anchor

    def current(self) -> AppliedPolicy:
        """The applied policy as the store holds it (call at startup). Stored rules or
        issuer keys that no longer load are logged and left out (the caller then keeps
        its own)."""
        s = self.store
        names = s.artifact_names()
        rules = {n.split("/", 1)[1]: s.artifact(n) or b"" for n in names
                 if n.startswith("rules/")}
        rulesets: dict[str, RuleSet] = {}
        for profile, raw in rules.items():
            try:
                rulesets.update(_check_small_parts({profile: raw}, None, None).rulesets)
            except BundleRefused as err:
                log.error("stored rules/%s of %s unusable: %s", profile, s.info.label, err)
        issuers = s.artifact("issuers")
        keys = None
        if issuers is not None:
            try:
                keys = _check_small_parts({}, issuers, None).keys
            except BundleRefused as err:
                log.error("stored issuer keys of %s unusable: %s", s.info.label, err)
        settings: dict[str, Any] = {}
        try:
            settings = _check_small_parts({}, None, s.artifact("settings")).settings
        except BundleRefused as err:
            log.error("stored settings of %s unusable: %s", s.info.label, err)
        return AppliedPolicy(s.info, {p: r.decode("utf-8", "replace") for p, r in rules.items()},
                             issuers, settings, "startup", rulesets, keys, stored_calendar(s))

    # ---------------------------------------------------------------------------------
    def verify(self, payload: bytes) -> Verified:
        """Steps 1–3 (no I/O besides reading the store). Raises :class:`BundleRefused`."""
        env = Envelope.parse(payload)
        manifest, root = verify_envelope(env, self.trusted_root())
        if manifest.channel != self.channel:
            raise BundleRefused(Refusal.WRONG_CHANNEL,
                                f"manifest for {manifest.channel}, terminal follows {self.channel}")
        have = self.store.info
        info = env.policy_info(manifest)
        if have.channel == info.channel and have.version == info.version \
                and have.hash == info.hash:
            return Verified(env, manifest, root, info, applied=True)
        if have.channel == manifest.channel and manifest.version <= have.version:
            raise BundleRefused(Refusal.ROLLBACK,
                                f"offered version {manifest.version}, applied {have.version}")
        if manifest.expires_at < self.clock():
            raise BundleRefused(Refusal.EXPIRED, f"manifest {manifest.version} expired "
                                f"{manifest.expires}; keeping {have.label}")
        named = {p.sha256: p for p in manifest.parts}
        for sha in env.inline:
            ref = named.get(sha)
            if ref is None:
                raise BundleRefused(Refusal.MIX_AND_MATCH,
                                    f"inline part {sha[:12]} is not named by the manifest")
            data = env.inline_bytes(sha) or b""
            if len(data) != ref.size or sha256_hex(data) != sha:
                raise BundleRefused(Refusal.PART_HASH_MISMATCH,
                                    f"inline part {ref.name} does not match its hash")
        return Verified(env, manifest, root, info, applied=False)

    def offer(self, payload: bytes, fetcher: PartFetcher | None = None) -> AppliedPolicy | None:
        """Apply the bundle in ``payload``; return the new :class:`AppliedPolicy`, or None
        when it is already the applied one. Raises :class:`BundleRefused` or
        :class:`ApplyFailed`; the policy in force is unchanged then."""
        with self._lock:
            try:
                return self._offer(payload, fetcher)
            except PolicyError as err:
                log.warning("policy bundle not applied: %s", err,
                            extra={"refusal": err.refusal.value})
                raise

    def _switch(self, applied: AppliedPolicy, only_if_landed: bool = False) -> bool:
        """Step 8, inside the guard: the store's reader and the listeners move together.
        Returns False (``only_if_landed``) or raises :class:`ApplyFailed` when the store
        does not hold ``applied``."""
        with self.guard():
            self.store.refresh()
            if self.store.info != applied.info:
                if only_if_landed:
                    return False
                raise ApplyFailed(Refusal.APPLY_FAILED, f"store reports {self.store.info.label} "
                                  f"after applying {applied.info.label}")
            for fn in list(self._listeners):
                try:
                    fn(applied)
                except Exception:
                    log.exception("policy listener failed")
        return True

    def close(self) -> None:
        """Stop a background overlay merge (call at shutdown)."""
        self.compactor.stop()

    def _offer(self, payload: bytes, fetcher: PartFetcher | None) -> AppliedPolicy | None:
        env, manifest, root, info, applied = self.verify(payload)
        if applied:
            return None
        have = self.store.info
        delta = (manifest.delta_from is not None and have.channel == manifest.channel
                 and manifest.delta_from.version == have.version
                 and manifest.delta_from.hash == have.hash)
        if not delta and self.schedule is not None:   # busy hours: SnapshotDeferred
            self.schedule.check_snapshot(have, info.label)
        self.compactor.stop()      # one writer at a time; resumed after the switch
        slots = (["entitlements.delta", "hotlist.delta"] if delta
                 else ["entitlements", "hotlist"])
        data: dict[str, str | None] = {}
        for slot in slots:
            ref = manifest.part(slot)
            want_mode = "delta" if delta else "snapshot"
            if ref is None:
                if not delta:
                    raise BundleRefused(Refusal.MALFORMED, f"snapshot part {slot} missing")
                data[slot] = None
                continue
            if ref.kind not in slot or ref.mode != want_mode:
                raise BundleRefused(Refusal.MIX_AND_MATCH, f"part {slot} is {ref.kind}/{ref.mode}")
            data[slot] = str(self._obtain(env, manifest, ref, fetcher))
        artifacts: dict[str, tuple[str, str]] = {}
        small: dict[str, bytes] = {}
        for ref in manifest.parts:
            if ref.kind in ("entitlements", "hotlist"):
                continue
            path = self._obtain(env, manifest, ref, fetcher)
            artifacts[ref.name] = (ref.sha256, str(path))
            small[ref.name] = path.read_bytes()
        rules = {n.split("/", 1)[1]: b for n, b in small.items() if n.startswith("rules/")}
        checked = _check_small_parts(rules, small.get("issuers"), small.get("settings"))
        from agent.policy.site_parts import check_site_parts
        check_site_parts(small)               # site layout, reservations (docs/sites.md)
        root_path = self.staging / f"root-{root.serial}.json"
        root_bytes = canonical(root.model_dump(mode="json"))
        root_path.write_bytes(root_bytes)
        artifacts[ROOT_ARTIFACT] = (sha256_hex(root_bytes), str(root_path))
        plan = ApplyPlan(
            store=str(self.store.path), mode="delta" if delta else "snapshot",
            info=asdict(info), expect=asdict(have) if delta else None,
            entitlements=data[slots[0]], hotlist=data[slots[1]], artifacts=artifacts,
            totals={} if delta else dict(manifest.totals))
        if plan.mode == "snapshot":
            self._check_room(manifest)
        log.info("applying %s as %s (from %s)", info.label, plan.mode, have.label)
        result = AppliedPolicy(info, {p: b.decode() for p, b in rules.items()},
                               checked.issuers, checked.settings, plan.mode, checked.rulesets,
                               checked.keys, read_calendar(small.get("calendar")))
        self.store.hold()          # taps keep this state until the switch (step 8)
        try:
            self.runner.run(plan)
        except BaseException:
            # ends the hold; should the apply have landed after all (a child killed after
            # its commit), the terminal switches to it like to any other
            if not self._switch(result, only_if_landed=True):
                raise
            log.warning("the apply of %s reported a failure after it landed", info.label)
        else:
            self._switch(result)
        self._clean_staging()
        if plan.mode == "snapshot":
            self.store.collect_garbage()     # the reader has moved: old generations go
        log.info("policy %s applied (%s)", info.label, plan.mode)
        self.compactor.start()
        return result

    def _check_room(self, manifest: Manifest) -> None:
        """A snapshot builds a new generation beside the active one: refuse to start
        (:class:`ApplyFailed`, retried later) unless the disk holds about one more store
        (the active one's size, or four times the compressed parts for a first apply)
        on top of :attr:`keep_free_bytes`."""
        try:
            active = self.store.active_path.stat().st_size
        except OSError:
            active = 0
        parts = sum(p.size for p in manifest.parts if p.kind in ("entitlements", "hotlist"))
        need = max(active, 4 * parts) + self.keep_free_bytes
        free = self._free_bytes(self.store.path.parent)
        if free < need:
            raise ApplyFailed(Refusal.APPLY_FAILED,
                              f"not enough disk space for a snapshot: needs {need >> 20} MiB "
                              f"(the journal's reserve kept), {free >> 20} MiB free")

    def _obtain(self, env: Envelope, manifest: Manifest, ref: PartRef,
                fetcher: PartFetcher | None) -> Path:
        dest = self.staging / ref.sha256
        if dest.exists():
            if dest.stat().st_size == ref.size and file_sha256(dest) == ref.sha256:
                return dest          # fetched and checked by an earlier attempt
            # damaged on disk since (or torn): fetched again, never staged as it is
            log.warning("staged part %s no longer matches its hash; fetching it again",
                        ref.name)
            dest.unlink()
        inline = env.inline_bytes(ref.sha256)
        if inline is not None:
            tmp = dest.with_name(dest.name + ".tmp")
            tmp.write_bytes(inline)
            os.replace(tmp, dest)
            return dest
        if ref.inline:
            raise BundleRefused(Refusal.MALFORMED, f"inline part {ref.name} missing")
        if fetcher is None or not manifest.base_url:
            raise ApplyFailed(Refusal.FETCH_FAILED, f"no way to fetch part {ref.name}")
        fetcher.fetch(ref, manifest.base_url + ref.sha256, dest)
        return dest

    def _clean_staging(self) -> None:
        for f in self.staging.iterdir():
            try:
                f.unlink()
            except OSError:
                log.warning("could not remove staged part %s", f.name)
