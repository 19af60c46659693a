"""What a WebRTC offer must carry, and which addresses ICE may use: checks before any peer is built.

An offer is checked as text first so a bad one costs nothing and gets an HTTP 4xx that says what to send:
it needs an audio section that sends (the microphone) and offers Opus, the one codec the gateway takes.

ICE host addresses are a gateway setting, not a test patch. aioice gathers host candidates from a
module-level `get_host_addresses` that skips 127.0.0.1, so a gateway confined to loopback (tests, a
sidecar) could never be reached. `gather_on(addresses)` installs a wrapper once and scopes the choice with
a context variable: gathering runs inside the task that negotiates (setLocalDescription), so one process
can hold a loopback gateway and differently configured peers side by side. When every allowed address is
loopback, remote candidates on other addresses are dropped from the offer: they could never pair.

On a cluster two more things matter (docs/deploy.md, "WebRTC on a cluster"):
- Ports. A firewall, a NetworkPolicy or a UDP Service can only open a known range, and aioice binds its
  host candidates with `local_addr=(address, 0)` (any port) and has no range option. `gather_on(...,
  ports=(lo, hi))` wraps the running loop's `create_datagram_endpoint` once: a bind to port 0 made while
  the range is in scope (the same context variable) tries the range's ports instead; every other socket of
  the process (TURN client sockets, DNS, mDNS) is untouched.
- The address. Behind a 1:1 NAT (a LoadBalancer, a node's external IP) the pod's own address is useless
  to the caller. `advertise(answer, public_ip)` rewrites the host candidates (and the c= lines) of the
  answer to the public address, as media servers' `nat1to1ips` do; the NAT maps the same port back to the
  socket, so ICE's checks and responses match what the caller was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_HOSTS: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("voxgrid_ice_hosts", default=None)
_PORTS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("voxgrid_ice_ports", default=None)
_installed = False
_WRAPPED = "_voxgrid_udp_port_range"


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


@dataclass(frozen=True)
class IcePolicy:
    """Where the gateway's ICE candidates live: host addresses, UDP port range, and the address it advertises."""

    addresses: tuple[str, ...] = ()
    ports: tuple[int, int] | None = None
    public_ip: str = ""

    @classmethod
    def from_settings(cls, addresses: str, port_min: int, port_max: int, public_ip: str) -> IcePolicy:
        """Parse and check the webrtc_* settings; ValueError names the setting and what to write."""
        return cls(parse_addresses(addresses), parse_port_range(port_min, port_max), parse_public_ip(public_ip))

    @property
    def port_count(self) -> int:
        return 0 if self.ports is None else self.ports[1] - self.ports[0] + 1


def parse_addresses(value: str) -> tuple[str, ...]:
    """The `webrtc_ice_addresses` setting: comma-separated IPs or interface names (eth0: its addresses, IPv6
    link-local left out as aioice does); empty = every address the machine has."""
    out: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_address(part)))
            continue
        except ValueError:
            pass
        interface = _interface_addresses(part)
        if interface is None:
            import ifaddr

            names = ", ".join(a.nice_name for a in ifaddr.get_adapters())
            raise ValueError(f"webrtc_ice_addresses: {part!r} is not an IP address nor an interface of this machine "
                             f"({names}); e.g. 127.0.0.1, 10.0.0.5,fd00::5 or eth0 (empty = all of the machine's "
                             "addresses)")
        if not interface:
            raise ValueError(f"webrtc_ice_addresses: interface {part!r} has no usable address")
        out += [a for a in interface if a not in out]
    return tuple(out)


