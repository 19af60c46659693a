"""The session's explicit state machine: every transition is checked, timestamped and exported."""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass

from voxgrid import metrics
from voxgrid.v1 import agent_pb2


class State(enum.Enum):
    LISTENING = "listening"          # waiting for the caller
    USER_SPEAKING = "user_speaking"  # VAD hears the caller
    THINKING = "thinking"            # the caller finished; the LLM is writing, no audio out yet
    CALLING_TOOL = "calling_tool"    # a tool runs for the current turn
    AGENT_SPEAKING = "agent_speaking"  # agent audio is going out
    INTERRUPTED = "interrupted"      # the caller cut the agent off (passes to user_speaking at once)
    ENDED = "ended"


ALLOWED: dict[State, set[State]] = {
    State.LISTENING: {State.USER_SPEAKING, State.THINKING, State.AGENT_SPEAKING, State.ENDED},
    State.USER_SPEAKING: {State.LISTENING, State.THINKING, State.ENDED},
    State.THINKING: {State.AGENT_SPEAKING, State.CALLING_TOOL, State.INTERRUPTED, State.LISTENING, State.ENDED},
    State.CALLING_TOOL: {State.THINKING, State.AGENT_SPEAKING, State.INTERRUPTED, State.LISTENING, State.ENDED},
    State.AGENT_SPEAKING: {State.LISTENING, State.INTERRUPTED, State.CALLING_TOOL, State.THINKING, State.ENDED},
    State.INTERRUPTED: {State.USER_SPEAKING, State.LISTENING, State.THINKING, State.ENDED},
    State.ENDED: set(),
}

_transitions = metrics.counter("orchestrator", "state_transitions", "Session state transitions.", ["src", "dst"])


@dataclass(frozen=True)
class Transition:
    at: float  # time.monotonic()
    src: State
    dst: State
    reason: str


def session_state(state: State) -> agent_pb2.SessionState.ValueType:
    """The wire enum of a state (TurnEvent.session_state): SESSION_STATE_<NAME>."""
    return agent_pb2.SessionState.Value(f"SESSION_STATE_{state.name}")


class IllegalTransition(RuntimeError):
    pass


class StateMachine:
    def __init__(self, history: int = 256) -> None:
        self.state = State.LISTENING
        self.since = time.monotonic()
        self.transitions: deque[Transition] = deque(maxlen=history)

    def to(self, dst: State, reason: str) -> Transition | None:
        """Move to `dst`; staying put is a no-op, an edge the design does not allow is a bug."""
        if dst is self.state:
            return None
        if dst not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {dst.value} ({reason})")
        t = Transition(time.monotonic(), self.state, dst, reason)
        self.transitions.append(t)
        _transitions.labels(self.state.value, dst.value).inc()
        self.state, self.since = dst, t.at
        return t

    def is_(self, *states: State) -> bool:
        return self.state in states
