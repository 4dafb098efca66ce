"""One pydantic options model per driver backend: the ``options`` table of a driver section.

Every model forbids unknown keys, so ``options = { rate_per_mn = 60 }`` is refused when the
configuration is validated (``ykt config validate``, :func:`agent.config.load_config`)
with the file, line and key, not when the daemon starts. The registry
(:mod:`drivers.registry`) names the model of each backend; a backend's ``from_options``
then receives the validated model. This module imports no driver and no optional library.

Units are in the field names (``_s`` seconds, ``_ms`` milliseconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from agent.model import Reason
from drivers.exceptions import ConfigError

__all__ = [
    "AutoCardOptions", "BuzzerPromptOptions", "CameraOptions", "DriverOptions", "GateOptions",
    "GpioBoardOptions", "GpioInputPin", "GpioOptions", "GpioOutputPin", "KeypadGpioOptions",
    "KeypadSimOptions", "PcscCardOptions", "PromptOptions",
    "ScannerOptions", "SerialGateOptions", "SimCardOptions", "SimCodeOptions", "VoiceSpec", "expect",
]

#: what a profile may ask a card read for (see drivers.ssc_records.ALL_NEEDS, docs/card.md)
CARD_NEEDS = ("valid_until", "valid_from", "region", "birth_date", "name")


class DriverOptions(BaseModel):
    """Base of every backend's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=DriverOptions)


def expect(options: DriverOptions, model: type[OptionsT]) -> OptionsT:
    """``options`` if it is a ``model``; else :class:`ConfigError` (a backend was handed
    another backend's options: the registry and the backend disagree)."""
    if not isinstance(options, model):
        raise ConfigError(f"expected {model.__name__}, got {type(options).__name__}")
    return options


# -- cards --------------------------------------------------------------------------------
class AutoCardOptions(DriverOptions):
    """``cards`` backend ``auto`` (pcsc when a reader is present, else sim in demo mode)
    takes no options: name the backend to configure it."""


class SimCardOptions(DriverOptions):
    population_size: int = Field(60, ge=1, description="card holders generated")
    seed: int = Field(7, description="seed of the generated population and tap times")
    rate_per_min: float = Field(0.0, ge=0, description="random taps per minute; 0: none")


class PcscCardOptions(DriverOptions):
    reader: str = Field("", description="reader name or substring; '' = all but the PSAM's")
    psam: Literal["pcsc", "soft", "test"] = Field("pcsc", description="where the PSAM is")
    psam_reader: str = Field("", description="the PSAM's reader (psam = 'pcsc')")
    needs: frozenset[str] = Field(frozenset({"valid_until", "birth_date"}),
                                  description="card fields the profile's rules need")
    wait_s: float = Field(2.0, gt=0, description="longest single SCardGetStatusChange wait")
    retry_s: float = Field(0.2, gt=0, description="back-off while pcscd is away")

    @field_validator("needs")
    @classmethod
    def _known_needs(cls, v: frozenset[str]) -> frozenset[str]:
        unknown = v - set(CARD_NEEDS)
        if unknown:
            raise ValueError(f"unknown card needs {sorted(unknown)}; known: {sorted(CARD_NEEDS)}")
        return v


# -- codes --------------------------------------------------------------------------------
class SimCodeOptions(DriverOptions):
    name: str = Field("sim:codes", description="source name in logs and presentations")


class CameraOptions(DriverOptions):
    device: str | int = Field("/dev/video0", description="camera, video file or image directory")
    decoder: str = Field("zxing", description="QR decoder backend (zxing, zbar, opencv)")
    retry_decoder: str | None = Field(None, description="decoder to retry a missed frame with")
    roi: tuple[int, int, int, int] | None = Field(None, description="[x, y, w, h] in pixels")
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0)
    exposure: float | None = None
    auto_exposure: bool | None = None
    debounce_s: float = Field(2.0, ge=0, description="same code again within this is dropped")
    pace: Literal["realtime", "all"] = "realtime"
    loop: bool = Field(False, description="replay a video file or image directory forever")
    reconnect_s: float = Field(2.0, gt=0)
    lost_s: float = Field(1.0, gt=0)
    name: str | None = None

    @field_validator("decoder", "retry_decoder")
    @classmethod
    def _known_decoder(cls, v: str | None) -> str | None:
        from drivers.registry import backend_names  # the registry imports this module

        if v is not None and v not in backend_names("qr_decoder"):
            raise ValueError(f"unknown QR decoder {v!r} "
                             f"(known: {', '.join(backend_names('qr_decoder'))})")
        return v


