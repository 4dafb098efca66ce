"""The serial scanner source over a real pseudo-terminal: whole, split, noisy and long lines."""

from __future__ import annotations

import os
import queue
import tty
from collections.abc import Callable, Iterator

import pytest

from agent.codes import CodeVerifier
from agent.model import Credential, Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from drivers.exceptions import ConfigError
from drivers.options import ScannerOptions
from drivers.registry import load_source
from drivers.scanner import SerialScannerSource
from simulator.phone import Phone
from tests.fixtures.hub import wait_until
from tests.fixtures.qr import QR_NOW


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd to write scanner output into, slave device path for the source)."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no line discipline: bytes pass as a USB-CDC port would
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


@pytest.fixture
def scanner(pty_pair: tuple[int, str]) -> Iterator[tuple[int, SerialScannerSource,
                                                          queue.Queue[Presentation]]]:
    master, path = pty_pair
    src = SerialScannerSource(path, max_line=1500, stale_partial_s=0.3, debounce_s=0.5)
    got: queue.Queue[Presentation] = queue.Queue()
    src.start(got.put)
    assert src.port_open.wait(5), "the scanner did not open its port"
    yield master, src, got
    src.stop()


def _take(q: queue.Queue[Presentation], n: int, timeout: float = 3.0) -> list[str]:
    out = []
    for _ in range(n):
        p = q.get(timeout=timeout)
        assert p.kind == PresentationKind.CODE and p.source.startswith("scanner:")
        assert p.text is not None
        out.append(p.text)
    return out


def test_lines_with_cr_lf_crlf(scanner: tuple[int, SerialScannerSource, queue.Queue[Presentation]],
                               qr_phone: Callable[..., Phone], qr_verifier: CodeVerifier) -> None:
    master, _src, got = scanner
    codes = [qr_phone().new_code(QR_NOW) for _ in range(3)]
    os.write(master, (codes[0] + "\r").encode())
    os.write(master, (codes[1] + "\n" + codes[2] + "\r\n").encode())
    texts = _take(got, 3)
    assert texts == codes
    assert all(isinstance(qr_verifier.verify(t), Credential) for t in texts)


def test_partial_lines_are_joined(scanner: tuple[int, SerialScannerSource,
                                                 queue.Queue[Presentation]],
                                  qr_phone: Callable[..., Phone]) -> None:
    master, src, got = scanner
    code = qr_phone().new_code(QR_NOW)
    for i in range(0, len(code), 37):          # each piece read before the next is sent
        os.write(master, code[i:i + 37].encode())
        wait_until(lambda n=min(i + 37, len(code)): src.stats["bytes"] >= n, 5,
                   "the scanner to read the piece")
    assert src.stats["bytes"] == len(code) and src.stats["lines"] == 0   # nothing emitted
    os.write(master, b"\r\n")
    assert _take(got, 1) == [code]                 # the first presentation: the whole line
    assert got.empty() and src.stats["emitted"] == 1


def test_garbage_long_and_stale(scanner: tuple[int, SerialScannerSource,
                                               queue.Queue[Presentation]],
                                qr_phone: Callable[..., Phone]) -> None:
    master, src, got = scanner
    code = qr_phone().new_code(QR_NOW)
    os.write(master, b"\xff\xfe\x00\x81garbage\r\n")          # line noise: dropped
    os.write(master, b"X" * 4000 + b"\r\n")                   # too long: dropped whole
    os.write(master, b"\r\n\r\n")                              # empty lines: skipped
    os.write(master, b"hello scanner\r")                       # printable text: emitted
    os.write(master, (code + "\n").encode())
    assert _take(got, 2) == ["hello scanner", code]
    assert src.stats["noise"] == 1 and src.stats["too_long"] == 1
    os.write(master, b"YKT1:FRAGMENT-OF-A-REPLUG")             # never terminated
    wait_until(lambda: src.stats["stale"] == 1, 5, "the fragment to be discarded")
    os.write(master, (code[:-1] + "Z\r").encode())
    assert _take(got, 1) == [code[:-1] + "Z"]                  # fragment did not prefix it
    assert src.stats["stale"] == 1


def test_debounce_repeated_scans(scanner: tuple[int, SerialScannerSource,
                                                queue.Queue[Presentation]]) -> None:
    master, src, got = scanner
    for _ in range(5):
        os.write(master, b"YKT1:SAME\r")
    wait_until(lambda: src.stats["lines"] == 5, 5, "five lines read")
    assert _take(got, 1) == ["YKT1:SAME"]
    assert got.empty() and src.stats["emitted"] == 1


def test_loop_url_and_registry() -> None:
    src = load_source("codes", "scanner").from_options(
        ScannerOptions(url="loop://", debounce_s=0.0), pseudonymizer=Pseudonymizer(bytes(16)))
    assert isinstance(src, SerialScannerSource)
    got: queue.Queue[Presentation] = queue.Queue()
    src.start(got.put)
    assert src.port_open.wait(5)
    src._port.write(b"ABC\r\n")
    assert _take(got, 1) == ["ABC"]
    src.stop()
    src.stop()  # safe twice
    with pytest.raises(ConfigError):
        SerialScannerSource("loop://", max_line=2)


def test_missing_port_retries_without_crashing() -> None:
    src = SerialScannerSource("/dev/does-not-exist-ykt", reconnect_s=0.05)
    src.start(lambda p: None)
    wait_until(lambda: src.stats["open_failed"] >= 3, 5, "three failed opens")
    assert src._thread is not None and src._thread.is_alive()
    assert not src.port_open.is_set()
    src.stop()
