"""``/metrics`` over the hub's real web side: bearer token required, every series read
from the store at scrape time (ingest counter grows with records stored, rejects, chain
breaks, terminals by state, outbox histogram, policy rollout)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.journal import Journal
from sync.hub.service import parse_batch
from sync.hub.web_metrics import metrics_route
from sync.uplink import encode_batch
from tests.fixtures.console import METRICS_TOKEN, ConsoleSite


def _scrape(site: ConsoleSite) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text, headers = site.client().request(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_need_the_bearer_token(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.request("/metrics")[0] == 401
    status, _, headers = c.request("/metrics", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "Bearer" in headers["www-authenticate"]
    with pytest.raises(ValueError, match="16 characters"):
        metrics_route(console_site.store, "short")


def test_metrics_follow_the_store(console_site: ConsoleSite, tmp_path: Path) -> None:
    m = _scrape(console_site)
    assert m[("ykt_hub_records_ingested_total", ())] == 15
    assert m[("ykt_hub_chain_breaks_total", ())] == 0
    assert m[("ykt_hub_terminals", (("state", "online"),))] == 2
    assert m[("ykt_hub_terminals", (("state", "offline"),))] == 1
    assert m[("ykt_hub_terminals", (("state", "stale"),))] == 1
    assert m[("ykt_hub_terminals_alarmed", ())] == 1
    assert m[("ykt_hub_policy_terminals", (("channel", "city/bus"), ("version", "3")))] == 1
    assert m[("ykt_hub_policy_terminals", (("channel", "museum/gate"), ("version", "7")))] == 1
    assert m[("ykt_hub_terminal_outbox_records_bucket", (("le", "0"),))] == 1
    assert m[("ykt_hub_terminal_outbox_records_bucket", (("le", "100"),))] == 2
    assert m[("ykt_hub_terminal_outbox_records_bucket", (("le", "+Inf"),))] == 3
    assert m[("ykt_hub_terminal_outbox_records_sum", ())] == 1240

    # more traffic, a reject and a chain break: the counters move
    store = console_site.store
    j = Journal(tmp_path / "bus-9.db", "bus-9")
    for _ in range(5):
        j.append({"decision": {"product": "standard", "reason": "accepted",
                               "amount_cents": 200}})
    recs = parse_batch("bus-9", encode_batch("bus-9", j.raw_records(0, 100))).records
    store.ingest("bus-9", recs[:2])
    broken = recs[3]
    forged = type(broken)(broken.seq, broken.hash, {**broken.body, "prev": "0" * 64},
                          broken.canonical, broken.computed_hash)
    store.ingest("bus-9", [recs[2], forged])
    store.record_reject("bus-9", "malformed_payload", "not JSON")
    j.close()
    m = _scrape(console_site)
    assert m[("ykt_hub_records_ingested_total", ())] == 19
    assert m[("ykt_hub_rejects_total", (("kind", "malformed_payload"),))] == 1
    assert m[("ykt_hub_chain_breaks_total", ())] >= 1
    c = console_site.client()
    assert c.login("vera") == 303
    text = c.request("/console/problems")[1]
    assert "19 records stored" in text and "bus-9" in text and "malformed_payload" in text
    text = c.request("/console/terminal/bus-9")[1]
    assert "5 records" not in text and "4 records" in text
