"""A phone showing the ``YKT1:`` dynamic code, and a renderer of camera frames of it.

:class:`SimIssuer` is an issuer key (``kid``, algorithm) that certifies holders;
:class:`Phone` holds a holder key and certificate and signs fresh codes offline.
:func:`render_frame` draws a code text as a camera would see it — scale, rotation,
perspective, blur, glare, noise, low contrast — and
:func:`write_video` / :func:`write_images` put frames on disk for the camera driver.

QR symbols are made with ``segno`` when installed (faster), else OpenCV's encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.codes.algorithms import SignatureAlgorithm, algorithm
from agent.codes.trust import trust_entry
from agent.codes.ykt1 import issue_certificate, sign_code

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Conditions",
    "Phone",
    "SimIssuer",
    "qr_matrix",
    "render_frame",
    "write_images",
    "write_video",
]

FRAME_SIZE = (640, 480)  # width, height


class SimIssuer:
    """An issuer key that certifies holders (tests, demos, pilots)."""

    def __init__(self, kid: str, alg: str = "ES256", *, iss: str = "370100",
                 private_key: Any = None) -> None:
        self.kid, self.iss = kid, iss
        self.alg: SignatureAlgorithm = algorithm(alg)
        self.private_key = private_key if private_key is not None else self.alg.generate()

    def trust_entry(self, *, not_before: str | None = None, not_after: str | None = None
                    ) -> dict[str, str]:
        """This key as one ``issuers`` entry of a trust file."""
        return trust_entry(self.kid, self.alg, self.alg.public_key(self.private_key),
                           iss=self.iss, not_before=not_before, not_after=not_after)

    def certify(self, holder_alg: SignatureAlgorithm, holder_public_key: Any, *,
                holder_key: str, categories: Sequence[str] = (),
                birth_date: date | None = None, iat: float | None = None,
                valid_s: int = 86400) -> bytes:
        """A holder certificate for ``holder_public_key`` (see :func:`issue_certificate`)."""
        return issue_certificate(
            self.alg, self.private_key, self.kid, holder_alg, holder_public_key,
            holder_key=holder_key, iss=self.iss, categories=categories, birth_date=birth_date,
            iat=None if iat is None else int(iat), valid_s=valid_s)


class Phone:
    """A holder's phone: holder key and certificate; signs a fresh code on demand."""

    def __init__(self, holder_alg: SignatureAlgorithm, holder_private_key: Any,
                 certificate: bytes) -> None:
        self.alg, self.private_key, self.certificate = holder_alg, holder_private_key, certificate

    @classmethod
    def enroll(cls, issuer: SimIssuer, *, holder_key: str, alg: str = "ES256",
               categories: Sequence[str] = (), birth_date: date | None = None,
               valid_s: int = 86400, now: float | None = None) -> Phone:
        """A phone with a new holder key of ``alg``, certified by ``issuer`` at ``now``
        (epoch s, default the current time)."""
        a = algorithm(alg)
        key = a.generate()
        cert = issuer.certify(a, a.public_key(key), holder_key=holder_key,
                              categories=categories, birth_date=birth_date, iat=now,
                              valid_s=valid_s)
        return cls(a, key, cert)

    def new_code(self, now: float | None = None) -> str:
        """A freshly signed code (new nonce) issued at ``now`` (epoch s, default now)."""
        return sign_code(self.alg, self.private_key, self.certificate,
                         iat=None if now is None else int(now))


