"""Which SM2 (国密) backend verifies here, proven by a known-answer test.

A backend is only used — and only claimed, by :func:`agent.codes.algorithms.sm2_backend`,
``ykt diag`` and ``scripts/install`` — when it verifies a fixed SM2-with-SM3 signature
(made once with tongsuopy; GB/T 32918 default user id) and refuses the same signature over
altered data. A library that loads but cannot verify SM2, or one that accepts anything,
is not claimed: SM2-signed codes are then refused as unsupported.

Order: tongsuopy (verify and sign) where it is installed, else the system's libcrypto 3
(verify only; Raspberry Pi OS aarch64, where tongsuopy has no wheels).

``python -m agent.codes.sm2_check [--json]`` prints the backend (``tongsuopy``,
``libcrypto`` or ``none``) and why; exit 0 when SM2 verifies here, 1 when it does not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.codes import algorithms as algs
from agent.codes import sm2_libcrypto

__all__ = ["KNOWN_ANSWER", "Sm2Support", "checked_sm2", "main", "self_test", "sm2_support"]

KNOWN_ANSWER = {
    "public_pem": b"-----BEGIN PUBLIC KEY-----\n"
                  b"MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAE5JdQNyTpQp7aOVxmuAAwy1VuDpZC\n"
                  b"gJyYo4kNRC9Gyy8VOkzAWIUzBpPSqhdDkjK6h/dsYDajryZaUiDP6lde8Q==\n"
                  b"-----END PUBLIC KEY-----\n",
    "data": "YKT SM2 self-test 国密".encode(),
    "signature": bytes.fromhex(
        "5b703a592ebd9fe5d9dc4da9ec445fab92b95aad51465c609e970f4c56c3036b"
        "8d1d6e27a3e0018c21048e7b0e8ee5667a0e24566d11b6abd8e70f1bc6f15212"),
}
"""An SM2 public key, data and its raw ``r || s`` signature (tongsuopy, default id)."""


def self_test(alg: algs.SignatureAlgorithm) -> str | None:
    """None when ``alg`` verifies :data:`KNOWN_ANSWER` and refuses it over altered data;
    else what went wrong."""
    try:
        pub = alg.load_public_pem(KNOWN_ANSWER["public_pem"])
        good = alg.verify(pub, KNOWN_ANSWER["signature"], KNOWN_ANSWER["data"])
        bad = alg.verify(pub, KNOWN_ANSWER["signature"], KNOWN_ANSWER["data"] + b"!")
    except Exception as err:        # a broken library: say what it raised
        return f"{type(err).__name__}: {err}"
    if not good:
        return "it does not verify a valid SM2 signature"
    if bad:
        return "it accepts an SM2 signature over altered data"
    return None


def _libcrypto() -> algs.SignatureAlgorithm:
    if not sm2_libcrypto.available():
        raise algs.AlgorithmUnavailable("the system's libcrypto has no SM2 (OpenSSL 3 needed)")
    verifier: algs.SignatureAlgorithm = sm2_libcrypto.verifier_class()()
    return verifier


def checked_sm2() -> algs.SignatureAlgorithm:
    """The first SM2 backend here that passes :func:`self_test`: tongsuopy, then libcrypto.

    Raises :class:`agent.codes.algorithms.AlgorithmUnavailable` saying why each failed."""
    reasons = []
    makers: list[tuple[str, Callable[[], algs.SignatureAlgorithm]]] = [
        ("tongsuopy", algs.SM2SM3), ("libcrypto", _libcrypto)]
    for name, make in makers:
        try:
            inst = make()
        except algs.AlgorithmUnavailable as err:
            reasons.append(str(err))
            continue
        why = self_test(inst)
        if why is None:
            return inst
        reasons.append(f"{name} fails the SM2 known-answer test: {why}")
    raise algs.AlgorithmUnavailable("; ".join(reasons))


@dataclass(frozen=True)
class Sm2Support:
    """The SM2 backend in use (``tongsuopy``, ``libcrypto`` or ``none``) and why."""

    backend: str
    detail: str

    @property
    def available(self) -> bool:
        return self.backend != "none"


_DETAIL = {"tongsuopy": "tongsuopy (verify and sign)",
           "libcrypto": "the system's libcrypto (verify only)"}


def sm2_support() -> Sm2Support:
    """What :func:`agent.codes.algorithms.algorithm` uses for SM2 here, self-tested."""
    try:
        alg = algs.algorithm("SM2")
    except algs.AlgorithmUnavailable as err:
        return Sm2Support("none", f"SM2-signed codes are refused as unsupported ({err})")
    backend = str(getattr(alg, "backend", "tongsuopy"))
    return Sm2Support(backend, f"{_DETAIL.get(backend, backend)}, known-answer test passed")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.codes.sm2_check [--json]``: exit 0 SM2 verifies here, 1 not."""
    args = list(sys.argv[1:] if argv is None else argv)
    s = sm2_support()
    if "--json" in args:
        print(json.dumps({"backend": s.backend, "available": s.available, "detail": s.detail},
                         ensure_ascii=False))
    else:
        print(f"{s.backend}: {s.detail}")
    return 0 if s.available else 1


if __name__ == "__main__":
    raise SystemExit(main())