class ScannerOptions(DriverOptions):
    url: str = Field("/dev/ttyACM0", description="serial port (anything serial_for_url takes)")
    baudrate: int = Field(9600, gt=0)
    max_line: int = Field(4096, ge=16, description="longest code text in bytes")
    stale_partial_s: float = Field(1.0, gt=0)
    debounce_s: float = Field(1.0, ge=0)
    reconnect_s: float = Field(1.0, gt=0)
    read_timeout_s: float = Field(0.05, gt=0)
    name: str | None = None


# -- gpio ---------------------------------------------------------------------------------
class GpioOutputPin(DriverOptions):
    pin: int | str = Field(description="BCM number or a name like 'GPIO17'")
    active_high: bool = True


class GpioInputPin(DriverOptions):
    pin: int | str = Field(description="BCM number or a name like 'GPIO5'")
    pull_up: bool | None = Field(True, description="None: floating (needs active_state)")
    active_state: bool | None = None
    bounce_ms: float | None = Field(None, ge=0)


class GpioOptions(DriverOptions):
    """The pins of a GPIO board (every ``gpio`` backend; the backend picks the pin factory)."""

    relays: dict[str, GpioOutputPin] = Field(default_factory=dict)
    leds: dict[str, GpioOutputPin] = Field(default_factory=dict)
    buzzers: dict[str, GpioOutputPin] = Field(default_factory=dict)
    inputs: dict[str, GpioInputPin] = Field(default_factory=dict)


class GpioBoardOptions(GpioOptions):
    """A board of its own (the ``gpio`` prompter's): its pins and its pin factory."""

    backend: Literal["mock", "lgpio", "rpigpio", "native"] = "lgpio"


# -- prompt -------------------------------------------------------------------------------
class VoiceSpec(DriverOptions):
    text: str
    file: str | None = None


class PromptOptions(DriverOptions):
    """``prompt`` backends ``sim`` and ``log``."""

    display_columns: int = Field(20, ge=4, description="display width in columns")
    voice_dir: Path | None = Field(None, description="where voice clip files live")
    voices: dict[str, str | VoiceSpec] = Field(default_factory=dict)
    patterns: dict[str, tuple[int, ...]] = Field(default_factory=dict,
                                                 description="beep patterns: on/off ms")
    sounds: dict[Reason, str] = Field(default_factory=dict,
                                      description="decision reason → beep pattern name")
    large_text: bool = Field(False, description="big characters: the short form, half "
                             "the columns")
    player: Literal["none", "sim", "alsa"] = Field(
        "none", description="voice: none, sim (records) or alsa (aplay)")
    alsa_device: str = Field("default", description="ALSA PCM for the alsa player")


class BuzzerPromptOptions(PromptOptions):
    """``prompt`` backend ``gpio``: a buzzer on a GPIO board of its own."""

    gpio: GpioBoardOptions = Field(description="the board (a buzzer named by 'buzzer')")
    buzzer: str = "main"


# -- gate ---------------------------------------------------------------------------------
class GateOptions(DriverOptions):
    """``gate`` backend ``sim`` (a controller of its own on a pty); ``serial`` adds ``url``."""

    direction: Literal["in", "out"] = "in"
    open_ms: int = Field(5000, ge=100, le=60000, description="longest open for one passage")
    name: str = "gate"
    baudrate: int = Field(115200, gt=0)
    response_timeout_s: float = Field(0.2, gt=0)
    retries: int = Field(2, ge=0)
    heartbeat_s: float = Field(0.5, gt=0)
    fail_after: int = Field(2, ge=1, description="missed answers before out of service")
    reconnect_s: float = Field(0.5, gt=0)

    def timings(self) -> dict[str, Any]:
        """The keyword arguments of :class:`drivers.gate.serial_gate.SerialGate` that every
        gate backend's options carry (all but the line)."""
        return self.model_dump(include={"name", "baudrate", "response_timeout_s", "retries",
                                        "heartbeat_s", "fail_after", "reconnect_s"})


class SerialGateOptions(GateOptions):
    url: str = Field("/dev/ttyUSB0", description="the controller's line (serial_for_url)")
    require_port: bool = Field(True, description="refuse to start if the line cannot open")


# -- keypad -------------------------------------------------------------------------------
#: a service key's name: the service type it chooses (取号), e.g. "A"
ServiceKey = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,4}$")]


class KeypadSimOptions(DriverOptions):
    """``keypad`` backend ``sim``: keys pressed by a test or the demo (``SimKeypad.press``)."""

    keys: list[ServiceKey] = Field(default_factory=lambda: ["A", "B", "C"],
                                   description="the services the keys choose")


class KeypadGpioOptions(DriverOptions):
    """``keypad`` backend ``gpio``: one push button per service on a GPIO input."""

    factory: Literal["mock", "lgpio", "rpigpio", "native"] = Field(
        "lgpio", description="the gpiozero pin factory (see [gpio])")
    keys: dict[ServiceKey, GpioInputPin] = Field(
        min_length=1, description="service → its button's input pin, e.g. A = { pin = 5 }")
