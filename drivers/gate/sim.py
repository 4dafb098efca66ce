"""``gate`` backend ``sim``: a :class:`~drivers.gate.serial_gate.SerialGate` on its own
simulated controller (the host-built firmware behind a pseudo-terminal,
:class:`simulator.gate.GateControllerSim`), so a profile can run a gate with no hardware.
"""

from __future__ import annotations

from typing import Any

from drivers.gate.serial_gate import SerialGate
from drivers.options import GateOptions
from simulator.gate import GateControllerSim

__all__ = ["SimGate", "sim_controller"]


class SimGate(SerialGate):
    """A :class:`SerialGate` on a fresh :class:`~simulator.gate.GateControllerSim`, in
    service when the constructor returns (or :class:`TimeoutError` from the controller).

    Accepts the keyword arguments of :class:`SerialGate` except ``url``. :meth:`close`
    also stops the controller.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("url", None)
        self.controller = GateControllerSim().start()
        try:
            super().__init__(self.controller.port, **kwargs)
        except Exception:
            self.controller.stop()
            raise
        self.wait_ready(5.0)

    @classmethod
    def from_options(cls, options: GateOptions) -> SimGate:
        """Backend ``sim``: the timings of validated :class:`GateOptions` (no line)."""
        return cls(**options.timings())

    def close(self) -> None:
        super().close()
        self.controller.stop()


def sim_controller(gate: object) -> GateControllerSim | None:
    """The simulated controller behind ``gate`` (a :class:`SimGate`, or a
    :class:`~drivers.gate.actuator.GateActuator` on one), else None: how a demo or a
    test reaches the passage sensors of the daemon's ``sim`` gate."""
    inner = getattr(gate, "gate", gate)
    return inner.controller if isinstance(inner, SimGate) else None
