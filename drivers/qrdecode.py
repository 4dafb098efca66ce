"""QR decoders behind one interface: zxing-cpp (default), pyzbar (ZBar), OpenCV.

All are restricted to QR codes. Each takes a grayscale (H×W ``uint8``) or BGR (H×W×3)
numpy image and returns the decoded texts (empty list: nothing found). The default,
``zxing``, was chosen by measurement (``bench/bench_qr.py``): it finds the most codes on
the generated corpus and is the fastest on a 640×480 frame. :class:`RetryDecoder` tries a
second decoder when the first finds nothing.

Libraries are imported when a decoder is constructed, so a missing one fails with
:class:`~drivers.exceptions.DriverUnavailable` only when configured.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import Any

from drivers.exceptions import DriverUnavailable
from drivers.registry import BACKENDS, load_decoder

__all__ = [
    "DEFAULT_DECODER",
    "DECODER_NAMES",
    "OpenCVDecoder",
    "QRDecoder",
    "RetryDecoder",
    "ZbarDecoder",
    "ZxingDecoder",
    "make_decoder",
]

log = logging.getLogger(__name__)

DEFAULT_DECODER = "zxing"
DECODER_NAMES = tuple(BACKENDS["qr_decoder"])   # the registry names them


def _require(module: str, extra: str = "camera") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DriverUnavailable(
            f"QR decoder needs {module!r}, which is not installed; "
            f"install it with: pip install 'yikatong-edge[{extra}]'") from err


class QRDecoder(abc.ABC):
    """Finds and decodes QR codes in one image.

    A backend failure is logged with its traceback at most once per
    :attr:`FAILURE_LOG_PERIOD_S` seconds (a camera feeds 15–30 frames a second); the
    failures in between are counted and reported with the next logged one.
    """

    name: str = "decoder"
    FAILURE_LOG_PERIOD_S = 60.0

    _failure_logged_at: float | None = None
    _failures_unlogged = 0

    def decode(self, image: Any) -> list[str]:
        """Texts of the QR codes found in ``image`` (never raises on image content)."""
        if image is None or getattr(image, "size", 0) == 0:
            return []
        try:
            return self._decode(image)
        except Exception:
            self._log_failure(getattr(image, "shape", "?"))
            return []

    def _log_failure(self, shape: object) -> None:
        now = time.monotonic()
        last = self._failure_logged_at
        if last is not None and now - last < self.FAILURE_LOG_PERIOD_S:
            self._failures_unlogged += 1
            return
        more = self._failures_unlogged
        self._failure_logged_at, self._failures_unlogged = now, 0
        log.exception("%s decoder failed on a %s frame%s", self.name, shape,
                      f" (and {more} more times since the last report)" if more else "")

    @abc.abstractmethod
    def _decode(self, image: Any) -> list[str]:
        """Backend primitive: decode ``image`` (may raise; :meth:`decode` catches)."""


class ZxingDecoder(QRDecoder):
    """zxing-cpp, QR only. ``try_harder`` enables rotation/inversion/downscale searches."""

    name = "zxing"

    def __init__(self, *, try_harder: bool = True) -> None:
        self._zx = _require("zxingcpp")
        self._fmt = self._zx.BarcodeFormat.QRCode
        self._harder = try_harder

    def _decode(self, image: Any) -> list[str]:
        res = self._zx.read_barcodes(image, formats=self._fmt, try_rotate=self._harder,
                                     try_downscale=self._harder, try_invert=False)
        return [r.text for r in res if r.valid and r.text]


class ZbarDecoder(QRDecoder):
    """ZBar through pyzbar (needs the system library libzbar0), QR only."""

    name = "zbar"

    def __init__(self) -> None:
        pyzbar = _require("pyzbar.pyzbar")
        self._decode_fn = pyzbar.decode
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]
        self._np = _require("numpy")
        self._cv2 = _require("cv2")

    def _decode(self, image: Any) -> list[str]:
        if image.ndim == 3:
            image = self._cv2.cvtColor(image, self._cv2.COLOR_BGR2GRAY)
        out = []
        for r in self._decode_fn(image, symbols=self._symbols):
            try:
                out.append(r.data.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(r.data.decode("latin-1"))
        return out


class OpenCVDecoder(QRDecoder):
    """OpenCV's ``QRCodeDetectorAruco`` (one code per frame), retried at twice the size on
    a miss; the classic ``QRCodeDetector`` where the Aruco one is missing (OpenCV < 4.8).

    The classic detector alone missed a third of clean frames (68% clean, 55% of the
    corpus); this one finds 100% of clean frames and ~95% of the corpus, at ~1.6× the
    classic detector's time (many times zxing's). A fallback: zxing is the default.
    """

    name = "opencv"

    def __init__(self) -> None:
        self._cv2 = _require("cv2")
        aruco = getattr(self._cv2, "QRCodeDetectorAruco", None)
        self._det = aruco() if aruco is not None else self._cv2.QRCodeDetector()

    def _decode(self, image: Any) -> list[str]:
        text, _points, _straight = self._det.detectAndDecode(image)
        if not text:                      # small codes: the finder patterns need pixels
            cv2 = self._cv2
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
            bigger = cv2.resize(grey, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
            text, _points, _straight = self._det.detectAndDecode(bigger)
        return [text] if text else []


class RetryDecoder(QRDecoder):
    """``primary``; on a miss, ``secondary`` (costs the secondary's time on empty frames)."""

    def __init__(self, primary: QRDecoder, secondary: QRDecoder) -> None:
        self.primary, self.secondary = primary, secondary
        self.name = f"{primary.name}+{secondary.name}"

    def _decode(self, image: Any) -> list[str]:
        return self.primary.decode(image) or self.secondary.decode(image)


def make_decoder(name: str = DEFAULT_DECODER, retry_with: str | None = None) -> QRDecoder:
    """The decoder called ``name``, optionally retrying a miss with ``retry_with``.

    Raises :class:`~drivers.exceptions.ConfigError` for an unknown name and
    :class:`~drivers.exceptions.DriverUnavailable` when its library is missing.
    """
    def one(n: str) -> QRDecoder:
        return load_decoder(n)()

    dec = one(name)
    if retry_with and retry_with != name:
        return RetryDecoder(dec, one(retry_with))
    return dec
