"""Gateway settings: where the orchestrators are, the WebSocket limits, and which profile a call gets."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voxgrid.config import ServerSettings


class Settings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="VOXGRID_GATEWAY_", extra="forbid")

    port: int = Field(8080, ge=0, le=65535, description="HTTP + WebSocket port (page, /phone, /ws, /healthz, "
                      "/readyz, /metrics); 0 picks a free one.")
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Extra Prometheus /metrics port (the main port always serves /metrics); "
        "-1 disables it.")
    max_sessions: int = Field(
        100, ge=1, description="Concurrent calls (browser and phone together); the next socket is closed with "
        "code 1013 and a reason.")
    max_message_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest WebSocket message accepted, bytes; a bigger one closes the "
        "socket with code 1009.")
    orchestrator_backends: str = Field(
        "127.0.0.1:50051", description="Orchestrator replicas: `static:host:port,...`, `dns:NAME:PORT` (every "
        "address of a headless Service) or `k8s:NAMESPACE/SERVICE:PORT`; each call goes to the least-loaded one.")
    orchestrator_token: str = Field("", description="Bearer token the gateway presents to the orchestrators.")
    connect_timeout_s: float = Field(5.0, gt=0, description="How long opening an orchestrator session may take.")
    dns_refresh_s: float = Field(5.0, gt=0, description="How often dns: orchestrator backends are re-resolved.")
    idle_timeout_s: float = Field(
        15.0, gt=0, description="A socket that sends nothing for this long is closed (a live call streams audio "
        "every 20 ms).")
    profile_routes: str = Field(
        "", description="Which orchestrator profile a call gets, as JSON {\"key\": \"profile name\"}: the key "
        "is what the call carries (/phone/<key>, the stream's customParameters.profile, the page's ?profile=), "
        "e.g. {\"+15550100\": \"support\"}; a key without a route is the profile name itself. The profiles "
        "themselves live on the orchestrator (its profiles_file).")
    default_profile: str = Field(
        "", description="Profile (or route key) of a call that names none; empty = the orchestrator's default.")
    webrtc_ice_addresses: str = Field(
        "", description="Host addresses the WebRTC endpoint (/webrtc) gathers ICE candidates on, comma-separated "
        "IPs or interface names (eth0); empty = every address of the machine (not loopback). 127.0.0.1 keeps "
        "calls on loopback (tests, a sidecar proxy): remote candidates elsewhere are then ignored.")
    webrtc_udp_port_min: int = Field(
        0, ge=0, le=65535, description="Lowest UDP port of WebRTC media/ICE sockets (one per call and ICE "
        "address); with webrtc_udp_port_max a range a firewall or UDP Service can open; 0 and 0 = any port.")
    webrtc_udp_port_max: int = Field(
        0, ge=0, le=65535, description="Highest UDP port of WebRTC media/ICE sockets (see webrtc_udp_port_min).")
    webrtc_public_ip: str = Field(
        "", description="Address advertised in place of the host candidates' (1:1 NAT, like nat1to1ips): the "
        "LoadBalancer's or node's external IP that forwards the same UDP ports to this gateway; empty = none.")
    webrtc_ice_servers: str = Field(
        "", description="STUN/TURN servers of the gateway's WebRTC peers, comma-separated: at most one "
        "stun:host[:port] and one turn:host[:port][?transport=udp|tcp] or turns:host[:port]; empty = none "
        "(host candidates only: enough when callers can reach the gateway's UDP ports).")
    webrtc_client_ice_servers: str = Field(
        "", description="STUN/TURN servers the talk page's browsers use (GET /webrtc/ice-servers), comma-separated "
        "stun:/turn:/turns: URLs, any number; TURN ones get webrtc_turn_username and the credential. Empty = "
        "the same as webrtc_ice_servers; set it when browsers must use other servers than the gateway (e.g. its "
        "STUN is cluster-internal).")
    webrtc_turn_username: str = Field(
        "", description="TURN username (with a turn: or turns: server and a static credential); with "
        "webrtc_turn_shared_secret_file an optional label that starts each minted user id.")
    webrtc_turn_credential: str = Field(
        "", description="TURN credential (password); prefer webrtc_turn_credential_file.")
    webrtc_turn_credential_file: Path | None = Field(
        None, description="File whose first line is the TURN credential (a mounted Secret); re-read on change.")
    webrtc_turn_shared_secret_file: Path | None = Field(
        None, description="File whose first line is the TURN server's shared secret (coturn use-auth-secret / "
        "static-auth-secret; a mounted Secret, re-read on change): every GET /webrtc/ice-servers reply and each "
        "of the gateway's own peers then gets a short-lived username `<expiry>:<id>` and credential "
        "base64(HMAC-SHA1(secret, username)) instead of one static credential (set neither "
        "webrtc_turn_credential nor its file with it).")
    webrtc_turn_credential_ttl_s: float = Field(
        3600.0, ge=60, description="How long a credential minted from webrtc_turn_shared_secret_file is valid, "
        "seconds (its expiry is in the username; the TURN server refuses it afterwards).")
    webrtc_connect_timeout_s: float = Field(
        10.0, gt=0, description="A WebRTC call whose ICE/DTLS has not connected this long after the answer is "
        "dropped and its ports freed.")
