"""Per-session KV-cache store for the transformers engine: what makes prewarm shorten time to first token.

A prewarm (or a finished turn) leaves its token ids and `past_key_values` here. A later generate of the
same session takes the entry sharing the longest token prefix with its prompt, gets a private copy
cropped to that prefix, and only computes the rest. Bounded twice: entries per session, and sessions
(least recently used evicted), so memory cannot grow with traffic.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CachedPrefix:
    ids: torch.Tensor  # 1-D token ids the cache covers
    past: Any  # transformers Cache holding exactly len(ids) positions


def common_prefix_len(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading token ids ``a`` and ``b`` share."""
    size = min(a.numel(), b.numel())
    if size == 0:
        return 0
    mismatch = torch.nonzero(a[:size] != b[:size])
    return int(mismatch[0]) if mismatch.numel() else size


class SessionPrefixCache:
    """Bounded LRU of cached prefixes per session; thread-safe (used by the engine's worker thread)."""

    def __init__(self, max_sessions: int, entries_per_session: int) -> None:
        self._max_sessions = max_sessions
        self._per_session = entries_per_session
        self._sessions: OrderedDict[str, list[CachedPrefix]] = OrderedDict()
        self._lock = threading.Lock()

    def store(self, session_id: str, ids: torch.Tensor, past: Any) -> None:
        """Keep ``past`` (which must cover exactly ``ids``) for this session; the store owns it from now."""
        if self._max_sessions <= 0 or self._per_session <= 0 or ids.numel() == 0:
            return
        with self._lock:
            entries = self._sessions.pop(session_id, [])
            # An entry that is a prefix of the new one is now redundant.
            entries = [e for e in entries if common_prefix_len(e.ids, ids) < e.ids.numel()]
            entries.insert(0, CachedPrefix(ids.clone(), past))
            self._sessions[session_id] = entries[: self._per_session]
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)

    def take(self, session_id: str, ids: torch.Tensor) -> tuple[int, Any]:
        """(matched, cache copy cropped to ``matched``) for the best entry; (0, None) when none matches.

        At least one prompt token is always left uncached: the model must compute the logits of the
        last position to choose the first new token.
        """
        with self._lock:
            entries = self._sessions.get(session_id)
            if not entries:
                return 0, None
            self._sessions.move_to_end(session_id)
            best, matched = None, 0
            for entry in entries:
                length = common_prefix_len(entry.ids, ids)
                if length > matched:
                    best, matched = entry, length
            if best is None:
                return 0, None
            matched = min(matched, ids.numel() - 1)
            if matched <= 0:
                return 0, None
            past = copy.deepcopy(best.past)
        extra = past.get_seq_length() - matched
        if extra > 0:
            past.crop(-extra)  # transformers 5: a negative count removes that many trailing positions
        return matched, past

    def drop_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._sessions.values())
