"""The hub's side of protocol v2 (``docs/protocol.md`` §10): whom it believes, what it
signs with.

:class:`HubTrust` reads the hub identity directory (``--identity``,
:class:`agent.identity.HubIdentityPaths`): ``hub-signing.key`` signs acks and the hub's
status; ``terminals/{terminal}.crt`` is the enrolled certificate whose public key must
verify each tx batch's head signature; ``terminals/{terminal}.revoked`` refuses a
terminal at once. Certificates are re-read when their file changes (a renewal), so the
enrollment side never has to signal the hub.

:func:`check_batch_chain` is what makes one head signature cover a whole batch: the
records must be consecutive, each hash its body's, each ``prev`` the hash before it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.x509.oid import NameOID

from agent.errors import YktError
from agent.identity import (
    HubIdentityPaths,
    IdentityError,
    PrivateKey,
    PublicKey,
    load_certificate,
    load_private_key,
    public_key_from_cert,
    verify,
)
from sync.hub.chain import IncomingRecord
from sync.signed import tx_head_bytes

__all__ = ["HubTrust", "UntrustedTerminal", "check_batch_chain"]


class UntrustedTerminal(YktError, ValueError):
    """A terminal the hub must not believe: ``kind`` is ``unknown_terminal`` (no enrolled
    certificate) or ``revoked_terminal``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class HubTrust:
    """The hub identity in ``directory``. Raises :class:`IdentityError` if
    ``hub-signing.key`` cannot be loaded."""

    def __init__(self, directory: Path) -> None:
        self.paths = HubIdentityPaths(Path(directory))
        self.signing_key: PrivateKey = load_private_key(self.paths.signing_key)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[tuple[int, int], PublicKey]] = {}

    def terminal_key(self, terminal: str) -> PublicKey:
        """The public key of ``terminal``'s enrolled certificate. Raises
        :class:`UntrustedTerminal` if it is revoked, not enrolled, or its certificate
        file is unreadable or names another terminal."""
        if self.paths.terminal_revoked(terminal).exists():
            raise UntrustedTerminal("revoked_terminal", f"terminal {terminal} is revoked")
        path = self.paths.terminal_cert(terminal)
        try:
            st = os.stat(path)
        except OSError:
            raise UntrustedTerminal("unknown_terminal",
                                    f"no enrolled certificate for {terminal}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._keys.get(terminal)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            cert = load_certificate(path)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if not names or names[0].value != terminal:
                raise IdentityError(f"{path}: certificate is not issued to {terminal}")
            key = public_key_from_cert(cert, path)
        except IdentityError as err:
            raise UntrustedTerminal("unknown_terminal", str(err)) from None
        with self._lock:
            self._keys[terminal] = (stamp, key)
        return key

    def verify_head(self, terminal: str, epoch: str, head: IncomingRecord,
                    signature: bytes, skip: tuple[int, int] | None = None) -> bool:
        """Does ``signature`` verify with ``terminal``'s key over the batch head (and its
        ``skip`` statement)? Raises :class:`UntrustedTerminal` as :meth:`terminal_key`."""
        key = self.terminal_key(terminal)
        return verify(key, signature, tx_head_bytes(terminal, epoch, head.seq, head.hash,
                                                    skip))


def check_batch_chain(records: Sequence[IncomingRecord]) -> str | None:
    """Why ``records`` are not one consecutive hash chain (None if they are): each
    record's claimed hash must be its body's, its ``body.seq`` its seq, its ``prev`` the
    previous record's hash, and the seqs consecutive."""
    prev: IncomingRecord | None = None
    for r in records:
        if r.computed_hash != r.hash:
            return f"record seq {r.seq}: hash does not match body"
        if r.body.get("seq") != r.seq:
            return f"record seq {r.seq}: body seq differs"
        if prev is not None:
            if r.seq != prev.seq + 1:
                return f"records are not consecutive at seq {prev.seq}..{r.seq}"
            if r.body.get("prev") != prev.hash:
                return f"record seq {r.seq}: prev is not the hash of seq {prev.seq}"
        prev = r
    return None
