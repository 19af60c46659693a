"""The server chassis over real loopback gRPC: health, reflection, metrics, auth, limits, drain."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from voxgrid.client import channel, health_status
from voxgrid.processes import free_port
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.server.echo import EchoRuntime, Settings
from voxgrid.v1 import echo_pb2, echo_pb2_grpc

pytestmark = pytest.mark.e2e
ECHO = "voxgrid.v1.Echo"


def settings(**kw) -> Settings:
    return Settings(port=0, metrics_port=0, **kw)


class Conversation:
    """An open echo stream driven step by step, like a live session."""

    def __init__(self, ch: grpc.aio.Channel, session_id: str = "s") -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.queue.put_nowait(echo_pb2.EchoRequest(config=echo_pb2.EchoConfig(session_id=session_id)))
        self.call = echo_pb2_grpc.EchoStub(ch).Stream(self._requests())

    async def _requests(self):
        while (item := await self.queue.get()) is not None:
            yield item

    async def roundtrip(self, payload: bytes) -> echo_pb2.EchoResponse:
        self.queue.put_nowait(echo_pb2.EchoRequest(frame=payload))
        return await asyncio.wait_for(self.call.read(), 5)

    async def close(self) -> grpc.StatusCode:
        self.queue.put_nowait(None)
        await self.call.wait_for_connection()
        return await self.call.code()


async def refusal(ch: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """Open a stream (config only, then half-close) that the server is expected to refuse."""

    async def config_only():
        yield echo_pb2.EchoRequest(config=echo_pb2.EchoConfig(session_id="refused"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        [r async for r in echo_pb2_grpc.EchoStub(ch).Stream(config_only())]
    return err.value


class SlowLoadingEcho(EchoRuntime):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()


async def test_health_is_not_serving_while_loading_and_draining() -> None:
    runtime = SlowLoadingEcho()
    server = ServiceServer(runtime, settings())
    await server.start()
    ch = channel(server.address)
    try:
        assert await health_status(ch) == "NOT_SERVING"
        assert await health_status(ch, ECHO) == "NOT_SERVING"
        runtime.release.set()
        await server.wait_ready()
        assert await health_status(ch) == "SERVING"
        assert await health_status(ch, ECHO) == "SERVING"
        live = Conversation(ch)
        await live.roundtrip(b"x")
        drain = asyncio.create_task(server.drain(grace_s=10))
        await asyncio.sleep(0.2)
        assert await health_status(ch) == "NOT_SERVING"
        await live.close()
        await asyncio.wait_for(drain, 5)
    finally:
        await ch.close()
        await server.stop()


async def test_reflection_lists_the_service_and_describes_it() -> None:
    async with start_server(EchoRuntime(), settings()) as srv:
        async with channel(srv.address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=ECHO)

            replies = [r async for r in stub.ServerReflectionInfo(ask())]
            names = {s.name for s in replies[0].list_services_response.service}
            assert {ECHO, "grpc.health.v1.Health"} <= names
            assert replies[1].file_descriptor_response.file_descriptor_proto


async def test_metrics_endpoint_is_valid_prometheus_text_with_session_counts() -> None:
    async with start_server(EchoRuntime(), settings(max_sessions=7)) as srv:
        async with channel(srv.address) as ch:
            live = Conversation(ch)
            await live.roundtrip(b"x")
            text = await asyncio.to_thread(_fetch, srv.metrics_url)
            families = {f.name: f for f in text_string_to_metric_families(text)}
            active = [s.value for s in families["voxgrid_echo_active_sessions"].samples]
            capacity = [s.value for s in families["voxgrid_echo_session_capacity"].samples]
            assert active == [1.0] and capacity == [7.0]
            await live.close()


def _fetch(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


async def test_auth_requires_a_known_bearer_token_but_not_for_health(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# rotated by the operator\nfile-token\n")
    async with start_server(EchoRuntime(), settings(auth_tokens="env-token", auth_token_file=token_file)) as srv:
        async with channel(srv.address) as anonymous:
            assert await health_status(anonymous) == "SERVING"  # kubelet probes carry no token
            err = await refusal(anonymous)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in err.details()
        async with channel(srv.address, token="wrong") as wrong:
            assert (await refusal(wrong)).code() == grpc.StatusCode.UNAUTHENTICATED
        for token in ("env-token", "file-token"):
            async with channel(srv.address, token=token) as ok:
                assert (await Conversation(ok).roundtrip(b"x")).frame == b"x"
        # A rotated Secret takes effect without a restart.
        time.sleep(0.01)
        token_file.write_text("new-token\n")
        os.utime(token_file, (time.time() + 5, time.time() + 5))
        async with channel(srv.address, token="new-token") as ok:
            assert (await Conversation(ok).roundtrip(b"y")).frame == b"y"
        async with channel(srv.address, token="file-token") as old:
            assert (await refusal(old)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_session_limit_refuses_with_retry_info_and_neighbours_keep_working() -> None:
    async with start_server(EchoRuntime(), settings(max_sessions=2)) as srv:
        async with channel(srv.address) as ch:
            a, b = Conversation(ch, "a"), Conversation(ch, "b")
            await a.roundtrip(b"1")
            await b.roundtrip(b"1")
            err = await refusal(ch)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "full (2/2 streams)" in err.details()
            assert dict(err.trailing_metadata())["retry-after-ms"] == "1000"
            assert (await a.roundtrip(b"2")).sequence == 2
            assert await a.close() == grpc.StatusCode.OK
            # A freed place is usable again.
            d = Conversation(ch, "d")
            assert (await d.roundtrip(b"1")).frame == b"1"
            assert (await b.roundtrip(b"3")).sequence == 2


async def test_bad_streams_get_invalid_argument_and_do_not_disturb_others() -> None:
    async with start_server(EchoRuntime(), settings(max_message_bytes=64 * 1024)) as srv:
        async with channel(srv.address) as ch:
            good = Conversation(ch, "good")
            await good.roundtrip(b"ok")
            stub = echo_pb2_grpc.EchoStub(ch)

            async def frame_first():
                yield echo_pb2.EchoRequest(frame=b"no config")

            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in stub.Stream(frame_first())]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "first message must carry `config`" in err.value.details()

            async def empty():
                return
                yield

            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in stub.Stream(empty())]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            big = Conversation(ch, "big")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await big.roundtrip(b"x" * 100_000)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await good.roundtrip(b"still here")).frame == b"still here"


async def test_draining_lets_live_streams_finish_and_refuses_new_ones() -> None:
    async with start_server(EchoRuntime(), settings()) as srv:
        async with channel(srv.address) as ch:
            live = Conversation(ch, "live")
            await live.roundtrip(b"1")
            drain = asyncio.create_task(srv.drain(grace_s=10))
            await asyncio.sleep(0.1)
            err = await refusal(ch)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in err.details()
            assert (await live.roundtrip(b"2")).sequence == 2
            assert not drain.done()
            assert await live.close() == grpc.StatusCode.OK
            await asyncio.wait_for(drain, 5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_drains_a_real_process_within_the_grace_period() -> None:
    port = _free_port()
    env = {**os.environ, "VOXGRID_ECHO_PORT": str(port), "VOXGRID_ECHO_DRAIN_GRACE_S": "2",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "voxgrid", "serve", "echo"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            for _ in range(100):
                if await health_status(ch, timeout_s=0.5) == "SERVING":
                    break
                await asyncio.sleep(0.1)
            live = Conversation(ch, "live")
            await live.roundtrip(b"1")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert (await live.roundtrip(b"2")).sequence == 2  # still served while draining
            t0 = time.monotonic()
            # The client never ends its stream: the grace period (2 s) ends it.
            code = await asyncio.to_thread(proc.wait, 10)
            assert code == 0
            assert time.monotonic() - t0 < 2 + 3
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "draining: 1 live streams" in stderr


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed (key, certificate) for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return key, cert


async def test_tls_serves_a_client_that_trusts_the_certificate(tls_pair: tuple[Path, Path]) -> None:
    key, cert = tls_pair
    async with start_server(EchoRuntime(), settings(tls_cert_file=cert, tls_key_file=key, auth_tokens="t")) as srv:
        async with channel(f"localhost:{srv.port}", token="t", tls=cert) as ch:
            assert (await Conversation(ch).roundtrip(b"secure")).frame == b"secure"
        async with channel(f"localhost:{srv.port}") as plaintext:
            assert await health_status(plaintext) == "UNAVAILABLE"


async def test_plaintext_health_port_follows_the_tls_server_through_loading_and_draining(
        tls_pair: tuple[Path, Path]) -> None:
    """The kubelet's gRPC probe speaks plaintext only: with TLS on, the health port is what it can reach."""
    key, cert = tls_pair
    runtime = SlowLoadingEcho()
    server = ServiceServer(runtime, settings(tls_cert_file=cert, tls_key_file=key, health_port=free_port()))
    await server.start()
    probe = channel(f"127.0.0.1:{server.health_port}")
    try:
        assert await health_status(probe) == "NOT_SERVING"
        assert await health_status(probe, "voxgrid.liveness") == "SERVING"  # loading is not dead
        runtime.release.set()
        await server.wait_ready()
        assert await health_status(probe) == "SERVING"
        assert await health_status(probe, ECHO) == "SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as err:  # health only: the service itself stays behind TLS
            [r async for r in echo_pb2_grpc.EchoStub(probe).Stream(iter([echo_pb2.EchoRequest()]))]
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with channel(f"127.0.0.1:{server.port}") as plaintext:
            assert await health_status(plaintext) == "UNAVAILABLE"
        async with channel(f"localhost:{server.port}", tls=cert) as secure:
            live = Conversation(secure)
            await live.roundtrip(b"x")
            drain = asyncio.create_task(server.drain(grace_s=10))
            for _ in range(100):
                if await health_status(probe) == "NOT_SERVING":
                    break
                await asyncio.sleep(0.05)
            assert await health_status(probe) == "NOT_SERVING"
            assert await health_status(probe, "voxgrid.liveness") == "SERVING"  # nor is draining
            await live.close()
            await asyncio.wait_for(drain, 5)
        assert await health_status(probe, timeout_s=0.5) == "UNAVAILABLE", "the health port closes with the server"
    finally:
        await probe.close()
        await server.stop()
