"""Speech made on the spot with flite: the demo's question, test utterances, load-test corpora.

flite needs no model files. Its 16 kHz `slt` voice is used: whisper tiny.en transcribes it nearly
perfectly, while the default 8 kHz `kal` voice trips it on ordinary sentences ("the capital of France").
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from voxgrid.audio import read_wav

DEFAULT_VOICE = "slt"


class FliteMissing(RuntimeError):
    pass


def synthesize(text: str, path: Path, voice: str = DEFAULT_VOICE) -> tuple[np.ndarray, int]:
    """Write `text` spoken by flite to `path` (cached: an existing file is reused) and return it."""
    if shutil.which("flite") is None:
        raise FliteMissing("flite is not installed: `apt-get install flite` (make setup does it)")
    if not path.exists():
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
    return read_wav(path)
