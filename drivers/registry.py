"""Backend registry: ``(kind, backend name)`` → ``"module:Class"``, imported on demand.

A missing optional library (``smartcard``, ``cv2``, ``gpiozero``) fails with a clear
:class:`~drivers.exceptions.DriverUnavailable` naming the extra to install, only when that
backend is configured — never at ``import agent``.
"""

from __future__ import annotations

import importlib
from typing import Any

from drivers.exceptions import ConfigError, DriverUnavailable

__all__ = ["BACKENDS", "backend_names", "load_backend"]

#: kind → backend → "module:Class". Drivers add their entries here.
BACKENDS: dict[str, dict[str, str]] = {
    "cards": {
        "sim": "simulator.cards:SimCardSource",
        "pcsc": "drivers.pcsc:PcscCardSource",
    },
    "codes": {
        "camera": "drivers.camera:CameraSource",
        "scanner": "drivers.scanner:SerialScannerSource",
        "sim": "simulator.phone:SimCodeSource",
    },
    "qr_decoder": {
        "zxing": "drivers.qrdecode:ZxingDecoder",
        "zbar": "drivers.qrdecode:ZbarDecoder",
        "opencv": "drivers.qrdecode:OpenCVDecoder",
    },
    "prompt": {
        "sim": "drivers.prompt:SimPrompter",
        "log": "drivers.prompt:LogPrompter",
        "gpio": "drivers.prompt:BuzzerPrompter",
    },
    "gate": {
        "serial": "drivers.gate:SerialGate",
        "sim": "drivers.gate.sim:SimGate",
    },
    # every GPIO backend is a GpioBoard; its [gpio] table's ``backend`` picks the pin factory
    "gpio": {
        "mock": "drivers.gpio:GpioBoard",
        "lgpio": "drivers.gpio:GpioBoard",
        "rpigpio": "drivers.gpio:GpioBoard",
        "native": "drivers.gpio:GpioBoard",
    },
}

#: backend module → pip extra that provides its library
_EXTRAS = {"smartcard": "pcsc", "cv2": "camera", "zxingcpp": "camera", "pyzbar": "camera",
           "gpiozero": "gpio", "tongsuopy": "sm2", "psycopg": "pg"}


def backend_names(kind: str) -> list[str]:
    """The backend names registered for ``kind``."""
    return sorted(BACKENDS.get(kind, {}))


def load_backend(kind: str, name: str) -> Any:
    """Import and return the class registered as ``name`` for ``kind``.

    Raises :class:`ConfigError` for an unknown kind or name, :class:`DriverUnavailable`
    when the backend's library is not installed.
    """
    try:
        target = BACKENDS[kind][name]
    except KeyError:
        known = ", ".join(backend_names(kind)) or "none"
        raise ConfigError(f"unknown {kind} backend {name!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        missing = getattr(err, "name", "") or ""
        extra = _EXTRAS.get(missing.split(".")[0], "")
        hint = f"; install it with: pip install 'yikatong-edge[{extra}]'" if extra else ""
        raise DriverUnavailable(
            f"{kind} backend {name!r} needs {missing or module_name!r}, which is not installed{hint}"
        ) from err
    return getattr(module, class_name)
