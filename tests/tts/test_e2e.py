"""The TTS service end to end over loopback gRPC with the real Piper voice, checked by listening to it."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest
from voxgrid.services.tts.app import TtsRuntime
from voxgrid.services.tts.settings import TtsSettings

from tests.tts.conftest import (
    PIPER_SPEC,
    Action,
    TtsServer,
    control,
    speak,
    text_msg,
    tokens,
    transcribe,
    wer,
)
from voxgrid.audio import MULAW, AudioSpec
from voxgrid.client import channel
from voxgrid.errors import parse_error
from voxgrid.server.chassis import start_server
from voxgrid.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

pytestmark = [pytest.mark.e2e]

SENTENCES = [
    "The weather today is sunny, with a light breeze from the west.",
    "Your appointment with Dr. Smith is at 3:30 pm on Friday.",
    "The total comes to $12.50, and the receipt is in your email.",
]
LONG_TEXT = " ".join(
    f"This is sentence number {i} of a long answer that the caller will never hear to the end." for i in range(40)
)


@pytest.mark.slow
async def test_speech_is_intelligible_when_text_streams_token_by_token(tts: TtsServer, whisper) -> None:
    heard = []
    for sentence in SENTENCES:
        utt = await speak(tts.stub, tokens(sentence))
        assert utt.done is not None and not utt.done.cancelled and utt.done.time_to_first_audio_ms > 0
        heard.append(transcribe(whisper, utt.audio(PIPER_SPEC), 22050))
    # one WER over all sentences: tiny.en writes "3:30 pm" back in its own ways
    assert wer(" ".join(SENTENCES), " ".join(heard)) <= 0.15, heard


@pytest.mark.slow
async def test_token_by_token_gives_the_same_words_as_whole_text(tts: TtsServer, whisper) -> None:
    text = SENTENCES[0] + " " + SENTENCES[2]
    whole = await speak(tts.stub, [text])
    streamed = await speak(tts.stub, tokens(text, 3))
    spans = lambda u: sorted({(c.mark.text_start, c.mark.text_end) for c in u.chunks})  # noqa: E731
    assert spans(whole) == spans(streamed)  # the same clauses went to the engine
    heard_whole = transcribe(whisper, whole.audio(PIPER_SPEC), 22050)
    heard_streamed = transcribe(whisper, streamed.audio(PIPER_SPEC), 22050)
    assert wer(heard_whole, heard_streamed) <= 0.1, (heard_whole, heard_streamed)


async def test_marks_cover_the_text_in_order_and_offsets_increase(tts: TtsServer) -> None:
    text = "Hello there! **Good news**: your order shipped 🙂. It arrives on Monday, before noon."
    utt = await speak(tts.stub, tokens(text), pace_s=0.005)
    assert utt.done is not None
    offsets = [c.audio_offset_ms for c in utt.chunks]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    total_ms = 0.0
    for c in utt.chunks:
        assert abs(c.audio_offset_ms - total_ms) <= 1.0
        total_ms += PIPER_SPEC.duration_ms(len(c.data))
        assert text[c.mark.text_start : c.mark.text_end] == c.mark.text  # marks index the original text
        assert c.mark.audio_offset_ms <= c.audio_offset_ms
    assert abs(utt.done.audio_ms - total_ms) <= 1.0
    spans = []
    for c in utt.chunks:
        if not spans or spans[-1] != (c.mark.text_start, c.mark.text_end):
            spans.append((c.mark.text_start, c.mark.text_end))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    covered = "".join(text[s:e] for s, e in spans)
    assert covered.replace(" ", "") == text.replace(" ", "")
    assert utt.done.spoken_chars == len(text)
    assert max(PIPER_SPEC.duration_ms(len(c.data)) for c in utt.chunks) <= 200


async def test_cancel_stops_audio_and_the_stream_goes_on(tts: TtsServer) -> None:
    queue: asyncio.Queue[tts_pb2.SynthesizeRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(session_id="cancel-test"))
        while (r := await queue.get()) is not None:
            yield r

    call = tts.stub.StreamingSynthesize(requests())
    queue.put_nowait(text_msg(LONG_TEXT))
    queue.put_nowait(control(Action.ACTION_FLUSH))
    received_ms = 0.0
    cancelled_at = None
    done = None
    async for r in call:
        if r.HasField("audio"):
            received_ms += PIPER_SPEC.duration_ms(len(r.audio.data))
            if cancelled_at is None:
                cancelled_at = received_ms
                queue.put_nowait(control(Action.ACTION_CANCEL))
        else:
            done = r.done
            break
    assert done is not None and done.cancelled and done.utterance_id == 1
    assert abs(done.audio_ms - received_ms) <= 1.0  # done reports exactly what was sent
    assert 0 < done.spoken_chars < len(LONG_TEXT) / 4  # queued text was dropped
    assert received_ms < 20_000  # 40 sentences would be minutes of audio
    # the same stream speaks the next utterance
    queue.put_nowait(text_msg("Sure, what else?"))
    queue.put_nowait(control(Action.ACTION_END))
    chunks, done2 = 0, None
    async for r in call:
        if r.HasField("audio"):
            assert r.audio.utterance_id == 2
            chunks += 1
        else:
            done2 = r.done
    assert chunks > 0 and done2 is not None and not done2.cancelled and done2.utterance_id == 2


async def test_cancel_stops_within_one_chunk(piper_engine) -> None:
    """At the stream level, with the real engine: after cancel no more than one chunk goes out."""
    from voxgrid.services.tts.scheduler import SynthesisScheduler
    from voxgrid.services.tts.stream import AudioEvent, DoneEvent, SpeechStream, StreamOptions

    scheduler = SynthesisScheduler(piper_engine, threads=1)
    scheduler.start()
    try:
        stream = SpeechStream(scheduler, piper_engine.voices()[0], 1.0, PIPER_SPEC, StreamOptions())
        stream.add_text(LONG_TEXT)
        stream.flush()
        after_cancel = 0
        cancelled = False
        async for event in stream.events():
            if isinstance(event, AudioEvent):
                if cancelled:
                    after_cancel += 1
                elif event.audio_offset_ms >= 1000:
                    stream.cancel()
                    cancelled = True
            else:
                assert isinstance(event, DoneEvent) and event.cancelled
                stream.end()
        assert cancelled and after_cancel <= 1
    finally:
        scheduler.stop()
    assert scheduler.queued == 0


async def test_client_gone_mid_synthesis_stops_the_work(piper_engine) -> None:
    settings = TtsSettings(port=0, worker_threads=1, lookahead_spans=2)
    runtime = TtsRuntime(settings, engine=piper_engine)
    async with start_server(runtime, settings) as srv:
        async with channel(srv.address) as ch:
            stub = tts_pb2_grpc.TextToSpeechStub(ch)

            async def requests():  # type: ignore[no-untyped-def]
                yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig())
                yield text_msg(LONG_TEXT)
                yield control(Action.ACTION_FLUSH)
                await asyncio.sleep(30)

            call = stub.StreamingSynthesize(requests())
            async for r in call:
                assert r.HasField("audio")
                break
            call.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # polling: the scheduler has no async hook to wait on
            if not (srv.gate.active or runtime.scheduler.busy or runtime.scheduler.queued):
                break
            await asyncio.sleep(0.05)
        assert srv.gate.active == 0
        assert runtime.scheduler.busy == 0 and runtime.scheduler.queued == 0
        jobs = runtime.scheduler.jobs_run
        await asyncio.sleep(0.5)
        assert runtime.scheduler.jobs_run == jobs  # nothing more is synthesised
        assert jobs <= settings.lookahead_spans + 2  # 40 sentences were never all sent to the engine


async def test_huge_text_streams_in_order_with_bounded_work_ahead(tts: TtsServer) -> None:
    queue: asyncio.Queue[tts_pb2.SynthesizeRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig())
        while (r := await queue.get()) is not None:
            yield r

    huge = LONG_TEXT * 50  # about 180k characters in one message
    call = tts.stub.StreamingSynthesize(requests())
    queue.put_nowait(text_msg(huge))
    queue.put_nowait(control(Action.ACTION_FLUSH))
    last_start, n = -1, 0
    async for r in call:
        if r.HasField("audio"):
            assert r.audio.mark.text_start >= last_start
            assert huge[r.audio.mark.text_start : r.audio.mark.text_end] == r.audio.mark.text
            last_start = r.audio.mark.text_start
            n += 1
            assert tts.runtime.scheduler.queued <= tts.runtime.settings.lookahead_spans
            if n == 60:
                queue.put_nowait(control(Action.ACTION_CANCEL))
        else:
            assert r.done.cancelled
            break
    queue.put_nowait(None)
    assert last_start > 0


@pytest.mark.slow
async def test_mulaw_8k_for_phones_is_intelligible(tts: TtsServer, whisper) -> None:
    spec = AudioSpec(MULAW, 8000)
    cfg = tts_pb2.SynthesisConfig(output_format=spec.to_proto(), speed=1.2)
    normal = await speak(tts.stub, [SENTENCES[0]])
    utt = await speak(tts.stub, tokens(SENTENCES[0]), cfg)
    assert utt.done is not None
    assert sum(len(c.data) for c in utt.chunks) == pytest.approx(8 * utt.done.audio_ms, abs=8)
    assert utt.done.audio_ms < normal.done.audio_ms  # faster speech is shorter
    heard = transcribe(whisper, utt.audio(spec), 8000)
    assert wer(SENTENCES[0], heard) <= 0.2, heard


async def test_list_voices_and_an_extra_voice_by_path(piper_engine, tmp_path) -> None:
    from voxgrid.services.tts.engines.piper_engine import PiperEngine, packaged_voice_path

    src = packaged_voice_path()
    assert src is not None
    (tmp_path / "test-voice.onnx").symlink_to(src)
    (tmp_path / "test-voice.onnx.json").symlink_to(f"{src}.json")
    settings = TtsSettings(port=0, extra_voices=str(tmp_path / "test-voice.onnx"), onnx_threads=1)
    runtime = TtsRuntime(settings, engine=PiperEngine(settings.extra_voice_paths(), threads=1))
    async with start_server(runtime, settings) as srv, channel(srv.address) as ch:
        stub = tts_pb2_grpc.TextToSpeechStub(ch)
        voices = await stub.ListVoices(audio_pb2.ListModelsRequest())
        names = [m.name for m in voices.models]
        assert names == ["en_US-joe-medium", "test-voice"]
        assert all(m.engine == "piper" and m.sample_rate_hz == 22050 for m in voices.models)
        utt = await speak(stub, ["Hello from the second voice."], tts_pb2.SynthesisConfig(voice="test-voice"))
        assert utt.done is not None and utt.done.audio_ms > 500


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (tts_pb2.SynthesisConfig(voice="nobody"), "en_US-joe-medium"),
        (tts_pb2.SynthesisConfig(speed=3.0), "[0.5, 2.0]"),
        (tts_pb2.SynthesisConfig(output_format=audio_pb2.AudioFormat(
            encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=11025)), "sample_rate_hz"),
        (tts_pb2.SynthesisConfig(first_chunk_max_chars=5000), "first_chunk_max_chars"),
    ],
)
async def test_bad_configs_are_invalid_argument(tts: TtsServer, config, needle: str) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield tts_pb2.SynthesizeRequest(config=config)
        await asyncio.sleep(10)  # the server answers the config alone

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tts.stub.StreamingSynthesize(requests()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    typed = parse_error(err.value)  # the BadRequest names the config field
    assert typed.reason == "INVALID_CONFIG" and len(typed.fields) == 1 and typed.fields[0].startswith("config.")
    assert typed.fields[0].removeprefix("config.") in ("voice", "speed", "output_format", "first_chunk_max_chars")


async def test_text_before_config_is_invalid_argument(tts: TtsServer) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield text_msg("Hello.")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tts.stub.StreamingSynthesize(requests()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_empty_and_unspeakable_text_and_idle_cancel_end_gracefully(tts: TtsServer) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig())
        yield control(Action.ACTION_FLUSH)  # empty utterance
        yield text_msg("** 🙂🎉 **")
        yield control(Action.ACTION_FLUSH)  # nothing speakable
        yield control(Action.ACTION_CANCEL)  # nothing in flight
        yield text_msg("")
        yield control(Action.ACTION_END)

    dones, audio = [], 0
    async for r in tts.stub.StreamingSynthesize(requests()):
        if r.HasField("audio"):
            audio += 1
        else:
            dones.append(r.done)
    assert audio == 0
    assert [(d.utterance_id, d.cancelled, d.audio_ms) for d in dones] == [(1, False, 0), (2, False, 0), (3, True, 0)]


async def test_voxgrid_speak_writes_a_wav_and_reports_first_audio(tts: TtsServer, tmp_path, capsys) -> None:
    import json as _json

    from voxgrid.services.tts.cli import add_commands

    from voxgrid.audio import read_wav

    parser = __import__("argparse").ArgumentParser()
    add_commands(parser.add_subparsers())
    out = tmp_path / "hi.wav"
    args = parser.parse_args(["speak", "Hello, this is voxgrid.", "--target", tts.server.address, "-o", str(out),
                              "--rate", "16000", "--stream-chars", "4", "--json"])
    assert await args.func(args) == 0
    result = _json.loads(capsys.readouterr().out)
    audio, rate = read_wav(out)
    assert rate == 16000 and abs(len(audio) / rate * 1000 - result["audio_ms"]) < 5
    assert 0 < result["client_time_to_first_audio_ms"] < result["total_ms"]
    args = parser.parse_args(["speak", "x", "--target", tts.server.address, "--voice", "nobody"])
    assert await args.func(args) == 1
    assert "en_US-joe-medium" in capsys.readouterr().err
