"""A synthetic but realistic card-holder population for demos, tests and benchmarks.

Every person has a fake 18-character 社会保障号码 (same layout as a 居民身份证号: region,
birth date, sequence, check digit), a name, categories and one card. Nothing here is real
personal data. The generator is deterministic for a seed.

The same population drives the in-process ``sim`` card source, the virtual cards behind
pcscd (``simulator.vcard``) and the entitlement source files the hub hashes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

__all__ = ["CardHolder", "Population", "id_check_digit", "make_ssn"]

_FAMILY = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀英华平刚桂兰"
_REGIONS = ["370102", "370202", "370302", "370602", "110101", "310104"]

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of an 18-character ID number."""
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def make_ssn(region: str, birth: date, seq: int) -> str:
    """A well-formed (fake) 社会保障号码 for ``region`` (6 digits) and ``birth``."""
    first17 = f"{region}{birth:%Y%m%d}{seq % 1000:03d}"
    return first17 + id_check_digit(first17)


@dataclass(frozen=True)
class CardHolder:
    """One person and their card. ``tags`` name what a scenario expects of them."""

    ssn: str
    name: str
    birth_date: date
    region: str
    card_id: str                 # 卡识别码, 32 hex chars (16 bytes)
    card_no: str                 # 卡号, 9 chars
    generation: str              # "1.0", "2.0", "3.0"
    issued: date
    expires: date
    categories: tuple[str, ...] = ()
    hotlisted: bool = False
    tags: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        for k in ("birth_date", "issued", "expires"):
            d[k] = getattr(self, k).isoformat()
        d["categories"] = list(self.categories)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> CardHolder:
        return cls(
            ssn=str(d["ssn"]), name=str(d["name"]),
            birth_date=date.fromisoformat(str(d["birth_date"])), region=str(d["region"]),
            card_id=str(d["card_id"]), card_no=str(d["card_no"]),
            generation=str(d["generation"]), issued=date.fromisoformat(str(d["issued"])),
            expires=date.fromisoformat(str(d["expires"])),
            categories=tuple(d.get("categories", ()) or ()),  # type: ignore[arg-type]
            hotlisted=bool(d.get("hotlisted", False)),
            tags=tuple(d.get("tags", ()) or ()),  # type: ignore[arg-type]
        )


class Population:
    """A list of :class:`CardHolder` with lookups by tag."""

    def __init__(self, holders: list[CardHolder]) -> None:
        self.holders = holders

    def __iter__(self) -> Iterator[CardHolder]:
        return iter(self.holders)

    def __len__(self) -> int:
        return len(self.holders)

    def tagged(self, tag: str) -> list[CardHolder]:
        return [h for h in self.holders if tag in h.tags]

    @classmethod
    def generate(cls, size: int = 60, *, seed: int = 7, today: date | None = None) -> Population:
        """A mixed population: about 30% elderly, 8% disabled, 5% 优抚, 15% students, the
        rest standard fare; plus exactly one hotlisted card and one expired card."""
        rnd = random.Random(seed)
        today = today or date.today()
        holders: list[CardHolder] = []
        for i in range(size):
            # the first five cover every kind, so even a small population has each
            roll = (0.0, 0.31, 0.39, 0.44, 0.6)[i] if i < 5 else rnd.random()
            cats: tuple[str, ...] = ()
            if roll < 0.30:
                age, tags = rnd.randint(65, 90), ("elderly",)
                if i > 0 and rnd.random() < 0.5:
                    cats = ("elderly",)
            elif roll < 0.38:
                age, tags, cats = rnd.randint(20, 70), ("disabled",), ("disabled",)
            elif roll < 0.43:
                age, tags, cats = rnd.randint(30, 80), ("youfu",), ("youfu",)
            elif roll < 0.58:
                age, tags, cats = rnd.randint(12, 22), ("student",), ("student",)
            else:
                age, tags = rnd.randint(23, 64), ("standard",)
            holders.append(cls._person(rnd, i, today, age, cats, tags))
        # the special cases every scenario needs
        holders.append(cls._person(rnd, size, today, 40, (), ("hotlisted",), hotlisted=True))
        holders.append(cls._person(rnd, size + 1, today, 35, (), ("expired",), expired=True))
        return cls(holders)

    @staticmethod
    def _person(rnd: random.Random, i: int, today: date, age: int, cats: tuple[str, ...],
                tags: tuple[str, ...], *, hotlisted: bool = False,
                expired: bool = False) -> CardHolder:
        birth = date(today.year - age, rnd.randint(1, 12), rnd.randint(1, 28))
        if birth > today.replace(year=today.year - age):  # not yet had this year's birthday
            birth = birth.replace(year=birth.year - 1)
        region = rnd.choice(_REGIONS)
        issued = today - timedelta(days=rnd.randint(200, 3000))
        expires = today - timedelta(days=30) if expired else issued + timedelta(days=3650 * 2)
        name = rnd.choice(_FAMILY) + "".join(rnd.choice(_GIVEN) for _ in range(rnd.randint(1, 2)))
        return CardHolder(
            ssn=make_ssn(region, birth, i), name=name, birth_date=birth, region=region,
            card_id=rnd.getrandbits(128).to_bytes(16, "big").hex().upper(),
            card_no=f"{chr(65 + rnd.randint(0, 25))}{rnd.randint(0, 99999999):08d}",
            generation=rnd.choice(["2.0", "3.0", "3.0"]), issued=issued, expires=expires,
            categories=cats, hotlisted=hotlisted, tags=tags,
        )

    def save(self, path: str | Path) -> None:
        """Write the population as JSON Lines."""
        with open(path, "w", encoding="utf-8") as f:
            for h in self.holders:
                f.write(json.dumps(h.to_json(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Population:
        """Read a population written by :meth:`save`. Raises ``ValueError`` on a bad line."""
        holders = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    holders.append(CardHolder.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}:{n}: bad card holder: {err}") from err
        return cls(holders)
