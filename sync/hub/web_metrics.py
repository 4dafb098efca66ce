"""``/metrics``: the hub in Prometheus' text format (``prometheus_client``).

Everything is read from the hub store at scrape time (a custom collector; the tables the
ingest maintains per terminal, never a scan of the records), so the numbers
are the same whichever hub process ingested them and whichever serves the page, and
nothing is counted twice when several hubs share a PostgreSQL store:

=============================================  ======  =====================================
``ykt_hub_records_ingested_total``             counter records stored (``rate()`` = ingest rate)
``ykt_hub_duplicates_rejected_total``          counter records received again and ignored
``ykt_hub_rejects_total{kind}``                counter messages/records refused, by kind
``ykt_hub_chain_breaks_total``                 counter hash-chain breaks detected
``ykt_hub_terminals{state}``                   gauge   terminals online / offline / stale
``ykt_hub_terminals_alarmed``                  gauge   terminals reporting an alarm
``ykt_hub_terminal_outbox_records``            histo.  terminals by outbox depth (records)
``ykt_hub_policy_terminals{channel,version}``  gauge   terminals per applied policy version
=============================================  ======  =====================================

**Auth**: a bearer token (``Authorization: Bearer …``, Prometheus' ``authorization:
credentials_file``) from ``$YKT_METRICS_TOKEN`` or ``$CREDENTIALS_DIRECTORY/metrics-token``;
without one the route is not served at all. The page holds no personal data, but terminal
ids, versions and alarms map the fleet, so it is not public (``docs/security.md``).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sync.hub.fleetstore import FleetStore
from sync.hub.store import HubStore

__all__ = ["OUTBOX_BUCKETS", "HubCollector", "metrics_route", "metrics_token"]

OUTBOX_BUCKETS = (0, 10, 100, 1_000, 10_000, 100_000)
"""Upper bounds (records) of the outbox-depth histogram's buckets (+Inf added)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubCollector(Collector):
    """Reads the store (and the fleet view) on every scrape."""

    def __init__(self, store: HubStore, *, fleet: FleetStore | None = None,
                 offline_after_s: float = 120.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.fleet = store, fleet
        self.offline_after_s, self.clock = offline_after_s, clock

    def collect(self) -> Iterator[Metric]:
        from sync.hub.console.storequery import store_totals
        from sync.hub.console.views import fleet_view, rollout

        t = store_totals(self.store)
        yield CounterMetricFamily("ykt_hub_records_ingested", "Journal records stored",
                                  value=t["records"])
        yield CounterMetricFamily("ykt_hub_duplicates_rejected",
                                  "Records received again and ignored",
                                  value=t["duplicates_rejected"])
        rej = CounterMetricFamily("ykt_hub_rejects", "Messages or records refused",
                                  labels=["kind"])
        for kind, n in sorted(t["rejected"].items()):
            rej.add_metric([kind], n)
        yield rej
        yield CounterMetricFamily("ykt_hub_chain_breaks", "Hash-chain breaks detected",
                                  value=t["chain_breaks"])
        rows = fleet_view(self.store, self.clock(), fleet=self.fleet,
                          offline_after_s=self.offline_after_s)
        state = GaugeMetricFamily("ykt_hub_terminals", "Terminals by state",
                                  labels=["state"])
        state.add_metric(["online"], sum(1 for r in rows if not r["offline"]))
        state.add_metric(["offline"], sum(1 for r in rows if r["offline"]))
        state.add_metric(["stale"], sum(1 for r in rows if r["stale"]))
        yield state
        yield GaugeMetricFamily("ykt_hub_terminals_alarmed", "Terminals reporting an alarm",
                                value=sum(1 for r in rows if r["alarms"]))
        yield _outbox_histogram([r["outbox"] for r in rows if r["outbox"] is not None])
        pol = GaugeMetricFamily("ykt_hub_policy_terminals",
                                "Terminals per applied policy version",
                                labels=["channel", "version"])
        for ch, versions in rollout(rows).items():
            for v, n in versions.items():
                pol.add_metric([ch, v], n)
        yield pol


def _outbox_histogram(depths: list[Any]) -> HistogramMetricFamily:
    buckets, total = [], 0
    for bound in OUTBOX_BUCKETS:
        buckets.append((str(bound), sum(1 for d in depths if int(d) <= bound)))
    buckets.append(("+Inf", len(depths)))
    total = sum(int(d) for d in depths)
    return HistogramMetricFamily("ykt_hub_terminal_outbox_records",
                                 "Terminals by outbox depth (records not yet acknowledged)",
                                 buckets=buckets, sum_value=total)


def metrics_token() -> str | None:
    """The scrape token from ``$YKT_METRICS_TOKEN`` or ``$CREDENTIALS_DIRECTORY/
    metrics-token``; None when neither is set."""
    from agent.keys import read_secret

    return read_secret("metrics-token", "YKT_METRICS_TOKEN")


def metrics_route(store: HubStore, token: str, *, fleet: FleetStore | None = None,
                  offline_after_s: float = 120.0) -> Route:
    """``GET /metrics`` answering only ``Authorization: Bearer <token>`` (401 otherwise).
    Raises ``ValueError`` for a token shorter than 16 characters."""
    if len(token) < 16:
        raise ValueError("the metrics token must be at least 16 characters")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(store, fleet=fleet, offline_after_s=offline_after_s))
    expected = f"Bearer {token}".encode()

    def metrics(request: Request) -> Response:      # sync: Starlette runs it in a thread
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            return Response("a bearer token is required\n", status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="ykt-hub-metrics"'})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return Route("/metrics", metrics, methods=["GET"])
