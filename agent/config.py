"""The terminal's configuration file (TOML), validated with pydantic (``extra="forbid"``).

Every field has a default, so an empty file (or none) runs on embedded defaults — a bus
validator with the ``sim`` card source, suitable for the demo. Secrets never live in the
file: the pseudonymisation key comes from ``$YKT_PSEUDONYM_KEY`` (hex) or
``$CREDENTIALS_DIRECTORY/pseudonym-key`` (systemd ``LoadCredential=``); only with
``demo = true`` may a built-in demo key be used. See ``docs/configuration.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.codes.online_config import OnlineSchemeConfig, check_prefixes
from agent.keys import DEMO_PSEUDONYM_KEY, pseudonym_key, read_secret
from agent.model import Location
from agent.mqtt_settings import AGENT_MAX_PACKET, MqttSettings
from agent.tomlconf import ConfigFileError, load_toml_model
from drivers.options import DriverOptions
from drivers.registry import backend_names, options_model

__all__ = ["DEMO_PSEUDONYM_KEY", "AgentConfig", "ConfigFileError", "load_config",
           "read_secret"]

log = logging.getLogger(__name__)

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TerminalSection(_Section):
    id: str = Field("BUS-DEMO-0001", min_length=1, max_length=64,
                    pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                    description="terminal id: unique in the fleet, used in MQTT topics")
    profile: str = Field("bus_validator", description="profile name in profiles/ or a path")
    data_dir: Path = Field(Path("/var/lib/ykt"), description="journal and store live here "
                           "(absolute; the agent unit's StateDirectory)")
    demo: bool = Field(False, description="allow the built-in demo pseudonymisation key")


class LocationSection(_Section):
    site: str = ""
    route: str = Field("", description="bus route, e.g. '19路'")
    vehicle: str = Field("", description="vehicle id; the passback scope on buses")
    stop: str = ""
    gate: str = Field("", description="gate id; the passback scope at gates")
    direction: Literal["in", "out", ""] = ""
    operator: str = Field("", description="operator running this terminal (bus company, "
                          "scenic area): journaled with each record for settlement")

    def build(self) -> Location:
        return Location(self.site, self.route, self.vehicle, self.stop, self.gate, self.direction,
                        self.operator)


class DriverSection(_Section):
    """A driver: its backend name and that backend's options.

    ``backend`` must be one registered for the section's kind (:mod:`drivers.registry`);
    ``options`` is validated against that backend's model (:mod:`drivers.options`,
    unknown keys refused), so a typo is reported with the file, line and key.
    """

    kind: ClassVar[str] = ""

    backend: str = Field("sim", description="backend name, see drivers/registry.py")
    enabled: bool = True
    options: SerializeAsAny[DriverOptions] = Field(
        default_factory=dict, validate_default=True,  # type: ignore[arg-type]
        description="backend options (drivers/options.py)")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        known = backend_names(cls.kind)
        if v not in known:
            raise ValueError(f"unknown {cls.kind} backend {v!r} (known: {', '.join(known)})")
        return v

    @field_validator("options", mode="before")
    @classmethod
    def _backend_options(cls, v: Any, info: ValidationInfo) -> DriverOptions:
        backend = info.data.get("backend")
        if backend is None:            # the backend itself is wrong: reported on its key
            return DriverOptions()
        model = options_model(cls.kind, backend)
        if type(v) is model:
            return v
        if isinstance(v, DriverOptions):
            v = v.model_dump()
        return model.model_validate(v if v is not None else {})


class CardsSection(DriverSection):
    kind = "cards"
    backend: str = Field("auto", description="auto (pcsc if a reader is present), pcsc, sim")


class PromptSection(DriverSection):
    kind = "prompt"
    backend: str = Field("log", description="sim, log, gpio")


class GateSection(DriverSection):
    kind = "gate"
    enabled: bool = False


class GpioSection(DriverSection):
    kind = "gpio"
    backend: str = Field("mock", description="pin factory: mock, lgpio, rpigpio, native")
    enabled: bool = False


class KeypadSection(DriverSection):
    """A kiosk's service keys (drivers/keypad.py): the service chosen before a tap (取号)."""

    kind = "keypad"
    enabled: bool = False
    hold_s: float = Field(30.0, gt=0, le=600, description="a choice not followed by a tap "
                          "within this many seconds is forgotten")


class CodesSection(DriverSection):
    kind = "codes"
    enabled: bool = False
    trust_file: Path | None = Field(None, description="trusted issuer keys for dynamic codes")
    window_back_s: int = Field(60, ge=1, description="accept codes up to this old (s)")
    window_ahead_s: int = Field(30, ge=0, description="accept codes this far ahead (s)")
    online: list[OnlineSchemeConfig] = Field(
        default_factory=list, description="online-verified schemes by prefix ([[codes.online]]"
        " tables, agent/codes/online_config.py)")

    @model_validator(mode="after")
    def _prefixes(self) -> CodesSection:
        check_prefixes(self.online)
        return self


class PolicySection(_Section):
    """Signed policy bundles from central operations (see docs/policy.md)."""

    enabled: bool = Field(False, description="follow a policy channel over MQTT")
    channel: str = Field("", description="policy channel, e.g. 'city/370302/bus'")
    anchor_file: Path | None = Field(
        None, description="trusted root of policy signing keys (roots/1.json from keygen)")

    @model_validator(mode="after")
    def _needs(self) -> PolicySection:
        if self.enabled and (not self.channel or self.anchor_file is None):
            raise ValueError("policy.enabled needs policy.channel and policy.anchor_file")
        return self


