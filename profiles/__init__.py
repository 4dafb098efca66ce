"""Terminal profiles (TOML): rules, prompts, test vectors and settings per terminal kind."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROFILE_DIR", "profile_path"]

PROFILE_DIR = Path(__file__).parent


def profile_path(name_or_path: str) -> Path:
    """A profile by name (``bus_validator``) or by path to a TOML file.

    Raises ``FileNotFoundError`` naming the profiles that exist.
    """
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.exists():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p
    candidate = PROFILE_DIR / f"{name_or_path}.toml"
    if not candidate.exists():
        known = ", ".join(sorted(q.stem for q in PROFILE_DIR.glob("*.toml")))
        raise FileNotFoundError(f"unknown profile {name_or_path!r} (known: {known})")
    return candidate
