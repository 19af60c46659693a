"""Speech input of a speech-in LLM: a request's `AudioClip` checked, decoded and cut into model windows.

Audio enters through the one audio-format layer (`voxgrid.audio`: format checks, G.711 decode,
resampling to the model's rate) exactly once, when the request arrives, so engines only ever see float32
mono at the model's rate. A speech-in model's audio encoder takes a fixed window (Qwen2-Audio: 30 s, its
Whisper feature extractor pads/cuts there); longer audio is split into consecutive windows, each becoming
one audio placeholder in the prompt, up to the engine's `max_audio_ms`. Every check runs before any
decoding or model work, so a bad clip costs its sender an error and its neighbours nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from voxgrid.services.llm.engines.base import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    Message,
    ModelDescription,
    RequestError,
    SpeechInput,
)
from voxgrid.services.llm.speech_prompt import PromptEncoder

from voxgrid.audio import AudioFormatError, AudioIn, AudioSpec
from voxgrid.v1 import audio_pb2, llm_pb2

# Encodings a whole clip may have: sample codecs, decodable in one piece (a stream codec such as Opus is
# framed packet by packet, which one `bytes` field cannot carry; AudioSpec.from_proto refuses it here).
CLIP_ENCODINGS = (audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_MULAW, audio_pb2.AUDIO_ENCODING_ALAW)
# Shorter clips give an audio encoder (Whisper-style, 4x downsampling) almost nothing to hear.
MIN_AUDIO_MS = 100


def cannot_hear(model: str, where: str) -> RequestError:
    return RequestError(
        FAILED_PRECONDITION,
        f"{where} carries audio but model {model!r} cannot hear (ListModels: accepts_audio false): send the "
        "transcript as `content`, or serve a speech-in model (Qwen2-Audio, Voxtral, ...) for hybrid mode",
    )


def decode_clip(clip: llm_pb2.AudioClip, speech: SpeechInput, where: str) -> tuple[np.ndarray, ...]:
    """The clip as float32 windows at ``speech.sample_rate_hz``; `RequestError` (INVALID_ARGUMENT) when unusable."""
    try:
        spec = AudioSpec.from_proto(clip.format if clip.HasField("format") else None, what=f"{where}.audio.format")
    except AudioFormatError as exc:
        raise RequestError(INVALID_ARGUMENT, str(exc)) from None
    if not clip.data:
        raise RequestError(INVALID_ARGUMENT, f"{where}.audio.data is empty: send the utterance's samples, "
                           "or leave `audio` unset and send text")
    duration_ms = spec.duration_ms(len(clip.data))
    if duration_ms < MIN_AUDIO_MS:
        raise RequestError(INVALID_ARGUMENT, f"{where}.audio is {duration_ms:.0f} ms long: send at least "
                           f"{MIN_AUDIO_MS} ms of speech, or send text")
    if duration_ms > speech.max_audio_ms:
        windows = "" if speech.max_audio_ms == speech.max_clip_ms else f" ({speech.max_clip_ms / 1000:g} s windows)"
        raise RequestError(
            INVALID_ARGUMENT,
            f"{where}.audio is {duration_ms / 1000:.1f} s but the model takes at most "
            f"{speech.max_audio_ms / 1000:g} s of audio per message{windows}: send a shorter utterance "
            "(split it at a pause, or send older speech as its transcript)",
        )
    try:
        audio_in = AudioIn(spec, speech.sample_rate_hz)
        samples = np.concatenate([audio_in.feed(clip.data), audio_in.flush()])
    except AudioFormatError as exc:
        raise RequestError(INVALID_ARGUMENT, f"{where}.audio: {exc}") from None
    return split_windows(samples, speech)


def split_windows(samples: np.ndarray, speech: SpeechInput) -> tuple[np.ndarray, ...]:
    """Consecutive windows of at most ``max_clip_ms``; a last sliver under MIN_AUDIO_MS is dropped."""
    window = int(speech.sample_rate_hz * speech.max_clip_ms / 1000)
    sliver = speech.sample_rate_hz * MIN_AUDIO_MS // 1000
    pieces = [samples[start : start + window] for start in range(0, len(samples), window)]
    if len(pieces) > 1 and len(pieces[-1]) < sliver:
        pieces.pop()
    return tuple(np.ascontiguousarray(p, dtype=np.float32) for p in pieces)


def check_audio_allowed(model: ModelDescription, role: str, where: str) -> SpeechInput:
    """The model's speech input, or the reason this message may not carry audio (before any decoding)."""
    if model.speech_input is None:
        raise cannot_hear(model.name, where)
    if role != "user":
        raise RequestError(INVALID_ARGUMENT, f"{where} is a {role} message with audio: only ROLE_USER messages "
                           "may carry audio (the caller's speech)")
    return model.speech_input


def speech_input_from_processor(processor: Any, max_audio_s: float) -> tuple[SpeechInput, int | None]:
    """What a speech-in checkpoint's processor says about hearing, and its audio token id (None if it has none).

    The window is its feature extractor's (Whisper-style: `chunk_length` seconds at `sampling_rate`); the
    tokens per second are counted by encoding one whole window of silence the way requests are encoded
    (the model's chat template and processor, or mistral-common), so nothing here is written per model.
    A model that pads every clip to whole windows (Voxtral) spends a window's tokens on a shorter clip too.
    """
    extractor = processor.feature_extractor
    rate = int(extractor.sampling_rate)
    window_ms = int(getattr(extractor, "chunk_length", 30) * 1000)
    token = getattr(processor, "audio_token", None)
    token_id = processor.tokenizer.convert_tokens_to_ids(token) if token else None
    window = np.zeros(rate * window_ms // 1000, np.float32)
    encoder = PromptEncoder(processor, processor.tokenizer, rate)
    ids = np.asarray(encoder.encode([Message("user", audio=(window,), audio_rate_hz=rate)]).ids)
    per_window = int((ids == token_id).sum()) if token_id is not None else 0
    per_second = math.ceil(per_window * 1000 / window_ms)
    return SpeechInput(rate, window_ms, max(window_ms, int(max_audio_s * 1000)), per_second), token_id
