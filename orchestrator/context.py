"""The conversation as the LLM sees it: a pinned system prompt and a rolling window of turns.

Memory per session is bounded by a token budget: the oldest turns leave the window first. Evicted
turns can be folded into a short running note pinned after the system prompt (extractive: the first
sentence of each evicted user and agent message), so the agent keeps the gist without an extra LLM call
on the critical path.

Hybrid mode keeps the caller's speech in user turns (`Message.audio`) for a speech-in LLM. Audio is
bounded the same way: only the newest user turn is sent with its audio; every older one is sent as its
transcript (or `INAUDIBLE` when it has none yet), so a long call never resends minutes of speech, and the
window budget counts those turns by their text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from voxgrid.v1 import audio_pb2, llm_pb2

ROLE = {"system": llm_pb2.ROLE_SYSTEM, "user": llm_pb2.ROLE_USER, "assistant": llm_pb2.ROLE_ASSISTANT,
        "tool": llm_pb2.ROLE_TOOL}
MAX_NOTE_CHARS = 1200
# What an older audio turn says when no transcript of it exists (transcription failed or is still running).
INAUDIBLE = "[inaudible]"


def estimate_tokens(text: str) -> int:
    """~4 characters per token for English with BPE tokenizers; only used for the window budget."""
    return max(1, len(text) // 4) + 4  # + per-message overhead of the chat template


@dataclass
class Message:
    role: str
    content: str
    tool_calls: list[audio_pb2.ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    # Hybrid mode: the caller's speech for this user turn; `content` is then its transcript ("" until known).
    audio: llm_pb2.AudioClip | None = None
    # Added by the application (live control's add_message), not said by the caller: never merged with a turn.
    added: bool = False

    def to_proto(self, with_audio: bool = False) -> llm_pb2.ChatMessage:
        """The wire message; an audio turn carries its audio only ``with_audio``, else its transcript."""
        message = llm_pb2.ChatMessage(role=ROLE[self.role], content=self.content, tool_calls=self.tool_calls,
                                      tool_call_id=self.tool_call_id)
        if self.audio is not None:
            if with_audio:
                message.audio.CopyFrom(self.audio)
            elif not self.content:
                message.content = INAUDIBLE
        return message

    @property
    def tokens(self) -> int:
        extra = sum(len(c.arguments_json) + len(c.name) for c in self.tool_calls)
        return estimate_tokens(self.content) + extra // 4


def _first_sentence(text: str, limit: int = 120) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


class Conversation:
    """History with a token budget; `messages()` is what the next LLM request carries."""

    def __init__(self, system_prompt: str, max_history_tokens: int, summarize_evicted: bool = False) -> None:
        self.system_prompt = system_prompt
        self.max_history_tokens = max_history_tokens
        self.summarize_evicted = summarize_evicted
        self.history: list[Message] = []
        self.note = ""
        self.evicted_turns = 0

    def add(self, message: Message) -> None:
        self.history.append(message)
        self._evict()

    def append_to_last_user(self, text: str) -> bool:
        """A user who resumes before the agent answered: one user turn, not two."""
        if self.history and self.history[-1].role == "user":
            self.history[-1].content = f"{self.history[-1].content} {text}".strip()
            return True
        return False

    def history_tokens(self) -> int:
        return sum(m.tokens for m in self.history)

    def _evict(self) -> None:
        # Evict whole exchanges from the front, but never the newest message: a user turn that alone is over
        # the budget is refused before it gets here (limits.user_turn_problem), so the window fits the budget.
        while self.history_tokens() > self.max_history_tokens and len(self.history) > 1:
            dropped = [self.history.pop(0)]
            # tool results and the assistant message after them belong to the same exchange
            while self.history and self.history[0].role in ("tool", "assistant") and len(self.history) > 1:
                dropped.append(self.history.pop(0))
            self.evicted_turns += 1
            if self.summarize_evicted:
                for m in dropped:
                    if m.role in ("user", "assistant") and m.content:
                        who = "The caller said" if m.role == "user" else "You answered"
                        self.note += f"{who}: {_first_sentence(m.content)} "
                self.note = self.note[-MAX_NOTE_CHARS:]

    def messages(
        self, pending_user: str | None = None, pending_audio: llm_pb2.AudioClip | None = None
    ) -> list[llm_pb2.ChatMessage]:
        """The next request's messages. Only the newest user turn (the pending one, when given) keeps its
        audio; older audio turns go as their transcripts."""
        system = self.system_prompt
        if self.note:
            system += f"\n\nEarlier in this conversation (summary): {self.note.strip()}"
        out = [llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=system)]
        pending = pending_user or pending_audio is not None
        users = [i for i, m in enumerate(self.history) if m.role == "user"]
        newest = None if pending or not users else users[-1]
        out += [m.to_proto(with_audio=i == newest) for i, m in enumerate(self.history)]
        if pending:
            message = llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=pending_user or "")
            if pending_audio is not None:
                message.audio.CopyFrom(pending_audio)
            out.append(message)
        return out
