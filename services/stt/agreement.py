"""Local agreement: words two consecutive decodes agree on are committed and never change again.

Each decode of the growing utterance is forced to start with the committed words (the engine's
`prefix`), so a hypothesis is committed words + a tail. The longest common word prefix of the last two
tails is appended to the committed words. `stability` is the committed share of the text's characters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartialText:
    text: str
    committed_text: str
    stability: float


def _words(text: str) -> list[str]:
    return text.split()


class LocalAgreement:
    def __init__(self) -> None:
        self.committed: list[str] = []
        self._previous_tail: list[str] | None = None

    @property
    def committed_text(self) -> str:
        return " ".join(self.committed)

    def tail_of(self, hypothesis: str) -> list[str]:
        """The words of `hypothesis` after the committed ones (the decoder was forced to repeat them)."""
        # The forced prefix makes the first len(committed) words the committed ones; should tokenisation
        # respell them, the committed words still win and only the words beyond them count.
        return _words(hypothesis)[len(self.committed):]

    def update(self, hypothesis: str) -> PartialText:
        """Feed the latest decode; commit what it agrees on with the previous one."""
        tail = self.tail_of(hypothesis)
        if self._previous_tail is not None:
            agreed = 0
            for a, b in zip(self._previous_tail, tail, strict=False):
                if a != b:
                    break
                agreed += 1
            self.committed.extend(tail[:agreed])
            tail = tail[agreed:]
        self._previous_tail = tail
        return self.render(tail)

    def render(self, tail: list[str]) -> PartialText:
        committed = self.committed_text
        text = " ".join([*self.committed, *tail])
        return PartialText(text, committed, (len(committed) / len(text)) if text else 1.0)

    def final_text(self, hypothesis: str) -> str:
        """The final: committed words followed by the final decode's words after them."""
        return " ".join([*self.committed, *self.tail_of(hypothesis)])

    def reset(self) -> None:
        self.committed = []
        self._previous_tail = None
