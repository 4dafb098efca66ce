"""The worked example of ``docs/protocol.md`` §1.3, recomputed by the code.

The canonical bodies and hashes are parsed from the document itself, so the document and
the code cannot drift apart: change either and this fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig
from agent.journal import GENESIS, Journal, canonical, parse_utc, record_hash, verify_chain
from agent.model import JournalRecord
from sync.topics import validate_terminal_id

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
JOURNAL_FIELDS = {"v", "terminal", "seq", "prev", "time"}
"""Body fields the journal fills in (§1); the agent supplies the rest (``clock`` has a
default but is part of the example)."""


def worked_example() -> list[tuple[str, str]]:
    """``(canonical body line, documented hash)`` of each record in §1.3, in order."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("### 1.3 Worked example")
    section = text[start:text.index("\n## ", start)]
    bodies = re.findall(r"```\n(\{.*\})\n```", section)
    hashes = re.findall(r"`hash\((\d+)\) = ([0-9a-f]+)`", section)
    assert len(bodies) == len(hashes) == 2, "§1.3 should show two records and their hashes"
    assert [int(n) for n, _ in hashes] == [1, 2]
    return [(body, digest) for body, (_n, digest) in zip(bodies, hashes, strict=True)]


def test_documented_bodies_are_canonical_and_hash_to_the_documented_values() -> None:
    prev = GENESIS
    records = []
    for seq, (line, digest) in enumerate(worked_example(), start=1):
        body = json.loads(line)
        assert canonical(body) == line.encode("utf-8"), f"record {seq} is not canonical"
        assert record_hash(body) == digest, f"hash({seq}) in the doc is not what the code says"
        assert body["seq"] == seq and body["prev"] == prev
        records.append(JournalRecord(seq=seq, body=body, hash=digest))
        prev = digest
    assert verify_chain(records) == []


def test_the_journal_writes_the_documented_records(tmp_path: Path) -> None:
    """Appending the agent's fields at the documented times gives the documented bodies
    and hashes: the journal fills ``v``, ``terminal``, ``seq``, ``prev``, ``time`` as §1
    says."""
    example = worked_example()
    terminal = json.loads(example[0][0])["terminal"]
    journal = Journal(tmp_path / "journal.db", terminal)
    try:
        for line, digest in example:
            body = json.loads(line)
            fields = {k: v for k, v in body.items() if k not in JOURNAL_FIELDS}
            rec = journal.append(fields, at=parse_utc(body["time"]))
            assert rec.hash == digest
            assert journal.raw_records(rec.seq - 1, 1) == [(rec.seq, line, digest)]
        assert journal.verify() == []
    finally:
        journal.close()


def test_the_wire_example_abbreviates_the_first_hash() -> None:
    """§4's tx example shows record 1 with its hash abbreviated (``36d3…a0aa``)."""
    first = worked_example()[0][1]
    shown = re.search(r'"seq":1,.*"hash":"([0-9a-f]{4})…([0-9a-f]{4})"',
                      DOC.read_text(encoding="utf-8"))
    assert shown is not None and (shown[1], shown[2]) == (first[:4], first[-4:])


@pytest.mark.parametrize("terminal", [
    "bus-0042", "BUS-370302-0815", "gate:north.1", "k_9", "x" * 64,
    "-bus", ".bus", "_bus", ":bus", "bus 1", "bus/1", "bus+", "bus#", "", "x" * 65, "公交1",
])
def test_the_config_accepts_exactly_the_terminal_ids_of_the_protocol(terminal: str) -> None:
    """§3's terminal ids: a config the daemon accepts never names a terminal whose
    topics the uplink would refuse, and the other way round."""
    try:
        validate_terminal_id(terminal)
        protocol_ok = True
    except ValueError:
        protocol_ok = False
    try:
        AgentConfig.model_validate({"terminal": {"id": terminal}})
        config_ok = True
    except ValidationError:
        config_ok = False
    assert config_ok == protocol_ok
