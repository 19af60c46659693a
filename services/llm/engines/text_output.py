"""Token ids → text deltas for engines that decode themselves (the transformers engine).

Two small streaming pieces: `IncrementalDetokenizer` turns one token at a time into text without
re-decoding the whole completion or splitting multi-byte characters, and `StopStringMatcher` cuts the
text before the first stop string while holding back only the tail that could still become one.
(vLLM does both itself.)
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes a growing list of token ids into new text per step (prefix/read offsets, as vLLM/TGI do)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it completes ("" while a character is still partial)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""


class StopStringMatcher:
    """Streams text and stops *before* the first occurrence of any stop string."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Returns text safe to emit; sets `stopped` once a stop string appeared."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._held += text
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        hold = max((_partial_suffix(self._held, s) for s in self._stops), default=0)
        out = self._held[: len(self._held) - hold]
        self._held = self._held[len(self._held) - hold :]
        return out

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out


def _partial_suffix(text: str, stop: str) -> int:
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0
