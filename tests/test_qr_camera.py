"""The camera source from a real video file and an image directory: codes found, debounced
into one presentation per code, newest-frame behaviour, ROI."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.codes import CodeVerifier
from agent.model import Credential, Presentation, PresentationKind
from drivers.camera import CameraSource, Debouncer
from drivers.exceptions import ConfigError, DeviceError
from drivers.qrdecode import QRDecoder
from drivers.registry import load_backend
from simulator.phone import Conditions, Phone, render_frame, write_images, write_video
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
    src = load_backend("codes", "camera")(str(tmp_path / "imgs"), pace="all", debounce_s=5.0,
                                          decoder="zbar")
    got = _collect(src)
    assert [p.text for p in got] == codes
    assert src.stats["decoded"] == len(frames)


def test_camera_realtime_pace_keeps_only_newest(tmp_path: Path,
                                                qr_phone: Callable[..., Phone]) -> None:
    """A slow decoder never builds a backlog: frames are dropped, latency stays one frame."""
    codes, frames = _scene(qr_phone())

    class SlowDecoder(QRDecoder):
        name = "slow"

        def _decode(self, image: object) -> list[str]:
            time.sleep(0.03)
            return []
    write_images(frames * 3, tmp_path / "imgs")
    src = CameraSource(str(tmp_path / "imgs"), fps=200, pace="realtime",
                       decoder=SlowDecoder())
    _collect(src)
    assert src.stats["dropped"] > 0
    assert src.stats["decoded"] < src.stats["grabbed"]


def test_camera_roi(tmp_path: Path, qr_phone: Callable[..., Phone]) -> None:
    text = qr_phone().new_code(QR_NOW)
    frame = render_frame(text, Conditions(module_px=2.5, offset=(0.25, 0.0)))
    write_images([frame], tmp_path / "a")
    left = _collect(CameraSource(str(tmp_path / "a"), pace="all", roi=[0, 0, 320, 480]))
    right = _collect(CameraSource(str(tmp_path / "a"), pace="all", roi=[320, 0, 320, 480]))
    assert left == [] and [p.text for p in right] == [text]


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
