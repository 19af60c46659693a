"""STT over loopback gRPC with real speech and the real tiny.en model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from voxgrid.services.stt.client import audio_chunks, recognize

from tests.stt.conftest import ASTERISK_DIR, asterisk_prompts, at_16k, with_silence, word_error_rate
from voxgrid.audio import MULAW, AudioSpec, pcm16_spec, read_wav
from voxgrid.client import channel
from voxgrid.errors import parse_error
from voxgrid.v1 import audio_pb2, stt_pb2, stt_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
Kind = stt_pb2.SpeechEvent


def config(spec: AudioSpec, interim: bool = True, **kw) -> stt_pb2.RecognitionConfig:
    return stt_pb2.RecognitionConfig(format=spec.to_proto(), interim_results=interim, **kw)


async def test_pcm16_realtime_partials_then_final(stt_server, booking_speech) -> None:
    address, _ = stt_server
    samples, rate, text = booking_speech
    audio = with_silence(at_16k(samples, rate), 16000)
    spec = pcm16_spec(16000)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config(spec), audio_chunks(audio, spec))
    kinds = [r.response.WhichOneof("result") for r in result.received]
    events = result.events()
    assert [e.kind for e in events] == [Kind.KIND_SPEECH_STARTED, Kind.KIND_SPEECH_ENDED]
    first_partial = next(i for i, r in enumerate(result.received) if r.response.HasField("transcript"))
    assert kinds[0] == "speech_event" and first_partial > 0  # speech_started precedes any partial
    finals, partials = result.finals(), result.partials()
    assert len(finals) == 1 and len(partials) >= 2
    final_index = next(i for i, r in enumerate(result.received) if r.response.transcript.is_final)
    assert final_index > first_partial  # partials arrive before the final
    ended_index = next(i for i, r in enumerate(result.received)
                       if r.response.speech_event.kind == Kind.KIND_SPEECH_ENDED)
    assert ended_index < final_index
    # The final leaves after the speech ended in the audio the client had sent (real-time pace).
    speech_end_ms = events[1].audio_offset_ms
    assert result.received[final_index].sent_audio_ms >= speech_end_ms
    final = finals[0]
    assert word_error_rate(text, final.text) <= 0.15, final.text
    assert final.stability == 1.0 and final.latency_ms >= 0 and 0 < final.confidence <= 1
    assert final.words and all(w.start_ms <= w.end_ms for w in final.words)
    assert 400 <= final.words[0].start_ms <= final.words[-1].end_ms <= len(audio) / 16  # stream offsets
    # Committed text only grows and every partial's text starts with it.
    committed = ""
    for p in partials:
        assert p.committed_text.startswith(committed) and p.text.startswith(p.committed_text)
        committed = p.committed_text
        assert 0 <= p.stability <= 1
    assert committed  # words were committed along the way


async def test_phone_mulaw_8k_recorded_prompts(stt_server) -> None:
    prompts = asterisk_prompts()
    names = [n for n in ("agent-pass", "auth-incorrect", "vm-intro") if n in prompts]
    if not names:
        pytest.skip("asterisk-core-sounds-en-wav is not installed")
    address, _ = stt_server
    spec = AudioSpec(MULAW, 8000)
    async with channel(address) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)

        async def one(name: str) -> tuple[str, str]:
            samples, rate = read_wav(ASTERISK_DIR / f"{name}.wav")
            assert rate == 8000
            result = await recognize(stub, config(spec, interim=False), audio_chunks(with_silence(samples, rate), spec),
                                     realtime=False)
            assert result.finals(), f"no final for {name}"
            return prompts[name], result.text

        pairs = await asyncio.gather(*(one(n) for n in names))  # concurrent sessions share the scheduler
    refs, hyps = " ".join(p[0] for p in pairs), " ".join(p[1] for p in pairs)
    assert word_error_rate(refs, hyps) <= 0.2, pairs


async def test_two_utterances_are_separated(stt_server, two_utterances) -> None:
    address, _ = stt_server
    samples, rate, texts = two_utterances
    spec = pcm16_spec(rate) if rate in (8000, 16000, 22050, 24000, 48000) else pcm16_spec(16000)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config(spec, interim=False),
                                 audio_chunks(with_silence(samples, rate), spec), realtime=False)
    finals = result.finals()
    assert [f.utterance_id for f in finals] == [1, 2]
    assert finals[0].end_ms < finals[1].start_ms
    for ref, final in zip(texts, finals, strict=True):
        assert word_error_rate(ref, final.text) <= 0.2, final.text


async def test_flush_and_end_control(stt_server, booking_speech) -> None:
    address, _ = stt_server
    samples, rate, _ = booking_speech
    audio = at_16k(samples, rate)  # no trailing silence: only control can finalise it
    spec = pcm16_spec(16000)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config(spec, interim=False),
                                 audio_chunks(audio, spec), realtime=False, end_with_control=True)
    assert len(result.finals()) == 1 and "table" in result.text.lower()
    assert result.events()[-1].kind == Kind.KIND_SPEECH_ENDED


async def test_silence_only_gives_nothing_and_ends(stt_server) -> None:
    address, _ = stt_server
    spec = pcm16_spec(16000)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config(spec),
                                 audio_chunks(np.zeros(16000 * 3, np.float32), spec), realtime=False)
    assert result.received == []


async def test_noise_only_never_fails(stt_server) -> None:
    address, _ = stt_server
    spec = pcm16_spec(16000)
    noise = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.05).astype(np.float32)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config(spec), audio_chunks(noise, spec),
                                 realtime=False)
    started = [e for e in result.events() if e.kind == Kind.KIND_SPEECH_STARTED]
    assert len(result.finals()) == len(started)  # any utterance VAD opened is closed with a final


async def _status_of(address: str, requests: list[stt_pb2.RecognizeRequest]) -> grpc.aio.AioRpcError:
    async with channel(address) as ch:
        call = stt_pb2_grpc.SpeechToTextStub(ch).StreamingRecognize(iter(requests))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    return info.value


@pytest.mark.parametrize(
    ("requests", "needle"),
    [
        ([stt_pb2.RecognizeRequest(audio=b"\0\0")], "first message"),
        ([stt_pb2.RecognizeRequest(config=stt_pb2.RecognitionConfig())], "format"),
        ([stt_pb2.RecognizeRequest(config=stt_pb2.RecognitionConfig(format=audio_pb2.AudioFormat(
            encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=44100)))], "44100"),
        ([stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000))), stt_pb2.RecognizeRequest(audio=b"\0\0\0")],
         "whole number"),
        ([stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000))),
          stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000)))], "once"),
        ([stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000), endpointing=stt_pb2.EndpointingConfig(
            min_silence_ms=10)))], "min_silence_ms"),
        ([stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000), model="large-v9"))], "large-v9"),
        ([stt_pb2.RecognizeRequest(config=config(pcm16_spec(16000))), stt_pb2.RecognizeRequest(
            control=stt_pb2.SttControl())], "ACTION_FLUSH"),
    ],
    ids=["no-config", "no-format", "rate", "half-sample", "second-config", "endpointing-range", "model",
         "empty-control"],
)
async def test_bad_input_is_invalid_argument(stt_server, requests, needle) -> None:
    err = await _status_of(stt_server[0], requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()
    typed = parse_error(err)  # google.rpc details: a reason always, the field where one is at fault
    assert typed.domain == "voxgrid.dev" and typed.reason in ("INVALID_CONFIG", "INVALID_REQUEST")
    if needle in ("min_silence_ms", "large-v9"):
        assert typed.reason == "INVALID_CONFIG"
        assert typed.fields == [{"min_silence_ms": "config.endpointing.min_silence_ms"}.get(needle, "config.model")]


async def test_bad_neighbour_and_disconnect_free_everything(stt_server, booking_speech) -> None:
    address, runtime = stt_server
    samples, rate, text = booking_speech
    spec = pcm16_spec(16000)
    audio = with_silence(at_16k(samples, rate), 16000)
    async with channel(address) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)
        good = asyncio.create_task(recognize(stub, config(spec), audio_chunks(audio, spec)))

        # A client that goes away mid-utterance, while its decodes are queued.
        async def gone() -> None:
            async def reqs():
                yield stt_pb2.RecognizeRequest(config=config(spec, session_id="leaver"))
                for chunk in audio_chunks(at_16k(samples, rate)[: 16000 * 2], spec):
                    yield stt_pb2.RecognizeRequest(audio=chunk)
                await asyncio.sleep(30)

            call = stub.StreamingRecognize(reqs())
            async for _ in call:
                pass

        leaver = asyncio.create_task(gone())
        for _ in range(200):
            if any(k.startswith("leaver/") for k in runtime.servicer.sessions):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        leaving = [s for k, s in runtime.servicer.sessions.items() if k.startswith("leaver/")]
        assert leaving and leaving[0].buffered_samples > 0  # it holds audio mid-utterance
        leaver.cancel()
        bad = await _status_of(address, [stt_pb2.RecognizeRequest(config=config(spec)),
                                         stt_pb2.RecognizeRequest(audio=b"\1")])
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        result = await good
    assert word_error_rate(text, result.text) <= 0.15
    for _ in range(100):
        if not runtime.servicer.sessions:
            break
        await asyncio.sleep(0.05)
    assert runtime.servicer.sessions == {}
    assert runtime.scheduler.queued() == 0


async def test_list_models(stt_server) -> None:
    async with channel(stt_server[0]) as ch:
        response = await stt_pb2_grpc.SpeechToTextStub(ch).ListModels(audio_pb2.ListModelsRequest())
    assert [m.name for m in response.models] == ["tiny.en"]
    assert list(response.models[0].languages) == ["en"] and response.models[0].engine == "faster-whisper"


async def test_long_speech_is_cut_into_bounded_utterances(stt_server, two_utterances) -> None:
    address, runtime = stt_server
    samples, rate, _ = two_utterances
    speech = at_16k(samples, rate)
    speech = np.concatenate([speech[: int(2.6 * 16000)]] * 3)  # ~8 s of speech without a long pause
    spec = pcm16_spec(16000)
    cfg = config(spec, interim=False, endpointing=stt_pb2.EndpointingConfig(max_utterance_ms=2000,
                                                                              min_silence_ms=2000))
    peak = 0

    def watch(_item) -> None:
        nonlocal peak
        peak = max([peak, *(s.buffered_samples for s in runtime.servicer.sessions.values())])

    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), cfg, audio_chunks(with_silence(speech, 16000),
                                 spec), realtime=False, on_response=watch)
    finals = result.finals()
    assert len(finals) >= 3
    assert [f.utterance_id for f in finals] == list(range(1, len(finals) + 1))
    assert all(f.end_ms - f.start_ms <= 2100 for f in finals[:-1])
    assert peak <= 16000 * 4  # the buffer holds one cut utterance plus pre-roll, not the whole stream


async def test_cli_transcribe_json(stt_server, booking_speech, tmp_path, capsys) -> None:
    import argparse
    import json

    from voxgrid.services.stt.cli import transcribe

    from voxgrid.audio import write_wav

    samples, rate, text = booking_speech
    path = tmp_path / "booking.wav"
    write_wav(path, with_silence(samples, rate), rate)
    args = argparse.Namespace(audio_file=str(path), target=stt_server[0], realtime=False, json=True, partials=True,
                              language="", token=None, chunk_ms=20)
    assert await transcribe(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "speech_started"
    final = next(d for d in lines if d["type"] == "final")
    assert word_error_rate(text, final["text"]) <= 0.2 and final["words"] and "latency_ms" in final
