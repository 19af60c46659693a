"""The conversation as the LLM sees it: a pinned system prompt and a rolling window of turns.

Memory per session is bounded by a token budget: the oldest turns leave the window first. Evicted
turns can be folded into a short running note pinned after the system prompt (extractive: the first
sentence of each evicted user and agent message), so the agent keeps the gist without an extra LLM call
on the critical path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from voxgrid.v1 import audio_pb2, llm_pb2

ROLE = {"system": llm_pb2.ROLE_SYSTEM, "user": llm_pb2.ROLE_USER, "assistant": llm_pb2.ROLE_ASSISTANT,
        "tool": llm_pb2.ROLE_TOOL}
MAX_NOTE_CHARS = 1200


def estimate_tokens(text: str) -> int:
    """~4 characters per token for English with BPE tokenizers; only used for the window budget."""
    return max(1, len(text) // 4) + 4  # + per-message overhead of the chat template


@dataclass
class Message:
    role: str
    content: str
    tool_calls: list[audio_pb2.ToolCall] = field(default_factory=list)
    tool_call_id: str = ""

    def to_proto(self) -> llm_pb2.ChatMessage:
        return llm_pb2.ChatMessage(role=ROLE[self.role], content=self.content, tool_calls=self.tool_calls,
                                   tool_call_id=self.tool_call_id)

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

    def messages(self, pending_user: str | None = None) -> list[llm_pb2.ChatMessage]:
        system = self.system_prompt
        if self.note:
            system += f"\n\nEarlier in this conversation (summary): {self.note.strip()}"
        out = [llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=system)]
        out += [m.to_proto() for m in self.history]
        if pending_user:
            out.append(llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=pending_user))
        return out
