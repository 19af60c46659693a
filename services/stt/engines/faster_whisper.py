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
from voxgrid.services.stt.engines.packaged_models import TINY_EN, packaged_model_path

_PUNCT_BEFORE = "\"'“¿([{-"
_PUNCT_AFTER = "\"'.。,，!！?？:：”)]}、"
_TAIL_PAD_S = 1.0  # silence whisper needs after speech to end a transcript cleanly
_DETECT = ""  # group key of rows whose language the model detects


def resolve_model(model: str) -> str:
    """`tiny.en-package` (the packaged default), `base-package` (multilingual), a local directory, or a hub id/size."""
    packaged = packaged_model_path(model)
    if packaged is not None:
        return packaged
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
        preview_window_quantum_s: float = 3.0,
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
        self.preview_window_quantum_s = min(max(preview_window_quantum_s, 1.0), 30.0)
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
        if self.model_name == TINY_EN:
            return "tiny.en"
        if self.model_name.endswith("-package"):
            return self.model_name.removesuffix("-package")
        return Path(self.model_name).name or self.model_name

    def window_frames(self, n_samples: int, final: bool = False, preview: bool = False) -> int:
        """Mel frames of the padded window for `n_samples` of audio (10 ms per frame, max 3000)."""
        quantum = (self.preview_window_quantum_s if preview else
                   self.final_window_quantum_s if final else self.window_quantum_s)
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

    def _detects(self, req: DecodeRequest) -> bool:
        """Empty language on a multilingual model means "detect"; English-only models decode English."""
        return not req.language and bool(self.model.model.is_multilingual)

    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        started = time.perf_counter()
        results: list[Hypothesis | None] = [None] * len(requests)
        groups: dict[tuple[int, int, int, str], list[int]] = defaultdict(list)
        prompts: list[list[int]] = []
        for i, req in enumerate(requests):
            # A detecting row is prompted as English here; its language token is replaced once the encoder
            # output tells the language (the token sits at the same index, so rows still batch together).
            tok = self._tokenizer(req.language)
            previous = tok.encode(" " + req.prompt.strip()) if req.prompt.strip() else []
            prompt = self.model.get_prompt(
                tok, previous, without_timestamps=True, prefix=req.prefix or None, hotwords=req.hotwords or None
            )
            prompts.append(prompt)
            beam = self.beam_size if req.final else self.partial_beam_size
            frames = self.window_frames(len(req.audio), req.final, req.preview)
            lang = _DETECT if self._detects(req) else tok.language_code
            groups[(frames, prompt.index(tok.sot), beam, lang)].append(i)
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
        feats = np.stack([self._features(r.audio, frames) for r in reqs])
        encoded = m.encode(feats)
        if lang == _DETECT:
            langs, probs = self._detect(encoded, prompts)
        else:
            langs, probs = [lang] * len(reqs), [None] * len(reqs)
        # Speech carries ~3-5 tokens/s; a budget of 8/s stops a hallucination loop early.
        budget = min(self.max_new_tokens, 16 + int(8 * max(len(r.audio) for r in reqs) / self.sample_rate))
        generated = m.model.generate(
            encoded, prompts, beam_size=beam, max_length=min(m.max_length, max(len(p) for p in prompts) + budget),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
            repetition_penalty=1.0, no_repeat_ngram_size=0,
        )
        eot = self._tokenizer(langs[0]).eot
        tokens = [[t for t in g.sequences_ids[0] if t < eot] for g in generated]
        wants_words = [r.final for r in reqs]
        alignments: dict[str, list] = {}
        if any(wants_words) and any(tokens) and all(tokens):
            # The alignment is forced from one start sequence (it names the language): one pass per language.
            n_frames = [min(frames, len(r.audio) // 160) for r in reqs]
            for code in dict.fromkeys(langs):
                alignments[code] = m.model.align(encoded, self._tokenizer(code).sot_sequence, tokens, n_frames,
                                                 median_filter_width=7)
        for j, (row, g) in enumerate(zip(rows, generated, strict=True)):
            tok = self._tokenizer(langs[j])
            seq_len = max(len(g.sequences_ids[0]), 1)
            aligned = alignments.get(langs[j])
            words = self._words(tok, tokens[j], aligned[j]) if aligned is not None and wants_words[j] else []
            results[row] = Hypothesis(
                text=unloop(tok.decode(tokens[j]).strip()) if reqs[j].preview else tok.decode(tokens[j]).strip(),
                language=langs[j], words=words,
                avg_logprob=float(g.scores[0]) * seq_len / (seq_len + 1) if g.scores else 0.0,
                no_speech_prob=float(g.no_speech_prob), language_probability=probs[j],
            )

    def _detect(self, encoded, prompts: list[list[int]]) -> tuple[list[str], list[float | None]]:
        """Each row's most likely language from the encoder output (one decoder step; the encode is shared with
        the transcription), written into that row's prompt in place of the placeholder English token."""
        english = self._tokenizer("en")
        langs: list[str] = []
        probs: list[float | None] = []
        for prompt, scores in zip(prompts, self.model.model.detect_language(encoded), strict=True):
            token, prob = scores[0]
            code = token[2:-2]
            prompt[prompt.index(english.sot) + 1] = self._tokenizer(code).language
            langs.append(code)
            probs.append(float(prob))
        return langs, probs

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


def unloop(text: str, min_period: int = 2) -> str:
    """The first pass of a transcript whisper read again: on a window much shorter than its native 30 s,
    whisper, having said everything, starts over ("What is 2 plus 2? What is 2 plus 2? What is") until its
    token budget runs out. When the words (case and punctuation aside) repeat themselves to the end, with
    a period of at least `min_period` words repeated for at least `min_period` words, keep one period. A
    caller who really said it twice gets a preview that differs from the final: a missed speculation,
    never a wrong answer."""
    words = text.split()
    norm = ["".join(c for c in w.lower() if c.isalnum() or c == "'") for w in words]
    n = len(words)
    for period in range(min_period, n - min_period + 1):
        if all(norm[i] == norm[i + period] for i in range(n - period)):
            return " ".join(words[:period])
    return text
