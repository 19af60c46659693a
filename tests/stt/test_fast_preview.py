"""The fast preview: a cheap decode early in each pause, ahead of the accurate final.

Pure parts (the endpointer's PREVIEW event, whisper's short-window loop trimmed) and the real STT service
with tiny.en over loopback gRPC: the preview comes before the final and says the same words for a plain
sentence; a caller who resumes after a previewed pause gets KIND_SPEECH_RESUMED and one final.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from voxgrid.orchestrator.turn_taking import same_words
from voxgrid.services.stt.client import StreamResult, audio_chunks, recognize
from voxgrid.services.stt.endpointing import Endpointer, EndpointingOptions, Kind
from voxgrid.services.stt.engines.base import DecodeRequest
from voxgrid.services.stt.engines.faster_whisper import unloop
from voxgrid.services.stt.scheduler import BatchStats, DecodeScheduler
from voxgrid.services.stt.vad import WINDOW

from tests.stt.conftest import at_16k
from tests.stt.turn_corpus import RATE, paused_utterance
from voxgrid.audio import pcm16_spec
from voxgrid.client import channel
from voxgrid.speech import FliteMissing, synthesize
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

SPEC = pcm16_spec(RATE)
Ev = stt_pb2.SpeechEvent
FAST = EndpointingOptions(min_silence_ms=300, min_speech_ms=150, speculative_final_ms=100, fast_preview=True,
                          preview_ms=32)


def events(probs: list[float], opts: EndpointingOptions = FAST) -> list[tuple[Kind, int]]:
    return [(e.kind, e.sample // WINDOW) for e in Endpointer(opts).push(probs)]


def test_the_preview_comes_at_the_first_silent_window_before_the_speculative_final() -> None:
    assert events([0.9] * 10 + [0.0] * 12) == [(Kind.STARTED, 0), (Kind.PREVIEW, 10), (Kind.SILENCE, 10),
                                               (Kind.ENDED, 10)]


def test_speech_after_a_preview_alone_is_a_resumption() -> None:
    # 2 silent windows (64 ms): the preview went out, the speculative final (100 ms) did not start yet.
    assert events([0.9] * 10 + [0.0] * 2 + [0.9] * 5) == [(Kind.STARTED, 0), (Kind.PREVIEW, 10),
                                                          (Kind.RESUMED, 12)]


def test_without_fast_preview_there_is_no_preview_event() -> None:
    opts = EndpointingOptions(min_silence_ms=300, min_speech_ms=150, speculative_final_ms=100)
    assert Kind.PREVIEW not in [k for k, _ in events([0.9] * 10 + [0.0] * 12, opts)]


def test_unloop_keeps_one_pass_of_a_transcript_whisper_read_again() -> None:
    assert unloop("What is 2 plus 2? What is 2 plus 2? What is") == "What is 2 plus 2?"
    assert unloop("Tell me a joke, tell me a joke Tell me a joke Tell") == "Tell me a joke,"
    assert unloop("What is the capital of France?") == "What is the capital of France?"
    assert unloop("bye bye") == "bye bye"  # too short to call a loop
    assert unloop("") == ""


def spoken(text: str, folder) -> np.ndarray:
    try:
        x, rate = synthesize(text, folder / (text[:30].replace(" ", "_") + ".wav"))
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")
    return at_16k(x, rate)


async def stream(address: str, endpointing: stt_pb2.EndpointingConfig, audio: np.ndarray) -> StreamResult:
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), audio, np.zeros(RATE, np.float32)])
    config = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), endpointing=endpointing, interim_results=True)
    async with channel(address) as ch:
        return await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config, audio_chunks(audio, SPEC))


def kinds(result: StreamResult) -> list[str]:
    out = []
    for item in result.received:
        r = item.response
        if r.HasField("speech_event"):
            out.append(Ev.Kind.Name(r.speech_event.kind))
        elif r.transcript.speculative:
            out.append("preview")
        elif r.transcript.is_final:
            out.append("final")
    return out


@pytest.mark.e2e
@pytest.mark.slow
async def test_the_fast_preview_comes_before_the_final_with_its_words(stt_server, tmp_path) -> None:
    address, _ = stt_server
    result = await stream(address, stt_pb2.EndpointingConfig(fast_preview=True, preview_ms=32),
                          spoken("What is the capital of France?", tmp_path))
    seen = kinds(result)
    assert seen.count("preview") == 1 and seen.count("final") == 1
    assert seen.index("preview") < seen.index("final")
    preview = next(i.response.transcript for i in result.received if i.response.transcript.speculative)
    final = next(i.response.transcript for i in result.received if i.response.transcript.is_final)
    assert "capital of france" in final.text.lower()
    assert same_words(preview.text, final.text)
    assert final.words  # the final is still the accurate decode, with word timings


@pytest.mark.e2e
@pytest.mark.slow
async def test_a_caller_who_resumes_after_a_previewed_pause_gets_one_final(stt_server, tmp_path) -> None:
    address, _ = stt_server
    try:
        u = paused_utterance("What is the capital of", "France?", "slt", 0.8, tmp_path)
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")
    # The pause (0.8 s) is shorter than min_silence_ms: the preview goes out in it, then speech resumes.
    result = await stream(address, stt_pb2.EndpointingConfig(fast_preview=True, preview_ms=32,
                                                             min_silence_ms=1200), u.paused)
    seen = kinds(result)
    assert seen.count("final") == 1 and "capital of france" in result.text.lower()
    assert seen.count("KIND_SPEECH_ENDED") == 1
    first = seen.index("preview")
    assert seen[first + 1:].index("KIND_SPEECH_RESUMED") < seen[first + 1:].index("final")


@pytest.mark.e2e
async def test_a_preview_delay_out_of_range_is_refused(stt_server) -> None:
    address, _ = stt_server
    config = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), endpointing=stt_pb2.EndpointingConfig(
        fast_preview=True, preview_ms=6000))
    async with channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config, [], realtime=False)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preview_ms" in err.value.details()


@pytest.mark.slow
def test_previews_run_before_finals_greedy_on_a_short_window_without_word_timings(stt_engine, hello_speech) -> None:
    samples, rate = hello_speech
    audio = at_16k(samples, rate)
    batches: list[BatchStats] = []
    sched = DecodeScheduler(stt_engine, on_batch=batches.append)
    final = sched.submit("a", DecodeRequest(audio, final=True))  # queued first, before the worker runs
    preview = sched.submit("a", DecodeRequest(audio, preview=True))
    sched.start()
    try:
        final_hyp, preview_hyp = final.future.result(timeout=60), preview.future.result(timeout=60)
    finally:
        sched.stop()
    assert [(b.size, b.finals) for b in batches] == [(1, 0), (1, 1)]  # the preview went first
    assert stt_engine.window_frames(len(audio), preview=True) < stt_engine.window_frames(len(audio), final=True)
    assert same_words(preview_hyp.text, final_hyp.text) and "table" in preview_hyp.text.lower()
    assert final_hyp.words and not preview_hyp.words
