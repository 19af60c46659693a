"""The TTS service's own Prometheus metrics (sessions, capacity and errors are the chassis's)."""

from __future__ import annotations

from voxgrid.metrics import counter, histogram, rtf_histogram

TIME_TO_FIRST_AUDIO = histogram(
    "tts", "time_to_first_audio_seconds", "First text of an utterance received to its first audio sent."
)
RTF = rtf_histogram("tts")
CHARACTERS = counter("tts", "characters", "Input characters sent to the engine (characters/s with rate()).")
AUDIO_SECONDS = counter("tts", "audio_seconds", "Seconds of audio synthesised.")
CANCELLATIONS = counter("tts", "cancellations", "Utterances ended by cancel.")
