"""No-input handling: reprompt a silent caller, and end the call after too many reprompts.

Why a timer on the session's own event queue (`later`) and not a task: the decision needs the state
machine (listening, no turn in flight, nothing queued to say), which only the session task may read. The
timer is armed while the session is idle and disarmed by anything else (the caller speaking, even without
words, or typing; the agent answering or speaking), so silence is measured from the last activity of
either side, and never while the agent speaks. A stale timer is recognised by its generation number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxgrid.orchestrator.state import State

from voxgrid.v1 import agent_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession


class IdleTimer:
    def __init__(self, session: PipelineSession, config: agent_pb2.IdleConfig) -> None:
        self.s = session
        self.config = agent_pb2.IdleConfig()
        self.reprompts = 0  # said in the current silence; the caller speaking or typing resets it
        self._generation = 0
        self._armed = False
        self.configure(config)

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"idle": self._on_idle}

    def configure(self, config: agent_pb2.IdleConfig) -> None:
        """A new idle config (start, or a live update): the silence is measured again from now."""
        self.config.CopyFrom(config)
        self._disarm()

    def _disarm(self) -> None:
        self._armed = False
        self._generation += 1

    def after_event(self) -> None:
        """Arm when the session went idle, disarm when it did not (called after every event)."""
        s = self.s
        if s.sm.is_(State.USER_SPEAKING) or (s.turn is not None and s.turn.user_text):
            self.reprompts = 0
        idle = (self.config.timeout_ms > 0 and s.turn is None and s.sm.is_(State.LISTENING) and not s.closing
                and not s.control.busy)
        if idle and not self._armed:
            self._armed = True
            s.later(self.config.timeout_ms / 1000, "idle", self._generation)
        elif not idle and self._armed:
            self._disarm()

    def _on_idle(self, generation: int) -> None:
        if generation != self._generation or not self._armed:
            return  # the caller or the agent did something since this timer was set
        self._disarm()
        if self.reprompts < self.config.max_reprompts:
            self.reprompts += 1
            self.s.emit(agent_pb2.ConverseResponse(idle=agent_pb2.IdleTimeout(reprompts=self.reprompts)))
            if self.config.reprompt:
                self.s.say(self.config.reprompt)
            return
        self.s.emit(agent_pb2.ConverseResponse(idle=agent_pb2.IdleTimeout(reprompts=self.reprompts, ending=True)))
        self.s.end_after(self.config.goodbye)