# -- rendering -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Conditions:
    """How the camera sees the phone. Lengths in pixels of the output frame.

    ``module_px``: size of one QR module; ``rotation_deg``: in-plane rotation;
    ``perspective``: corner jitter as a fraction of the symbol size (0–0.3); ``blur``:
    Gaussian sigma; ``glare``: strength 0–1 of a bright spot; ``noise``: Gaussian sigma in
    grey levels; ``contrast``: 1 full, 0.2 washed-out; ``brightness``: added grey level;
    ``offset``: centre shift as fractions of the frame (dx, dy).
    """

    module_px: float = 4.0
    rotation_deg: float = 0.0
    perspective: float = 0.0
    blur: float = 0.0
    glare: float = 0.0
    noise: float = 0.0
    contrast: float = 1.0
    brightness: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    seed: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def qr_matrix(text: str, *, error: str = "m") -> np.ndarray:
    """The QR modules of ``text`` (1 = dark) with a 4-module quiet zone."""
    import numpy as np

    segno: Any
    try:
        import segno
    except ImportError:
        segno = None
    if segno is not None:
        m = np.array(segno.make_qr(text, error=error, boost_error=False).matrix, dtype=np.uint8)
    else:
        import cv2

        p = cv2.QRCodeEncoder.Params()
        p.correction_level = {"l": cv2.QRCODE_ENCODER_CORRECT_LEVEL_L,
                              "m": cv2.QRCODE_ENCODER_CORRECT_LEVEL_M,
                              "q": cv2.QRCODE_ENCODER_CORRECT_LEVEL_Q,
                              "h": cv2.QRCODE_ENCODER_CORRECT_LEVEL_H}[error.lower()]
        img = cv2.QRCodeEncoder.create(p).encode(text)
        m = (img < 128).astype(np.uint8)
        # OpenCV adds a border: crop to the symbol before adding our own quiet zone
        rows, cols = np.nonzero(m)
        m = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return np.pad(m, 4)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    import numpy as np

    gx = np.linspace(rng.uniform(40, 140), rng.uniform(40, 140), w, dtype=np.float32)
    gy = np.linspace(0, rng.uniform(-40, 40), h, dtype=np.float32)
    bg = gy[:, None] + gx[None, :]
    import cv2

    tex = cv2.resize(rng.uniform(-25, 25, (h // 16 + 1, w // 16 + 1)).astype(np.float32),
                     (w, h), interpolation=cv2.INTER_CUBIC)
    return np.asarray(bg + tex, dtype=np.float32)


def render_frame(text: str | None, cond: Conditions = Conditions(), *,
                 size: tuple[int, int] = FRAME_SIZE, color: bool = False) -> np.ndarray:
    """A camera frame (``uint8``, grey, or BGR if ``color``) of ``text`` as a QR code on a
    phone screen under ``cond``; ``text=None`` renders the scene without a code."""
    import cv2
    import numpy as np

    w, h = size
    rng = np.random.default_rng(cond.seed)
    frame = _background(rng, w, h)
    if text is not None:
        m = qr_matrix(text)
        n = m.shape[0]
        side = n * cond.module_px
        # screen: the symbol on white, with a phone-screen margin around it
        px = 4
        sym = np.where(np.kron(m, np.ones((px, px), np.uint8)) > 0, 20, 235).astype(np.float32)
        margin = int(n * px * 0.12)
        src_img = cv2.copyMakeBorder(sym, margin, margin * 3, margin, margin,
                                     cv2.BORDER_CONSTANT, value=235.0)
        sh, sw = src_img.shape
        k = side / (n * px)  # output pixels per source pixel
        cx = w / 2 + cond.offset[0] * w
        cy = h / 2 + cond.offset[1] * h
        half_w, half_h = sw * k / 2, sh * k / 2
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h],
                            [-half_w, half_h]], np.float32)
        corners += rng.uniform(-1, 1, corners.shape).astype(np.float32) * (
            cond.perspective * side)
        a = math.radians(cond.rotation_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
        # centre the symbol (not the whole screen) on (cx, cy)
        sym_centre = np.array([0.0, -(margin * 2) * k / 2], np.float32)
        dst = (corners - sym_centre) @ rot.T + np.array([cx, cy], np.float32)
        src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
        mat = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
        warped = cv2.warpPerspective(src_img, mat, (w, h), flags=cv2.INTER_AREA
                                     if k < 1 else cv2.INTER_LINEAR, borderValue=-1.0)
        mask = cv2.warpPerspective(np.ones_like(src_img), mat, (w, h), flags=cv2.INTER_LINEAR)
        frame = frame * (1 - mask) + np.where(warped < 0, 0, warped) * mask
    if cond.contrast != 1.0:
        frame = 128 + (frame - 128) * cond.contrast
    frame = frame + cond.brightness
    if cond.glare > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gx0, gy0 = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        r = rng.uniform(0.08, 0.18) * w
        spot = np.exp(-(((xx - gx0) ** 2 + (yy - gy0) ** 2) / (2 * r * r)))
        frame = frame + spot * 255 * cond.glare
    if cond.blur > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), cond.blur)
    if cond.noise > 0:
        frame = frame + rng.normal(0, cond.noise, frame.shape).astype(np.float32)
    out = np.clip(frame, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if color else out


def write_images(frames: Iterable[np.ndarray], directory: str | Path, *,
                 pattern: str = "frame_{:04d}.png") -> list[Path]:
    """Write ``frames`` as images into ``directory`` (created); returns the paths."""
    import cv2

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = d / pattern.format(i)
        if not cv2.imwrite(str(p), f):
            raise OSError(f"cannot write image {p}")
        paths.append(p)
    return paths


def write_video(frames: Iterable[np.ndarray], path: str | Path, *, fps: float = 15.0) -> Path:
    """Write ``frames`` (grey or BGR, all one size) as an MJPEG ``.avi`` video at ``fps``."""
    import cv2

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    writer: Any = None
    try:
        for f in frames:
            bgr = f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)
            if writer is None:
                writer = cv2.VideoWriter(str(p), cv2.VideoWriter.fourcc(*"MJPG"), fps,
                                         (bgr.shape[1], bgr.shape[0]))
                if not writer.isOpened():
                    raise OSError(f"cannot open a video writer for {p}")
            writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    return p
