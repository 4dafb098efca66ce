"""The HTTPS client of an online-verified code scheme (electronic SSC, city service codes).

:class:`HttpsVerifyClient` POSTs ``{"code": text}`` as JSON to the verification service
over TLS, trusting only the CA file configured for that service, and turns its answer
into a :class:`~agent.model.Credential` (the holder's identifier is hashed with the
deployment key at once: the raw 社会保障号码 never leaves this function) or a
:class:`~agent.model.Rejection`. It is called on an :class:`~agent.codes.online.OnlineScheme`
worker, which bounds the wait; whatever the service does wrong raises here and becomes
the profile's offline fallback there.

The answer (``docs/qr.md``)::

    {"result": "valid", "subject": "<社会保障号码>", "region": "370302",
     "valid_until": "2027-01-01", "birth_date": "1950-03-01", "categories": ["elderly"]}
    {"result": "invalid", "reason": "expired" | "revoked" | "unknown"}

Errors: :class:`ServiceGarbage` (a ``ValueError``) for an answer that is not that shape,
``OSError`` (``ConnectionError``, ``ssl.SSLError``, ``TimeoutError``) for transport faults.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from agent.errors import YktError
from agent.model import Credential, Reason, Rejection
from agent.pseudonym import Pseudonymizer

__all__ = ["MAX_ANSWER_BYTES", "HttpsVerifyClient", "ServiceGarbage"]

MAX_ANSWER_BYTES = 16 * 1024
"""Largest answer read from the service (bytes); a longer one is garbage."""

_INVALID = {"expired": Reason.CODE_EXPIRED, "revoked": Reason.HOTLISTED,
            "unknown": Reason.BAD_SIGNATURE}


class ServiceGarbage(YktError, ValueError):
    """The verification service answered something that is not a verdict."""


class HttpsVerifyClient:
    """Verifies codes of ``kind`` at ``url`` (``https://``), trusting ``ca_file`` only.

    Raises ``ValueError`` at construction for a non-HTTPS URL and ``OSError``/
    ``ssl.SSLError`` for an unreadable CA file.
    """

    def __init__(self, url: str, ca_file: Path, pseudonymizer: Pseudonymizer, *,
                 kind: str) -> None:
        if not url.startswith("https://"):
            raise ValueError(f"verification service URL must be https://, got {url!r}")
        self.url = url
        self.kind = kind
        self._pseudo = pseudonymizer
        self._ctx = ssl.create_default_context(cafile=str(ca_file))
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._ctx),
            urllib.request.ProxyHandler({}))          # never via an environment proxy

    def verify(self, text: str, timeout_s: float) -> Credential | Rejection:
        """The service's verdict on ``text`` (socket timeout ``timeout_s`` seconds)."""
        req = urllib.request.Request(
            self.url, data=json.dumps({"code": text}).encode(), method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout_s) as resp:
                body = resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:
            raise ServiceGarbage(f"HTTP {err.code}") from None
        except urllib.error.URLError as err:     # connection refused, TLS, DNS
            reason = err.reason
            raise reason if isinstance(reason, OSError) else ConnectionError(str(reason)) \
                from None
        if len(body) > MAX_ANSWER_BYTES:
            raise ServiceGarbage(f"answer over {MAX_ANSWER_BYTES} bytes")
        return self._verdict(text, body)

    def _verdict(self, text: str, body: bytes) -> Credential | Rejection:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise ServiceGarbage("answer is not JSON") from None
        if not isinstance(doc, dict):
            raise ServiceGarbage("answer is not a JSON object")
        code_key = self._pseudo.key("code", hashlib.sha256(text.encode()).hexdigest())
        result = doc.get("result")
        if result == "invalid":
            reason = _INVALID.get(str(doc.get("reason")), Reason.BAD_SIGNATURE)
            return Rejection(reason, f"online:{doc.get('reason')}"[:60], kind=self.kind,
                             credential_key=code_key)
        subject = doc.get("subject")
        if result != "valid" or not isinstance(subject, str) or not subject.strip():
            raise ServiceGarbage("answer is neither a valid nor an invalid verdict")
        cats = doc.get("categories", [])
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ServiceGarbage("categories must be a list of names")
        region = doc.get("region", "")
        return Credential(
            kind=self.kind, credential_key=code_key,
            holder_key=self._pseudo.holder_key(subject),
            region=region if isinstance(region, str) else "",
            valid_until=_day(doc.get("valid_until")), birth_date=_day(doc.get("birth_date")),
            categories=frozenset(cats), authenticated_by="online")


def _day(v: Any) -> date | None:
    if v is None:
        return None
    try:
        return date.fromisoformat(str(v))
    except ValueError:
        raise ServiceGarbage(f"not a date: {str(v)[:20]!r}") from None
