"""Custom voices from a folder (`voices_dir`): an operator's own voice is a file, named by its file name.

- `NAME.onnx` with `NAME.onnx.json` beside it: a Piper voice (as Piper's trainer exports it).
- `NAME.npy` or `NAME.pt`: a Kokoro style vector (what Kokoro's voice packs hold per voice: 510 x 1 x 256
  floats, or 510 x 256).
- `NAME.blend`: a weighted mix of Kokoro voices, one line such as `af_heart:0.7, am_adam:0.3` (weights are
  normalised to sum to 1; the names may be packaged voices or style files of the same folder).

Each engine takes the kinds it can speak and ignores the others (logged); a file it cannot use (a style
vector of the wrong shape, a blend naming an unknown voice) stops the replica at start with a message
naming the file, never at some call's first sentence. ListVoices lists the custom voices beside the
packaged ones, so the orchestrator can check a profile's voice before a call starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("voxgrid.tts.voices")
STYLE_SHAPE = (510, 1, 256)


class VoiceFileError(ValueError):
    """A custom voice file cannot be used; the message names it and what to fix."""


@dataclass
class VoiceFiles:
    piper: list[Path] = field(default_factory=list)
    styles: dict[str, Path] = field(default_factory=dict)
    blends: dict[str, str] = field(default_factory=dict)


def find_voices(folder: Path | None) -> VoiceFiles:
    """The voice files in `folder` by kind (nothing when unset; an error when set but missing)."""
    found = VoiceFiles()
    if folder is None:
        return found
    if not folder.is_dir():
        raise VoiceFileError(f"voices_dir {folder} is not a folder")
    for path in sorted(folder.iterdir()):
        if path.suffix == ".onnx":
            if not Path(f"{path}.json").exists():
                raise VoiceFileError(f"Piper voice {path} needs {path.name}.json beside it")
            found.piper.append(path)
        elif path.suffix in (".npy", ".pt"):
            found.styles[path.stem] = path
        elif path.suffix == ".blend":
            found.blends[path.stem] = path.read_text(encoding="utf-8").strip()
    return found


def parse_blend(spec: str, what: str) -> list[tuple[str, float]]:
    """`af_heart:0.7, am_adam:0.3` -> [(name, weight)], weights normalised to sum to 1."""
    parts: list[tuple[str, float]] = []
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        name, sep, weight = item.partition(":")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise VoiceFileError(f"{what}: weight {weight!r} of {name!r} is not a number") from None
        if w <= 0 or not name.strip():
            raise VoiceFileError(f"{what}: each part must be NAME:WEIGHT with a weight above 0, got {item!r}")
        parts.append((name.strip(), w))
    if not parts:
        raise VoiceFileError(f"{what} is empty: write e.g. `af_heart:0.7, am_adam:0.3`")
    total = sum(w for _, w in parts)
    return [(n, w / total) for n, w in parts]


def load_style(path: Path) -> np.ndarray:
    """A Kokoro style vector from .npy (or .pt, which needs torch), as 510 x 1 x 256 float32."""
    if path.suffix == ".pt":
        try:
            import torch
        except ImportError:
            raise VoiceFileError(f"{path} is a torch file and torch is not installed here: save it as .npy "
                                 "(numpy.save(path, tensor.numpy()))") from None
        array = torch.load(str(path), map_location="cpu", weights_only=True).numpy()
    else:
        array = np.load(str(path), allow_pickle=False)
    array = np.asarray(array, dtype=np.float32)
    if array.size != int(np.prod(STYLE_SHAPE)):
        raise VoiceFileError(f"Kokoro style vector {path} has shape {array.shape}: a voice is "
                             f"{STYLE_SHAPE[0]} x {STYLE_SHAPE[2]} floats (shape {STYLE_SHAPE})")
    return array.reshape(STYLE_SHAPE)


def kokoro_styles(files: VoiceFiles, packaged: Callable[[str], np.ndarray | None],
                  packaged_names: list[str]) -> dict[str, np.ndarray]:
    """Style vectors of the custom Kokoro voices: the style files, then the blends of any known voices."""
    styles = {name: load_style(path) for name, path in files.styles.items()}
    for name, spec in files.blends.items():
        what = f"blend {name}.blend"
        mix = np.zeros(STYLE_SHAPE, np.float32)
        for part, weight in parse_blend(spec, what):
            style = styles.get(part)
            if style is None:
                style = packaged(part)
            if style is None:
                known = ", ".join(sorted({*packaged_names, *styles}))
                raise VoiceFileError(f"{what} names voice {part!r}, which is not here (voices: {known})")
            mix += weight * style.reshape(STYLE_SHAPE)
        styles[name] = mix
    if files.piper:
        log.info("voices_dir: Piper voices %s ignored by the Kokoro engine", ", ".join(p.name for p in files.piper))
    return styles
