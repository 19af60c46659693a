"""The duplex service over real loopback gRPC with the small random-weight Moshi on CPU."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

pytest.importorskip("moshi", reason="duplex tests need the moshi venv (deploy/duplex-env.sh)")

from voxgrid.services.duplex.app import DuplexRuntime, Settings

from tests.duplex.conftest import caller_audio
from voxgrid.audio import MULAW, PCM16, AudioSpec, StreamResampler, decode, encode
from voxgrid.client import channel
from voxgrid.errors import parse_error
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import audio_pb2, duplex_pb2, duplex_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
IN_16K = AudioSpec(PCM16, 16000)
CHUNK_MS = 20


@contextlib.asynccontextmanager
async def duplex_server(**kw: object) -> AsyncIterator[tuple[ServiceServer, duplex_pb2_grpc.DuplexStub]]:
    settings = Settings(port=0, metrics_port=0, **kw)  # type: ignore[arg-type]
    async with start_server(DuplexRuntime(settings), settings) as srv, channel(srv.address) as ch:
        yield srv, duplex_pb2_grpc.DuplexStub(ch)


def config(spec: AudioSpec = IN_16K, out: AudioSpec | None = None, **kw: object) -> duplex_pb2.DuplexRequest:
    fields: dict[str, object] = {"text_temperature": 0.0, "audio_temperature": 0.0, "seed": 1, **kw}
    cfg = duplex_pb2.DuplexConfig(input_format=spec.to_proto(), **fields)  # type: ignore[arg-type]
    if out is not None:
        cfg.output_format.CopyFrom(out.to_proto())
    return duplex_pb2.DuplexRequest(config=cfg)


def wire_audio(seed: int, n_frames: int, spec: AudioSpec = IN_16K) -> list[bytes]:
    """Caller audio (made at 24 kHz) in the wire format, cut into 20 ms messages."""
    x = StreamResampler(24000, spec.sample_rate_hz).process(caller_audio(seed, n_frames), last=True)
    data = encode(x, spec)
    step = spec.bytes_for_ms(CHUNK_MS)
    return [data[i : i + step] for i in range(0, len(data), step)]


async def converse(stub: duplex_pb2_grpc.DuplexStub, chunks: list[bytes], first: duplex_pb2.DuplexRequest
                   | None = None) -> list[duplex_pb2.DuplexAudio]:
    async def requests() -> AsyncIterator[duplex_pb2.DuplexRequest]:
        yield first or config()
        for c in chunks:
            yield duplex_pb2.DuplexRequest(audio=c)
        yield duplex_pb2.DuplexRequest(control=duplex_pb2.DuplexControl(action=duplex_pb2.DuplexControl.ACTION_END))

    return [r.audio async for r in stub.Converse(requests())]


async def status_of(call: grpc.aio.StreamStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    return err.value


async def test_audio_streams_both_ways_with_timing_text_and_metrics() -> None:
    async with duplex_server(slots=2) as (srv, stub):
        out_spec = AudioSpec(MULAW, 8000)
        frames = await converse(stub, wire_audio(0, 12), config(out=out_spec))
        assert len(frames) == 12  # one answer per 80 ms model frame of input
        assert [f.frame_index for f in frames] == list(range(12))
        assert [f.audio_offset_ms for f in frames] == [80 * i for i in range(12)]
        assert all(f.step_ms > 0 for f in frames)
        speech = decode(b"".join(f.data for f in frames), out_spec)
        assert abs(len(speech) - 12 * 640) <= 640  # 8 kHz mu-law back, about 12 x 80 ms
        assert np.sqrt(np.mean(speech[2 * 640 :] ** 2)) > 0.01  # the model speaks once out of its delay
        # random weights have no tokenizer: text carries bracketed token ids
        assert any(f.text.startswith("[") for f in frames)

        models = await stub.ListModels(audio_pb2.ListModelsRequest())
        assert models.models[0].name == "random-small"
        assert models.models[0].sample_rate_hz == 24000
        assert models.models[0].properties["random_weights"] == "true"

        assert srv.metrics_url is not None
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(srv.metrics_url).read().decode())
        for name in ("voxgrid_duplex_step_seconds", "voxgrid_duplex_real_time_factor",
                     "voxgrid_duplex_frames_late", "voxgrid_duplex_slots_capacity"):
            assert name in text


async def test_concurrent_streams_get_what_each_gets_alone() -> None:
    async with duplex_server(slots=2) as (_, stub):
        a, b = wire_audio(1, 8), wire_audio(2, 8)
        alone_a = await converse(stub, a)
        alone_b = await converse(stub, b)
        both_a, both_b = await asyncio.gather(converse(stub, a), converse(stub, b))
        assert [f.text for f in both_a] == [f.text for f in alone_a]
        assert [f.text for f in both_b] == [f.text for f in alone_b]
        assert b"".join(f.data for f in both_a) == b"".join(f.data for f in alone_a)
        assert [f.text for f in alone_a] != [f.text for f in alone_b]


async def test_bad_input_gets_invalid_argument_with_a_useful_message() -> None:
    async with duplex_server(slots=2) as (_, stub):
        async def one(*msgs: duplex_pb2.DuplexRequest) -> grpc.aio.AioRpcError:
            async def requests() -> AsyncIterator[duplex_pb2.DuplexRequest]:
                for m in msgs:
                    yield m
            return await status_of(stub.Converse(requests()))

        bad_rate = duplex_pb2.DuplexRequest(config=duplex_pb2.DuplexConfig(
            input_format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=44100)))
        err = await one(bad_rate)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "44100" in err.details()

        err = await one(config(), duplex_pb2.DuplexRequest(audio=b"\x00\x01\x02"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "whole number" in err.details()

        err = await one(duplex_pb2.DuplexRequest(audio=b"\x00\x00"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "config" in err.details()

        err = await one(config(text_temperature=5.0))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "text_temperature" in err.details()

        # neighbours of bad streams are unaffected
        assert len(await converse(stub, wire_audio(0, 3))) == 3


async def test_full_replica_refuses_then_a_disconnect_frees_and_resets_the_slot() -> None:
    async with duplex_server(slots=1) as (srv, stub):
        audio = wire_audio(3, 6)
        fresh = await converse(stub, audio)

        queue: asyncio.Queue[duplex_pb2.DuplexRequest] = asyncio.Queue()

        async def live() -> AsyncIterator[duplex_pb2.DuplexRequest]:
            while True:
                yield await queue.get()

        queue.put_nowait(config())
        for c in wire_audio(4, 6):
            queue.put_nowait(duplex_pb2.DuplexRequest(audio=c))
        first = stub.Converse(live())
        assert (await first.read()).audio.frame_index == 0

        async def config_only() -> AsyncIterator[duplex_pb2.DuplexRequest]:
            yield config()
            await asyncio.sleep(5)

        err = await status_of(stub.Converse(config_only()))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        typed = parse_error(err)  # RetryInfo, and the deprecated trailer beside it for one release
        assert typed.reason == "REPLICA_FULL" and typed.retry_after_s == 1.0
        assert dict(err.trailing_metadata())["retry-after-ms"] == "1000"

        first.cancel()  # the client goes away mid-conversation
        runtime = srv.runtime
        assert isinstance(runtime, DuplexRuntime)
        for _ in range(400):  # the server notices the cancel asynchronously
            if runtime.scheduler.active_slots() == 0:
                break
            await asyncio.sleep(0.05)
        assert runtime.scheduler.active_slots() == 0
        again = await converse(stub, audio)  # same audio as `fresh`: nothing of the old session leaks
        assert [f.text for f in again] == [f.text for f in fresh]


async def test_stalled_client_is_fed_silence_then_ended_with_deadline_exceeded() -> None:
    async with duplex_server(slots=1, stall_timeout_s=0.6) as (_, stub):
        async def stall() -> AsyncIterator[duplex_pb2.DuplexRequest]:
            yield config()
            for c in wire_audio(5, 2):
                yield duplex_pb2.DuplexRequest(audio=c)
            await asyncio.sleep(30)  # connected but silent

        call = stub.Converse(stall())
        frames = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for r in call:
                frames.append(r.audio)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no audio" in err.value.details()
        assert frames and frames[-1].frames_late > 0  # the batch never waited for it
