"""Driver errors: the ``DriverError`` branch of the project's one error tree.

Every class here derives from :class:`agent.errors.YktError` (the root; the whole tree
is in :mod:`agent.errors` and ``docs/architecture.md``). This branch::

    DriverError (YktError)
     ├── DriverUnavailable (Unavailable: ImportError)  backend's library or device missing
     ├── DeviceError (OSError)               a device failed; carries a device code
     │    ├── ReaderError                    PC/SC reader or service (code = PC/SC error)
     │    ├── SerialDeviceError              serial port / protocol framing
     │    ├── GateError                      gate controller not answering or faulted
     │    └── PsamError                      drivers.psam: PSAM missing, refusing (code = SW)
     ├── CardError                           drivers.ssc: no credential from this card;
     │    ├── CardRemoved                      ``reason`` is the decision reason
     │    │    └── CardWasReset                drivers.pcsc: pcscd or a client reset it
     │    ├── NotSsc
     │    ├── CardAuthFailed
     │    └── CardReadError (ValueError)
     │         ├── StatusWordError
     │         └── MalformedResponse
     └── ConfigError (ConfigurationError: ValueError)   a driver was configured wrongly

``ykt`` exits 2 for ``DriverUnavailable`` and ``ConfigError``, 1 for the others
(:func:`agent.errors.exit_code`). Vendor errors are wrapped ``raise … from err`` so the
original stays in the traceback.
"""

from __future__ import annotations

from agent.errors import ConfigurationError, Unavailable, YktError

__all__ = [
    "ConfigError",
    "DeviceError",
    "DriverError",
    "DriverUnavailable",
    "GateError",
    "ReaderError",
    "SerialDeviceError",
]


class DriverError(YktError):
    """Base of every driver error."""


class DriverUnavailable(DriverError, Unavailable):
    """The configured backend cannot be used here (library not installed, no device)."""


class DeviceError(DriverError, OSError):
    """A device failed. ``device`` names it, ``code`` is the device's own error code if any."""

    def __init__(self, message: str, *, device: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.code = code

    def __str__(self) -> str:
        base = super().__str__()
        where = f" [{self.device}]" if self.device else ""
        code = f" (code 0x{self.code:08X})" if self.code is not None else ""
        return f"{base}{where}{code}"


class ReaderError(DeviceError):
    """PC/SC reader or pcscd failure; ``code`` is the PC/SC error code."""


class SerialDeviceError(DeviceError):
    """Serial port failure or a framing/protocol error on a serial line."""


class GateError(DeviceError):
    """The gate controller does not answer or reports a fault."""


class ConfigError(DriverError, ConfigurationError):
    """A driver was configured wrongly (bad pin, unknown option)."""
