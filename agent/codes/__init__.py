"""Dynamic QR codes: the ``YKT1:`` signed code, other schemes by prefix, and verification.

The agent builds one :class:`CodeVerifier` from a :class:`TrustStore` and calls
:meth:`CodeVerifier.verify` with each scanned text. See ``docs/qr.md``.
"""

from agent.codes.algorithms import (
    ALGORITHM_NAMES,
    AlgorithmUnavailable,
    SignatureAlgorithm,
    algorithm,
)
from agent.codes.base45 import Base45Error, b45decode, b45encode
from agent.codes.online import OnlineScheme, OnlineVerifyClient
from agent.codes.replay import ReplayCache
from agent.codes.scheme import CodeScheme, SchemeRegistry
from agent.codes.trust import IssuerKey, TrustSnapshot, TrustStore, TrustStoreError, trust_entry
from agent.codes.verifier import CodeVerifier, build_verifier
from agent.codes.ykt1 import KIND, PREFIX, Ykt1Scheme, issue_certificate, sign_code

__all__ = [
    "ALGORITHM_NAMES",
    "KIND",
    "PREFIX",
    "AlgorithmUnavailable",
    "Base45Error",
    "CodeScheme",
    "CodeVerifier",
    "IssuerKey",
    "OnlineScheme",
    "OnlineVerifyClient",
    "ReplayCache",
    "SchemeRegistry",
    "SignatureAlgorithm",
    "TrustSnapshot",
    "TrustStore",
    "TrustStoreError",
    "Ykt1Scheme",
    "algorithm",
    "b45decode",
    "b45encode",
    "build_verifier",
    "issue_certificate",
    "sign_code",
    "trust_entry",
]
