"""Start a real Mosquitto broker on a free loopback port, for the demo and the tests.

The broker is a child process with its own config and (optional) persistence directory;
``stop()``/``start()`` keep the same port so clients can reconnect, which is how tests
and the demo simulate a broker outage.

Two modes: plain (anonymous, no TLS: development, the ``broker`` test fixture) and
:meth:`Mosquitto.from_broker_config` — the configuration written by ``ykt hub broker-config``
(:mod:`sync.hub.brokerconf`: mutual TLS, dynamic-security ACLs, CRL), the same one users
run. :meth:`Mosquitto.reload` sends SIGHUP (Mosquitto re-reads its CRL then).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from simulator.process import Service, launch, stop_process, wait_until

__all__ = ["Mosquitto", "free_port"]

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto(Service):
    """A Mosquitto broker on ``127.0.0.1:port``.

    Raises ``FileNotFoundError`` if ``mosquitto`` is not installed and ``TimeoutError``
    if it does not accept connections within ``start_timeout`` seconds.
    """

    def __init__(self, port: int | None = None, *, workdir: str | Path | None = None,
                 persistence: bool = True, start_timeout: float = 10.0) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                            if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ykt-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.tls = False
        self.conf = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )

    @classmethod
    def from_broker_config(cls, conf: Path, port: int, *, start_timeout: float = 10.0) -> Mosquitto:
        """A broker run from a configuration written by ``ykt hub broker-config`` for
        ``127.0.0.1:port`` (its directory is the broker's; it is not removed on close).
        Its log goes to ``mosquitto.log`` in a directory of its own beside it."""
        logdir = Path(conf).parent.with_name(Path(conf).parent.name + "-log")
        b = cls(port, workdir=logdir, persistence=False, start_timeout=start_timeout)
        b._own_dir = False
        b.conf = Path(conf)
        b.tls = True
        return b

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its configuration files, the CRL among them."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        os.kill(self._proc.pid, signal.SIGHUP)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker (no-op if running) and wait until it accepts connections."""
        if self.running:
            return
        self._proc = launch([self.exe, "-c", str(self.conf)], self.log_path)
        try:
            wait_until(self._listening, timeout=self.start_timeout, interval=0.02,
                       failure=f"mosquitto did not listen on port {self.port}",
                       proc=self._proc, log_path=self.log_path)
        except TimeoutError:
            self.stop()
            raise

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``). Safe twice."""
        proc, self._proc = self._proc, None
        stop_process(proc, kill=kill)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the working directory if it was a temporary one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
