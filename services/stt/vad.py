"""Silero VAD (v6, ONNX) run as a stream: one shared model, recurrent state per stream.

The model scores 512-sample windows (32 ms at 16 kHz), each preceded by the previous window's last 64
samples; its LSTM state (h, c) carries across windows. All whole windows of a chunk go through one
`run` call (the model treats the leading axis as time), so a 20 ms frame costs a fraction of a ms.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from voxgrid.audio import FrameBuffer

WINDOW = 512
CONTEXT = 64
SAMPLE_RATE = 16000
WINDOW_MS = 1000.0 * WINDOW / SAMPLE_RATE


def default_model_path() -> str:
    import faster_whisper

    return os.path.join(os.path.dirname(faster_whisper.__file__), "assets", "silero_vad_v6.onnx")


class SileroVad:
    """The loaded ONNX model, shared by every stream of a process (ONNX Runtime `run` is thread-safe)."""

    _shared: SileroVad | None = None
    _lock = threading.Lock()

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            path or default_model_path(), providers=["CPUExecutionProvider"], sess_options=opts
        )

    @classmethod
    def shared(cls) -> SileroVad:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def stream(self) -> VadStream:
        return VadStream(self)


class VadStream:
    """Speech probability per 32 ms window of one audio stream, fed in chunks of any size."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self._frames = FrameBuffer(WINDOW)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the whole windows completed by `samples` (leftover samples wait)."""
        windows = self._frames.push(samples)
        if not windows:
            return np.zeros(0, dtype=np.float32)
        block = np.stack(windows)
        contexts = np.concatenate([self._context[None, :], block[:-1, -CONTEXT:]])
        self._context = block[-1, -CONTEXT:].copy()
        batch = np.ascontiguousarray(np.concatenate([contexts, block], axis=1), dtype=np.float32)
        probs, self._h, self._c = self._vad.session.run(None, {"input": batch, "h": self._h, "c": self._c})
        return np.asarray(probs, dtype=np.float32).reshape(-1)
