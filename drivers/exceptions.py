"""Driver errors.

Hierarchy::

    DriverError
     ├── DriverUnavailable (ImportError)     backend's library or device missing
     ├── DeviceError (OSError)               a device failed; carries a device code
     │    ├── ReaderError                    PC/SC reader or service (code = PC/SC error)
     │    ├── SerialDeviceError              serial port / protocol framing
     │    └── GateError                      gate controller not answering or faulted
     └── ConfigError (ValueError)            a driver was configured wrongly

Vendor errors are wrapped ``raise … from err`` so the original stays in the traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "DriverError",
    "DriverUnavailable",
    "GateError",
    "ReaderError",
    "SerialDeviceError",
]


class DriverError(Exception):
    """Base of every driver error."""


class DriverUnavailable(DriverError, ImportError):
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


class ConfigError(DriverError, ValueError):
    """A driver was configured wrongly (bad pin, unknown option)."""
