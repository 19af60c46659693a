"""voxgrid gateway: browser pages and phone lines reach the agent over WebSockets or WebRTC.

Serves the talk page (`/`), browser calls (`/ws`; WebRTC offers on `POST /webrtc`, hung up with `DELETE
/webrtc/<session>`, the page's STUN/TURN servers from `GET /webrtc/ice-servers`), telephony media streams
(`/phone`, `/phone/<profile>`), `/healthz`, `/readyz` and Prometheus `/metrics` on one HTTP port, and turns
each socket into an orchestrator session routed like any client's (least-loaded replica, failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from voxgrid.gateway.bridge import CallBridge, GatewayContext
from voxgrid.gateway.browser import BrowserCall
from voxgrid.gateway.calls import CLOSE_GOING_AWAY, CallGate, GatewayMetrics
from voxgrid.gateway.ice_servers import IceServers
from voxgrid.gateway.link import orchestrator_pool
from voxgrid.gateway.phone import PhoneCall
from voxgrid.gateway.profiles import ProfileError, ProfileRoutes
from voxgrid.gateway.rtc_net import IcePolicy, OfferError
from voxgrid.gateway.settings import Settings

from voxgrid.config import TokenSource
from voxgrid.server.lifecycle import SignalDrain

__all__ = ["GatewayServer", "Settings", "serve", "start_gateway"]
log = logging.getLogger("voxgrid.gateway")
STATIC = Path(__file__).with_name("static")


class GatewayServer:
    """One gateway replica: the aiohttp app, its calls, and its lifecycle (start, drain, stop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.ctx = GatewayContext(
            pool=orchestrator_pool(settings.orchestrator_backends, settings.orchestrator_token,
                                   settings.connect_timeout_s, settings.dns_refresh_s),
            profiles=ProfileRoutes.from_settings(settings.profile_routes, settings.default_profile),
            gate=CallGate(settings.max_sessions, self.metrics), metrics=self.metrics,
            idle_timeout_s=settings.idle_timeout_s, sockets=set())
        self.ice = IcePolicy.from_settings(settings.webrtc_ice_addresses, settings.webrtc_udp_port_min,
                                           settings.webrtc_udp_port_max, settings.webrtc_public_ip)
        self.ice_servers = IceServers(settings.webrtc_ice_servers, settings.webrtc_turn_username,
                                      settings.webrtc_turn_credential, settings.webrtc_turn_credential_file,
                                      settings.webrtc_client_ice_servers, settings.webrtc_turn_shared_secret_file,
                                      settings.webrtc_turn_credential_ttl_s)
        if self.ice.ports is not None and self.ice.port_count < settings.max_sessions * max(1, len(self.ice.addresses)):
            log.warning("webrtc_udp_port_min/max hold %d ports but %d calls on %s ICE address(es) need one each: "
                        "WebRTC calls beyond that fail ICE", self.ice.port_count, settings.max_sessions,
                        len(self.ice.addresses) or "every")
        self.rtc_calls: dict[str, asyncio.Task[None]] = {}
        self._rtc_hangups: dict[str, Callable[[], None]] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._metrics_httpd = None
        self._tokens = TokenSource(settings)
        self._stopped = asyncio.Event()
        self._ready = False

    # -- HTTP ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.router.add_get("/ws", self._browser)
        app.router.add_get("/phone", self._phone)
        app.router.add_get("/phone/{profile}", self._phone)
        app.router.add_post("/webrtc", self._webrtc_offer)
        app.router.add_get("/webrtc/ice-servers", self._webrtc_ice_servers)
        app.router.add_delete("/webrtc/{session}", self._webrtc_hang_up)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        scheme = "https" if self._tls() else "http"
        return f"{scheme}://{host}:{self.port}"

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if not (s.tls_cert_file and s.tls_key_file):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.tls_cert_file, s.tls_key_file)
        return ctx

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ctx.gate.draining:
            return web.Response(status=503, text="draining\n")
        if not self._ready or not self.ctx.pool.discovery.targets:
            return web.Response(status=503, text="no orchestrator replica known\n")
        return web.Response(text="ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorized(self, request: web.Request) -> bool:
        tokens = self._tokens()
        if not tokens:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else request.query.get("token", "")
        return any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens)

    async def _socket(self, request: web.Request, bridge: type[CallBridge], profile: str) -> web.StreamResponse:
        if not self._authorized(request):
            self.metrics.refused.labels("auth").inc()
            raise web.HTTPUnauthorized(text="missing or wrong token: send Authorization: Bearer <token> or "
                                       "?token=<token>\n")
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_message_bytes, heartbeat=None)
        await ws.prepare(request)
        await bridge(ws, self.ctx, profile).run()
        return ws

    async def _browser(self, request: web.Request) -> web.StreamResponse:
        return await self._socket(request, BrowserCall, request.query.get("profile", ""))

    async def _phone(self, request: web.Request) -> web.StreamResponse:
        profile = request.match_info.get("profile") or request.query.get("profile", "")
        return await self._socket(request, PhoneCall, profile)

    async def _webrtc_offer(self, request: web.Request) -> web.Response:
        """WHIP-style: the SDP offer in, 201 with the SDP answer out; the call then runs on its own task."""
        from voxgrid.gateway.webrtc import WebRTCCall

        if not self._authorized(request):
            self.metrics.refused.labels("auth").inc()
            raise web.HTTPUnauthorized(text="missing or wrong token: send Authorization: Bearer <token> or "
                                       "?token=<token>\n")
        if request.content_type != "application/sdp":
            raise web.HTTPUnsupportedMediaType(text=f"send the SDP offer as Content-Type: application/sdp, not "
                                               f"{request.content_type or 'nothing'}\n")
        if (request.content_length or 0) > self.settings.max_message_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.settings.max_message_bytes,
                                                actual_size=request.content_length or 0)
        refusal = self.ctx.gate.refusal()
        if refusal is not None:
            self.metrics.refused.labels("draining" if self.ctx.gate.draining else "full").inc()
            raise web.HTTPServiceUnavailable(text=refusal[1] + "\n", headers={"Retry-After": "2"})
        offer = await request.text()
        try:
            call, answer = await WebRTCCall.negotiate(
                offer, self.ctx, request.query.get("profile", ""), ice=self.ice, ice_servers=self.ice_servers,
                connect_timeout_s=self.settings.webrtc_connect_timeout_s)
        except OfferError as exc:
            self.metrics.errors.labels(WebRTCCall.kind, "no_port" if exc.status == 503 else "bad_offer").inc()
            return web.Response(status=exc.status, text=f"{exc}\n")
        except ValueError as exc:  # aiortc could not apply it (malformed lines, no DTLS fingerprint, ...)
            self.metrics.errors.labels(WebRTCCall.kind, "bad_offer").inc()
            return web.Response(status=400, text=f"the SDP offer could not be applied: {exc}\n")
        sid = call.session_id
        task = asyncio.create_task(call.run(), name=f"webrtc-{sid}")
        self.rtc_calls[sid] = task
        self._rtc_hangups[sid] = call.hang_up
        task.add_done_callback(lambda _t, s=sid: (self.rtc_calls.pop(s, None), self._rtc_hangups.pop(s, None)))
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/webrtc/{sid}"})

    async def _webrtc_ice_servers(self, request: web.Request) -> web.Response:
        """The STUN/TURN servers the page passes to its RTCPeerConnection, so a browser behind a NAT can relay.
        Same auth as the offer (it carries the TURN credential), never cached, never logged."""
        if not self._authorized(request):
            self.metrics.refused.labels("auth").inc()
            raise web.HTTPUnauthorized(text="missing or wrong token: send Authorization: Bearer <token> or "
                                       "?token=<token>\n")
        return web.json_response({"iceServers": self.ice_servers.for_browser()},
                                 headers={"Cache-Control": "no-store"})

    async def _webrtc_hang_up(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="missing or wrong token\n")
        hang_up = self._rtc_hangups.get(request.match_info["session"])
        if hang_up is None:
            raise web.HTTPNotFound(text="no such WebRTC call (already ended?)\n")
        hang_up()
        return web.Response(status=200, text="hung up\n")

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.ctx.pool.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=self._tls())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self.settings.metrics_port >= 0:
            self._metrics_httpd, _ = start_http_server(self.settings.metrics_port, addr=self.settings.host,
                                                       registry=REGISTRY)
        self._ready = True
        log.info("gateway listening on %s (orchestrators: %s; profile routes: %s)", self.url,
                 self.settings.orchestrator_backends, ", ".join(self.ctx.profiles.keys) or "none")

    async def drain(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let live ones finish within the grace period, then close the rest and stop."""
        if self._stopped.is_set():
            return
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        self.ctx.gate.draining = True
        self.metrics.draining.set(1)
        log.info("gateway draining: %d live calls, grace %.1fs", self.ctx.gate.active, grace)
        if not await self.ctx.gate.wait_idle(grace):
            log.warning("grace period over with %d live calls: closing them", self.ctx.gate.active)
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for ws in list(self.ctx.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_GOING_AWAY, message=b"gateway shutting down: reconnect")
        await self.ctx.gate.wait_idle(2.0)
        for task in list(self.rtc_calls.values()):  # a WebRTC call still negotiating holds no socket yet
            task.cancel()
        await asyncio.gather(*self.rtc_calls.values(), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.ctx.pool.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self.metrics.draining.set(0)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


@contextlib.asynccontextmanager
async def start_gateway(settings: Settings) -> AsyncIterator[GatewayServer]:
    """Run a gateway for the duration of a block (tests, benchmarks)."""
    server = GatewayServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def serve(settings: Settings) -> int:
    """`voxgrid serve gateway`: serve until SIGTERM/SIGINT, then drain; returns the exit code."""
    try:
        server = GatewayServer(settings)
    except (ProfileError, ValueError, OSError) as exc:
        log.error("gateway settings are unusable: %s", exc)
        return 1
    signals = SignalDrain(server)
    try:
        await server.start()
    except OSError as exc:
        log.error("gateway could not start: %s", exc)
        return 1
    await signals.wait()
    return 0
