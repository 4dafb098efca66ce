"""SM2-with-SM3 verification, side by side in one run: tongsuopy (where it installs) and
the system's libcrypto through ctypes (agent/codes/sm2_libcrypto.py, the path a Raspberry
Pi without tongsuopy wheels takes). Prints a table; results kept in bench/README.md."""

from __future__ import annotations

import statistics
import time

from agent.codes import algorithms as algs
from agent.codes import sm2_libcrypto

N = 2000


def _time(fn, n: int = N) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def main() -> None:
    signer = algs.SM2SM3()
    key = signer.generate()
    data = b"x" * 120                      # about a YKT1 code's signed structure
    sig = signer.sign(key, data)
    point_key = signer.cose_key(signer.public_key(key))
    verifier = sm2_libcrypto.verifier_class()()
    lib_pub = verifier.from_cose_key(point_key)
    ts_pub = signer.public_key(key)
    assert verifier.verify(lib_pub, sig, data) and signer.verify(ts_pub, sig, data)
    rows = []
    for name, fn in (("tongsuopy", lambda: signer.verify(ts_pub, sig, data)),
                     ("libcrypto (ctypes)", lambda: verifier.verify(lib_pub, sig, data))):
        t = _time(fn)
        rows.append((name, statistics.median(t), t[int(len(t) * 0.99)]))
    base = rows[0][1]
    print(f"{'SM2 verify':<22} {'p50 ms':>8} {'p99 ms':>8} {'× tongsuopy':>12}")
    for name, p50, p99 in rows:
        print(f"{name:<22} {p50:>8.3f} {p99:>8.3f} {p50 / base:>12.2f}")


if __name__ == "__main__":
    main()
