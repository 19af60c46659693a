"""The built-in knowledge lookup: BM25 over passages of a folder of text documents.

Simple on purpose, behind one seam (`KnowledgeBase.search`): a deployment that needs embeddings or a
vector database replaces this class, or declares an HTTP tool instead.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and are as at be by for from how i in is it of on or our the this to was we what "
                  "when where which who why with you your do does can".split())
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass
class Passage:
    source: str
    text: str


class KnowledgeBase:
    """One collection: passages (paragraphs) ranked by BM25 (k1=1.5, b=0.75)."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self._tf = [Counter(_terms(p.text)) for p in passages]
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg = sum(self._len) / max(1, len(self._len))
        df: Counter[str] = Counter()
        for tf in self._tf:
            df.update(tf.keys())
        n = len(passages)
        self._idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    @classmethod
    def from_folder(cls, folder: Path) -> KnowledgeBase:
        passages = []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES):
            for para in re.split(r"\n\s*\n", path.read_text(errors="replace")):
                para = " ".join(para.split())
                if para:
                    passages.append(Passage(path.name, para))
        return cls(passages)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        terms = _terms(query)
        scores = []
        for i, tf in enumerate(self._tf):
            score = 0.0
            for t in terms:
                f = tf.get(t, 0)
                if f:
                    score += self._idf[t] * f * 2.5 / (f + 1.5 * (0.25 + 0.75 * self._len[i] / self._avg))
            if score > 0:
                scores.append((score, i))
        return [self.passages[i] for _, i in sorted(scores, reverse=True)[:k]]


def load_collections(root: Path | None) -> dict[str, KnowledgeBase]:
    """`root/*.txt` is the collection `default`; each subfolder is a collection of its own name."""
    if root is None:
        return {}
    if not root.is_dir():
        raise ValueError(f"knowledge_dir {root} is not a folder")
    out = {}
    if any(p.is_file() and p.suffix in TEXT_SUFFIXES for p in root.iterdir()):
        out["default"] = KnowledgeBase.from_folder(root)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        out[sub.name] = KnowledgeBase.from_folder(sub)
    return out
