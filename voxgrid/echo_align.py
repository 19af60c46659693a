"""Per-turn echo delay estimation and reference pre-alignment for the echo canceller, with a start-of-turn gate.

Why: the adaptive filter models the echo path relative to the reference it is given. When that path
changes between agent turns (another device, a re-buffering player, a trunk whose delay jumps; the
benchmark changes it every turn), a filter carried over cancels nothing until it has re-learnt, about
a second of leaking echo at the start of the turn: exactly where a false barge-in starts. But the
orchestrator knows what it played, so the delay can be measured instead of re-learnt: half a second into
each turn's speech (and after every restart of the client's player) the caller's audio is cross-correlated
(GCC-PHAT) with the reference, from 250 ms before where it was placed (a client that played earlier than
assumed) to 300 ms after, and the reference is then moved so the echo always sits `TARGET_DELAY_MS`
behind it. The filter then sees the same path every turn and its state learnt on earlier turns stays
valid. While aligned, the delay is measured again every half second (at once when the canceller suddenly
removes little); a sure, different answer moves the reference again (a path that moved within a turn).

Until a turn's delay is measured (about half a second of agent speech), the filter is fed silence as
its reference, so it does not adapt to a path that is about to be re-aligned, and a double-talk-aware
gate mutes caller frames that are not well above the loudest echo the agent's recent audio could make
(the echo return loss measured on earlier turns, else 0 dB): echo alone is muted, a caller talking
louder than the agent's echo passes. A line where no echo is ever found turns the gate off.

The estimate (two FFTs over ~0.5 s, about a millisecond) runs on a worker thread, never on the event
loop; its answer is applied a few frames later.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

log = logging.getLogger("voxgrid.echo_align")

TARGET_DELAY_MS = 10.0  # where the echo is put behind the reference: early enough that estimate errors stay causal
EST_REF_S = 0.2  # reference (agent speech) per estimate
EST_MAX_LAG_S = 0.3  # echo delays searched behind the placed reference (at most the filter's tail)
EST_EARLY_S = 0.25  # and ahead of it: the client played earlier than placed (a gap it did not have)
EST_TRIES = 4  # windows tried per turn before giving up on it (double talk, no echo on this line)
MIN_CONFIDENCE = 0.3  # normalised correlation of echo and reference at the found lag
GATE_MARGIN_DB = 6.0  # caller frames this far above the loudest possible echo pass the gate
GATE_ATTENUATION = 0.01  # -40 dB on frames the gate holds
CONVERGED_DB = 15.0  # after alignment the gate stays until the canceller removes this much over CONVERGED_FRAMES
CONVERGED_FRAMES = 10
GATE_AFTER_LOCK_S = 1.5  # and at most this long after alignment
VERIFY_S = 0.5  # while aligned, the delay is measured again this often (the path can move within a turn)
DIVERGED_DB = 8.0  # after convergence, echo removal below this over CONVERGED_FRAMES: measure the delay now
VERIFY_CONFIDENCE = 0.5  # a re-measured delay moves the reference only when this sure
SPEECH_RMS = 1e-2  # an estimate's window starts at the first reference frame this loud (-40 dBFS): speech
_HIST_S = 2.0

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-delay")
    return _pool


def estimate_delay(near: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[int, float, float]:
    """(lag in samples by which `near` follows `ref`, 0..max_lag; the normalised correlation there; the echo
    return loss, near / ref power at that lag) by GCC-PHAT: the phase transform whitens speech, so the
    peak is one sample wide whatever the voice."""
    n = len(ref) + max_lag
    nfft = 1 << (n + len(ref) - 1).bit_length()
    # Tapered ends: the whitening would otherwise make the windows' cut edges correlate, a false peak.
    cross = np.fft.rfft(_tapered(near[:n]), nfft) * np.conj(np.fft.rfft(_tapered(ref), nfft))
    cc = np.fft.irfft(cross / (np.abs(cross) + 1e-12), nfft)[:max_lag + 1]
    lag = int(np.argmax(cc))
    seg = near[lag:lag + len(ref)]
    if len(seg) < len(ref) or not np.any(ref) or not np.any(seg):
        return lag, 0.0, 0.0
    corr = float(np.dot(seg, ref) / np.sqrt(np.dot(seg, seg) * np.dot(ref, ref)))
    erl = float(np.mean(seg.astype(np.float64) ** 2) / max(np.mean(ref.astype(np.float64) ** 2), 1e-12))
    return lag, corr, erl


def _tapered(x: np.ndarray, ramp: int = 320) -> np.ndarray:
    """`x` with raised-cosine ramps (20 ms at 16 kHz) at both ends."""
    ramp = min(ramp, len(x) // 2)
    if ramp < 2:
        return x
    w = np.ones(len(x), np.float32)
    w[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    w[-ramp:] = w[:ramp][::-1]
    return x * w


class _Ring:
    """The latest samples of a stream, addressed by their sample number on the caller clock."""

    def __init__(self, size: int) -> None:
        self._buf = np.zeros(size, np.float32)
        self.end = 0  # samples written so far

    def write(self, x: np.ndarray) -> None:
        size, i = len(self._buf), self.end % len(self._buf)
        first = min(len(x), size - i)
        self._buf[i:i + first] = x[:first]
        self._buf[:len(x) - first] = x[first:]
        self.end += len(x)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) (zeros for any older than the ring holds, or not written yet)."""
        size = len(self._buf)
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self.end - size, 0), min(stop, self.end)
        if hi > lo:
            i = lo % size
            first = min(hi - lo, size - i)
            out[lo - start:lo - start + first] = self._buf[i:i + first]
            out[lo - start + first:hi - start] = self._buf[:hi - lo - first]
        return out


