"""Deterministic backends speaking the real protos over real gRPC, for pinning the orchestrator's behaviour.

Zero-latency by default (the orchestration-overhead benchmark uses them), with knobs for token pace and
synthesis speed. FakeStt "hears" by energy: a frame louder than -40 dBFS is speech; each utterance's
words come from a script, so a test knows exactly what the caller said.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from voxgrid.audio import AudioOut, AudioSpec, decode, encode
from voxgrid.config import ServerSettings
from voxgrid.server.chassis import ServiceRuntime
from voxgrid.server.streams import Outbox, pump, read_config
from voxgrid.v1 import (
    audio_pb2,
    duplex_pb2,
    duplex_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
    stt_pb2,
    stt_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
)

SE = stt_pb2.SpeechEvent


class FakeStt(stt_pb2_grpc.SpeechToTextServicer):
    def __init__(self, script: list[str], min_silence_ms: int = 300, partial_every_ms: int = 200,
                 when_script_ends: str = "", preview_after_ms: int = 0,
                 preview_of: Callable[[str], str] | None = None) -> None:
        self.script = deque(script)
        self.preview_after_ms = preview_after_ms  # like the real STT's speculative final
        self.preview_of = preview_of  # the preview's text from the final's (a fast preview may differ)
        self.when_script_ends = when_script_ends
        self.min_silence_ms = min_silence_ms
        self.partial_every_ms = partial_every_ms

    async def StreamingRecognize(self, request_iterator, context):
        config = await read_config(request_iterator, context)
        spec = AudioSpec.from_proto(config.format)
        out: Outbox = Outbox()
        state = {"pos": 0.0, "speaking": False, "start": 0.0, "last_voice": 0.0, "uid": 0, "words": [],
                 "next_partial": 0.0, "previewed": False}

        def final() -> None:
            words = state["words"]
            text = " ".join(words)
            out.put(stt_pb2.RecognizeResponse(speech_event=SE(kind=SE.KIND_SPEECH_ENDED,
                                                              audio_offset_ms=int(state["last_voice"]),
                                                              utterance_id=state["uid"])))
            out.put(stt_pb2.RecognizeResponse(transcript=stt_pb2.Transcript(
                utterance_id=state["uid"], text=text, committed_text=text, is_final=True, stability=1.0,
                start_ms=int(state["start"]), end_ms=int(state["last_voice"]))))
            state["speaking"] = False

        async def on_request(req) -> None:
            which = req.WhichOneof("request")
            if which == "control":
                if state["speaking"]:
                    final()
                if req.control.action == stt_pb2.SttControl.ACTION_END:
                    out.close()
                return
            x = decode(req.audio, spec)
            frame_ms = 1000 * len(x) / spec.sample_rate_hz
            loud = len(x) and 20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-9) > -40
            state["pos"] += frame_ms
            if loud:
                state["last_voice"] = state["pos"]
                if state["previewed"]:
                    state["previewed"] = False
                    out.put(stt_pb2.RecognizeResponse(speech_event=SE(
                        kind=SE.KIND_SPEECH_RESUMED, audio_offset_ms=int(state["pos"]), utterance_id=state["uid"])))
                if not state["speaking"]:
                    state.update(speaking=True, start=state["pos"] - frame_ms, uid=state["uid"] + 1,
                                 next_partial=state["pos"] + self.partial_every_ms)
                    state["words"] = (self.script.popleft() if self.script else self.when_script_ends).split()
                    out.put(stt_pb2.RecognizeResponse(speech_event=SE(
                        kind=SE.KIND_SPEECH_STARTED, audio_offset_ms=int(state["start"]), utterance_id=state["uid"])))
                elif state["pos"] >= state["next_partial"]:
                    state["next_partial"] += self.partial_every_ms
                    heard = max(1, int((state["pos"] - state["start"]) / 250))
                    text = " ".join(state["words"][:heard])
                    out.put(stt_pb2.RecognizeResponse(transcript=stt_pb2.Transcript(
                        utterance_id=state["uid"], text=text, committed_text=text, stability=1.0,
                        start_ms=int(state["start"]))))
            elif state["speaking"] and state["pos"] - state["last_voice"] >= self.min_silence_ms:
                state["previewed"] = False
                final()
            elif (state["speaking"] and self.preview_after_ms and not state["previewed"]
                  and state["pos"] - state["last_voice"] >= self.preview_after_ms):
                state["previewed"] = True
                text = " ".join(state["words"])
                text = self.preview_of(text) if self.preview_of else text
                out.put(stt_pb2.RecognizeResponse(transcript=stt_pb2.Transcript(
                    utterance_id=state["uid"], text=text, committed_text=text, stability=1.0, speculative=True,
                    start_ms=int(state["start"]), end_ms=int(state["last_voice"]))))

        async def on_end() -> None:
            if state["speaking"]:
                final()
            out.close()

        async for r in pump(request_iterator, on_request, out, context, on_end):
            yield r


Reply = Callable[[list[llm_pb2.ChatMessage], list[audio_pb2.ToolSchema]], "str | audio_pb2.ToolCall"]


def echo_reply(messages, tools):
    last = messages[-1]
    if last.role == llm_pb2.ROLE_TOOL:
        return f"Here is what I found: {last.content}."
    return f"You said {last.content}. That is interesting, tell me more about it."


def prompt_tokens(messages: list[llm_pb2.ChatMessage]) -> int:
    """About 4 characters per token, as the orchestrator's context budget counts them."""
    return sum(len(m.content) // 4 + 4 for m in messages)


@dataclass
class _Job:
    prefill_left: int
    pieces: deque
    out: asyncio.Queue


class FakeEngine:
    """One step loop shared by every stream of a FakeLlm, shaped like the transformers engine's worker:
    each step reads one prompt chunk of one request (round-robin) at `s_per_prompt_token` per token, then
    decodes one piece for every request past its prompt in `step_s` (batched: the cost does not grow with
    the batch). `chunk_tokens=0` reads a whole prompt in one step, the way an engine without chunked
    prefill does. The costs are simulated, so a test measures the scheduling, not a model."""

    def __init__(self, s_per_prompt_token: float, step_s: float, chunk_tokens: int) -> None:
        self.s_per_prompt_token = s_per_prompt_token
        self.step_s = step_s
        self.chunk_tokens = chunk_tokens
        self._jobs: list[_Job] = []
        self._turn = 0
        self._task: asyncio.Task | None = None

    async def run(self, tokens: int, pieces: list) -> AsyncIterator:
        """The pieces of one answer, each when the step loop decodes it."""
        job = _Job(tokens, deque(pieces), asyncio.Queue())
        self._jobs.append(job)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        try:
            while True:
                piece = await job.out.get()
                if piece is None:
                    return
                yield piece
        finally:
            if job in self._jobs:
                self._jobs.remove(job)

    async def _loop(self) -> None:
        while self._jobs:
            reading = [j for j in self._jobs if j.prefill_left > 0]
            if reading:
                self._turn %= len(reading)
                job = reading[self._turn]
                self._turn += 1
                n = job.prefill_left if self.chunk_tokens == 0 else min(self.chunk_tokens, job.prefill_left)
                await asyncio.sleep(n * self.s_per_prompt_token)
                job.prefill_left -= n
            decoding = [j for j in self._jobs if j.prefill_left == 0]
            if decoding:
                await asyncio.sleep(self.step_s)
                for job in decoding:
                    job.out.put_nowait(job.pieces.popleft() if job.pieces else None)
                    if not job.pieces:
                        job.out.put_nowait(None)
                        self._jobs.remove(job)


class FakeLlm(llm_pb2_grpc.LanguageModelServicer):
    def __init__(self, reply: Reply = echo_reply, token_delay_s: float = 0.0, ttft_s: float = 0.0,
                 engine: FakeEngine | None = None) -> None:
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.ttft_s = ttft_s
        self.engine = engine  # when set, answers come from its shared step loop (simulated prefill cost)
        self.adapters: tuple[str, ...] = ()  # what ListModels says this replica serves
        self.speech_input: llm_pb2.SpeechInputSpec | None = None  # set: ListModels says it hears (hybrid mode)
        self.configs: list[llm_pb2.ChatConfig] = []
        self.requests: list[llm_pb2.GenerateRequest] = []
        self.prewarms = 0
        self.prewarm_requests: list[llm_pb2.PrewarmRequest] = []
        self.cancels = 0

    async def _pieces(self, req: llm_pb2.GenerateRequest, pieces: list) -> AsyncIterator:
        if self.engine is not None:
            async for piece in self.engine.run(prompt_tokens(list(req.messages)), pieces):
                yield piece
            return
        await asyncio.sleep(self.ttft_s)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(self.token_delay_s)
            yield piece

    async def ListModels(self, request, context):
        return llm_pb2.LanguageModelList(models=[llm_pb2.LanguageModelInfo(
            name="fake", engine="fake", adapters=[llm_pb2.LoraAdapterInfo(name=a, rank=8) for a in self.adapters],
            accepts_audio=self.speech_input is not None, speech_input=self.speech_input)])

    async def Chat(self, request_iterator, context):
        self.configs.append(await read_config(request_iterator, context))
        out: Outbox = Outbox()
        running: dict[str, asyncio.Task] = {}
        ids = itertools.count(1)

        async def generate(req: llm_pb2.GenerateRequest) -> None:
            try:
                reply = self.reply(list(req.messages), list(req.tools))
                if isinstance(reply, audio_pb2.ToolCall):
                    async for call in self._pieces(req, [reply]):
                        out.put(llm_pb2.ChatResponse(request_id=req.request_id, tool_call=call))
                    reason = llm_pb2.FINISH_REASON_TOOL_CALLS
                else:
                    words = [(" " if i else "") + word for i, word in enumerate(reply.split(" "))]
                    async for word in self._pieces(req, words):
                        out.put(llm_pb2.ChatResponse(request_id=req.request_id,
                                                     delta=llm_pb2.TextDelta(text=word)))
                    reason = llm_pb2.FINISH_REASON_STOP
                out.put(llm_pb2.ChatResponse(request_id=req.request_id, done=llm_pb2.GenerationDone(
                    finish_reason=reason, prompt_tokens=prompt_tokens(list(req.messages)),
                    completion_tokens=1 if isinstance(reply, audio_pb2.ToolCall) else len(words))))
            except asyncio.CancelledError:
                out.put(llm_pb2.ChatResponse(request_id=req.request_id, done=llm_pb2.GenerationDone(
                    finish_reason=llm_pb2.FINISH_REASON_CANCELLED, prompt_tokens=prompt_tokens(list(req.messages)))))
            finally:
                running.pop(req.request_id, None)

        async def on_request(req) -> None:
            which = req.WhichOneof("request")
            if which == "generate":
                self.requests.append(req.generate)
                running[req.generate.request_id] = asyncio.create_task(generate(req.generate))
            elif which == "prewarm":
                self.prewarms += 1
                self.prewarm_requests.append(req.prewarm)
                out.put(llm_pb2.ChatResponse(prewarmed=llm_pb2.PrewarmDone(prompt_tokens=next(ids))))
            elif which == "cancel":
                self.cancels += 1
                task = running.get(req.cancel.request_id)
                if task:
                    task.cancel()

        try:
            async for r in pump(request_iterator, on_request, out, context):
                yield r
        finally:
            for task in running.values():
                task.cancel()


class FakeTts(tts_pb2_grpc.TextToSpeechServicer):
    """Speaks each clause as a tone: 60 ms per character, 100 ms chunks, marks per clause."""

    RATE = 16000
    voices = ("fake-voice",)

    def __init__(self, ms_per_char: float = 60.0) -> None:
        self.ms_per_char = ms_per_char
        self.cancels = 0
        self.configs: list[tts_pb2.SynthesisConfig] = []

    async def ListVoices(self, request, context):
        return audio_pb2.ListModelsResponse(models=[audio_pb2.ModelInfo(name=v, engine="fake") for v in self.voices])

    async def StreamingSynthesize(self, request_iterator, context):
        config = await read_config(request_iterator, context)
        self.configs.append(config)
        spec = AudioSpec.from_proto(config.output_format) if config.HasField("output_format") else AudioSpec(1, 16000)
        out: Outbox = Outbox()
        st = {"uid": 1, "text": "", "spoken": 0, "offset": 0.0}

        def speak(upto: int) -> None:
            span = st["text"][st["spoken"]:upto]
            if not span.strip():
                st["spoken"] = upto
                return
            dur = len(span) * self.ms_per_char
            n = int(self.RATE * dur / 1000)
            tone = (0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / self.RATE)).astype(np.float32)
            enc = AudioOut(self.RATE, spec)
            mark = audio_pb2.SpeechMark(text_start=st["spoken"], text_end=upto, text=span,
                                        audio_offset_ms=int(st["offset"]), audio_duration_ms=int(dur))
            step = int(self.RATE * 0.1)
            for i in range(0, n, step):
                data = enc.feed(tone[i : i + step])
                offset = int(st["offset"] + 1000 * i / self.RATE)
                out.put(tts_pb2.SynthesizeResponse(audio=tts_pb2.SynthesizedAudio(
                    data=data, utterance_id=st["uid"], mark=mark, audio_offset_ms=offset)))
            st["offset"] += dur
            st["spoken"] = upto

        def close_utterance(cancelled: bool) -> None:
            out.put(tts_pb2.SynthesizeResponse(done=tts_pb2.SynthesisDone(
                utterance_id=st["uid"], cancelled=cancelled, audio_ms=int(st["offset"]), spoken_chars=st["spoken"])))
            st.update(uid=st["uid"] + 1, text="", spoken=0, offset=0.0)

        async def on_request(req) -> None:
            which = req.WhichOneof("request")
            if which == "text":
                st["text"] += req.text
                cut = max(st["text"].rfind(p) for p in ",.!?")
                if cut + 1 > st["spoken"]:
                    speak(cut + 1)
            elif req.control.action == tts_pb2.TtsControl.ACTION_FLUSH:
                speak(len(st["text"]))
                close_utterance(False)
            elif req.control.action == tts_pb2.TtsControl.ACTION_CANCEL:
                self.cancels += 1
                close_utterance(True)

        async for r in pump(request_iterator, on_request, out, context):
            yield r


