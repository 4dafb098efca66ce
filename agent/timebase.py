"""The time decisions are made by: the wall clock only as far as it can be trusted.

The wall clock lies on buses (a flat RTC battery, a bad NTP server, a technician's
``date -s``). Passback, daily limits, opening hours, replay windows and pruning all read
the time, so a clock set back an hour must not make a rider's second tap a new fare, and a
clock set forward ten days must not start a fresh day of free rides or prune today's
counters. :class:`TimeBase` gives them a time that

- **within a boot** advances with ``CLOCK_MONOTONIC`` from an anchor (a wall reading),
  so a jump of the wall clock either way is *not followed*: it is reported once
  (:class:`ClockJump`, journaled as ``clock_jump`` by the engine) and the decision time
  goes on as if it had not happened. Small differences (under ``jump_s``, NTP slewing)
  are followed, never backwards;
- **across boots** never precedes the journal's last record (the journal's own order):
  the anchor is ``max(wall clock, last record's time)``;
- follows the wall clock in one case only: the first time the clock becomes NTP-
  synchronised after running unsynchronised (a terminal that booted with a dead RTC
  learns the real time), journaled as a followed jump.

The decision time is **not trusted** (:attr:`TimeBase.trusted` False) when it could only
be anchored to the journal's last record because the wall clock read more than ``jump_s``
earlier than that at start (a dead RTC battery: the real time is somewhere after the last
record, how far is unknown), until the first NTP synchronisation sets it right. Rules
judge their time conditions in the holder's favour then (``docs/rules.md``).

The anchor is kept in the journal's meta table with the kernel's boot id, so a daemon
restarted within the same boot keeps it (``CLOCK_MONOTONIC`` counts from the boot), and a
restart cannot be used to adopt a wrong wall clock.

All times are epoch seconds (float).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.model import ClockQuality

__all__ = ["ClockJump", "TimeBase", "boot_id"]

log = logging.getLogger(__name__)

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """The kernel's boot id ("" where there is none): ``CLOCK_MONOTONIC`` is per boot."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


class AnchorStore(Protocol):
    """Where the anchor is kept (the journal's meta table)."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ClockJump:
    """The wall clock jumped by ``step_s`` seconds and now differs from the decision time
    by ``offset_s`` (wall − decision; about 0 when it came back into agreement);
    ``followed`` when the decision time followed it (the first NTP synchronisation)."""

    offset_s: float
    step_s: float
    followed: bool
    quality: ClockQuality

    def fields(self) -> dict[str, object]:
        """The ``clock_jump`` journal event's fields (journal records carry no floats:
        times are whole milliseconds)."""
        return {"offset_ms": round(self.offset_s * 1000), "step_ms": round(self.step_s * 1000),
                "direction": "back" if self.step_s < 0 else "forward",
                "followed": self.followed, "clock": self.quality.value}


class TimeBase:
    """Decision time: monotonic within a boot, never before the journal's last record.

    ``wall``/``mono`` return seconds (inject both in tests; a test that passes one fake
    clock for both gets a perfect clock). ``floor`` is the journal's last record time;
    ``anchors`` keeps the anchor across restarts within a boot. ``jump_s`` is the largest
    difference followed as drift (seconds).
    """

    META_KEY = "timebase"

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 quality: Callable[[], ClockQuality] = lambda: ClockQuality.SYNCED,
                 floor: float = 0.0, anchors: AnchorStore | None = None,
                 jump_s: float = 5.0, boot: str | None = None) -> None:
        self._wall, self._mono, self._quality = wall, mono, quality
        self.jump_s = jump_s
        self._anchors = anchors
        self._boot = boot_id() if boot is None else boot
        self._lock = threading.Lock()
        self._pending: list[ClockJump] = []
        self._reported = 0.0          # the offset last reported
        self._was_synced = quality() is ClockQuality.SYNCED
        w, m = wall(), mono()
        saved = self._load()
        self.trusted = True
        """False while the time is anchored to the journal's floor (see the module doc)."""
        if saved is not None:
            self._anchor_wall, self._anchor_mono, self.trusted = saved
        else:
            self.trusted = floor - w <= jump_s
            self._set_anchor(max(w, floor), m)
        self._last = max(floor, self._anchor_wall + (m - self._anchor_mono))
        self.offset_s = w - self._last
        """The wall clock minus the decision time at the last reading (seconds)."""

    # -- the anchor ------------------------------------------------------------------------
    def _load(self) -> tuple[float, float, bool] | None:
        if self._anchors is None or not self._boot:
            return None
        try:
            raw = json.loads(self._anchors.get_meta(self.META_KEY) or "null")
            if isinstance(raw, dict) and raw.get("boot") == self._boot:
                return float(raw["wall"]), float(raw["mono"]), raw.get("trusted") is not False
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable time anchor in the journal: starting a new one")
        return None

    def _set_anchor(self, wall: float, mono: float) -> None:
        self._anchor_wall, self._anchor_mono = wall, mono
        if self._anchors is not None and self._boot:
            self._anchors.set_meta(self.META_KEY, json.dumps(
                {"boot": self._boot, "wall": wall, "mono": mono, "trusted": self.trusted}))

    # -- reading ---------------------------------------------------------------------------
    def now(self) -> float:
        """The decision time (epoch seconds), never earlier than the previous reading."""
        with self._lock:
            w, m, q = self._wall(), self._mono(), self._quality()
            expected = self._anchor_wall + (m - self._anchor_mono)
            offset = w - expected
            synced = q is ClockQuality.SYNCED
            if abs(offset) <= self.jump_s:
                t = w                                   # drift: follow the wall clock
                self._set_anchor_quietly(w, m)
                if abs(self._reported) > self.jump_s:   # back in agreement: say so
                    self._pending.append(ClockJump(offset, offset - self._reported, False, q))
                self._reported = 0.0
            elif synced and not self._was_synced:
                t = w                                   # first synchronisation: learn it
                self.trusted = True
                self._set_anchor(w, m)
                self._pending.append(ClockJump(0.0, offset - self._reported, True, q))
                self._reported = 0.0
            else:
                t = expected
                if abs(offset - self._reported) > self.jump_s:
                    self._pending.append(ClockJump(offset, offset - self._reported, False, q))
                    self._reported = offset
            self._was_synced = synced
            t = max(t, self._last)
            self._last = t
            self.offset_s = w - t
            return t

    def peek(self) -> float:
        """The decision time as :meth:`now` would about give it (epoch seconds), without
        following the wall clock, reporting a jump or writing the anchor: for schedules
        judged off the tap path (:mod:`agent.policy.schedule`)."""
        with self._lock:
            return max(self._last, self._anchor_wall + (self._mono() - self._anchor_mono))

    def _set_anchor_quietly(self, wall: float, mono: float) -> None:
        """Follow drift without writing the journal on every tap: persist only when the
        anchor moved by more than a second."""
        moved = abs((wall - mono) - (self._anchor_wall - self._anchor_mono))
        if moved > 1.0:
            self._set_anchor(wall, mono)
        else:
            self._anchor_wall, self._anchor_mono = wall, mono

    def take_jumps(self) -> list[ClockJump]:
        """The jumps seen since the last call (the engine journals each one)."""
        with self._lock:
            out, self._pending = self._pending, []
        return out
