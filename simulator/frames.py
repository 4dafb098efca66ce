"""A corpus of generated camera frames for decoder tests and benchmarks.

:func:`generate_corpus` renders codes from simulated phones under each condition in
:data:`CONDITIONS` (``per_condition`` frames each, parameters drawn from a seeded RNG)
plus frames with no code at all (plain scenes, checkerboards, text-like blocks, QR-like
noise without finder patterns). Written to a directory with a ``manifest.json`` listing
``file``, ``condition`` and the expected ``text`` (``null`` for no-code frames).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.phone import FRAME_SIZE, Conditions, Phone, SimIssuer, render_frame

__all__ = ["CONDITIONS", "CorpusFrame", "generate_corpus", "iter_corpus", "load_corpus"]

NO_CODE = "no_code"


def _clean(r: np.random.Generator) -> dict[str, object]:
    return {"module_px": r.uniform(3.2, 5.0), "rotation_deg": r.uniform(-5, 5),
            "offset": (r.uniform(-0.05, 0.05), r.uniform(-0.04, 0.04))}


CONDITIONS: dict[str, Callable[[np.random.Generator], dict[str, object]]] = {
    "clean": _clean,
    "small": lambda r: {**_clean(r), "module_px": r.uniform(2.0, 2.8),
                        "offset": (r.uniform(-0.2, 0.2), r.uniform(-0.15, 0.15))},
    "large": lambda r: {**_clean(r), "module_px": r.uniform(5.2, 6.0)},
    "rotated": lambda r: {**_clean(r), "rotation_deg": r.uniform(10, 350)},
    "perspective": lambda r: {**_clean(r), "perspective": r.uniform(0.06, 0.2)},
    "blur": lambda r: {**_clean(r), "blur": r.uniform(0.8, 2.0)},
    "glare": lambda r: {**_clean(r), "glare": r.uniform(0.4, 0.9)},
    "noise": lambda r: {**_clean(r), "noise": r.uniform(8, 30)},
    "low_contrast": lambda r: {**_clean(r), "contrast": r.uniform(0.18, 0.4),
                               "brightness": r.uniform(-40, 40)},
    "mixed": lambda r: {"module_px": r.uniform(2.6, 5.0), "rotation_deg": r.uniform(0, 360),
                        "perspective": r.uniform(0, 0.12), "blur": r.uniform(0, 1.2),
                        "glare": r.uniform(0, 0.5), "noise": r.uniform(0, 15),
                        "contrast": r.uniform(0.4, 1.0)},
}
"""Condition name → parameter sampler (keyword arguments of :class:`Conditions`)."""


@dataclass(frozen=True, slots=True)
class CorpusFrame:
    """One corpus frame: its image file, condition and expected text (None: no code)."""

    path: Path
    condition: str
    text: str | None


def _no_code_frame(i: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    w, h = FRAME_SIZE
    kind = i % 4
    base = render_frame(None, Conditions(seed=int(rng.integers(1 << 30)),
                                         noise=float(rng.uniform(0, 15))))
    if kind == 1:  # checkerboard / tiles
        sq = int(rng.integers(8, 40))
        yy, xx = np.mgrid[0:h, 0:w]
        return np.where(((yy // sq) + (xx // sq)) % 2 == 0, 30, 220).astype(np.uint8)
    if kind == 2:  # text-like blocks on a white card
        img = base.copy()
        cv2.rectangle(img, (120, 80), (520, 400), 235, -1)
        for _ in range(12):
            y = int(rng.integers(100, 380))
            cv2.putText(img, "YIKATONG 2026 " + str(int(rng.integers(1_000_000))), (130, y),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.6, 20, 2)
        return img
    if kind == 3:  # QR-like random modules without finder patterns
        n = 69
        m = rng.integers(0, 2, (n, n)).astype(np.uint8)
        sym = np.where(np.kron(m, np.ones((4, 4), np.uint8)) > 0, 20, 235).astype(np.uint8)
        img = base.copy()
        y0, x0 = (h - sym.shape[0]) // 2, (w - sym.shape[1]) // 2
        img[y0:y0 + sym.shape[0], x0:x0 + sym.shape[1]] = sym
        return img
    return base


def iter_corpus(*, per_condition: int = 22, no_code: int = 30, seed: int = 1,
                phones: list[Phone] | None = None, now: float = 1_800_000_000.0
                ) -> Iterator[tuple[str, str | None, np.ndarray]]:
    """Yield ``(condition, expected text or None, grey frame)`` without touching disk."""
    rng = np.random.default_rng(seed)
    if phones is None:
        issuer = SimIssuer("corpus-es256")
        phones = [Phone.enroll(issuer, holder_key=f"{i:032x}", alg=a, now=now)
                  for i, a in enumerate(("ES256", "EdDSA"))]
    k = 0
    for name, sampler in CONDITIONS.items():
        for _ in range(per_condition):
            params = sampler(rng)
            cond = Conditions(seed=int(rng.integers(1 << 30)), **params)  # type: ignore[arg-type]
            text = phones[k % len(phones)].new_code(now + k)
            k += 1
            yield name, text, render_frame(text, cond)
    for i in range(no_code):
        yield NO_CODE, None, _no_code_frame(i, rng)


def generate_corpus(directory: str | Path, **kwargs: object) -> list[CorpusFrame]:
    """Render the corpus (see :func:`iter_corpus` for keyword arguments) into ``directory``
    as PNG files plus ``manifest.json``; returns the frames. Reuses an existing manifest
    written with the same arguments."""
    import cv2

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    manifest = d / "manifest.json"
    key = json.dumps({k: v for k, v in sorted(kwargs.items()) if k != "phones"}, default=str)
    if manifest.exists() and json.loads(manifest.read_text()).get("args") == key:
        return load_corpus(d)
    frames: list[CorpusFrame] = []
    for i, (cond, text, img) in enumerate(iter_corpus(**kwargs)):  # type: ignore[arg-type]
        p = d / f"{i:04d}_{cond}.png"
        if not cv2.imwrite(str(p), img):
            raise OSError(f"cannot write corpus frame {p}")
        frames.append(CorpusFrame(p, cond, text))
    manifest.write_text(json.dumps({"args": key, "frames": [
        {"file": f.path.name, "condition": f.condition, "text": f.text} for f in frames]},
        indent=1))
    return frames


def load_corpus(directory: str | Path) -> list[CorpusFrame]:
    """The frames listed in ``directory``/manifest.json."""
    d = Path(directory)
    doc = json.loads((d / "manifest.json").read_text())
    return [CorpusFrame(d / f["file"], f["condition"], f["text"]) for f in doc["frames"]]