class FakeRuntime(ServiceRuntime):
    def __init__(self, name: str, servicer, add: Callable, service: str) -> None:
        self.name = name  # type: ignore[misc]
        self._servicer, self._add, self._service = servicer, add, service

    def service_names(self) -> list[str]:
        return [self._service]

    def register(self, server: grpc.aio.Server) -> None:
        self._add(self._servicer, server)


def stt_runtime(fake: FakeStt) -> FakeRuntime:
    return FakeRuntime("stt", fake, stt_pb2_grpc.add_SpeechToTextServicer_to_server, "voxgrid.v1.SpeechToText")


def llm_runtime(fake: FakeLlm) -> FakeRuntime:
    return FakeRuntime("llm", fake, llm_pb2_grpc.add_LanguageModelServicer_to_server, "voxgrid.v1.LanguageModel")


def tts_runtime(fake: FakeTts) -> FakeRuntime:
    return FakeRuntime("tts", fake, tts_pb2_grpc.add_TextToSpeechServicer_to_server, "voxgrid.v1.TextToSpeech")


def tool_call(name: str, **args) -> audio_pb2.ToolCall:
    return audio_pb2.ToolCall(id=f"call-{name}", name=name, arguments_json=json.dumps(args))


def backend_settings(**kw) -> ServerSettings:
    kw.setdefault("port", 0)
    return ServerSettings(**kw)


