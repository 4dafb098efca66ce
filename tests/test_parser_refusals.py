"""Inputs that crashed a parser (found by ``tests/test_fuzz_parsers.py``), each now refused
with the parser's documented error: a data part damaged inside its deflate stream, a
config or profile file that is not UTF-8 or is nested too deep, trust documents with deep
nesting, huge or non-finite times, a lone surrogate or a non-ASCII key, and bundle
issuer keys or settings nested too deep."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as ykt
from agent.codes.algorithms import algorithm
from agent.codes.trust import TrustStoreError, parse_trust_document, read_trust_file
from agent.config import load_config
from agent.policy.apply import _check_small_parts
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.parts import read_rows, write_part
from agent.rules import load_ruleset
from agent.tomlconf import ConfigFileError
from profiles import profile_path

_ES256 = algorithm("ES256")
PEM = _ES256.public_pem(_ES256.public_key(_ES256.generate())).decode()
DEEP = 100_000


def _damaged_part(tmp_path: Path) -> Path:
    """A genuine snapshot whose deflate stream is damaged (header and trailer intact)."""
    path = tmp_path / "part"
    write_part(path, "hotlist", "snapshot",
               [(f"{i:032x}", "card", "lost", "2026-11-01") for i in range(200)])
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0x5A                           # inside the first block's code lengths
    path.write_bytes(bytes(raw))
    with pytest.raises(zlib.error):           # what the gzip module itself raises for it
        gzip.decompress(bytes(raw))
    return path


def test_part_damaged_inside_deflate_is_malformed(tmp_path: Path) -> None:
    with pytest.raises(BundleRefused) as exc:
        list(read_rows(_damaged_part(tmp_path), "hotlist", "snapshot"))
    assert exc.value.refusal is Refusal.MALFORMED


@pytest.mark.parametrize("content, line, what", [
    (b'[terminal]\nid = "BUS-1"\nprofile = "bus\xff"\n', 3, "not UTF-8 text (byte 0xff)"),
    (b'[terminal]\nid = "BUS-1"\n[cards]\noptions = { x = ' + b"[" * DEEP + b"]" * DEEP
     + b" }\n", 4, "nested too deep"),
    (b"a = " + b"{b = " * DEEP + b"1" + b"}" * DEEP + b"\n", 1, "nested too deep"),
])
def test_config_file_errors_name_file_and_line(tmp_path: Path, content: bytes, line: int,
                                               what: str, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    """Both the loader and ``ykt config validate`` (a configuration error: exit 2, no traceback)."""
    path = tmp_path / "terminal.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigFileError) as exc:
        load_config(path)
    assert exc.value.problems[0].startswith(f"{path}:{line}: ") and what in str(exc.value)
    assert ykt(["config", "validate", str(path)]) == 2      # a configuration error
    err = capsys.readouterr().err
    assert f"{path}:{line}: " in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_line_numbers_of_a_file_with_a_long_bracket_line(tmp_path: Path) -> None:
    """A valid TOML file with a bad key whose multi-line string holds ``[`` and 8,000
    spaces: the key's line is found at once (the old header pattern backtracked in cubic
    time, about 8 minutes here; the timeout is the failure, not a budget)."""
    path = tmp_path / "terminal.toml"
    path.write_text('[terminal]\nid = "BUS-1"\nnote = """\n[' + " " * 8000 + '\n"""\n',
                    encoding="utf-8")
    with pytest.raises(ConfigFileError, match=rf"{path}:3: terminal\.note: Extra inputs"):
        load_config(path)


def test_profile_file_not_utf8_names_the_line(tmp_path: Path) -> None:
    text = profile_path("bus_validator").read_bytes()
    path = tmp_path / "bus.toml"
    path.write_bytes(text.replace(b"[profile]", b"[profile]\n# \xc3\x28", 1))
    first = text.split(b"\n").index(b"[profile]") + 2
    with pytest.raises(ConfigFileError, match=rf"{path}:{first}: not UTF-8"):
        load_ruleset(path)


@pytest.mark.parametrize("suffix, content", [
    (".json", b"[" * DEEP + b"]" * DEEP),
    (".toml", b"a = " + b"[" * DEEP + b"]" * DEEP),
])
def test_trust_file_nested_too_deep(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"issuers{suffix}"
    path.write_bytes(content)
    with pytest.raises(TrustStoreError, match="nested too deep"):
        read_trust_file(path)


@pytest.mark.parametrize("entry, where", [
    ({"not_before": 10**400}, "not_before"),          # OverflowError converting to float
    ({"not_after": math.nan}, "not_after"),            # NaN: the key would never expire
    ({"not_after": math.inf}, "not_after"),
    ({"kid": "k\ud800"}, "kid"),                       # UnicodeEncodeError in the store
    ({"public_key": PEM.replace("KEY-----\n", "KEY-----\n\ud800", 1)}, "public_key"),
])
def test_trust_entry_refusals(entry: dict[str, Any], where: str) -> None:
    doc = {"issuers": [{"kid": "k1", "public_key": PEM, **entry}]}
    with pytest.raises(TrustStoreError, match=rf"issuers\[0\]\.{where}"):
        parse_trust_document(json.loads(json.dumps(doc)) if where != "not_before" else doc)


@pytest.mark.parametrize("slot", ["issuers", "settings"])
def test_bundle_json_parts_nested_too_deep_are_malformed(slot: str) -> None:
    deep = b'{"a":' * DEEP + b"1" + b"}" * DEEP
    with pytest.raises(BundleRefused) as exc:
        _check_small_parts({}, deep if slot == "issuers" else None,
                           deep if slot == "settings" else None)
    assert exc.value.refusal is Refusal.MALFORMED and "nested too deep" in exc.value.detail
