"""The ``[[codes.online]]`` tables of the terminal config: online-verified code schemes by
prefix, validated at load (``ykt config validate``) and registered in the terminal's
:class:`~agent.codes.scheme.SchemeRegistry` by :func:`online_schemes`.

Each table names the text prefixes the scheme claims (``ESSC:``), the credential kind it
produces (``qr:essc``, which the profile's rules may name), the HTTPS URL of its
verification service, the CA file the terminal trusts for that service (never the system
store) and the tap's budget for the call (``timeout_ms``, at most 2000). See
``docs/configuration.md`` and ``docs/qr.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.codes.online import OnlineScheme
from agent.codes.ykt1 import KIND as YKT1_KIND
from agent.codes.ykt1 import PREFIX as YKT1_PREFIX
from agent.pseudonym import Pseudonymizer

__all__ = ["OnlineSchemeConfig", "check_prefixes", "online_schemes"]


class OnlineSchemeConfig(BaseModel):
    """One online-verified code scheme (a ``[[codes.online]]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefixes: list[str] = Field(min_length=1, description="text prefixes the scheme claims, "
                                "e.g. ['ESSC:'] (case-sensitive)")
    kind: str = Field(pattern=r"^qr:[a-z0-9_]{1,24}$",
                      description="credential kind, e.g. 'qr:essc' (rules may name it)")
    url: str = Field(pattern=r"^https://\S+$", description="the verification service (HTTPS)")
    ca_file: Path = Field(description="PEM CA certificate(s) the terminal trusts for url")
    timeout_ms: int = Field(300, ge=10, le=2000,
                            description="the tap's budget for one call (ms); then the "
                            "profile's offline fallback")
    backoff_s: float = Field(30.0, ge=0, le=3600, description="after a failed call, answer "
                             "with the fallback without calling for this long (s)")
    max_workers: int = Field(2, ge=1, le=16, description="calls in flight at most")

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p or len(p) > 16 or not p.isprintable() or p.isspace():
                raise ValueError(f"prefix {p!r} must be 1-16 printable characters")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v == YKT1_KIND:
            raise ValueError(f"{v!r} is the built-in YKT1 scheme's kind")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"CA file {v} does not exist")
        return v


def check_prefixes(schemes: list[OnlineSchemeConfig]) -> None:
    """``ValueError`` if two schemes (or one and the built-in ``YKT1:``) claim a prefix."""
    seen = {YKT1_PREFIX: YKT1_KIND}
    for s in schemes:
        for p in s.prefixes:
            if p in seen:
                raise ValueError(f"code prefix {p!r} is claimed by {seen[p]} and {s.kind}")
            seen[p] = s.kind


def online_schemes(schemes: list[OnlineSchemeConfig], pseudonymizer: Pseudonymizer, *,
                   is_online: Callable[[], bool] = lambda: True) -> list[OnlineScheme]:
    """One :class:`OnlineScheme` with an HTTPS client per table. Raises ``OSError``/
    ``ssl.SSLError`` for an unusable CA file."""
    from agent.codes.online_http import HttpsVerifyClient

    return [OnlineScheme(s.prefixes, HttpsVerifyClient(s.url, s.ca_file, pseudonymizer,
                                                       kind=s.kind),
                         kind=s.kind, timeout_s=s.timeout_ms / 1000, is_online=is_online,
                         backoff_s=s.backoff_s, max_workers=s.max_workers)
            for s in schemes]
