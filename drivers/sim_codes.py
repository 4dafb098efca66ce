"""``codes`` backend ``sim``: code texts shown to it by a test or the demo, as a scanner
would read them (a simulated phone makes them: :class:`simulator.phone.Phone`)."""

from __future__ import annotations

import queue
import time

from agent.model import Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from drivers.base import PresentationSource
from drivers.options import DriverOptions, SimCodeOptions, expect

__all__ = ["SimCodeSource"]


class SimCodeSource(PresentationSource):
    """The ``sim`` backend of ``codes``: emits the texts given to :meth:`show`, as a scanner
    would (``seen_ns`` = when :meth:`show` was called)."""

    def __init__(self, *, name: str = "sim:codes") -> None:
        super().__init__()
        self.name = name
        self._q: queue.Queue[tuple[int, str] | None] = queue.Queue()

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> SimCodeSource:
        return cls(name=expect(options, SimCodeOptions).name)

    def show(self, text: str) -> None:
        """Present ``text`` (e.g. ``phone.new_code()``) to the terminal."""
        self._q.put((time.monotonic_ns(), text))

    def _run(self) -> None:
        while not self.stopping:
            item = self._q.get()
            if item is None:
                break
            self.emit(Presentation(kind=PresentationKind.CODE, source=self.name,
                                   seen_ns=item[0], text=item[1]))

    def _close(self) -> None:
        self._q.put(None)