async def collect(responses: AsyncIterator, until: Callable[[object], bool], timeout_s: float = 20.0) -> list:
    got = []

    async def run() -> None:
        async for r in responses:
            got.append(r)
            if until(r):
                return

    await asyncio.wait_for(run(), timeout_s)
    return got


async def serve_fakes(script_words: str = "what is the weather like today", ports: tuple[int, int, int] = (0, 0, 0),
                      ready=None) -> None:
    """Serve zero-latency STT, LLM and TTS fakes until cancelled (the orchestration-overhead benchmark)."""
    import contextlib

    from voxgrid.server.chassis import start_server

    stt = FakeStt([], when_script_ends=script_words)
    fakes = [stt_runtime(stt), llm_runtime(FakeLlm()), tts_runtime(FakeTts())]
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(start_server(rt, backend_settings(port=p, max_sessions=10000)))
                   for rt, p in zip(fakes, ports, strict=True)]
        if ready is not None:
            ready([s.address for s in servers])
        await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(serve_fakes(ports=tuple(int(p) for p in sys.argv[1:4]),
                            ready=lambda addrs: print(" ".join(addrs), flush=True)))


class FakeDuplex(duplex_pb2_grpc.DuplexServicer):
    """Answers every 80 ms of caller audio with 80 ms of its own (the caller's, inverted) and a word."""

    async def Converse(self, request_iterator, context):
        config = await read_config(request_iterator, context)
        spec = AudioSpec.from_proto(config.input_format)
        frame = spec.bytes_for_ms(80)
        out: Outbox = Outbox()
        buf = bytearray()
        n = itertools.count()

        async def on_request(req) -> None:
            if req.WhichOneof("request") == "control":
                out.close()
                return
            buf.extend(req.audio)
            while len(buf) >= frame:
                chunk = bytes(buf[:frame])
                del buf[:frame]
                i = next(n)
                x = decode(chunk, spec)
                out.put(duplex_pb2.DuplexResponse(audio=duplex_pb2.DuplexAudio(
                    data=encode(-x, spec), text=f"w{i} ", frame_index=i, audio_offset_ms=80 * i)))

        async for r in pump(request_iterator, on_request, out, context):
            yield r


def duplex_runtime(fake: FakeDuplex) -> FakeRuntime:
    return FakeRuntime("duplex", fake, duplex_pb2_grpc.add_DuplexServicer_to_server, "voxgrid.v1.Duplex")
