"""Gate controller latency over a real pty with the host-built controller.

Run: ``.venv/bin/python -m bench.bench_gate [--opens 2000]``

* **open → ack** — :meth:`SerialGate.open` from the call until the controller's OPEN
  acknowledgement has been decoded (the barrier is moving);
* **status round trip** — a STATUS request and its answer;
* **act → OPENED** — :meth:`GateActuator.act` on an accepted decision until the
  ``OPENED`` event reaches a subscriber (the agent's path: worker thread, open, dispatch);
* **out-of-service detection** — with the default timings (heartbeat 0.5 s, 0.2 s answer
  timeout, 2 retries, 2 failed polls), from freezing the controller to ``OUT_OF_SERVICE``.

Prints a table and writes it to ``bench/README.md`` (section ``gate``). The lead extends
this to presentation → gate open for the scenic-gate profile.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from agent.model import Decision, JournalRecord, Prompt, Reason
from bench.report import machine, table, update_section
from drivers.gate import GateActuator, GateEvent, GateEventKind, SerialGate
from simulator.gate import GateControllerSim

ACCEPT = Decision(True, Reason.ACCEPTED, product="entry", prompt=Prompt("欢迎光临"))


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def row(name: str, ms: list[float]) -> list[object]:
    return [name, len(ms), f"{pct(ms, 50):.3f}", f"{pct(ms, 99):.3f}", f"{max(ms):.3f}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--opens", type=int, default=2000)
    ap.add_argument("--outages", type=int, default=3)
    args = ap.parse_args(argv)

    with GateControllerSim() as sim:
        gate = SerialGate(sim.port, heartbeat_s=0.5)
        assert gate.wait_ready(), "controller did not answer"
        open_ms, status_ms, act_ms = [], [], []
        for _ in range(args.opens):
            t0 = time.perf_counter_ns()
            gate.open("in", 5000)
            open_ms.append((time.perf_counter_ns() - t0) / 1e6)
            gate.close_barrier()
        for _ in range(args.opens):
            t0 = time.perf_counter_ns()
            gate.status()
            status_ms.append((time.perf_counter_ns() - t0) / 1e6)

        opened = threading.Event()

        def on_event(e: GateEvent) -> None:
            if e.kind is GateEventKind.OPENED:
                opened.set()

        actuator = GateActuator(gate, direction="in", open_ms=5000)
        actuator.subscribe(on_event)
        for i in range(args.opens // 2):
            opened.clear()
            t0 = time.perf_counter_ns()
            actuator.act(ACCEPT, JournalRecord(i + 1, {"terminal": "bench"}, ""))
            if not opened.wait(2):
                raise SystemExit("no OPENED event within 2 s")
            act_ms.append((time.perf_counter_ns() - t0) / 1e6)
            gate.close_barrier()
        actuator.close()

        detect_s = []
        down = threading.Event()
        gate.subscribe(lambda e: down.set() if e.kind is GateEventKind.OUT_OF_SERVICE else None)
        for _ in range(args.outages):
            down.clear()
            t_freeze = time.perf_counter()
            sim.freeze()
            down.wait(10)
            detect_s.append(time.perf_counter() - t_freeze)
            sim.thaw()
            gate.wait_ready()
        gate.close()

    rows = [row("open → ack (SerialGate.open)", open_ms),
            row("status round trip", status_ms),
            row("act → OPENED event (GateActuator)", act_ms)]
    headers = ["path", "n", "p50 ms", "p99 ms", "max ms"]
    outage = (f"Out-of-service detection (default timings: heartbeat 0.5 s, answer timeout "
              f"0.2 s × 3 attempts, 2 failed polls): median {statistics.median(detect_s):.2f} s, "
              f"max {max(detect_s):.2f} s over {len(detect_s)} freezes.")
    md = (f"## Gate controller over a pty (`python -m bench.bench_gate`)\n\n{machine()}; host-built "
          f"controller (`firmware_stubs/gate_controller`), pyserial on the pty slave.\n\n"
          f"{table(headers, rows)}\n\n{outage}\n")
    print(md)
    update_section("gate", md)


if __name__ == "__main__":
    main()
