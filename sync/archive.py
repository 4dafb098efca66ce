"""Journal archives: a terminal's records on a USB stick instead of the network.

A terminal offline for weeks (a depot without coverage) exports its journal with
``ykt journal export``; the hub imports it with ``ykt hub import``. The archive holds the
very ``tx`` payloads the uplink would have published (``docs/protocol.md`` §4, §10),
signed by the terminal's key when it has an identity, so the hub checks them exactly as
it checks MQTT batches and stores them with the same exactly-once rule on
``(terminal, epoch, seq)``: importing twice, or importing what MQTT already delivered,
stores nothing twice.

Format (UTF-8, one JSON object per line): a header
``{"ykt_archive": 1, "terminal": …, "epoch": …, "from": first seq, "to": last seq,
"batches": n, "signed": bool}``, then ``n`` lines, each one ``tx`` payload. The header is
information only: every batch stands on its own signature.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.journal import Journal
from sync.acks import UplinkIdentity, encode_batch_v2, new_batch_id
from sync.signed import load_json
from sync.uplink import encode_batch

__all__ = ["ARCHIVE_VERSION", "read_archive", "write_archive"]

ARCHIVE_VERSION = 1
BATCH_RECORDS = 500
MAX_LINE = 16 << 20           # bytes: a batch line is at most a few MiB


def write_archive(journal: Journal, terminal: str, path: Path, *, since: int,
                  identity: UplinkIdentity | None) -> dict[str, Any]:
    """Write records ``since``.. (all the journal still holds from there) to ``path``
    (atomically); returns the header. Raises ``OSError`` when the file cannot be written."""
    epoch = journal.epoch if identity is not None else ""
    lines: list[bytes] = []
    first = last = 0
    after = max(0, since - 1)
    while True:
        rows = journal.raw_records(after, BATCH_RECORDS)
        if not rows:
            break
        if identity is None:
            lines.append(encode_batch(terminal, rows))
        else:
            lines.append(encode_batch_v2(terminal, epoch, rows, identity.key, new_batch_id()))
        first, last = first or rows[0][0], rows[-1][0]
        after = rows[-1][0]
    header = {"ykt_archive": ARCHIVE_VERSION, "terminal": terminal, "epoch": epoch,
              "from": first, "to": last, "batches": len(lines), "signed": identity is not None}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(header).encode() + b"\n")
        for line in lines:
            f.write(line + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return header


def read_archive(path: Path) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The header and the batch payloads of the archive at ``path``. Raises
    ``ValueError`` naming the problem for a file that is not one."""
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    head = f.readline(MAX_LINE)
    try:
        header = load_json(head)
    except ValueError as err:
        f.close()
        raise ValueError(f"{path}: not a journal archive ({err})") from None
    if not isinstance(header, dict) or header.get("ykt_archive") != ARCHIVE_VERSION \
            or not isinstance(header.get("terminal"), str):
        f.close()
        raise ValueError(f"{path}: not a journal archive of version {ARCHIVE_VERSION}")

    def batches() -> Iterator[bytes]:
        with f:
            for line in iter(lambda: f.readline(MAX_LINE), b""):
                if line.strip():
                    yield line.rstrip(b"\n")
    return header, batches()
