"""Camera QR source (OpenCV): a V4L2 device, a video file or a directory of images.

Two threads: the **grabber** reads frames as fast as the source delivers them and keeps
only the newest in a one-slot buffer (older ones are dropped, never queued); the
**decoder** (the source's ``_run``) takes the newest frame, crops the region of interest
and converts it to grey (:func:`prepare_frame`), decodes it and emits a
:class:`~agent.model.Presentation` with ``seen_ns`` = the monotonic time the frame was
grabbed. So decoding is never behind the scene by more than
one frame, however slow it is.

**Debounce**: a text seen again within ``debounce_s`` of its last sighting is not emitted
again, so one code held in front of the camera is one presentation (a phone's next code,
a different text, is a new presentation).

Profile keys (keyword arguments): ``device`` (``/dev/video0``, an index, a video file or
an image directory), ``decoder``, ``retry_decoder``, ``roi`` (``[x, y, w, h]`` pixels),
``width``, ``height``, ``fps``, ``exposure`` (V4L2 absolute exposure units; manual
mode), ``auto_exposure``, ``debounce_s``, ``reconnect_s`` (retry period of a camera that
cannot be opened), ``lost_s`` (a camera that delivers no frame for this long is closed
and reopened), ``pace`` (files/dirs: ``"realtime"`` plays at ``fps`` dropping what
decoding cannot keep up with, as a real camera; ``"all"`` decodes every frame, for
tests), ``loop``.

**Reconnection**: a camera device that cannot be opened is retried every ``reconnect_s``
seconds; one that stops delivering frames (unplugged, USB reset) for ``lost_s`` seconds is
released and reopened the same way, so replugging it resumes reading. Video files and
image directories are read once (or looped) and not reopened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.model import Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer, mask_code
from drivers.base import Debouncer, PresentationSource
from drivers.exceptions import ConfigError, DeviceError, DriverUnavailable
from drivers.options import CameraOptions, DriverOptions, expect
from drivers.qrdecode import DEFAULT_DECODER, QRDecoder, make_decoder

__all__ = ["IMAGE_SUFFIXES", "CameraSource", "prepare_frame"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


class _Frames:
    """Frame reader over cv2.VideoCapture or an image directory."""

    def __init__(self, cv2: Any, device: str | int, *, live: bool, width: int | None,
                 height: int | None, fps: float | None, exposure: float | None,
                 auto_exposure: bool | None, loop: bool) -> None:
        self.cv2, self.loop, self.live = cv2, loop, live
        self.files: list[Path] = []
        self.cap: Any = None
        self.index = 0
        self.fps = fps or 0.0
        path = Path(str(device))
        if isinstance(device, str) and path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise DeviceError("no images in directory", device=str(device))
            self.fps = self.fps or 10.0
            return
        if live:
            self.cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        else:
            if not path.exists():
                raise DeviceError("video file not found", device=str(device))
            self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.close()
            raise DeviceError("cannot open camera or video", device=str(device))
        if live:
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            for prop, val in ((cv2.CAP_PROP_FRAME_WIDTH, width),
                              (cv2.CAP_PROP_FRAME_HEIGHT, height), (cv2.CAP_PROP_FPS, fps)):
                if val and not self.cap.set(prop, float(val)):
                    log.warning("camera %s ignored property %d=%s", device, prop, val)
            if auto_exposure is not None or exposure is not None:
                # V4L2 through OpenCV: 1 = manual, 3 = aperture priority (auto)
                manual = exposure is not None and not auto_exposure
                self.cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1 if manual else 3)
                if manual and not self.cap.set(cv2.CAP_PROP_EXPOSURE, float(exposure or 0)):
                    log.warning("camera %s does not accept exposure %s", device, exposure)
        else:
            self.fps = self.fps or float(self.cap.get(cv2.CAP_PROP_FPS) or 15.0)

    def read(self) -> Any:
        """The next frame, or None (end of a file/directory without ``loop``; no frame from
        a camera)."""
        if self.files:
            for _ in range(len(self.files)):  # skip unreadable images, at most one pass
                if self.index >= len(self.files):
                    if not self.loop:
                        return None
                    self.index = 0
                p = self.files[self.index]
                self.index += 1
                img = self.cv2.imread(str(p), self.cv2.IMREAD_UNCHANGED)
                if img is not None:
                    return img
                log.warning("cannot read image %s: skipped", p.name)
            return None
        ok, frame = self.cap.read()
        if not ok and not self.live and self.loop:
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def prepare_frame(frame: Any, roi: Sequence[int] | None = None) -> Any:
    """The image a decoder is given for a camera frame: cropped to ``roi`` (``[x, y, w,
    h]``) first, then converted to grey (BGR, BGRA or single-channel in; H×W ``uint8``
    out), so only the region of interest is converted."""
    if roi is not None:
        x, y, w, h = roi
        frame = frame[y:y + h, x:x + w]
    if frame.ndim == 3:
        channels = frame.shape[2]
        if channels == 1:
            return frame[:, :, 0]
        import cv2

        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if channels == 4
                             else cv2.COLOR_BGR2GRAY)
    return frame


class CameraSource(PresentationSource):
    """QR codes seen by a camera (or read from a video file or an image directory)."""

    def __init__(
        self,
        device: str | int = "/dev/video0",
        *,
        decoder: str | QRDecoder = DEFAULT_DECODER,
        retry_decoder: str | None = None,
        roi: Sequence[int] | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        exposure: float | None = None,
        auto_exposure: bool | None = None,
        debounce_s: float = 2.0,
        pace: str = "realtime",
        loop: bool = False,
        reconnect_s: float = 2.0,
        lost_s: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        try:
            import cv2
        except ImportError as err:
            raise DriverUnavailable("camera needs 'opencv-python-headless'; install it with: "
                                    "pip install 'yikatong-edge[camera]'") from err
        self._cv2 = cv2
        if pace not in ("realtime", "all"):
            raise ConfigError(f"camera pace must be 'realtime' or 'all', got {pace!r}")
        if roi is not None and (len(roi) != 4 or any(int(v) < 0 for v in roi)
                                or int(roi[2]) == 0 or int(roi[3]) == 0):
            raise ConfigError(f"camera roi must be [x, y, w, h] with w, h > 0, got {roi!r}")
        if lost_s <= 0 or reconnect_s <= 0:
            raise ConfigError("camera lost_s and reconnect_s must be positive")
        self.device = device
        self.reconnect_s = reconnect_s
        self.lost_s = lost_s
        self.name = name or f"camera:{device}"
        if not self.live and not Path(str(device)).exists():
            raise DeviceError("no such video file or image directory", device=str(device))
        self.decoder = decoder if isinstance(decoder, QRDecoder) else make_decoder(
            decoder, retry_decoder)
        self.roi = tuple(int(v) for v in roi) if roi is not None else None
        self._opts = {"width": width, "height": height, "fps": fps, "exposure": exposure,
                      "auto_exposure": auto_exposure, "loop": loop}
        self.pace = pace
        self.debouncer = Debouncer(debounce_s)
        self._slot: tuple[int, Any] | None = None
        self._cond = threading.Condition()
        self._eof = False
        self.stats = {"grabbed": 0, "decoded": 0, "dropped": 0, "emitted": 0, "reopened": 0,
                      "open_failed": 0}
        """Frames grabbed, decoded, dropped (a newer one came first), codes emitted; camera
        reopened after a loss, attempts to open it that failed."""

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> CameraSource:
        o = expect(options, CameraOptions)
        return cls(o.device, decoder=o.decoder, retry_decoder=o.retry_decoder, roi=o.roi,
                   width=o.width, height=o.height, fps=o.fps, exposure=o.exposure,
                   auto_exposure=o.auto_exposure, debounce_s=o.debounce_s, pace=o.pace,
                   loop=o.loop, reconnect_s=o.reconnect_s, lost_s=o.lost_s, name=o.name)

    @property
    def live(self) -> bool:
        """True for a camera device (as opposed to a video file or image directory)."""
        return isinstance(self.device, int) or str(self.device).startswith("/dev/video")

    # -- grabbing ------------------------------------------------------------------------
    def _grab(self, frames: _Frames, ended: threading.Event) -> None:
        """Read frames into the slot until the end of a file/directory, the camera lost
        for ``lost_s``, ``ended`` (the decoder left) or :meth:`stop`."""
        period = 1.0 / frames.fps if (frames.fps and not frames.live) else 0.0
        next_t = last_frame = time.monotonic()
        try:
            while not (self.stopping or ended.is_set()):
                if self.pace == "all" and not frames.live:
                    with self._cond:  # wait until the decoder took the previous frame
                        while self._slot is not None and not (self.stopping or ended.is_set()):
                            self._cond.wait(0.1)
                elif period:
                    next_t += period
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                frame = frames.read()
                seen = time.monotonic_ns()
                if frame is None:
                    if not frames.live:
                        break
                    if time.monotonic() - last_frame >= self.lost_s:
                        log.warning("%s: no frame for %.1f s: camera lost", self.name,
                                    self.lost_s)
                        break
                    self._stop.wait(0.05)
                    continue
                last_frame = time.monotonic()
                with self._cond:
                    if self._slot is not None:
                        self.stats["dropped"] += 1
                    self._slot = (seen, frame)
                    self.stats["grabbed"] += 1
                    self._cond.notify_all()
        except Exception:
            log.exception("%s: frame grabber failed", self.name)
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    # -- decoding ------------------------------------------------------------------------
    def _run(self) -> None:
        opened_before = failing = False
        while not self.stopping:
            try:
                frames = _Frames(self._cv2, self.device, live=self.live,
                                 **self._opts)  # type: ignore[arg-type]
            except DeviceError as err:
                if not self.live:
                    raise
                self.stats["open_failed"] += 1
                # warn once per outage, not at every retry
                (log.debug if failing else log.warning)("%s; retrying every %.1f s", err,
                                                        self.reconnect_s)
                failing = True
                self._stop.wait(self.reconnect_s)
                continue
            if opened_before:
                self.stats["reopened"] += 1
                log.info("%s reopened", self.name)
            opened_before, failing = True, False
            self._decode_frames(frames)
            if not self.live or self.stopping:
                break
            log.warning("%s: releasing the camera; reopening in %.1f s", self.name,
                        self.reconnect_s)
            self._stop.wait(self.reconnect_s)
        log.info("%s stopped: %s", self.name, self.stats)

    def _decode_frames(self, frames: _Frames) -> None:
        """Decode the newest frames of one opened device until its grabber ends."""
        with self._cond:
            self._slot, self._eof = None, False
        ended = threading.Event()
        grabber = threading.Thread(target=self._grab, args=(frames, ended), daemon=True,
                                   name=f"{self.name}-grab")
        grabber.start()
        try:
            while not self.stopping:
                with self._cond:
                    while self._slot is None and not self._eof and not self.stopping:
                        self._cond.wait(0.1)
                    if self._slot is None:
                        break
                    seen_ns, frame = self._slot
                    self._slot = None
                    self._cond.notify_all()
                self.stats["decoded"] += 1
                for text in self.decoder.decode(prepare_frame(frame, self.roi)):
                    if self.debouncer.fresh(text, seen_ns):
                        self.stats["emitted"] += 1
                        log.debug("%s: code %s", self.name, mask_code(text))
                        self.emit(Presentation(kind=PresentationKind.CODE, source=self.name,
                                               seen_ns=seen_ns, text=text))
        finally:
            ended.set()
            with self._cond:
                self._cond.notify_all()
            grabber.join(2.0)
            frames.close()

    def wait_done(self, timeout: float = 10.0) -> bool:
        """For files/dirs without ``loop``: wait until every frame was handled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self._thread
            if t is None or not t.is_alive():
                return True
            t.join(0.05)
        return False
