"""The host-built gate controller behind a pseudo-terminal, for tests, the demo and benchmarks.

:class:`GateControllerSim` builds ``firmware_stubs/gate_controller`` (``make``), opens a pty
pair, and runs the controller on the pty's master side (``--fd``). The simulator keeps the
master open, so the slave path (:attr:`GateControllerSim.port`) stays valid across
controller reboots, resets and power cycles — as a real RS-485 line outlives the MCU.
The controller's stdin is its control channel (passage sensors, fire alarm, tamper, line
faults); its stdout reports barrier changes, recorded in :attr:`barrier_history`.

:class:`drivers.gate.sim.SimGate` (the ``sim`` backend of the ``gate`` kind) is a
:class:`~drivers.gate.serial_gate.SerialGate` connected to one of these.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path
from typing import IO

__all__ = ["FIRMWARE_DIR", "GateControllerSim", "build_controller"]

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware_stubs" / "gate_controller"


def build_controller(firmware_dir: Path = FIRMWARE_DIR, target: str = "all") -> Path:
    """Run ``make -C firmware_dir target`` (serialised with a lock file) and return the
    controller executable. Raises ``RuntimeError`` with make's output if the build fails."""
    build = firmware_dir / "build"
    build.mkdir(exist_ok=True)
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["make", "-s", "-C", str(firmware_dir), target],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the gate controller failed:\n{proc.stdout}{proc.stderr}")
    return build / "gate_controller"


class GateControllerSim:
    """One simulated gate controller. ``start()`` launches it; ``stop()`` is safe twice.

    Control methods block until the controller confirmed the command (``timeout`` seconds,
    ``TimeoutError`` otherwise). ``freeze()`` stops the process (SIGSTOP) so it stops
    answering without losing state; ``power_cycle()`` kills it and starts a fresh one on
    the same line; ``reset()`` makes it re-execute itself (a watchdog reset).
    """

    def __init__(self, exe: Path | None = None, *, timeout: float = 5.0) -> None:
        self.exe = exe
        self.timeout = timeout
        self.port = ""
        self.boot_ids: list[int] = []
        self.barrier_history: list[tuple[int, str]] = []   # (monotonic ns, state)
        self._master = self._slave = -1
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._ready = threading.Condition()
        self._frozen = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> GateControllerSim:
        """Build if needed, open the pty and start the controller; returns self."""
        if self.exe is None:
            self.exe = build_controller()
        if self._master < 0:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            self.port = os.ttyname(self._slave)
        self._spawn()
        return self

    def _spawn(self) -> None:
        boots = len(self.boot_ids)
        self._proc = subprocess.Popen(
            [str(self.exe), "--fd", str(self._master)], pass_fds=(self._master,),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=self._read_stdout, args=(self._proc.stdout,),
                         name="gate-sim-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self._proc.stderr,),
                         name="gate-sim-stderr", daemon=True).start()
        self._wait_boot(boots)

    def _wait_boot(self, boots: int) -> None:
        with self._ready:
            if not self._ready.wait_for(lambda: len(self.boot_ids) > boots, self.timeout):
                raise TimeoutError("gate controller did not report READY")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return self.port

    @property
    def barrier(self) -> str:
        """The barrier's current state: closed, open_in, open_out or open_both."""
        return self.barrier_history[-1][1] if self.barrier_history else "closed"

    def wait_barrier(self, state: str, timeout: float = 5.0) -> bool:
        """Wait until the barrier is in ``state`` (its report comes on the controller's
        stdout, a moment after the protocol answer); returns whether it got there."""
        with self._ready:
            return self._ready.wait_for(lambda: self.barrier == state, timeout)

    def stop(self) -> None:
        """Stop the controller and close the pty. Safe to call twice."""
        self.kill()
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def kill(self) -> None:
        """Kill the controller (SIGKILL) and leave the line dead until ``power_cycle``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._frozen:
            proc.send_signal(signal.SIGCONT)
            self._frozen = False
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def power_cycle(self) -> None:
        """Kill the controller and start a fresh one on the same line (new boot id)."""
        self.kill()
        self._spawn()

    def reset(self) -> None:
        """Watchdog reset: the controller re-executes itself; waits for the new boot."""
        boots = len(self.boot_ids)
        self._send("reset")
        self._wait_boot(boots)

    def wait_boots(self, count: int) -> None:
        """Wait until ``count`` boots were seen (e.g. after a REBOOT command)."""
        self._wait_boot(count - 1)

    def freeze(self) -> None:
        """SIGSTOP: the controller stops answering (a hung MCU)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self._proc is not None and self._frozen:
            self._proc.send_signal(signal.SIGCONT)
            self._frozen = False

    def __enter__(self) -> GateControllerSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- board inputs and line faults ---------------------------------------------------
    def pass_through(self, direction: str = "in") -> None:
        """The passage sensors see someone go through in ``direction`` ("in"/"out")."""
        self._send(f"pass {direction}")

    def fire_alarm(self, on: bool) -> None:
        self._send(f"fire {int(on)}")

    def tamper(self, on: bool) -> None:
        self._send(f"tamper {int(on)}")

    def mute(self, on: bool) -> None:
        """Stop answering (ignore the line) while the process keeps running."""
        self._send(f"mute {int(on)}")

    def deaf(self, on: bool) -> None:
        """Ignore the line but keep sending (a broken receive wire): the host's event
        acknowledgements are lost, so the controller re-sends its events."""
        self._send(f"deaf {int(on)}")

    def garble(self, frames: int = 1) -> None:
        """Corrupt the CRC of the next ``frames`` frames the controller sends."""
        self._send(f"garble {frames}")

    def truncate(self, frames: int = 1) -> None:
        """Send only the first half of the next ``frames`` frames."""
        self._send(f"truncate {frames}")

    def noise(self) -> None:
        """Send a burst of garbage bytes, including a stray frame flag."""
        self._send("noise")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise RuntimeError("gate controller is not running")
        while not self._replies.empty():
            self._replies.get_nowait()
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        try:
            reply = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"gate controller did not confirm {line!r}") from None
        if not reply.startswith("ok"):
            raise RuntimeError(f"gate controller: {reply}")

    # -- output readers -----------------------------------------------------------------
    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            words = line.split()
            if not words:
                continue
            if words[0] == "READY":
                fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                with self._ready:
                    self.boot_ids.append(int(fields.get("boot_id", "0"), 16))
                    self._ready.notify_all()
            elif words[0] == "barrier" and len(words) > 1:
                with self._ready:
                    self.barrier_history.append((time.monotonic_ns(), words[1]))
                    self._ready.notify_all()
            elif words[0] in ("ok", "err"):
                self._replies.put(line.strip())

    @staticmethod
    def _read_stderr(stream: IO[str]) -> None:
        for line in stream:
            log.debug("%s", line.rstrip())
