"""The transport floor: an echo replica on the real chassis, N streams of 20 ms frames in real time.

Every stage of voxgrid adds at least this much per message; orchestration overhead is judged against it.
Prints per-frame round-trip p50/p99 and the server's CPU use at 1, 100 and 400 concurrent streams.
    python benchmarks/bench_chassis.py [--streams 1,100,400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ServiceProcess, cpu_seconds, pct, table
from voxgrid.client import channel
from voxgrid.v1 import echo_pb2, echo_pb2_grpc

FRAME = bytes(640)  # 20 ms of 16 kHz PCM16


async def one_stream(stub: echo_pb2_grpc.EchoStub, seconds: float, rtts: list[float], start_at: float) -> None:
    sent: dict[int, float] = {}
    n_frames = int(seconds / 0.02)

    async def requests():
        yield echo_pb2.EchoRequest(config=echo_pb2.EchoConfig(session_id="bench"))
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        for i in range(n_frames):
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            sent[i + 1] = time.perf_counter()
            yield echo_pb2.EchoRequest(frame=FRAME)

    async for resp in stub.Stream(requests()):
        rtts.append(1000 * (time.perf_counter() - sent[resp.sequence]))


async def run(streams: list[int], seconds: float) -> None:
    rows = []
    async with ServiceProcess("echo", {"VOXGRID_ECHO_MAX_SESSIONS": "10000"}) as server:
        for n in streams:
            async with channel(server.target) as ch:
                stub = echo_pb2_grpc.EchoStub(ch)
                rtts: list[float] = []
                start_at = time.monotonic() + 0.5
                # Spread stream starts over one frame so frames don't all arrive in the same instant.
                cpu0, wall0 = cpu_seconds(server.proc.pid), time.monotonic()
                await asyncio.gather(*(one_stream(stub, seconds, rtts, start_at + 0.02 * i / n) for i in range(n)))
                cpu = (cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - wall0)
                rows.append([n, len(rtts), pct(rtts, 50), pct(rtts, 99), f"{100 * cpu:.0f}%"])
    print(f"\nchassis echo, 20 ms frames in real time for {seconds:.0f} s (client and server on this machine)")
    print(table(["streams", "frames", "rtt p50 ms", "rtt p99 ms", "server CPU (one core = 100%)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default="1,100,400")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    asyncio.run(run([int(s) for s in args.streams.split(",")], args.seconds))


if __name__ == "__main__":
    main()
