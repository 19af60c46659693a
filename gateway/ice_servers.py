"""Which STUN and TURN servers the gateway's WebRTC peers use, with the TURN credential kept current.

A gateway with a public address needs neither: callers' checks reach it and it learns their addresses
from them. STUN gives it a server-reflexive candidate when it sits behind a NAT it does not know the
public side of; TURN relays media when UDP to the gateway's own ports is blocked. aiortc takes one STUN and
one TURN server (it ignores any further ones), so the setting is refused rather than silently cut.

The TURN credential comes from the environment or, better, from a mounted Secret file that is re-read
when it changes (one stat per offer), like the gateway's accepted tokens: a rotated credential reaches new
calls without a restart.

Browsers need their own list (`GET /webrtc/ice-servers`, `for_browser()`): a caller behind a NAT that only a
relay crosses must be given the TURN server too. By default it is the gateway's list; `webrtc_client_ice_servers`
replaces it when browsers should use other servers (the gateway's STUN may be cluster-internal). Browsers
take any number of servers, so that list has no one-of-each limit; its TURN URLs use the same username and
re-read credential, which the page holds in memory and which is never logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

SCHEMES = ("stun", "turn", "turns")
log = logging.getLogger("voxgrid.gateway.ice")


class IceServers:
    """The parsed `webrtc_ice_servers` setting and the TURN credential; `configuration()` for each new peer."""

    def __init__(self, urls: str, turn_username: str = "", turn_credential: str = "",
                 turn_credential_file: Path | None = None, client_urls: str = "") -> None:
        self.urls = parse_urls(urls)
        self.client_urls = parse_urls(client_urls, "webrtc_client_ice_servers", one_of_each=False)
        self.turn_username = turn_username
        self._credential = turn_credential
        self._file = turn_credential_file
        self._mtime: float | None = None
        self.has_turn = any(u.startswith("turn") for u in self.urls + self.client_urls)
        if self.has_turn:
            setting = "webrtc_ice_servers" if any(u.startswith("turn") for u in self.urls) else \
                "webrtc_client_ice_servers"
            if not turn_username:
                raise ValueError(f"{setting} has a TURN server but webrtc_turn_username is empty: TURN "
                                 "servers only relay for known users (set the username and the credential or "
                                 "webrtc_turn_credential_file)")
            if turn_credential_file is None and not turn_credential:
                raise ValueError(f"{setting} has a TURN server but no credential: set "
                                 "webrtc_turn_credential_file (a mounted Secret) or webrtc_turn_credential")
            if turn_credential_file is not None:
                self.credential()  # a missing or empty file is refused at start, not at the first call

    def credential(self) -> str:
        """The TURN credential: the file's first line when a file is set, re-read when it changed. Once one
        was read, a file being swapped (missing, empty) keeps the last good one rather than failing calls."""
        if self._file is None:
            return self._credential
        try:
            mtime = self._file.stat().st_mtime
            if mtime == self._mtime:
                return self._credential
            text = self._file.read_text().strip()
            if not text:
                raise ValueError(f"webrtc_turn_credential_file: {self._file} is empty: it must hold the TURN "
                                 "credential (password)")
        except (OSError, ValueError) as exc:
            if self._mtime is None:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise ValueError(f"webrtc_turn_credential_file: cannot use {self._file}: {reason}") from None
            log.warning("TURN credential file %s unusable (%s): keeping the last one", self._file, exc)
            return self._credential
        self._credential, self._mtime = text.splitlines()[0].strip(), mtime
        return self._credential

    def configuration(self) -> Any:
        """An aiortc RTCConfiguration for one peer connection (no servers: host candidates only)."""
        from aiortc import RTCConfiguration, RTCIceServer

        servers = []
        for url in self.urls:
            if url.startswith("turn"):
                servers.append(RTCIceServer(urls=url, username=self.turn_username, credential=self.credential()))
            else:
                servers.append(RTCIceServer(urls=url))
        return RTCConfiguration(iceServers=servers)

    def for_browser(self) -> list[dict[str, str]]:
        """The page's `RTCPeerConnection({iceServers})` list (RTCIceServer dictionaries): the client list when
        one is set, else the gateway's own; TURN entries carry the username and the current credential."""
        out: list[dict[str, str]] = []
        for url in self.client_urls or self.urls:
            if url.startswith("turn"):
                out.append({"urls": url, "username": self.turn_username, "credential": self.credential()})
            else:
                out.append({"urls": url})
        return out


def parse_urls(value: str, setting: str = "webrtc_ice_servers", *, one_of_each: bool = True) -> tuple[str, ...]:
    """Comma-separated `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`, `turns:host[:port]`;
    with `one_of_each` (the gateway's own list) at most one STUN and one TURN server, all aiortc uses.
    Each is refused with the setting's name and what to write instead."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if not urls:
        return ()  # no servers: a gateway without aiortc (no WebRTC) starts too
    from aiortc.rtcicetransport import parse_stun_turn_uri

    kinds: dict[str, str] = {}
    for url in urls:
        scheme = url.split(":", 1)[0]
        if scheme not in SCHEMES:
            raise ValueError(f"{setting}: {url!r} is not a stun:, turn: or turns: URL (e.g. "
                             "stun:stun.example.com:3478 or turn:turn.example.com:3478?transport=udp)")
        try:
            parsed = parse_stun_turn_uri(url)
        except ValueError as exc:
            raise ValueError(f"{setting}: {url!r} is malformed ({exc}): write scheme:host[:port], "
                             "with ?transport=udp|tcp on turn: URLs only") from None
        if parsed["scheme"] == "turn" and parsed["transport"] not in ("udp", "tcp"):
            raise ValueError(f"{setting}: {url!r}: a turn: URL's transport is udp or tcp")
        if parsed["scheme"] == "turns" and parsed["transport"] != "tcp":
            raise ValueError(f"{setting}: {url!r}: turns: (TURN over TLS) runs over tcp only")
        kind = "STUN" if scheme == "stun" else "TURN"
        if one_of_each and kind in kinds:
            raise ValueError(f"{setting}: {kinds[kind]!r} and {url!r} are both {kind} servers, but the "
                             f"gateway's WebRTC stack (aiortc) uses one {kind} server: keep one")
        kinds[kind] = url
    return urls
