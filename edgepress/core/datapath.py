"""Where the shared real data lives: one configurable path, `EDGEPRESS_DATA`."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "EDGEPRESS_DATA"
PLACEHOLDER = "{data}"


def data_root() -> Path:
    """$EDGEPRESS_DATA, else ../shared/data beside the working folder or the source checkout."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    candidates = [Path.cwd() / ".." / "shared" / "data",
                  Path(__file__).resolve().parents[1] / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0].resolve()


def resolve(value: str, *, base: Path) -> Path:
    """`{data}/x` -> under data_root(); relative paths -> relative to `base` (the recipe's folder)."""
    if value.startswith(PLACEHOLDER):
        return data_root() / value[len(PLACEHOLDER):].lstrip("/\\")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