class JournalSection(_Section):
    dir: Path | None = Field(
        None, description="directory of journal.db (default: terminal.data_dir); on an SD "
        "card a file system of its own, so a policy's bulk writes never share its ext4 "
        "journal (docs/operations.md)")
    retention_days: float = Field(7.0, ge=0, description="keep acked records this long")
    reserve_mb: float = Field(
        8.0, ge=0, description="disk space kept in reserve for a full disk (MiB): released "
        "when the disk fills so the terminal can journal 'out of service', prune and sync")


class MaintenanceSection(_Section):
    """When a policy's bulk writes run (docs/configuration.md, ``agent/policy/schedule.py``):
    a snapshot never starts inside ``busy_hours`` (unless the terminal has no policy yet or
    the applied one is within ``expiry_margin_s`` of its expiry); snapshot and overlay merge
    pause while taps come and go on after ``quiet_s`` without one. Deltas apply at once."""

    busy_hours: list[str] = Field(
        default_factory=list, description="local 'HH:MM-HH:MM' spans (profile timezone, "
        "decision time) in which no snapshot starts and no overlay merge runs; "
        "'22:00-06:00' wraps past midnight")
    quiet_s: float = Field(2.0, gt=0, le=3600, description="seconds without a tap before a "
                           "snapshot or merge child goes on")
    expiry_margin_s: float = Field(
        3600.0, ge=0, description="seconds before the applied policy expires from which a "
        "snapshot is neither deferred nor paused")
    snapshot_rows_per_s: int = Field(
        0, ge=0, description="cap on a snapshot's write rate, rows/s (0: none); SD cards: "
        "see docs/operations.md")
    merge_batch_rows: int = Field(500, ge=1, le=100_000, description="overlay rows per merge "
                                  "transaction; smaller on SD cards (docs/operations.md)")

    @field_validator("busy_hours")
    @classmethod
    def _spans(cls, v: list[str]) -> list[str]:
        from agent.policy.schedule import BusyHours
        BusyHours.parse(v)            # ValueError: which span and what is wrong
        return v


class IdentitySection(_Section):
    """The terminal's identity (``docs/security.md``): its key, its certificate from the hub
    CA, the hub CA and the hub's signing key, as files in one directory
    (:class:`agent.identity.TerminalIdentityPaths`), written by ``ykt enroll``. Without it
    the terminal speaks the legacy unsigned protocol: development only."""

    dir: Path | None = Field(None, description="identity directory written by `ykt enroll`")


class MqttSection(MqttSettings):
    """The MQTT link to the hub (all of :class:`agent.mqtt_settings.MqttSettings`) plus ``enabled``."""

    enabled: bool = Field(True, description="sync with the hub over MQTT")
    max_packet_size: int = Field(
        AGENT_MAX_PACKET, ge=1024, le=268435455,
        description="MQTT 5 Maximum Packet Size of the terminal's connection, bytes: the "
                    "largest message it accepts (a 192 KiB manifest and its topic)")

    def link_settings(self) -> MqttSettings:
        return MqttSettings.model_validate(self.model_dump(exclude={"enabled"}))


class AgentConfig(_Section):
    terminal: TerminalSection = Field(default_factory=TerminalSection)
    location: LocationSection = Field(default_factory=lambda: LocationSection(
        route="19路", vehicle="鲁B-D0001"))
    cards: CardsSection = Field(default_factory=CardsSection)
    codes: CodesSection = Field(default_factory=CodesSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    gate: GateSection = Field(default_factory=GateSection)
    gpio: GpioSection = Field(default_factory=GpioSection)
    keypad: KeypadSection = Field(default_factory=KeypadSection)
    journal: JournalSection = Field(default_factory=JournalSection)
    policy: PolicySection = Field(default_factory=PolicySection)
    maintenance: MaintenanceSection = Field(default_factory=MaintenanceSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    identity: IdentitySection = Field(default_factory=IdentitySection)

    @model_validator(mode="after")
    def _checks(self) -> AgentConfig:
        if self.codes.enabled and self.codes.trust_file is None:
            raise ValueError("codes.enabled needs codes.trust_file (trusted issuer keys)")
        if self.policy.enabled and not self.mqtt.enabled:
            raise ValueError("policy.enabled needs mqtt.enabled (bundles arrive over MQTT)")
        return self

    @property
    def journal_path(self) -> Path:
        return (self.journal.dir or self.terminal.data_dir) / "journal.db"

    @property
    def store_path(self) -> Path:
        return self.terminal.data_dir / "store.db"

    def pseudonym_key(self) -> bytes:
        """The deployment's pseudonymisation key (:func:`agent.keys.pseudonym_key`)."""
        return pseudonym_key(demo=self.terminal.demo)


def load_config(path: str | Path | None) -> AgentConfig:
    """Load and validate a config file; ``None`` gives the embedded defaults (demo mode).

    Raises :class:`ConfigFileError` naming the file, line and key of every problem.
    """
    if path is None:
        cfg = AgentConfig()
        cfg.terminal.demo = True
        return cfg
    return load_toml_model(path, AgentConfig)
