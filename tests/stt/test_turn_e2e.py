"""Semantic end of turn over loopback gRPC: the real STT service, the real smart-turn v3 model, flite speech.

The same sentence is sent whole and with a pause mid-sentence ("I need to change my ... flight to Boston
on Friday."); fixed silence (300 ms) ends the turn at the pause, semantic mode does not.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from voxgrid.services.stt.app import SttRuntime
from voxgrid.services.stt.client import StreamResult, audio_chunks, recognize
from voxgrid.services.stt.settings import SttSettings

from tests.stt.conftest import word_error_rate
from tests.stt.turn_corpus import RATE, PausedUtterance, paused_utterance
from voxgrid.audio import pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.speech import FliteMissing
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
Kind = stt_pb2.SpeechEvent
SPEC = pcm16_spec(RATE)
SEMANTIC = stt_pb2.EndpointingConfig(mode=stt_pb2.ENDPOINT_MODE_SEMANTIC, turn_min_wait_ms=200,
                                     turn_max_wait_ms=1500)
FIXED = stt_pb2.EndpointingConfig(mode=stt_pb2.ENDPOINT_MODE_FIXED_SILENCE, min_silence_ms=300)


@pytest.fixture(scope="module")
def flight(tmp_path_factory: pytest.TempPathFactory) -> PausedUtterance:
    try:
        return paused_utterance("I need to change my", "flight to Boston on Friday.", "slt", 0.5,
                                tmp_path_factory.mktemp("turn"))
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")


async def run(address: str, endpointing: stt_pb2.EndpointingConfig, audio: np.ndarray) -> StreamResult:
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), audio, np.zeros(2 * RATE, np.float32)])
    config = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), endpointing=endpointing)
    async with channel(address) as ch:
        # Faster than real time: the server applies each verdict before it reads on, so the outcome is the same.
        return await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config, audio_chunks(audio, SPEC), realtime=False)


async def refused(address: str, endpointing: stt_pb2.EndpointingConfig) -> grpc.aio.AioRpcError:
    """The status a config alone gets (no audio after it: the refusal must not race a client still sending)."""
    config = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), endpointing=endpointing)
    async with channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config, [], realtime=False)
    return err.value


def ended(result: StreamResult) -> list[stt_pb2.SpeechEvent]:
    return [e for e in result.events() if e.kind == Kind.KIND_SPEECH_ENDED]


async def test_complete_question_ends_after_the_short_wait(stt_server, flight: PausedUtterance) -> None:
    address, runtime = stt_server
    result = await run(address, SEMANTIC, flight.complete)
    [end] = ended(result)
    assert end.endpoint_mode == stt_pb2.ENDPOINT_MODE_SEMANTIC
    assert end.end_of_turn_reason == stt_pb2.END_OF_TURN_REASON_COMPLETE
    assert end.HasField("end_of_turn_probability") and end.end_of_turn_probability >= 0.5
    [final] = result.finals()
    assert word_error_rate(flight.text, final.text) <= 0.2, final.text
    assert final.end_of_turn_reason == end.end_of_turn_reason
    assert final.end_of_turn_probability == pytest.approx(end.end_of_turn_probability)
    assert runtime.metrics.turn_inference._sum.get() > 0  # the inference time was recorded


async def test_mid_sentence_pause_ends_the_turn_only_in_fixed_silence_mode(stt_server, flight) -> None:
    address, _ = stt_server
    semantic = await run(address, SEMANTIC, flight.paused)
    [end] = ended(semantic)  # one turn: not ended at the pause
    assert end.audio_offset_ms > (0.5 + flight.pause_at_s + flight.pause_s) * 1000
    [final] = semantic.finals()
    assert word_error_rate(flight.text, final.text) <= 0.3, final.text

    fixed = await run(address, FIXED, flight.paused)
    ends = ended(fixed)
    assert len(ends) == 2 and len(fixed.finals()) == 2  # cut off at the pause
    assert abs(ends[0].audio_offset_ms - (0.5 + flight.pause_at_s) * 1000) < 150
    assert all(e.endpoint_mode == stt_pb2.ENDPOINT_MODE_FIXED_SILENCE for e in ends)
    assert all(e.end_of_turn_reason == stt_pb2.END_OF_TURN_REASON_SILENCE for e in ends)
    assert not any(e.HasField("end_of_turn_probability") for e in ends)


async def test_bad_turn_settings_are_refused(stt_server, stt_engine) -> None:
    address, _ = stt_server
    bad = stt_pb2.EndpointingConfig(mode=stt_pb2.ENDPOINT_MODE_SEMANTIC, turn_min_wait_ms=900, turn_max_wait_ms=500)
    err = await refused(address, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "turn_max_wait_ms" in err.details()

    settings = SttSettings(host="127.0.0.1", port=0, max_sessions=2, turn_model="")
    async with start_server(SttRuntime(settings, engine=stt_engine), settings) as srv:
        await srv.wait_ready()
        err = await refused(srv.address, SEMANTIC)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "VOXGRID_STT_TURN_MODEL" in err.details()


def test_the_model_comes_from_the_wheel_and_matches_its_hash(tmp_path: Path) -> None:
    from voxgrid.services.stt import turn_model

    path = turn_model.resolve_turn_model(turn_model.PACKAGED)
    assert path.is_file() and turn_model._sha256(path) == turn_model.ONNX_SHA256
    with pytest.raises(turn_model.TurnModelUnavailable, match="not a file"):
        turn_model.resolve_turn_model(str(tmp_path / "missing.onnx"))
