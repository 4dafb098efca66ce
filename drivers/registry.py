"""The one driver registry: ``(kind, backend name)`` → class and options model.

Every backend a configuration can name is here — card and code sources, prompts, gates,
GPIO pin factories, QR decoders — with the pydantic model of its ``options``
(:mod:`drivers.options`), so :mod:`agent.config` validates a section against it without
importing the driver. A backend's module is imported only when it is loaded: a missing
optional library (``smartcard``, ``cv2``, ``gpiozero``) fails with a clear
:class:`~drivers.exceptions.DriverUnavailable` naming the extra to install, only when that
backend is chosen — never at ``import agent``.

The load functions are typed by kind: :func:`load_source` (``cards``, ``codes``) returns a
``type[PresentationSource]``, :func:`load_actuator` (``prompt``) a ``type[Actuator]``,
:func:`load_gate` a ``type[SerialGate]``, :func:`load_decoder` a ``type[QRDecoder]`` and
:func:`load_pin_factory` the gpiozero factory class.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from drivers.base import Actuator, PresentationSource
from drivers.exceptions import ConfigError, DriverUnavailable
from drivers.options import (
    AutoCardOptions,
    BuzzerPromptOptions,
    CameraOptions,
    DriverOptions,
    GateOptions,
    GpioOptions,
    KeypadGpioOptions,
    KeypadSimOptions,
    PcscCardOptions,
    PromptOptions,
    ScannerOptions,
    SerialGateOptions,
    SimCardOptions,
    SimCodeOptions,
)

if TYPE_CHECKING:
    from drivers.gate import SerialGate
    from drivers.keypad import Keypad
    from drivers.qrdecode import QRDecoder

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "backend_names", "load_actuator", "load_decoder",
           "load_keypad",
           "resolve_auto_cards",
           "load_gate", "load_pin_factory", "load_source", "options_for", "options_model"]

SourceKind = Literal["cards", "codes"]


@dataclass(frozen=True, slots=True)
class Backend:
    """``target`` is ``"module:Class"``; ``options`` the model of its options table."""

    target: str
    options: type[DriverOptions] = DriverOptions


_NO_OPTIONS = DriverOptions

#: kind → backend → Backend. Drivers add their entries here.
BACKENDS: dict[str, dict[str, Backend]] = {
    "cards": {
        # resolved to pcsc or sim at start (resolve_auto_cards); takes no options
        "auto": Backend("", AutoCardOptions),
        "sim": Backend("drivers.sim_cards:SimCardSource", SimCardOptions),
        "pcsc": Backend("drivers.pcsc:PcscCardSource", PcscCardOptions),
    },
    "codes": {
        "camera": Backend("drivers.camera:CameraSource", CameraOptions),
        "scanner": Backend("drivers.scanner:SerialScannerSource", ScannerOptions),
        "sim": Backend("drivers.sim_codes:SimCodeSource", SimCodeOptions),
    },
    "prompt": {
        "sim": Backend("drivers.prompt:SimPrompter", PromptOptions),
        "log": Backend("drivers.prompt:LogPrompter", PromptOptions),
        "gpio": Backend("drivers.prompt:BuzzerPrompter", BuzzerPromptOptions),
    },
    "gate": {
        "serial": Backend("drivers.gate.serial_gate:SerialGate", SerialGateOptions),
        "sim": Backend("drivers.gate.sim:SimGate", GateOptions),
    },
    # a GpioBoard's pin factory; every one takes the board's pins as options
    "gpio": {
        "mock": Backend("gpiozero.pins.mock:MockFactory", GpioOptions),
        "lgpio": Backend("gpiozero.pins.lgpio:LGPIOFactory", GpioOptions),
        "rpigpio": Backend("gpiozero.pins.rpigpio:RPiGPIOFactory", GpioOptions),
        "native": Backend("gpiozero.pins.native:NativeFactory", GpioOptions),
    },
    "keypad": {
        "sim": Backend("drivers.keypad:SimKeypad", KeypadSimOptions),
        "gpio": Backend("drivers.keypad:GpioKeypad", KeypadGpioOptions),
    },
    "qr_decoder": {
        "zxing": Backend("drivers.qrdecode:ZxingDecoder"),
        "zbar": Backend("drivers.qrdecode:ZbarDecoder"),
        "opencv": Backend("drivers.qrdecode:OpenCVDecoder"),
    },
}

#: module that failed to import → pip extra that provides it
_EXTRAS = {"smartcard": "pcsc", "cv2": "camera", "zxingcpp": "camera", "pyzbar": "camera",
           "gpiozero": "gpio", "lgpio": "gpio", "RPi": "gpio", "tongsuopy": "sm2",
           "psycopg": "pg"}


def backend_names(kind: str) -> list[str]:
    """The backend names registered for ``kind``."""
    return sorted(BACKENDS.get(kind, {}))


def _backend(kind: str, name: str) -> Backend:
    try:
        return BACKENDS[kind][name]
    except KeyError:
        known = ", ".join(backend_names(kind)) or "none"
        raise ConfigError(f"unknown {kind} backend {name!r} (known: {known})") from None


def options_model(kind: str, name: str) -> type[DriverOptions]:
    """The options model of backend ``name`` of ``kind``; :class:`ConfigError` if unknown."""
    return _backend(kind, name).options


def options_for(kind: str, name: str, options: DriverOptions | None = None) -> DriverOptions:
    """``options`` as backend ``name``'s model: as given if it is one, else revalidated
    (the defaults when None). Raises :class:`ConfigError` naming the keys it refuses."""
    model = options_model(kind, name)
    if type(options) is model:      # exactly: a subclass may carry keys this one refuses
        return options
    try:
        return model.model_validate(options.model_dump() if options is not None else {})
    except ValueError as err:
        raise ConfigError(f"{kind} backend {name!r}: {err}") from err


def _load(kind: str, name: str) -> Any:
    target = _backend(kind, name).target
    if not target:
        raise ConfigError(f"{kind} backend {name!r} is resolved at start, not loaded")
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


def _subclass(kind: str, name: str, base: type) -> Any:
    cls = _load(kind, name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{kind} backend {name!r} ({cls!r}) is not a {base.__name__}")
    return cls


def load_source(kind: SourceKind, name: str) -> type[PresentationSource]:
    """The :class:`PresentationSource` class of backend ``name`` (``cards`` or ``codes``).
    Raises :class:`ConfigError` (unknown) or :class:`DriverUnavailable` (library missing)."""
    cls: type[PresentationSource] = _subclass(kind, name, PresentationSource)
    return cls


def load_actuator(kind: Literal["prompt"], name: str) -> type[Actuator]:
    """The :class:`Actuator` class of backend ``name``. Errors as :func:`load_source`."""
    cls: type[Actuator] = _subclass(kind, name, Actuator)
    return cls


def load_gate(name: str) -> type[SerialGate]:
    """The gate driver class of backend ``name`` (``serial``, ``sim``)."""
    from drivers.gate import SerialGate

    cls: type[SerialGate] = _subclass("gate", name, SerialGate)
    return cls


def load_decoder(name: str) -> type[QRDecoder]:
    """The QR decoder class ``name`` (its library is imported when it is constructed)."""
    from drivers.qrdecode import QRDecoder

    cls: type[QRDecoder] = _subclass("qr_decoder", name, QRDecoder)
    return cls


def load_keypad(name: str) -> type[Keypad]:
    """The :class:`~drivers.keypad.Keypad` class of backend ``name`` (``sim``, ``gpio``)."""
    from drivers.keypad import Keypad

    cls: type[Keypad] = _subclass("keypad", name, Keypad)
    return cls


def load_pin_factory(name: str) -> Any:
    """The gpiozero pin factory class of GPIO backend ``name`` (gpiozero is untyped)."""
    return _load("gpio", name)


def resolve_auto_cards(*, demo: bool) -> str:
    """What the ``auto`` card backend means here: ``pcsc`` when a PC/SC reader is present,
    or on a production terminal (which then waits for one); ``sim`` in demo mode without
    a reader."""
    try:
        from smartcard.System import readers

        present = [str(r) for r in readers()]
    except Exception:   # no pyscard, or pcscd not running
        present = []
    if present or not demo:
        log.info("cards: auto -> pcsc (readers: %s)", ", ".join(present) or "none yet")
        return "pcsc"
    log.warning("cards: auto -> sim (no PC/SC reader present; demo mode)")
    return "sim"