class DelayAligner:
    """One session's echo delay: measures it per agent turn, delays the reference to match, gates until then."""

    def __init__(self, rate: int, tail_ms: int, threaded: bool = True, hold_filter: bool = True) -> None:
        self.rate = rate
        self.max_lag = int(min(EST_MAX_LAG_S, tail_ms / 1000) * rate)
        self.early = int(EST_EARLY_S * rate)
        self.target = int(TARGET_DELAY_MS * rate / 1000)
        self.lookahead = self.early + self.target  # placed reference `frame` needs after the current frame
        self.threaded = threaded
        self.hold_filter = hold_filter  # silence as the filter's reference until aligned (it keeps what it learnt)
        size = int(_HIST_S * rate) + self.max_lag
        self._near, self._ref = _Ring(size), _Ring(size + self.max_lag)
        self.shift = 0  # samples the reference is delayed by before the filter sees it (< 0: advanced)
        self.locked = False  # this turn's delay is measured (the filter's reference is aligned)
        self.delay_ms: float | None = None  # the latest measured echo delay behind the placed reference
        self.measured_ms: float | None = None  # the same, cleared by whoever reports it (the turn record)
        self._erls: deque[float] = deque(maxlen=3)  # echo return loss (power ratio) of the latest turns measured
        self.echo_found = False  # some turn of this call had a measurable echo
        self.no_echo_turns = 0  # turns since, with none found
        self._active_from: int | None = None  # first active reference sample of the turn (caller clock)
        self._tries = 0
        self._gave_up = False  # no estimate this turn (double talk, too little echo): the filter runs as it is
        self._pending: Future[tuple[int, float, float]] | None = None
        self.gated_samples = 0
        self._ref_power: deque[float] = deque(maxlen=1)  # per frame, over the lags the tail covers
        self._ahead = np.zeros(0, np.float32)  # the reference placed just after the current frame
        self._locked_at = 0  # caller-clock sample where this turn was aligned
        self._converged = False  # and since then the canceller removes most of the echo
        self._recent: list[tuple[float, float]] = []  # (near, out) energy of the latest frames with agent audio
        self._restart_at: int | None = None  # where the player starts again (`restart`), not reached yet
        self._restart_turn = False
        self._verify_at: int | None = None  # when the aligned delay is next measured again

    def restart(self, at: int, new_turn: bool) -> None:
        """The client's player starts (again) at caller-clock sample `at`: a new agent turn, or audio after the
        player ran dry. Where its echo sits is measured again from there (nothing re-learnt when it is the same)."""
        self._restart_at, self._restart_turn = at, new_turn or self._restart_turn

    def _reset(self, new_turn: bool) -> None:
        log.debug("player restarts (new turn: %s); was locked %s, shift %d", new_turn, self.locked, self.shift)
        if new_turn and not self.locked and self._active_from is not None:
            self.no_echo_turns += 1  # the last turn ended without a measurable echo
        self.locked, self._active_from, self._tries, self._pending, self._gave_up = False, None, 0, None, False
        self._converged, self._recent, self._verify_at = False, [], None

    @property
    def gating(self) -> bool:
        return not self._converged and not self._gave_up and self.no_echo_turns < 2

    @property
    def erl(self) -> float | None:
        return max(self._erls) if self._erls else None

    def frame(self, clock: int, near: np.ndarray, placed_ref: np.ndarray, ahead: np.ndarray) -> np.ndarray:
        """One frame of caller audio at caller-clock sample `clock`, the reference placed there and (`ahead`) up
        to `lookahead` samples placed after it: the reference the filter gets, the placed one moved by `shift`
        (silence while this turn is unaligned and gated). `gate` then applies to the canceller's output."""
        n = len(near)
        if self._ref_power.maxlen != self.max_lag // n + 2:
            self._ref_power = deque(maxlen=self.max_lag // n + 2)
        self._ref_power.append(float(np.dot(placed_ref, placed_ref)) / n)
        self._ahead = ahead  # the client may play it earlier than placed: the gate looks at it
        self._near.write(near)
        self._ref.write(placed_ref)
        if self._restart_at is not None and clock + n > self._restart_at:
            self._reset(self._restart_turn)
            self._restart_at, self._restart_turn = None, False
        if self._active_from is None and self._ref_power[-1] > SPEECH_RMS**2:
            self._active_from = clock
        self._poll(clock)
        self._maybe_estimate(clock + n)
        if not self.locked and self.hold_filter and self.gating:
            return np.zeros(n, np.float32)
        if self.shift >= 0:
            return self._ref.read(clock - self.shift, clock + n - self.shift)
        later = np.zeros(n - self.shift, np.float32)  # advanced: from this frame's reference and what follows
        later[:n] = placed_ref
        later[n:n + min(len(ahead), -self.shift)] = ahead[:-self.shift]
        return later[-self.shift:]

    def gate(self, clock: int, near: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The canceller's output for the frame at `clock`, muted while this turn is unaligned and the caller's
        audio is no louder than the agent's recent audio could echo (double talk passes)."""
        if not self.gating:
            self._watch(clock, near, out)
            return out
        # the loudest echo the agent's audio could make now, placed up to max_lag before or `early` after
        soon = self._ahead[:len(self._ahead) // len(near) * len(near)].reshape(-1, len(near))
        ahead = float(np.max(np.einsum("ij,ij->i", soon, soon))) / len(near) if len(soon) else 0.0
        loudest = max(max(self._ref_power, default=0.0), ahead)
        if loudest <= 0.0:
            return out
        erl = self.erl if self.erl is not None else 1.0
        e_near = float(np.dot(near, near)) / len(near)
        if self.locked:  # aligned: the gate lifts once the canceller is seen to cancel (or after a while)
            e_out = float(np.mean(out.astype(np.float64) ** 2))
            self._recent = [*self._recent[-(CONVERGED_FRAMES - 1):], (e_near, e_out)]
            removed = sum(a for a, _ in self._recent) / max(sum(b for _, b in self._recent), 1e-20)
            cancels = len(self._recent) >= CONVERGED_FRAMES and removed > 10 ** (CONVERGED_DB / 10)
            if cancels or clock - self._locked_at > GATE_AFTER_LOCK_S * self.rate:
                self._converged, self._recent = True, []
                log.debug("gate lifted at %d (%s)", clock, "cancels" if cancels else "timeout")
                return out
        if e_near > loudest * erl * 10 ** (GATE_MARGIN_DB / 10):
            return out
        self.gated_samples += len(near)
        return out * GATE_ATTENUATION

    def _watch(self, clock: int, near: np.ndarray, out: np.ndarray) -> None:
        """Aligned and converged: if the canceller suddenly removes little of the agent's audio, the path may have
        moved: measure the delay now rather than at the next VERIFY_S. (Not gated again: quiet double talk looks
        the same here, and a caller must not be muted mid-sentence.)"""
        loudest = max(self._ref_power, default=0.0)
        if not self._converged or self._gave_up or loudest < SPEECH_RMS**2:
            return
        erl = self.erl if self.erl is not None else 1.0
        if float(np.dot(near, near)) / len(near) > loudest * erl * 10 ** (GATE_MARGIN_DB / 10):
            return  # louder than any echo could be: the caller talks, that says nothing about the path
        self._recent = [*self._recent[-(CONVERGED_FRAMES - 1):],
                        (float(np.dot(near, near)), float(np.dot(out, out)))]
        if len(self._recent) < CONVERGED_FRAMES:
            return
        removed = sum(a for a, _ in self._recent) / max(sum(b for _, b in self._recent), 1e-20)
        if removed < 10 ** (DIVERGED_DB / 10) and self._verify_at is not None:
            self._recent = []
            self._verify_at = min(self._verify_at, clock)

    def _maybe_estimate(self, now: int) -> None:
        if self.locked:
            self._maybe_verify(now)
            return
        if self._pending is not None or self._active_from is None or self._gave_up:
            return
        if self._tries >= EST_TRIES:
            self._gave_up = True  # keep the previous alignment, let the filter follow, lift the gate
            log.debug("no echo delay found this turn (%d windows from %s): gate off", self._tries, self._active_from)
            return
        start = self._active_from + self._tries * int(EST_REF_S * self.rate)
        ref_len = int(EST_REF_S * self.rate)
        if now < start + ref_len + self.max_lag:
            return
        self._tries += 1
        self._measure(start, now)

    def _maybe_verify(self, now: int) -> None:
        """Aligned: the latest window is measured again every VERIFY_S (its answer moves the reference only if
        the delay changed and the measure is sure: `_apply`)."""
        if self._pending is not None or self._verify_at is None or now < self._verify_at:
            return
        self._verify_at = now + int(VERIFY_S * self.rate)
        ref_len = int(EST_REF_S * self.rate)
        start = now - ref_len - self.max_lag
        ref = self._ref.read(start, start + ref_len)
        if float(np.mean(ref.astype(np.float64) ** 2)) < SPEECH_RMS**2:
            return  # the agent was (nearly) silent there: nothing to measure
        self._measure(start, now)

    def _measure(self, start: int, now: int) -> None:
        """Estimate the delay of the reference from `start` (EST_REF_S of it) in the caller's audio, from
        `early` before it to `max_lag` after; on the worker thread unless `threaded` is off."""
        ref_len = int(EST_REF_S * self.rate)
        near = self._near.read(start - self.early, start + ref_len + self.max_lag)
        ref = self._ref.read(start, start + ref_len)
        if self.threaded:
            self._pending = _executor().submit(estimate_delay, near, ref, self.early + self.max_lag)
        else:
            self._apply(estimate_delay(near, ref, self.early + self.max_lag), now)

    def _poll(self, clock: int) -> None:
        if self._pending is not None and self._pending.done():
            fut, self._pending = self._pending, None
            self._apply(fut.result(), clock)

    def _apply(self, found: tuple[int, float, float], clock: int) -> None:
        found_at, corr, erl = found
        log.debug("delay estimate at %d: lag %d, corr %.2f, erl %.3f (locked %s)", clock, found_at - self.early, corr,
                  erl, self.locked)
        if corr < (VERIFY_CONFIDENCE if self.locked else MIN_CONFIDENCE) or found_at in (0, self.early + self.max_lag):
            return  # double talk, no echo in this window or beyond the range: the next one may tell
        lag = found_at - self.early  # < 0: the echo comes before the reference as placed
        if self.locked and abs(lag - self.target - self.shift) <= 2:
            return  # the same delay (to a sample or two): nothing to move
        self._verify_at = clock + int(VERIFY_S * self.rate)
        self.shift = lag - self.target
        self.delay_ms = self.measured_ms = 1000 * lag / self.rate
        self._erls.append(erl)
        if not self.locked:
            self._locked_at = clock
        self.locked = self.echo_found = True
        self.no_echo_turns = 0
