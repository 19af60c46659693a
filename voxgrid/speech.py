"""Speech made on the spot with flite: the demo's question, test utterances, load-test corpora.

Other languages come from espeak-ng (`synthesize_espeak`, the library in the espeakng-loader wheel): robotic
but recognisable, enough to test language identification without recordings.

flite needs no model files. Its 16 kHz `slt` voice is used: whisper tiny.en transcribes it nearly
perfectly, while the default 8 kHz `kal` voice trips it on ordinary sentences ("the capital of France").
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
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


class EspeakMissing(RuntimeError):
    pass


_ESPEAK_LOCK = threading.Lock()  # the library keeps one global synthesiser
_espeak: tuple[ctypes.CDLL, int] | None = None
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1


def synthesize_espeak(text: str, voice: str) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng's `voice` ("fr", "de", "en-us", ...): float32 mono samples and their rate.

    Blocking (CPU-bound, tens of ms per sentence): call it from a thread when an event loop is running.
    """
    global _espeak
    with _ESPEAK_LOCK:
        if _espeak is None:
            try:
                import espeakng_loader
            except ImportError as exc:
                raise EspeakMissing("espeak-ng is missing: pip install 'espeakng-loader==0.2.4'") from exc
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                         espeakng_loader.get_data_path().encode(), 0)
            if rate <= 0:
                raise EspeakMissing(f"espeak-ng did not initialise (code {rate})")
            _espeak = (lib, rate)
        lib, rate = _espeak
        chunks: list[np.ndarray] = []

        @_SynthCallback
        def collect(wav, n, _events):  # type: ignore[no-untyped-def]
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        lib.espeak_SetSynthCallback(collect)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        data = text.encode()
        lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        lib.espeak_SetSynthCallback(None)
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    return samples, rate
