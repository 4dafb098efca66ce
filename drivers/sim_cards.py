"""``cards`` backend ``sim``: taps from a simulated population, no reader hardware.

It produces exactly what the PC/SC driver produces after a successful read and
authentication (a :class:`~agent.model.Credential` of keyed hashes), so the decision
path, journal and sync are exercised unchanged. Use :meth:`SimCardSource.tap` to tap a
given holder (tests, the demo) or ``rate_per_min`` for random taps (``ykt agent run``).
The population itself is built by :mod:`simulator.population`.
"""

from __future__ import annotations

import random
import time

from agent.model import Credential, Presentation, PresentationKind, Reason, Rejection
from agent.pseudonym import Pseudonymizer
from drivers.base import PresentationSource
from drivers.options import DriverOptions, SimCardOptions, expect
from drivers.ssc import SscData, credential_from
from simulator.population import CardHolder, Population

__all__ = ["SimCardSource", "credential_from_holder"]


def credential_from_holder(h: CardHolder, pseudonymizer: Pseudonymizer) -> Credential:
    """The credential a genuine read of ``h``'s card (every need) yields."""
    data = SscData(card_id=h.card_id, ssn=h.ssn, generation=h.generation, valid_from=h.issued,
                   valid_until=h.expires, region=h.region, birth_date=h.birth_date, name=h.name)
    return credential_from(data, pseudonymizer, "sim")


class SimCardSource(PresentationSource):
    """Simulated card reader.

    ``rate_per_min`` > 0 taps random holders of ``population`` at that average rate
    (exponential gaps); 0 taps only when :meth:`tap` is called.
    """

    name = "cards:sim"

    def __init__(self, pseudonymizer: Pseudonymizer, *, population: Population | None = None,
                 population_size: int = 60, seed: int = 7, rate_per_min: float = 0.0) -> None:
        super().__init__()
        self._pseudo = pseudonymizer
        self.population = population or Population.generate(population_size, seed=seed)
        self._rnd = random.Random(seed)
        self.rate_per_min = rate_per_min

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> SimCardSource:
        o = expect(options, SimCardOptions)
        return cls(pseudonymizer, population_size=o.population_size, seed=o.seed,
                   rate_per_min=o.rate_per_min)

    def tap(self, holder: CardHolder, *, service: str = "") -> Presentation:
        """Present ``holder``'s card now (at a kiosk, for ``service``); returns it."""
        p = Presentation(PresentationKind.CARD, "sim:reader0", time.monotonic_ns(),
                         credential=credential_from_holder(holder, self._pseudo), apdus=0,
                         service=service)
        self.emit(p)
        return p

    def pull_mid_read(self) -> Presentation:
        """A card pulled away during the read: nothing decided, the holder taps again."""
        p = Presentation(PresentationKind.CARD, "sim:reader0", time.monotonic_ns(),
                         rejection=Rejection(Reason.CARD_REMOVED, "card left the field",
                                             journal=False))
        self.emit(p)
        return p

    def _run(self) -> None:
        while not self.stopping:
            if self.rate_per_min <= 0:
                self._stop.wait(0.5)
                continue
            if self._stop.wait(self._rnd.expovariate(self.rate_per_min / 60.0)):
                break
            self.tap(self._rnd.choice(self.population.holders))
