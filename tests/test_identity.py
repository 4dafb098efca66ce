"""agent.identity: keys and certificates load with errors naming the file; signatures
verify only with the right key and data, for ECDSA P-256 and Ed25519."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import ConfigurationError
from agent.identity import (
    IdentityError,
    load_private_key,
    load_public_key,
    sign,
    verify,
)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  ed25519.Ed25519PrivateKey.generate],
                         ids=["p256", "ed25519"])
def test_sign_and_verify_round_trip(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    _write_key(tmp_path / "k.key", make())
    key, pub = load_private_key(tmp_path / "k.key"), load_public_key(tmp_path / "k.pub")
    sig = sign(key, b"terminal|1|42|abcd")
    assert verify(pub, sig, b"terminal|1|42|abcd")
    assert not verify(pub, sig, b"terminal|1|43|abcd")
    assert not verify(pub, sig[:-1] + bytes([sig[-1] ^ 1]), b"terminal|1|42|abcd")
    other = tmp_path / "o.key"
    _write_key(other, make())
    assert not verify(load_public_key(other.with_suffix(".pub")), sig, b"terminal|1|42|abcd")


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"missing\.key: cannot read the private key"):
        load_private_key(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    with pytest.raises(ConfigurationError, match=r"garbage\.pub: not a PEM public key"):
        load_public_key(garbage)
    _write_key(tmp_path / "p384.key", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(IdentityError, match="only ECDSA P-256 and Ed25519"):
        load_private_key(tmp_path / "p384.key")
