"""Scenario (d): bad clients mixed into the load. Good callers run alone first (baseline), then again with
bad clients beside them: a wrong audio format, garbage bytes that are not a protobuf, audio that is not a
whole number of samples, callers that hang up mid-turn, and callers that never stop talking. Each bad
client's ending status is counted; the good callers must see no errors and similar latency.

    python -m voxgrid.loadtest.scenarios.bad_clients --sessions 2 --duration 40
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter, defaultdict

import grpc
from voxgrid.loadtest.corpus import INPUT_SPEC, load_corpus
from voxgrid.loadtest.mic import PacedMic
from voxgrid.loadtest.runner import run_load
from voxgrid.loadtest.scenarios.common import corpus, latency_row, latency_table, load_config, parser
from voxgrid.loadtest.scenarios.stack import Stack

from voxgrid.client import channel
from voxgrid.tables import table
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

CONVERSE = "/voxgrid.v1.Agent/Converse"


def _config(rate: int = INPUT_SPEC.sample_rate_hz) -> agent_pb2.ConverseRequest:
    fmt = INPUT_SPEC.to_proto()
    fmt.sample_rate_hz = rate
    return agent_pb2.ConverseRequest(config=agent_pb2.SessionConfig(session_id="bad", input_format=fmt))


async def _finish(call: grpc.aio.StreamStreamCall, timeout_s: float = 10.0) -> str:
    try:
        async def drain() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass
        await asyncio.wait_for(drain(), timeout_s)
        return (await call.code()).name
    except grpc.aio.AioRpcError as err:
        return err.code().name
    except TimeoutError:
        call.cancel()
        return "NO_ANSWER (client gave up)"


async def wrong_format(ch: grpc.aio.Channel) -> str:
    call = agent_pb2_grpc.AgentStub(ch).Converse()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(_config(rate=12345))
    return await _finish(call)


async def odd_audio(ch: grpc.aio.Channel) -> str:
    call = agent_pb2_grpc.AgentStub(ch).Converse()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(_config())
        await call.write(agent_pb2.ConverseRequest(audio=b"\x01\x02\x03"))
    return await _finish(call)


async def garbage_bytes(ch: grpc.aio.Channel) -> str:
    raw = ch.stream_stream(CONVERSE, request_serializer=None, response_deserializer=None)
    call = raw()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.write(b"\xff\xfe" + os.urandom(200))
    return await _finish(call)


async def hang_up_mid_turn(ch: grpc.aio.Channel, utterance) -> str:  # type: ignore[no-untyped-def]
    call = agent_pb2_grpc.AgentStub(ch).Converse()
    await call.write(_config())
    mic = PacedMic(lambda f: call.write(agent_pb2.ConverseRequest(audio=f)))
    mic.say(utterance)
    task = asyncio.create_task(mic.run())
    await asyncio.sleep(utterance.duration_ms / 2000.0)  # half the question, then the line drops
    call.cancel()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return "CANCELLED (by client)"


async def never_stops_talking(ch: grpc.aio.Channel, corpus_, until: float) -> str:  # type: ignore[no-untyped-def]
    call = agent_pb2_grpc.AgentStub(ch).Converse()
    await call.write(_config())
    mic = PacedMic(lambda f: call.write(agent_pb2.ConverseRequest(audio=f)))
    task = asyncio.create_task(mic.run())
    try:
        i = 0
        while time.monotonic() < until and not task.done():
            await mic.say(corpus_[i % len(corpus_)])  # utterance after utterance, no pause
            i += 1
        if task.done():
            task.result()
        return "still open at end of run"
    except grpc.aio.AioRpcError as err:
        return err.code().name
    finally:
        call.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def bad_load(target: str, until: float) -> dict[str, Counter[str]]:
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    utterances = load_corpus()
    async with channel(target) as ch:
        async def loop(name: str, make) -> None:  # type: ignore[no-untyped-def]
            while time.monotonic() < until:
                seen[name][await make()] += 1
                await asyncio.sleep(0.5)

        await asyncio.gather(
            loop("wrong audio format", lambda: wrong_format(ch)),
            loop("garbage bytes (not protobuf)", lambda: garbage_bytes(ch)),
            loop("half a sample of audio", lambda: odd_audio(ch)),
            loop("hangs up mid-turn", lambda: hang_up_mid_turn(ch, utterances[0])),
            loop("never stops talking", lambda: never_stops_talking(ch, utterances, until)),
        )
    return seen


async def main() -> int:
    p = parser(__doc__, sessions=2, duration=40.0)
    args = p.parse_args()
    async with Stack() as stack:
        target = stack.orchestrator.target
        baseline = await run_load(load_config(target, args), corpus(), progress=None)
        print("baseline done; now with bad clients", flush=True)
        load = asyncio.create_task(run_load(load_config(target, args), corpus(), progress=None))
        seen = await bad_load(target, time.monotonic() + args.duration)
        mixed = await load
    print(table(["bad client", "attempts", "how each ended"],
                [[k, sum(v.values()), ", ".join(f"{c} x{n}" for c, n in v.items())] for k, v in seen.items()]))
    print()
    print(latency_table([latency_row("good callers alone", baseline), latency_row("good callers + bad", mixed)]))
    return 0 if mixed.error_rate() == 0 and mixed.turns else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
