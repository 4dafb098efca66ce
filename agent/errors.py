"""The one root of every Yikatong Edge error, and what the ``ykt`` command exits with.

Every exception the project raises on purpose derives from :class:`YktError`, mixed with
the standard type it always was (``ValueError``, ``OSError``, ``RuntimeError``,
``ImportError``, ``ConnectionError``), so ``except ValueError`` in old callers still
works. Neutral on purpose (standard library only): ``drivers``, ``sync`` and
``simulator`` all import it. Each error is defined next to the code that raises it; the
tree (also in ``docs/architecture.md``)::

    YktError                                   agent.errors: root of every project error
     ├── ConfigurationError (ValueError)        what the operator gave is wrong    → exit 2
     │    ├── ConfigFileError                   agent.tomlconf: a TOML file does not validate
     │    ├── RuleSetError                      agent.rules: a rule set or its vectors fail
     │    ├── TrustStoreError                   agent.codes.trust: an issuer trust document
     │    ├── KeyFormatError                    agent.codes.algorithms: a PEM or COSE key
     │    ├── SecretError                       agent.keys: a secret is missing or malformed
     │    ├── IdentityError                     agent.identity: a key or certificate file
     │    ├── SourceError                       sync.hub.policy_sources: a policy source file
     │    ├── ReportError                       sync.hub.reports: a group, date, month, timezone
     │    └── ConfigError (+ DriverError)       drivers.exceptions: a driver's options
     ├── Unavailable (ImportError)              a library or device is not there → exit 2
     │    ├── AlgorithmUnavailable              agent.codes.algorithms: e.g. SM2 w/o tongsuopy
     │    └── DriverUnavailable (+ DriverError) drivers.exceptions: a backend cannot be used
     ├── DriverError                            drivers.exceptions: base of driver errors
     │    ├── DriverUnavailable                 (above)
     │    ├── ConfigError                       (above)
     │    ├── DeviceError (OSError)             a device failed; ``device``, ``code``
     │    │    ├── ReaderError                  PC/SC reader or pcscd (code = PC/SC error)
     │    │    ├── SerialDeviceError            serial port or framing
     │    │    ├── GateError                    gate controller silent or faulted
     │    │    └── PsamError                    drivers.psam: PSAM missing or refusing
     │    └── CardError                         drivers.ssc: a card gave no credential;
     │         ├── CardRemoved                    ``reason`` is the decision reason
     │         │    └── CardWasReset              drivers.pcsc: pcscd or a client reset it
     │         ├── NotSsc
     │         ├── CardAuthFailed
     │         └── CardReadError (ValueError)
     │              ├── StatusWordError
     │              └── MalformedResponse
     ├── JournalError (RuntimeError)            agent.journal: the journal cannot append
     ├── DataDirBusy (RuntimeError)             agent.datalock: another daemon holds the data dir
     ├── StoreError (RuntimeError)              agent.store_schema: the policy store unusable
     ├── PolicyError (RuntimeError)             agent.policy.errors: a bundle not applied
     │    ├── BundleRefused                     refused for good (``refusal``)
     │    └── ApplyFailed                       failed this time, retried
     │         └── SnapshotDeferred             a snapshot waits for the busy hours' end
     ├── CoseError (ValueError)                 agent.codes.cose: a COSE structure
     ├── Base45Error (ValueError)               agent.codes.base45: Base45 text
     ├── ServiceGarbage (ValueError)            agent.codes.online_http: a verification answer
     ├── NotConnected (ConnectionError)         sync.link: nothing was published
     ├── CommandRefused (ValueError)            agent.commands: a hub command not carried out
     ├── BadSignature (ValueError)              sync.signed: a v2 message's signature fails
     ├── UntrustedTerminal (ValueError)         sync.hub.trust: not enrolled, or revoked
     ├── PacketTooLarge (ValueError)            sync.link: over the broker's packet limit
     ├── SessionRefused (ConnectionError)       sync.session: the broker refused a connection
     ├── EnrollmentError                        agent.enroll: the hub refused or is not the one
     │    └── CertificateExpired                  the certificate expired: re-enroll (new token)
     ├── EnrollmentRefused                      sync.hub.enroll: bad/used/expired token, bad CSR
     ├── DynsecError                            sync.hub.dynsec: the broker refused a command
     ├── PgStoreError (OSError)                 sync.hub.pgstore: PostgreSQL unusable
     ├── PgUnavailable (RuntimeError)           simulator.postgres: no throw-away cluster here
     ├── AccountError (ValueError)              sync.hub.console.accounts: bad account input
     ├── TrailRefused (ValueError)              sync.hub.console.trail: a 用卡轨迹 lookup refused
     └── CardPulled                             simulator.vcard: a virtual card leaves the field

**Exit codes** of ``ykt`` (:func:`exit_code`): 0 success; 2 usage or configuration
(:class:`ConfigurationError`, :class:`Unavailable`: the command cannot do what was asked
as invoked and configured here); 1 a failure reported (every other :class:`YktError`:
a device failed, a bundle was refused, the journal could not append). An exception that
is not a :class:`YktError` is a bug and ends ``ykt`` with a traceback.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "ConfigurationError", "Unavailable", "YktError",
           "exit_code"]

EXIT_FAILURE = 1
"""``ykt`` exit status: the command ran and reports a failure."""
EXIT_USAGE = 2
"""``ykt`` exit status: usage or configuration error (nothing was attempted)."""


class YktError(Exception):
    """Root of every error Yikatong Edge raises on purpose."""


class ConfigurationError(YktError, ValueError):
    """What the operator gave (a config, rule, key or source file, a secret, an option) is
    wrong. ``ykt`` exits 2."""


class Unavailable(YktError, ImportError):
    """Something the configuration asks for is not there (a library not installed, a
    device or service missing). ``ykt`` exits 2."""


def exit_code(err: YktError) -> int:
    """The ``ykt`` exit status for ``err``: :data:`EXIT_USAGE` (2) for
    :class:`ConfigurationError` and :class:`Unavailable`, else :data:`EXIT_FAILURE` (1)."""
    return EXIT_USAGE if isinstance(err, ConfigurationError | Unavailable) else EXIT_FAILURE
