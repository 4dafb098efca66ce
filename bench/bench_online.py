"""Online-verified codes end to end: ``python -m bench.bench_qr --online-only`` runs this.

Tap → journaled decision through the real :class:`agent.engine.Engine`, a
:class:`~agent.codes.CodeVerifier` with the ``ESSC:`` scheme of a ``[[codes.online]]``
table (:func:`agent.codes.online_config.online_schemes`: the HTTPS client trusting only
the test CA) and the simulator's verification service (:mod:`simulator.code_service`)
over real TLS on localhost, in each of its modes: ``ok`` (the service decides), ``slow``
(answers after 5 s: the tap is decided by the offline fallback at the timeout), ``garbage``
and ``down``. ``backoff_s`` is 0, so every tap calls the service. Budget: every tap is
decided within ``timeout_ms`` + 50 ms.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

from agent.codes import CodeVerifier, TrustStore
from agent.codes.online_config import OnlineSchemeConfig, online_schemes
from agent.engine import Engine
from agent.journal import Journal
from agent.model import ClockQuality, Location, Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyInfo, PolicyStore
from bench.report import table
from profiles import profile_path
from simulator.code_service import CodeService, make_service_ca

__all__ = ["TIMEOUT_MS", "bench_online_https", "online_https_markdown"]

TIMEOUT_MS = 300
MARGIN_MS = 50
KEY = Pseudonymizer(b"bench-pseudonym-key!")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_online_https(rounds: int) -> tuple[list[list[object]], bool]:
    """Tap → decision times per service mode (ms)."""
    logging.getLogger("agent.codes.online").setLevel(logging.ERROR)
    rows: list[list[object]] = []
    ok = True
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tls = make_service_ca(tmp / "essc")
        service = CodeService(tls, slow_s=5.0).start()
        store = PolicyStore(tmp / "store.db")
        store.apply(entitlements=[], hotlist=[], info=PolicyInfo("bench/online", 1, "x", ""))
        journal = Journal(tmp / "journal.db", "BENCH-ONLINE")
        verifier = CodeVerifier(TrustStore([]), pseudonymizer=KEY)
        cfg = OnlineSchemeConfig(prefixes=["ESSC:"], kind="qr:essc", url=service.url,
                                 ca_file=tls.ca_cert, timeout_ms=TIMEOUT_MS, backoff_s=0,
                                 max_workers=4)
        schemes = online_schemes([cfg], KEY)
        for s in schemes:
            verifier.register(s)
        engine = Engine(load_ruleset(profile_path("bus_validator")), store, journal,
                        location=Location(route="1", vehicle="V1"), verifier=verifier,
                        clock_quality=lambda: ClockQuality.SYNCED)
        try:
            for mode in ("ok", "slow", "garbage", "down"):
                if mode == "down":
                    service.stop()
                else:
                    service.mode = mode     # type: ignore[assignment]
                times: list[float] = []
                outcomes: set[str] = set()
                for i in range(rounds if mode != "slow" else max(3, rounds // 5)):
                    text = service.issue(f"37030219500101{i:04d}")
                    t0 = time.perf_counter()
                    out = engine.handle(Presentation(PresentationKind.CODE, "bench",
                                                     time.monotonic_ns(), text=text))
                    times.append((time.perf_counter() - t0) * 1000)
                    assert out.record is not None
                    outcomes.add(out.decision.reason.value
                                 + (f" ({out.record.body['detail']})"
                                    if "detail" in out.record.body else ""))
                budget = TIMEOUT_MS + MARGIN_MS
                met = max(times) < budget
                ok = ok and met
                rows.append([mode, len(times), f"{statistics.median(times):.1f}",
                             f"{_pct(times, 0.99):.1f}", f"{max(times):.1f}", f"< {budget}",
                             "met" if met else "NOT met", "; ".join(sorted(outcomes))])
        finally:
            for s in schemes:
                s.close()
            service.stop()
            journal.close()
            store.close()
    return rows, ok


def online_https_markdown(rounds: int) -> str:
    rows, ok = bench_online_https(rounds)
    return "\n\n".join([
        "### Tap → decision against the simulator's HTTPS verification service",
        f"`timeout_ms` {TIMEOUT_MS}, `backoff_s` 0 (every tap calls the service), {rounds} "
        "taps per mode (fewer while it is slow); real TLS on localhost, a new connection "
        "per call, the real engine and journal. `slow` answers after 5 s.",
        table(["service", "n", "p50 ms", "p99 ms", "max ms", "budget ms", "verdict",
               "decided as"], rows),
        f"Every tap decided within `timeout_ms` + {MARGIN_MS} ms: "
        f"**{'met' if ok else 'NOT met'}**.",
    ])