def _interface_addresses(name: str) -> list[str] | None:
    """The addresses of one network interface (None: no such interface)."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        if name in (adapter.nice_name, adapter.name):
            return [ip.ip if isinstance(ip.ip, str) else ip.ip[0] for ip in adapter.ips
                    if isinstance(ip.ip, str) or ip.ip[2] == 0]
    return None


def parse_port_range(low: int, high: int) -> tuple[int, int] | None:
    """The `webrtc_udp_port_min`/`_max` pair: both 0 = any port (the kernel's choice), else a valid range."""
    if low == 0 and high == 0:
        return None
    if low == 0 or high == 0:
        raise ValueError(f"webrtc_udp_port_min={low} and webrtc_udp_port_max={high}: set both (a range such as "
                         "40000-40099) or neither (any port)")
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"webrtc_udp_port_min={low} > webrtc_udp_port_max={high}: the range is reversed" if low > high
                         else f"webrtc_udp_port_min/max {low}-{high}: use ports between 1024 and 65535")
    return (low, high)


def parse_public_ip(value: str) -> str:
    """The `webrtc_public_ip` setting: the one address callers reach this gateway's UDP ports on; empty = none."""
    value = value.strip()
    if not value:
        return ""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"webrtc_public_ip: {value!r} is not an IP address: give the address callers reach the "
                         "UDP ports on (the LoadBalancer's or the node's external IP), not a host name") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"webrtc_public_ip: {value} cannot be advertised: give the address callers send to")
    return str(ip)


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


def _install_port_range(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap this loop's `create_datagram_endpoint` once: binds to port 0 inside a `gather_on(..., ports=)`
    block take a free port of the range instead (aioice's host candidates, where STUN answers come back too)."""
    if getattr(loop, _WRAPPED, False):
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None,
                                       **kwargs: Any) -> Any:
        ports = _PORTS.get()
        if ports is None or local_addr is None or local_addr[1] != 0:
            return await original(protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs)
        low, high = ports
        span = high - low + 1
        first = random.randrange(span)  # spread calls over the range instead of always probing from the bottom
        for i in range(span):
            try:
                return await original(protocol_factory, local_addr=(local_addr[0], low + (first + i) % span),
                                      remote_addr=remote_addr, **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"every UDP port of {low}-{high} on {local_addr[0]} is taken: widen "
                      "webrtc_udp_port_min/max (one port per call and ICE address) or lower max_sessions")

    try:
        loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign]
        setattr(loop, _WRAPPED, True)
    except AttributeError:  # a loop class without instance attributes (uvloop)
        raise RuntimeError("webrtc_udp_port_min/max need the standard asyncio event loop (this one, "
                           f"{type(loop).__name__}, cannot be wrapped)") from None


@contextlib.contextmanager
def gather_on(addresses: tuple[str, ...], ports: tuple[int, int] | None = None) -> Iterator[None]:
    """ICE gathering inside this block offers host candidates on `addresses` only (empty: aioice's choice),
    bound to ports of `ports` (None: any port)."""
    _install()
    if ports is not None:
        _install_port_range(asyncio.get_running_loop())
    hosts = _HOSTS.set(addresses or None)
    port_token = _PORTS.set(ports)
    try:
        yield
    finally:
        _PORTS.reset(port_token)
        _HOSTS.reset(hosts)


def advertise(sdp: str, public_ip: str) -> str:
    """The answer as the caller must see it behind a 1:1 NAT: host candidates and c= lines of the same IP
    family carry `public_ip` (ports kept: the NAT maps them one to one). Empty public_ip: unchanged."""
    if not public_ip:
        return sdp
    version = ipaddress.ip_address(public_ip).version
    family = f"IP{version}"

    def same_family(address: str) -> bool:
        try:
            return ipaddress.ip_address(address).version == version
        except ValueError:
            return False

    out = []
    for line in sdp.splitlines():
        fields = line.split()
        if line.startswith("a=candidate:") and len(fields) >= 8 and fields[7] == "host" and same_family(fields[4]):
            fields[4] = public_ip
            line = " ".join(fields)
        elif line.startswith("c=IN ") and len(fields) == 3 and fields[1] == family and same_family(fields[2]):
            line = f"c=IN {family} {public_ip}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


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
