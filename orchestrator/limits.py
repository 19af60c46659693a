"""Per-session input bounds and rate limits: one caller cannot make the LLM work for everyone else's turn.

A typed turn, an utterance transcript and a tool result each have a size limit (characters, from the
orchestrator's settings); the newest user message must also fit the session's history token budget, so
the context window the LLM sees is bounded as a whole. An oversize turn is refused in-band (a
`SessionNotice`) and the call goes on; a tool result is cut with a visible marker instead, since the
model still has to answer from it. Control messages and typed text are metered by token buckets, so a
flood is refused message by message instead of queueing work for the replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voxgrid.orchestrator.context import estimate_tokens

if TYPE_CHECKING:
    from voxgrid.orchestrator.settings import Settings

TRUNCATION_MARKER = " … [tool result truncated: {kept} of {total} characters kept]"


@dataclass(frozen=True)
class InputLimits:
    """The bounds one session runs under (see the orchestrator settings for what each means)."""

    max_user_text_chars: int
    max_transcript_chars: int
    max_tool_result_chars: int
    control_per_s: float
    control_burst: int
    text_chars_per_s: float
    text_chars_burst: int

    @classmethod
    def from_settings(cls, s: Settings) -> InputLimits:
        return cls(s.max_user_text_chars, s.max_transcript_chars, s.max_tool_result_chars, s.control_per_s,
                   s.control_burst, s.text_chars_per_s, s.text_chars_burst)


def user_turn_problem(kind: str, text: str, max_chars: int, history_tokens: int) -> str:
    """Why this user turn is refused ('' when it is accepted); the message says what to do instead."""
    if len(text) > max_chars:
        return (f"the {kind} is {len(text)} characters; this agent takes at most {max_chars} per turn: "
                "split it into shorter turns or send a summary")
    tokens = estimate_tokens(text)
    if tokens > history_tokens:
        return (f"the {kind} is about {tokens} tokens, more than this session's context budget of "
                f"{history_tokens} tokens (context.max_history_tokens): send a shorter turn")
    return ""


def bound_tool_result(text: str, max_chars: int) -> str:
    """The result cut to ``max_chars`` with a marker saying so, so neither the model nor a log reader
    mistakes a cut result for the whole one."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + TRUNCATION_MARKER.format(kept=max_chars, total=len(text))


class TokenBucket:
    """`rate` units per second refill a bucket of `burst` units; a request that finds too few is refused."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._level = float(burst)
        self._at = self._clock()

    def take(self, units: float = 1.0) -> bool:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now
        if units > self._level:
            return False
        self._level -= units
        return True


class SessionRateLimiter:
    """The buckets of one session: control/text messages per second and typed characters per second."""

    def __init__(self, limits: InputLimits) -> None:
        self.messages = TokenBucket(limits.control_per_s, limits.control_burst)
        self.chars = TokenBucket(limits.text_chars_per_s, limits.text_chars_burst)
        self.limits = limits

    def refuse(self, kind: str, chars: int = 0) -> str:
        """Why this `control` or `text` message is refused now ('' when it may go on)."""
        if not self.messages.take():
            return (f"too many control and text messages: at most {self.limits.control_per_s:g} per second "
                    f"(bursts of {self.limits.control_burst}); this {kind} message was dropped, slow down")
        if chars and not self.chars.take(chars):
            return (f"too much typed text: at most {self.limits.text_chars_per_s:g} characters per second "
                    f"(bursts of {self.limits.text_chars_burst}); this {kind} message was dropped, "
                    "wait before sending more")
        return ""
