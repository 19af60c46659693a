"""Streaming speech to text: VAD-gated, re-decoded whisper with local-agreement partials and fast finals."""
