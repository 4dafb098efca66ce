"""Card regions: where a card was issued, seen from the terminal's own region.

A social security card carries its issuing area (EF05 field 04 初始化机构编号, the first
six digits are the 行政区划代码, :attr:`agent.model.Credential.region`); a dynamic code may
carry one too (claim ``rg``). Area codes are hierarchical: ``37`` is Shandong province,
``3703`` its city Zibo, ``370302`` a district of Zibo. A code written with trailing
``00`` pairs names the whole higher level: ``370300`` is all of Zibo, ``370000`` all of
Shandong, ``500000`` all of Chongqing.

A profile names its own region (``[profile] region``) and the regions whose cards count as
local by mutual recognition (``local_regions``, e.g. 川渝互认: a Chongqing profile lists
``510000``). A card is then ``local`` (issued in the profile's region or a recognised
one), ``province`` (same province, not local), ``other`` or ``unknown`` (no region on
the credential). See ``docs/rules.md`` (*Card regions*).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["AREA_CODE", "AreaCode", "RegionScope", "area_prefix", "in_areas"]

AREA_CODE = re.compile(r"^[1-9]\d{5}$")
"""A 行政区划代码: six digits, the first not zero."""


def area_prefix(code: str) -> str:
    """The prefix an area code stands for: ``370300`` → ``3703``, ``370000`` → ``37``,
    ``370302`` → ``370302``. Raises ``ValueError`` for a code that is not six digits."""
    if not AREA_CODE.match(code):
        raise ValueError(f"area code {code!r} is not a 6-digit 行政区划代码")
    prefix = code
    while len(prefix) > 2 and prefix.endswith("00"):
        prefix = prefix[:-2]
    return prefix


def _checked(code: str) -> str:
    area_prefix(code)
    return code


AreaCode = Annotated[str, AfterValidator(_checked)]
"""A checked 6-digit area code in a pydantic model."""


def in_areas(region: str, prefixes: tuple[str, ...]) -> bool:
    """True when the card region ``region`` lies in one of the areas (prefixes)."""
    return bool(region) and region.startswith(prefixes)


@dataclass(frozen=True, slots=True)
class RegionScope:
    """The terminal's region and its mutually recognised ones, as prefixes."""

    home: str = ""                      # prefix of the profile's region ("" = not set)
    also_local: tuple[str, ...] = ()    # prefixes of the regions counted as local

    @classmethod
    def of(cls, region: str, local_regions: list[str]) -> RegionScope:
        """From a profile's ``region`` and ``local_regions`` (checked 6-digit codes)."""
        return cls(area_prefix(region) if region else "",
                   tuple(area_prefix(r) for r in local_regions))

    def classify(self, region: str) -> str:
        """``local`` | ``province`` | ``other`` | ``unknown`` for a card's region."""
        if not AREA_CODE.match(region):
            return "unknown"
        if self.home and in_areas(region, (self.home, *self.also_local)):
            return "local"
        if self.home and region[:2] == self.home[:2]:
            return "province"
        return "other"
