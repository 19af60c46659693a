"""Acoustic echo cancellation at the caller edge: the agent's own voice, played by the client and picked up
again by its microphone, is taken out of the caller's audio before STT hears it.

Why here and why this engine: the orchestrator knows exactly what it sent and when it will be played (the
playout's pacing, corrected by the client's playback marks), so it has the far-end reference an echo
canceller needs without the client's help. The canceller is libspeexdsp's (BSD): its adaptive MDF filter,
then its preprocessor's residual-echo suppressor (about 20 dB of echo removed, the near talker kept). It is
bound with ctypes, from the system's libspeexdsp where installed or else the copy the `speexdsp-ns` wheel
(already the speex noise suppressor's dependency) bundles: no other package is needed (`speexdsp-aec`
says "Proprietary" in its metadata, so it is not used).

Alignment: reference audio is written onto the caller's own sample clock, where the client's player
puts it: the playout paces what it sends (at most its lead ahead of playback), so a chunk starts playing
right after the previous one, or on arrival when the player ran dry; playback marks say how much later
than that the client really plays. The echo then arrives later by the acoustic path plus the uplink,
which the filter's tail (`tail_ms`) covers. A reference placed after its echo cannot cancel it, so
estimates err early.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import time
from collections import deque

import numpy as np

from voxgrid import metrics
from voxgrid.audio import AudioIn, AudioSpec, FrameBuffer, to_pcm16
from voxgrid.echo_align import DelayAligner

_SET_SAMPLING_RATE = 24  # SPEEX_ECHO_SET_SAMPLING_RATE
_PREPROCESS_SET_ECHO_STATE = 24  # SPEEX_PREPROCESS_SET_ECHO_STATE
_PREPROCESS_SET_DENOISE = 0  # SPEEX_PREPROCESS_SET_DENOISE
_REF_ACTIVE_RMS = 1e-3  # reference frames quieter than this (-60 dBFS) count as the agent being silent
_MAX_EXTRAPOLATE_S = 0.06  # the caller clock runs on between messages, at most this far
_MARK_MARGIN_S = 0.05  # marks come after the fact and in steps: assume playback this much earlier
_MAX_LAG_S = 1.0
_ENV_FRAMES = 400  # loudness contours kept for `echo_likeness`: 4 s of 10 ms frames
_MAX_REF_S = 30.0  # reference held ahead of the caller clock, at most (a client that stops sending)

FRAME_COST_BUCKETS: tuple[float, ...] = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


class EchoUnavailable(RuntimeError):
    """No libspeexdsp with the echo API: the message says what to install."""


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    """libspeexdsp: the system's (libspeexdsp1), else the one bundled in the speexdsp-ns wheel."""
    global _lib
    if _lib is not None:
        return _lib
    candidates = []
    found = ctypes.util.find_library("speexdsp")
    if found:
        candidates.append(found)
    try:
        import speexdsp_ns

        libs = os.path.join(os.path.dirname(os.path.dirname(speexdsp_ns.__file__)), "speexdsp_ns.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "libspeexdsp*.so*")))
    except ImportError:
        pass
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.speex_echo_state_init  # noqa: B018 - the echo API must be there
        except (OSError, AttributeError):
            continue
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
        return lib
    raise EchoUnavailable("echo cancellation needs libspeexdsp: pip install 'voxgrid[edge]' (speexdsp-ns bundles "
                          "it) or apt-get install libspeexdsp1")


def frame_cost_histogram():  # type: ignore[no-untyped-def]
    return metrics.histogram("edge", "echo_cancellation_frame_seconds",
                             "Compute seconds to cancel echo in one 10 ms frame of caller audio.",
                             buckets=FRAME_COST_BUCKETS)


class SpeexEcho:
    """One stream's speex echo canceller + residual-echo suppressor: int16 frames of `frame_len` at `rate`."""

    def __init__(self, rate: int, tail_ms: int = 300, frame_ms: int = 10) -> None:
        lib = _load()
        self.rate = rate
        self.frame_len = rate * frame_ms // 1000
        self._lib = lib
        self._st = lib.speex_echo_state_init(self.frame_len, rate * tail_ms // 1000)
        r = ctypes.c_int(rate)
        lib.speex_echo_ctl(self._st, _SET_SAMPLING_RATE, ctypes.byref(r))
        # The preprocessor's residual-echo suppression only acts with its denoiser on; the noise stage
        # (a separate, optional choice) runs after this one either way.
        self._pp = lib.speex_preprocess_state_init(self.frame_len, rate)
        lib.speex_preprocess_ctl(self._pp, _PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._st))
        self._out = np.zeros(self.frame_len, dtype="<i2")

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near = np.ascontiguousarray(near, dtype="<i2")
        far = np.ascontiguousarray(far, dtype="<i2")
        out = np.empty(self.frame_len, dtype="<i2")
        self._lib.speex_echo_cancellation(self._st, near.ctypes.data, far.ctypes.data, out.ctypes.data)
        self._lib.speex_preprocess_run(self._pp, out.ctypes.data)
        return out

    def close(self) -> None:
        if self._st:
            self._lib.speex_echo_state_destroy(self._st)
            self._lib.speex_preprocess_state_destroy(self._pp)
            self._st = self._pp = None

    def __del__(self) -> None:
        self.close()


class EchoCanceller:
    """One session's echo stage: caller audio (float32 at `rate`) in, the same with the agent's echo removed
    out (at most one 10 ms frame later); `far` adds what the agent sends, in the client's output format."""

    def __init__(self, rate: int, far_spec: AudioSpec, tail_ms: int = 300, align: bool = True,
                 threaded: bool = True) -> None:
        self.engine = SpeexEcho(rate, tail_ms)
        # Per-turn delay measurement and reference alignment, with its start-of-turn gate (voxgrid/echo_align.py).
        self.aligner = DelayAligner(rate, tail_ms, threaded=threaded) if align else None
        self.rate = rate
        self._far_in = AudioIn(far_spec, rate)  # decodes what the client will play (Opus too), at our rate
        self._frames = FrameBuffer(self.engine.frame_len)
        self._ref = np.zeros(0, dtype=np.float32)  # reference from caller-clock sample `_ref_base` on
        self._ref_base = 0
        self._turn = -1  # the turn whose audio is being laid down
        self._turn_end = 0  # where its audio so far ends (caller clock)
        self._turn_ms = 0.0  # how much of it there is
        self._segments: list[tuple[int, float]] = []  # where the player (re)started, at which ms of the turn
        self._lag_s = 0.0  # how much later than its arrival the client plays audio (from playback marks)
        self._behind: deque[float] = deque(maxlen=10)  # that lag, as the latest marks showed it
        self.near_samples = 0  # caller samples received: the caller clock
        self._near_at = 0.0  # when the latest caller audio arrived
        self._cost = frame_cost_histogram()
        self.frames_processed = 0
        self.compute_s = 0.0
        self._stats = [0, 0.0, 0.0]  # since `take_stats`: samples with the agent audible, energy in, out
        self._env: deque[tuple[float, float]] = deque(maxlen=_ENV_FRAMES)  # per frame: caller, reference dB
        self._energy: deque[tuple[float, float]] = deque(maxlen=_ENV_FRAMES)  # per frame: caller in, out (power)
        self._tail_frames = max(1, tail_ms // 10)

    def near_clock(self, now: float) -> int:
        """The caller clock (samples) at wall time `now`: received so far, run on since the last message."""
        if not self._near_at:
            return self.near_samples
        ahead = min(max(0.0, now - self._near_at), _MAX_EXTRAPOLATE_S)
        return self.near_samples + int(ahead * self.rate)

    def far(self, data: bytes, turn_id: int, now: float | None = None) -> None:
        """Agent audio (one outgoing message of turn `turn_id`), just sent to the client.

        It is placed where a client's player puts it: right after the turn's previous audio, or when it
        arrives if the player had run dry (the first chunk of a turn, a late TTS chunk), later by the lag
        the client's playback marks showed. The reference so stays contiguous while the client plays
        contiguously: the filter cannot follow an echo path that jumps at every chunk."""
        now = time.monotonic() if now is None else now
        x = self._far_in.feed(data)
        if not len(x):
            return
        if turn_id != self._turn:
            self._turn, self._turn_ms, self._segments, self._turn_end = turn_id, 0.0, [], 0
        lag = int(self._lag_s * self.rate)
        pos = max(self.near_clock(now) + lag, self._turn_end)
        if pos > self._turn_end:  # the player starts (again) here; kept as its arrival, for the marks
            self._segments.append((pos - lag, self._turn_ms))
            del self._segments[:-64]
            if self.aligner is not None:  # the echo may sit elsewhere behind this audio: measure it again
                self.aligner.restart(pos, new_turn=len(self._segments) == 1)
        self._turn_end = pos + len(x)
        self._turn_ms += 1000 * len(x) / self.rate
        start = pos - self._ref_base
        if start < 0:  # its echo is already past: keep what is still to come
            x, start = x[-start:], 0
        if start > _MAX_REF_S * self.rate or not len(x):
            return
        end = start + len(x)
        if end > len(self._ref):
            self._ref = np.concatenate([self._ref, np.zeros(end - len(self._ref), dtype=np.float32)])
        self._ref[start:end] = x

    def cut(self, now: float | None = None) -> None:
        """The agent was interrupted: the client drops what it had not played yet, so must the reference (a
        reference with no echo under it makes the filter subtract the agent's voice from silence)."""
        keep = self.near_clock(time.monotonic() if now is None else now) + int(self._lag_s * self.rate)
        self._ref = self._ref[:max(0, keep - self._ref_base)]
        self._turn = -1

    def mark(self, turn_id: int, played_ms: float, now: float | None = None) -> None:
        """A playback mark: if the client plays later than the reference assumes, the next start of playback
        is placed that much later (kept `_MARK_MARGIN_S` early: a reference that comes after its echo cannot
        cancel it, one that comes early only uses some of the filter's tail)."""
        if turn_id != self._turn or not self._segments or played_ms >= self._turn_ms:
            return  # another turn's, or the player has played all there is: nothing to learn
        clock = self.near_clock(time.monotonic() if now is None else now)
        pos, turn_ms = next(((p, m) for p, m in reversed(self._segments) if p <= clock), self._segments[0])
        on_arrival_ms = min(turn_ms + 1000 * (clock - pos) / self.rate, self._turn_ms)
        # A mark can only come late (it understates the lag's opposite): the least lag of recent marks.
        self._behind.append((on_arrival_ms - played_ms) / 1000)
        self._lag_s = min(max(0.0, min(self._behind) - _MARK_MARGIN_S), _MAX_LAG_S)

    def process(self, near: np.ndarray, now: float | None = None) -> np.ndarray:
        """Caller audio in arrival order; returns what the frames completed so far give."""
        self._near_at = time.monotonic() if now is None else now
        self.near_samples += len(near)
        return self._cancel(self._frames.push(near))

    def flush(self) -> np.ndarray:
        """End of the caller's audio: the partial frame (zero-padded, cut back), and the engine freed."""
        pending = len(self._frames)
        y = np.zeros(0, dtype=np.float32)
        if pending:
            y = self._cancel(self._frames.push(np.zeros(self.engine.frame_len - pending, dtype=np.float32)))
            y = y[:pending]
        self.engine.close()
        return y

    def _cancel(self, frames: list[np.ndarray]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        n = self.engine.frame_len
        out = []
        for f in frames:
            ref = self._ref[:n]
            if len(ref) < n:
                ref = np.concatenate([ref, np.zeros(n - len(ref), dtype=np.float32)])
            self._ref = self._ref[n:]
            clock = self._ref_base
            self._ref_base += n
            near16 = to_pcm16(f)
            t0 = time.perf_counter()
            if self.aligner is None:
                y = self.engine.process(near16, to_pcm16(ref))
            else:
                # the placed reference just after this frame: an echo that comes earlier than its placement
                ahead = self._ref[:self.aligner.lookahead]
                filter_ref = self.aligner.frame(clock, f, ref, ahead)
                y = self.engine.process(near16, to_pcm16(filter_ref))
                y = to_pcm16(self.aligner.gate(clock, f, y.astype(np.float32) / 32768.0))
            dt = time.perf_counter() - t0
            self._cost.observe(dt)
            self.compute_s += dt
            e_near = float(np.mean(near16.astype(np.float64) ** 2)) / 32768**2
            self._env.append((10 * np.log10(e_near + 1e-9), 10 * np.log10(float(np.mean(ref * ref)) + 1e-9)))
            self._energy.append((e_near, float(np.mean(y.astype(np.float64) ** 2)) / 32768**2))
            if float(np.sqrt(np.mean(ref * ref))) > _REF_ACTIVE_RMS:
                self._stats[0] += n
                self._stats[1] += float(np.sum(near16.astype(np.float64) ** 2))
                self._stats[2] += float(np.sum(y.astype(np.float64) ** 2))
            out.append(y)
        self.frames_processed += len(frames)
        return np.concatenate(out).astype(np.float32) / 32768.0

    def echo_likeness(self, seconds: float) -> float:
        """How much the caller's last `seconds` of audio (before cancellation) follow the agent's: the best
        correlation of their loudness contours over the echo delays the tail covers. Echo alone follows the
        reference closely (0.97-0.99 measured) even before the filter has learnt the path; a caller talking over it
        does not. 0.0 when there is too little to tell."""
        n = min(int(seconds * 100), len(self._env) - self._tail_frames)
        if n < 30:
            return 0.0
        env = np.array(self._env, dtype=np.float64)
        near = env[-n:, 0]
        best = 0.0
        for lag in range(0, self._tail_frames + 1, 2):
            ref = env[len(env) - n - lag:len(env) - lag, 1]
            if ref.std() < 1.0 or near.std() < 1.0:
                continue
            best = max(best, float(np.corrcoef(near, ref)[0, 1]))
        return best

    def removed_db(self, seconds: float, until_s: float = 0.0) -> float:
        """How much of the caller's audio from `seconds` ago to `until_s` ago the echo stage took away (dB, in
        over out energy): what STT heard of it. Echo alone loses most of its energy here (cancelled, or held by
        the start-of-turn gate), even on the first answer of a call (about 20 dB measured); a caller talking
        over the echo passes nearly whole (2 dB measured). So words STT finds in audio that lost most of its
        energy here are the echo's residue or whisper's hallucination on near-silence ("Thank you."), never
        the caller's. 0.0 when there is nothing to tell."""
        n = min(int(seconds * 100), len(self._energy))
        skip = min(max(0, int(until_s * 100)), n)
        if n - skip < 1:
            return 0.0
        e = np.array(list(self._energy)[len(self._energy) - n:len(self._energy) - skip], dtype=np.float64)
        return float(10 * np.log10((e[:, 0].sum() + 1e-9) / (e[:, 1].sum() + 1e-9)))

    def take_alignment(self) -> tuple[float | None, float]:
        """Delay tracking since the previous call: the latest echo delay measured (ms, None if none was) and
        the seconds of caller audio its start-of-turn gate muted."""
        a = self.aligner
        if a is None:
            return None, 0.0
        delay, gated = a.measured_ms, a.gated_samples / self.rate
        a.measured_ms, a.gated_samples = None, 0
        return delay, gated

    def take_stats(self) -> tuple[float, float | None]:
        """Seconds of caller audio processed while the agent was audible, and the energy removed from it (dB),
        since the previous call (None when the agent was not audible)."""
        samples, e_in, e_out = self._stats
        self._stats = [0, 0.0, 0.0]
        if not samples:
            return 0.0, None
        return samples / self.rate, float(10 * np.log10((e_in + 1.0) / (e_out + 1.0)))
