"""Policy authoring refuses mistakes (issue 12 item 6): every refusal names the file, the
row and the fix; identical inputs give identical parts; nothing changed → no version."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from agent.cli import main
from agent.policy.parts import write_part
from agent.pseudonym import Pseudonymizer
from profiles import profile_path
from simulator.broker import Mosquitto
from simulator.population import Population
from sync.hub.policy import BundleSources, SourceError
from sync.hub.policy_sources import check_card_id, check_ssn
from tests.fixtures.policy import CHANNEL, PolicyEnv

GOOD_SSN = "370102195001011233"          # check digit 3 (GB 11643)
RULES = [profile_path("bus_validator")]


def test_check_digit_and_formats() -> None:
    assert check_ssn(GOOD_SSN) == GOOD_SSN
    assert check_ssn("11010519491231002x") == "11010519491231002X"     # the GB 11643 example
    for bad, why in (("3.70302E+17", "spreadsheet"), ("370102195001011234", "check digit"),
                     ("37010219500101123", "18 characters")):
        with pytest.raises(ValueError, match=why) as err:
            check_ssn(bad)
        assert bad not in str(err.value)            # the number is never echoed
    card = "00112233445566778899AABBCCDDEEFF"
    assert check_card_id(card.lower()) == card
    with pytest.raises(ValueError, match="32 hex digits"):
        check_card_id("6217 0000 1234")


def test_mangled_ssn_refused_naming_row(policy_env: PolicyEnv) -> None:
    src = policy_env.source("ents", [{"ssn": GOOD_SSN, "name": "elderly"},
                                     {"ssn": "3.70302E+17", "name": "elderly"}])
    with pytest.raises(SourceError, match=rf"{src.name}:3: ssn: .*format the column as text"):
        policy_env.build(BundleSources(entitlements=src, rules=RULES))
    assert policy_env.repo.version == 0


def test_hotlist_identifiers_checked(policy_env: PolicyEnv) -> None:
    bad_card = policy_env.source("hot", [{"card_id": "1234", "reason": "lost"}])
    with pytest.raises(SourceError, match=rf"{bad_card.name}:2: card_id: .*32 hex digits"):
        policy_env.build(BundleSources(hotlist=bad_card, rules=RULES))
    bad_ssn = policy_env.source("hot", [{"ssn": "370102195001011234"}])
    with pytest.raises(SourceError, match=rf"{bad_ssn.name}:2: ssn: the check digit"):
        policy_env.build(BundleSources(hotlist=bad_ssn, rules=RULES))
    raw = policy_env.source("hot", [{"key": GOOD_SSN, "kind": "holder"}])
    with pytest.raises(SourceError, match=r":2: key: a hashed key is 32 lower-case hex"):
        policy_env.build(BundleSources(hotlist=raw, rules=RULES))


def test_name_where_a_category_belongs_refused(policy_env: PolicyEnv) -> None:
    src = policy_env.source("ents", [{"ssn": GOOD_SSN, "name": "elderly"},
                                     {"ssn": GOOD_SSN, "name": "张三"}])
    with pytest.raises(SourceError, match=rf"{src.name}:3: name: not a category the channel's "
                       r"rules use \(known: disabled, elderly, student, youfu\)"):
        policy_env.build(BundleSources(entitlements=src, rules=RULES))
    ok = policy_env.source("ents", [{"ssn": GOOD_SSN, "name": "elderly"}])
    policy_env.build(BundleSources(entitlements=ok, rules=RULES))
    # later builds check against the rules already in the channel
    with pytest.raises(SourceError, match=r":3: name: not a category"):
        policy_env.build(BundleSources(entitlements=src))


def test_other_hashing_key_refused(policy_env: PolicyEnv) -> None:
    policy_env.build(policy_env.population_sources())
    fp = policy_env.repo.key_fingerprint()
    assert len(fp) == 16 and fp not in (policy_env.repo.dir / "state.db").read_bytes().hex()
    lost = policy_env.source("hot", [{"card_id": policy_env.pop.holders[0].card_id}])
    with pytest.raises(SourceError, match="built with another pseudonymisation key"):
        policy_env.build(BundleSources(hotlist=lost, merge=True),
                         pseudonymizer=Pseudonymizer(b"another-deployment-key-0000000"))
    assert policy_env.repo.version == 1


def test_http_parts_need_a_base_url(policy_env: PolicyEnv) -> None:
    with pytest.raises(SourceError, match=r"parts entitlements.* go over HTTP: pass "
                       r"--base-url"):
        policy_env.build(policy_env.population_sources(Population.generate(3000, seed=1)),
                         base_url="")
    assert policy_env.repo.version == 0


def test_identical_rows_identical_bytes(tmp_path: Path) -> None:
    rows = [("0" * 31 + str(i), "card", "lost", "") for i in range(5)]
    a, b = tmp_path / "a.part", tmp_path / "some-other-name.tmp"
    write_part(a, "hotlist", "snapshot", rows)
    write_part(b, "hotlist", "snapshot", rows)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[3] & 0x08 == 0           # no FNAME in the gzip header


def test_nothing_changed_no_new_version(policy_env: PolicyEnv) -> None:
    src = policy_env.population_sources()
    first = policy_env.build(src)
    again = policy_env.build(policy_env.population_sources())
    assert again.unchanged and again.version == first.version == policy_env.repo.version
    renewed = policy_env.build(policy_env.population_sources(), renew=True)
    assert not renewed.unchanged and renewed.version == 2


def test_cli_unchanged_and_broker_required(tmp_path: Path, broker: Mosquitto,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YKT_MQTT_HOST", raising=False)
    monkeypatch.delenv("YKT_MQTT_PORT", raising=False)
    repo, key = tmp_path / "repo", tmp_path / "ops.pem"
    assert main(["hub", "policy", "keygen", "--out", str(key), "--repo", str(repo)]) == 0
    build = ["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL, "--key",
             str(key), "--rules", str(RULES[0]), "--demo-key"]
    assert main(build) == 0
    capsys.readouterr()
    assert main(build) == 0
    assert "nothing changed since city/370302/bus@1: no new version" in capsys.readouterr().out
    publish = ["hub", "policy", "publish", "--repo", str(repo), "--channel", CHANNEL]
    assert main(publish) == 2
    assert "no broker: pass --mqtt-host" in capsys.readouterr().err
    assert main([*build, "--publish"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("YKT_MQTT_HOST", broker.host)
    monkeypatch.setenv("YKT_MQTT_PORT", str(broker.port))
    assert main([*publish, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["published_to"] == (f"ykt/v1/policy/{CHANNEL}/manifest at "
                                   f"mqtt://{broker.host}:{broker.port}")


def test_settings_checked_at_build(policy_env: PolicyEnv) -> None:
    bad = policy_env.tmp / "settings.json"
    bad.write_text(json.dumps({"bus_validator": {"no_such_setting": 1}}), encoding="utf-8")
    with pytest.raises(SourceError, match=r"settings.json: terminals would refuse this "
                       r"bundle: vectors_failed: (?s:.*)'no_such_setting', which is not a setting"):
        policy_env.build(BundleSources(settings=bad, rules=RULES))
    assert policy_env.repo.version == 0


def _pty_stderr(args: list[str], env: dict[str, str]) -> str:
    primary, secondary = pty.openpty()
    # a terminal of 24 rows × 80 columns (tqdm hides bars below a 0-row screen)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:            # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(primary)
    assert proc.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_only(policy_env: PolicyEnv) -> None:
    ents = policy_env.source("ents", [{"ssn": h.ssn, "name": c} for h in policy_env.pop
                                      for c in h.categories])
    key = policy_env.tmp / "k.pem"
    policy_env.key.save(key)
    env = {**os.environ, "YKT_PSEUDONYM_KEY": "00" * 16}
    base = [sys.executable, "-m", "agent.cli", "hub", "policy", "build", "--repo",
            str(policy_env.repo.root), "--channel", "city/x/y", "--key", str(key),
            "--rules", str(RULES[0]), "--entitlements", str(ents),
            "--base-url", "https://hub.example/parts/"]
    assert "rows" in _pty_stderr(base, env)
    assert "rows" not in _pty_stderr([*base, "--renew", "--json"], env)
