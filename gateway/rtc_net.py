"""What a WebRTC offer must carry, and which addresses ICE may use: checks before any peer is built.

An offer is checked as text first so a bad one costs nothing and gets an HTTP 4xx that says what to send:
it needs an audio section that sends (the microphone) and offers Opus, the one codec the gateway takes.

ICE host addresses are a gateway setting, not a test patch. aioice gathers host candidates from a
module-level `get_host_addresses` that skips 127.0.0.1, so a gateway confined to loopback (tests, a
sidecar) could never be reached. `gather_on(addresses)` installs a wrapper once and scopes the choice with
a context variable: gathering runs inside the task that negotiates (setLocalDescription), so one process
can hold a loopback gateway and differently configured peers side by side. When every allowed address is
loopback, remote candidates on other addresses are dropped from the offer: they could never pair.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

_HOSTS: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("voxgrid_ice_hosts", default=None)
_installed = False


class OfferError(ValueError):
    """An SDP offer the gateway cannot take; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OfferAudio:
    """What the offer's audio section says (enough to refuse early and to log)."""

    codecs: tuple[str, ...]
    sends: bool
    has_data_channel: bool


def parse_addresses(value: str) -> tuple[str, ...]:
    """The `webrtc_ice_addresses` setting: comma-separated IPs; empty = every address the machine has."""
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"webrtc_ice_addresses: {part!r} is not an IP address (e.g. 127.0.0.1 or "
                             "10.0.0.5,fd00::5; empty = all of the machine's addresses)") from None
    return tuple(out)


def _install() -> None:
    global _installed
    if _installed:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _HOSTS.get()
        if chosen is None:
            return original(use_ipv4, use_ipv6)
        return [a for a in chosen if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    aioice.ice.get_host_addresses = host_addresses
    _installed = True


@contextlib.contextmanager
def gather_on(addresses: tuple[str, ...]) -> Iterator[None]:
    """ICE gathering inside this block offers host candidates on `addresses` only (empty: aioice's choice)."""
    _install()
    token = _HOSTS.set(addresses or None)
    try:
        yield
    finally:
        _HOSTS.reset(token)


def loopback_only(addresses: tuple[str, ...]) -> bool:
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def keep_reachable_candidates(sdp: str, addresses: tuple[str, ...]) -> str:
    """Drop remote `a=candidate` lines a loopback-only gateway cannot pair with (other lines untouched)."""
    if not loopback_only(addresses):
        return sdp
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            try:
                if len(fields) < 5 or not ipaddress.ip_address(fields[4]).is_loopback:
                    continue
            except ValueError:  # an mDNS name (xxxx.local) is never loopback
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def check_offer(sdp: str) -> OfferAudio:
    """Refuse an offer without a sending audio section or without Opus; say what to send instead."""
    if not sdp.startswith("v=0"):
        raise OfferError(400, "the body is not an SDP offer (it must start with v=0): POST the offer of "
                         "RTCPeerConnection.createOffer() as application/sdp")
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    audio = [s for s in sections if s[0].startswith("m=audio ") and s[0].split()[1] != "0"]
    data = any(s[0].startswith("m=application ") for s in sections)
    if not audio:
        raise OfferError(400, "the offer has no audio section: add the microphone track "
                         "(pc.addTrack(micTrack)) before createOffer()")
    codecs: list[str] = []
    sends = False
    for section in audio:
        direction = next((x[2:] for x in section if x in ("a=sendrecv", "a=sendonly", "a=recvonly",
                                                          "a=inactive")), "sendrecv")
        sends = sends or direction in ("sendrecv", "sendonly")
        codecs += [x.split(" ", 1)[1].strip() for x in section if x.startswith("a=rtpmap:") and " " in x]
    if not sends:
        raise OfferError(400, "the offer's audio does not send (recvonly/inactive): the agent needs the caller's "
                         "microphone, offer the audio track as sendrecv")
    if not any(c.lower().startswith("opus/48000") for c in codecs):
        raise OfferError(415, f"the offer's audio codecs ({', '.join(codecs) or 'none'}) do not include Opus: "
                         "this gateway takes opus/48000/2 (every browser offers it)")
    return OfferAudio(tuple(codecs), sends, data)
