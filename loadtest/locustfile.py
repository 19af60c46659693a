"""Distributed load with Locust: each Locust user is one simulated caller on Agent.Converse.

For more load than one machine makes: one master aggregates, workers on other machines (or pods) drive
the sessions. Locust runs users as gevent greenlets, so gRPC is the synchronous API made gevent-aware
(`init_gevent` must run before any channel exists). Per-turn voice-to-voice and stage latencies are
reported to Locust as request timings named after the metric; a session that fails is reported with
its gRPC code.

    locust -f loadtest/locustfile.py --master --headless -u 20 -r 2 -t 5m --host 127.0.0.1:50051 \
        --expect-workers 2
    locust -f loadtest/locustfile.py --worker --master-host 127.0.0.1      # on each worker
"""

from __future__ import annotations

import random
import time

import grpc
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from voxgrid.loadtest.agent_driver import LATENCY_FIELDS  # noqa: E402
from voxgrid.loadtest.corpus import FRAME_MS, INPUT_SPEC, load_corpus, silence_frame  # noqa: E402

from voxgrid.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

TE = agent_pb2.TurnEvent


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--turns-per-session", type=int, default=3, help="turns before the caller hangs up")
    parser.add_argument("--max-tokens", type=int, default=40, help="LLM tokens per answer")


class _Caller:
    """The request side of one session: speech when it is time, silence otherwise, at real-time pace."""

    def __init__(self, session_id: str, max_tokens: int) -> None:
        cfg = agent_pb2.SessionConfig(session_id=session_id, input_format=INPUT_SPEC.to_proto())
        cfg.sampling.max_tokens = max_tokens
        self.config = cfg
        self.frames: list[bytes] = []
        self.last_speech_at = 0.0
        self.done = False

    def say(self, frames: list[bytes]) -> None:
        self.frames = list(frames)

    def requests(self):  # type: ignore[no-untyped-def]
        yield agent_pb2.ConverseRequest(config=self.config)
        next_at = time.monotonic()
        silence = silence_frame()
        while not self.done:
            speaking = bool(self.frames)
            yield agent_pb2.ConverseRequest(audio=self.frames.pop(0) if speaking else silence)
            if speaking and not self.frames:
                self.last_speech_at = time.monotonic()
            next_at += FRAME_MS / 1000.0
            gevent.sleep(max(0.0, next_at - time.monotonic()))
        yield agent_pb2.ConverseRequest(control=agent_pb2.AgentControl(action=agent_pb2.AgentControl.ACTION_END))


class VoiceCaller(User):
    wait_time = between(1, 2)
    corpus = None

    def on_start(self) -> None:
        if VoiceCaller.corpus is None:
            VoiceCaller.corpus = load_corpus()
        self.channel = grpc.insecure_channel(self.host)
        self.stub = agent_pb2_grpc.AgentStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _fire(self, name: str, ms: float, exc: Exception | None = None) -> None:
        events.request.fire(request_type="grpc", name=name, response_time=ms, response_length=0, exception=exc,
                            context={})

    @task
    def conversation(self) -> None:
        opts = self.environment.parsed_options
        turns = getattr(opts, "turns_per_session", 3)
        caller = _Caller(f"locust-{id(self)}-{time.time_ns()}", getattr(opts, "max_tokens", 40))
        started = time.monotonic()
        caller.say(random.choice(self.corpus).frames())  # type: ignore[union-attr]
        said = 1
        try:
            for resp in self.stub.Converse(caller.requests(), timeout=turns * 60.0):
                kind = resp.WhichOneof("event")
                if kind == "latency":
                    values = MessageToDict(resp.latency, preserving_proto_field_name=True,
                                           always_print_fields_with_no_presence=True)
                    for f in LATENCY_FIELDS:
                        if f in values and f != "tool_ms":
                            self._fire(f, float(values[f]))
                elif kind == "turn_event" and resp.turn_event.kind in (TE.KIND_AGENT_STOPPED_SPEAKING,
                                                                        TE.KIND_INTERRUPTED):
                    if said >= turns:
                        caller.done = True
                    else:
                        gevent.sleep(random.uniform(1.0, 2.0))  # think time
                        caller.say(random.choice(self.corpus).frames())  # type: ignore[union-attr]
                        said += 1
            self._fire("session", (time.monotonic() - started) * 1000.0)
        except grpc.RpcError as err:
            caller.done = True
            self._fire("session", (time.monotonic() - started) * 1000.0,
                       RuntimeError(f"{err.code().name}: {err.details()}"))  # type: ignore[attr-defined]
