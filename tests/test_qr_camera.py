"""The camera source from a real video file and an image directory: codes found, debounced
into one presentation per code, newest-frame behaviour, ROI; a camera device unplugged and
replugged (simulated behind OpenCV's VideoCapture) is reopened."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.codes import CodeVerifier
from agent.model import Credential, Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from drivers.base import Debouncer
from drivers.camera import CameraSource, prepare_frame
from drivers.exceptions import ConfigError, DeviceError
from drivers.options import CameraOptions
from drivers.qrdecode import QRDecoder
from drivers.registry import load_source
from simulator.phone import Conditions, Phone, render_frame, write_images, write_video
from tests.fixtures.hub import wait_until
from tests.fixtures.qr import QR_NOW


def _scene(phone: Phone) -> tuple[list[str], list]:  # type: ignore[type-arg]
    """Two codes, each held for 6 frames, with empty frames around them."""
    codes = [phone.new_code(QR_NOW - 10), phone.new_code(QR_NOW - 5)]
    frames = [render_frame(None, Conditions(seed=1))] * 2
    for i, c in enumerate(codes):
        frames += [render_frame(c, Conditions(seed=10 * i + k, rotation_deg=3 * k, noise=4))
                   for k in range(6)]
        frames += [render_frame(None, Conditions(seed=99))] * 2
    return codes, frames


def _collect(src: CameraSource, timeout: float = 20.0) -> list[Presentation]:
    out: queue.Queue[Presentation] = queue.Queue()
    src.start(out.put)
    assert src.wait_done(timeout)
    src.stop()
    return list(out.queue)


def test_camera_from_video_file(tmp_path: Path, qr_phone: Callable[..., Phone],
                                qr_verifier: CodeVerifier) -> None:
    codes, frames = _scene(qr_phone())
    video = write_video(frames, tmp_path / "scene.avi", fps=30)
    got = _collect(CameraSource(str(video), pace="all", debounce_s=5.0))
    assert [p.text for p in got] == codes  # one presentation per code held in front
    assert all(p.kind == PresentationKind.CODE and p.source.startswith("camera:")
               for p in got)
    assert got[0].seen_ns < got[1].seen_ns
    for p in got:
        assert p.text is not None
        assert isinstance(qr_verifier.verify(p.text), Credential)


def test_camera_from_image_directory(tmp_path: Path, qr_phone: Callable[..., Phone]) -> None:
    codes, frames = _scene(qr_phone("EdDSA"))
    write_images(frames, tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    options = CameraOptions(device=str(tmp_path / "imgs"), pace="all", debounce_s=5.0,
                            decoder="zbar")
    src = load_source("codes", "camera").from_options(options,
                                                      pseudonymizer=Pseudonymizer(bytes(16)))
    assert isinstance(src, CameraSource)
    got = _collect(src)
    assert [p.text for p in got] == codes
    assert src.stats["decoded"] == len(frames)


def test_camera_realtime_pace_keeps_only_newest(tmp_path: Path,
                                                qr_phone: Callable[..., Phone]) -> None:
    """A slow decoder never builds a backlog: frames are dropped, latency stays one frame.
    "Slow" here means: each decode lasts until the grabber has read two more frames."""
    codes, frames = _scene(qr_phone())
    total = len(frames) * 3
    stats: dict[str, int] = {}

    class SlowDecoder(QRDecoder):
        name = "slow"

        def _decode(self, image: object) -> list[str]:
            target = min(total, stats["grabbed"] + 2)
            wait_until(lambda: stats["grabbed"] >= target, 10, "two more frames grabbed")
            return []
    write_images(frames * 3, tmp_path / "imgs")
    src = CameraSource(str(tmp_path / "imgs"), fps=200, pace="realtime",
                       decoder=SlowDecoder())
    stats = src.stats
    _collect(src)
    assert src.stats["grabbed"] == total
    assert src.stats["dropped"] > 0
    assert src.stats["decoded"] + src.stats["dropped"] == total  # each frame one or the other
    assert src.stats["decoded"] <= total // 2 + 1                 # at most every other one


def test_camera_roi(tmp_path: Path, qr_phone: Callable[..., Phone]) -> None:
    text = qr_phone().new_code(QR_NOW)
    frame = render_frame(text, Conditions(module_px=2.5, offset=(0.25, 0.0)))
    write_images([frame], tmp_path / "a")
    left = _collect(CameraSource(str(tmp_path / "a"), pace="all", roi=[0, 0, 320, 480]))
    right = _collect(CameraSource(str(tmp_path / "a"), pace="all", roi=[320, 0, 320, 480]))
    assert left == [] and [p.text for p in right] == [text]


def test_prepare_frame_crops_before_grey_conversion(monkeypatch: pytest.MonkeyPatch,
                                                   qr_phone: Callable[..., Phone]) -> None:
    colour = render_frame(qr_phone().new_code(QR_NOW), Conditions(offset=(0.25, 0.0)),
                          color=True)
    converted: list[tuple[int, ...]] = []
    real = cv2.cvtColor

    def spy(img: Any, code: int) -> Any:
        converted.append(img.shape)
        return real(img, code)
    monkeypatch.setattr(cv2, "cvtColor", spy)
    grey = real(colour, cv2.COLOR_BGR2GRAY)
    out = prepare_frame(colour, (320, 10, 300, 400))
    assert converted == [(400, 300, 3)]  # only the region of interest was converted
    assert np.array_equal(out, grey[10:410, 320:620])
    bgra = real(colour, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(prepare_frame(bgra), grey)
    assert prepare_frame(colour[:, :, :1], (0, 0, 5, 6)).shape == (6, 5)
    assert prepare_frame(grey) is grey


class _Device:
    """A V4L2 camera that can be unplugged and replugged. Each plug-in is a new device
    generation: a capture opened before an unplug stays dead, as a real one does."""

    def __init__(self, frame: Any) -> None:
        self.frame, self.generation, self.present = frame, 1, True

    def unplug(self) -> None:
        self.present = False

    def replug(self, frame: Any) -> None:
        self.frame, self.generation, self.present = frame, self.generation + 1, True


class _Capture:
    def __init__(self, dev: _Device) -> None:
        self.dev = dev
        self.gen: int | None = dev.generation if dev.present else None

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.gen is not None

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def read(self) -> tuple[bool, Any]:
        if not self.dev.present or self.dev.generation != self.gen:
            return False, None
        time.sleep(1 / 30)      # the device's frame period: a read blocks until the next frame
        return True, self.dev.frame.copy()

    def release(self) -> None:
        self.gen = None


class _Cv2WithDevice:
    """The cv2 module, except that VideoCapture opens :class:`_Device`."""

    def __init__(self, dev: _Device) -> None:
        self._dev = dev

    def VideoCapture(self, device: object, api: int | None = None) -> _Capture:  # noqa: N802
        return _Capture(self._dev)

    def __getattr__(self, name: str) -> Any:
        return getattr(cv2, name)


def test_camera_unplugged_mid_run_is_reopened(qr_phone: Callable[..., Phone],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.camera")
    phone = qr_phone()
    before, after = phone.new_code(QR_NOW - 10), phone.new_code(QR_NOW)
    dev = _Device(render_frame(before, Conditions(seed=1), color=True))
    src = CameraSource("/dev/video-ykt-test", reconnect_s=0.1, lost_s=0.3, debounce_s=60)
    src._cv2 = _Cv2WithDevice(dev)
    got: queue.Queue[Presentation] = queue.Queue()
    src.start(got.put)
    try:
        assert got.get(timeout=5).text == before
        dev.unplug()
        # lost after 0.3 s, released; reopening fails while unplugged, again and again
        wait_until(lambda: src.stats["open_failed"] >= 3, 10, "failed reopen attempts")
        dev.replug(render_frame(after, Conditions(seed=2), color=True))
        assert got.get(timeout=5).text == after
        assert src.stats["reopened"] == 1
    finally:
        src.stop()
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "drivers.camera" and r.levelno >= logging.WARNING]
    assert sum("camera lost" in m for m in warnings) == 1
    assert sum("retrying" in m for m in warnings) == 1  # once per outage, not per retry
    assert len(warnings) <= 4


def test_camera_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CameraSource(str(tmp_path), roi=[0, 0, 0, 10])
    with pytest.raises(ConfigError):
        CameraSource(str(tmp_path), pace="fast")
    with pytest.raises(DeviceError, match="missing.avi"):
        CameraSource(str(tmp_path / "missing.avi"))


def test_debouncer() -> None:
    d = Debouncer(2.0)
    s = 1_000_000_000
    assert d.fresh("a", 0)
    assert not d.fresh("a", s)          # held in front
    assert not d.fresh("a", 2 * s)      # still held (rolling)
    assert d.fresh("b", 2 * s)          # the phone refreshed: a new code
    assert d.fresh("a", 5 * s)          # shown again after a pause
