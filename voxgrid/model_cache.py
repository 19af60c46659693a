"""The one cache where voxgrid processes keep models they build or extract at run time.

`$VOXGRID_CACHE_DIR/models` (default `~/.cache/voxgrid/models`); the chart points every service at the same
volume, so a model built by one replica is found by the next. `build_lock` serialises the build of one entry
across processes (several replicas or test workers starting at once), so none reads a half-written model.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def models_dir() -> Path:
    root = os.environ.get("VOXGRID_CACHE_DIR") or str(Path.home() / ".cache" / "voxgrid")
    return Path(root) / "models"


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on building `target` (a lock file beside it, so `target` may be replaced whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
