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

A static credential is one password for every browser that passes auth, valid until someone rotates it. With
`webrtc_turn_shared_secret_file` the gateway mints short-lived ones instead, the "TURN REST API" scheme
(draft-uberti-behave-turn-rest) that coturn checks under `use-auth-secret` / `static-auth-secret`: username
`<unix expiry>:<user id>`, credential base64(HMAC-SHA1(secret, username)). The TURN server holds the same
secret, recomputes the credential from the username and refuses it once the expiry has passed, so a
credential copied out of a page is worth `webrtc_turn_credential_ttl_s` of relaying, not forever. Each reply
(and each of the gateway's own peers) gets a fresh random user id, so one caller's relays can be told apart
in the TURN server's logs and quotas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMES = ("stun", "turn", "turns")
log = logging.getLogger("voxgrid.gateway.ice")


class SecretFile:
    """The first line of a mounted Secret, re-read when the file's mtime changes (one stat per use).

    A missing or empty file is refused with the setting's name on the first read (the gateway does not
    start); once one was read, a file being swapped keeps the last good value rather than failing calls.
    The value itself never reaches a log line or an exception."""

    def __init__(self, path: Path, setting: str, what: str) -> None:
        self.path, self.setting, self.what = path, setting, what
        self._value = ""
        self._mtime: float | None = None

    def read(self) -> str:
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return self._value
            text = self.path.read_text().strip()
            if not text:
                raise ValueError(f"{self.setting}: {self.path} is empty: it must hold the {self.what}")
        except (OSError, ValueError) as exc:
            if self._mtime is None:
                if isinstance(exc, ValueError):
                    raise
                raise ValueError(f"{self.setting}: cannot use {self.path}: {exc.strerror}") from None
            log.warning("%s %s unusable (%s): keeping the last one", self.setting, self.path,
                        exc.strerror if isinstance(exc, OSError) else "empty")
            return self._value
        self._value, self._mtime = text.splitlines()[0].strip(), mtime
        return self._value


def rest_api_credential(secret: str, user_id: str, expires_at: int) -> tuple[str, str]:
    """(username, credential) of the TURN REST API as coturn's `use-auth-secret` checks them: the username is
    `<expiry unix seconds>:<user id>` (':' is coturn's default `rest-api-separator`), the credential the
    base64 of HMAC-SHA1 keyed with the shared secret over that username."""
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


class IceServers:
    """The parsed `webrtc_ice_servers` setting and the TURN credential; `configuration()` for each new peer."""

    def __init__(self, urls: str, turn_username: str = "", turn_credential: str = "",
                 turn_credential_file: Path | None = None, client_urls: str = "",
                 turn_shared_secret_file: Path | None = None, turn_credential_ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.urls = parse_urls(urls)
        self.client_urls = parse_urls(client_urls, "webrtc_client_ice_servers", one_of_each=False)
        self.turn_username = turn_username
        self._credential = turn_credential
        self._file = None if turn_credential_file is None else SecretFile(
            turn_credential_file, "webrtc_turn_credential_file", "TURN credential (password)")
        self._shared = None if turn_shared_secret_file is None else SecretFile(
            turn_shared_secret_file, "webrtc_turn_shared_secret_file", "TURN server's shared secret "
            "(coturn static-auth-secret)")
        self.ttl_s = turn_credential_ttl_s
        self._clock = clock
        if self._shared is not None:
            static = "webrtc_turn_credential_file" if turn_credential_file is not None else \
                "webrtc_turn_credential" if turn_credential else ""
            if static:
                raise ValueError(f"webrtc_turn_shared_secret_file and {static} are both set: the shared secret "
                                 "mints a short-lived credential per caller (coturn use-auth-secret), a static "
                                 "credential is one password for all (coturn lt-cred-mech): keep one and unset "
                                 f"{static}")
            if ":" in turn_username:
                raise ValueError(f"webrtc_turn_username {turn_username!r} contains ':', the separator of the TURN "
                                 "REST API's `<expiry>:<user id>` username: choose a label without it")
            if turn_credential_ttl_s < 60:
                raise ValueError(f"webrtc_turn_credential_ttl_s is {turn_credential_ttl_s:g}: give the minted "
                                 "credentials at least 60 s (clock skew, the page's gathering, a call's setup)")
            self._shared.read()  # a missing or empty file is refused at start, not at the first call
        self.has_turn = any(u.startswith("turn") for u in self.urls + self.client_urls)
        if self.has_turn and self._shared is None:
            setting = "webrtc_ice_servers" if any(u.startswith("turn") for u in self.urls) else \
                "webrtc_client_ice_servers"
            if not turn_username:
                raise ValueError(f"{setting} has a TURN server but webrtc_turn_username is empty: TURN "
                                 "servers only relay for known users (set the username and the credential or "
                                 "webrtc_turn_credential_file, or webrtc_turn_shared_secret_file for "
                                 "short-lived credentials)")
            if turn_credential_file is None and not turn_credential:
                raise ValueError(f"{setting} has a TURN server but no credential: set "
                                 "webrtc_turn_credential_file (a mounted Secret) or webrtc_turn_credential, or "
                                 "webrtc_turn_shared_secret_file (coturn use-auth-secret) for short-lived ones")
            if self._file is not None:
                self._file.read()  # a missing or empty file is refused at start, not at the first call

    @property
    def ephemeral(self) -> bool:
        """Whether TURN credentials are minted per use from the shared secret (else one static credential)."""
        return self._shared is not None

    def credential(self) -> str:
        """The static TURN credential: the file's first line when a file is set, re-read when it changed. Once
        one was read, a file being swapped (missing, empty) keeps the last good one rather than failing calls."""
        return self._credential if self._file is None else self._file.read()

    def turn_login(self, role: str) -> tuple[str, str]:
        """(username, credential) for one TURN user: the static pair, or with a shared secret a fresh pair that
        expires `webrtc_turn_credential_ttl_s` from now, its user id `[<username>-]<role>-<random>`; the
        secret file is re-read when it changed, so a rotation reaches the next reply."""
        if self._shared is None:
            return self.turn_username, self.credential()
        user_id = "-".join(p for p in (self.turn_username, role, secrets.token_hex(6)) if p)
        return rest_api_credential(self._shared.read(), user_id, int(self._clock() + self.ttl_s))

    def configuration(self) -> Any:
        """An aiortc RTCConfiguration for one peer connection (no servers: host candidates only)."""
        from aiortc import RTCConfiguration, RTCIceServer

        servers = []
        for url in self.urls:
            if url.startswith("turn"):
                username, credential = self.turn_login("gateway")
                servers.append(RTCIceServer(urls=url, username=username, credential=credential))
            else:
                servers.append(RTCIceServer(urls=url))
        return RTCConfiguration(iceServers=servers)

    def for_browser(self) -> list[dict[str, str]]:
        """The page's `RTCPeerConnection({iceServers})` list (RTCIceServer dictionaries): the client list when
        one is set, else the gateway's own; TURN entries carry the username and the current credential (with a
        shared secret one minted pair for the whole reply: one caller, one TURN user)."""
        out: list[dict[str, str]] = []
        login: tuple[str, str] | None = None
        for url in self.client_urls or self.urls:
            if url.startswith("turn"):
                login = login or self.turn_login("browser")
                out.append({"urls": url, "username": login[0], "credential": login[1]})
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
