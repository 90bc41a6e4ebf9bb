"""Where the server's WebRTC media listens: the host addresses it gathers on, the UDP ports it binds, its ICE servers.

aiortc exposes none of the first two: aioice gathers on every interface but
loopback and binds any free port. `configure_ice` sets both for the process,
once at start-up, from FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES and _PORT_RANGE:
aioice's address lookup is replaced by the configured list, and aiortc's ICE
transport is given a Connection whose host candidates bind within the range.
aioice 0.13 and aiortc 1.16 are pinned for these internals (pyproject.toml).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections.abc import Iterator
from typing import Any

import aioice.ice
import aiortc.rtcicetransport
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer

from adapters.settings_webrtc import IceServer, PortRange

logger = logging.getLogger(__name__)

_original_host_addresses = aioice.ice.get_host_addresses
_port_range: PortRange | None = None


def configure_ice(host_addresses: tuple[str, ...] | None, port_range: PortRange | None) -> None:
    """Make every peer connection of this process gather on these addresses and bind within these ports (None: aioice's own)."""
    global _port_range
    if host_addresses is None:
        aioice.ice.get_host_addresses = _original_host_addresses
    else:
        configured = list(host_addresses)

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [address for address in configured if (":" in address and use_ipv6) or (":" not in address and use_ipv4)]

        aioice.ice.get_host_addresses = get_host_addresses
    _port_range = port_range
    aiortc.rtcicetransport.Connection = aioice.Connection if port_range is None else RangedConnection  # type: ignore[attr-defined]


def rtc_configuration(servers: tuple[IceServer, ...]) -> RTCConfiguration:
    """The server's own RTCConfiguration: the same STUN and TURN servers the clients are told of."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers])


def _ports(port_range: PortRange) -> Iterator[int]:
    """Every port of the range once, from a random one on, so that concurrent sessions rarely try the same first."""
    count = port_range.high - port_range.low + 1
    first = random.randrange(count)
    for step in range(count):
        yield port_range.low + (first + step) % count


class RangedConnection(aioice.Connection):
    """An aioice Connection whose host candidates bind a UDP port within the configured range.

    Server-reflexive candidates are asked through those same sockets, as
    aioice does; relayed candidates are aioice's own (their socket talks to
    the TURN server only).
    """

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        port_range = _port_range
        if port_range is None:
            return await super().get_component_candidates(component, addresses, timeout)
        loop = asyncio.get_running_loop()
        candidates: list[Candidate] = []
        host_protocols: list[Any] = []
        for address in addresses:
            bound = None
            for port in _ports(port_range):
                try:
                    bound = await loop.create_datagram_endpoint(lambda: aioice.ice.StunProtocol(self), local_addr=(address, port))
                    break
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        continue
                    logger.warning("webrtc_bind_failed address=%s port=%s error=%s", address, port, error)
                    break
            if bound is None:
                logger.warning("webrtc_no_free_port address=%s range=%s", address, port_range)
                continue
            transport, protocol = bound
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            host, port_bound = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=port_bound,
                type="host",
            )
            candidates.append(protocol.local_candidate)
            host_protocols.append(protocol)
        self._protocols += host_protocols
        tasks = []
        if self.stun_server:
            tasks = [
                asyncio.create_task(aioice.ice.server_reflexive_candidate(protocol, self.stun_server))
                for protocol in host_protocols
                if ":" not in protocol.local_candidate.host
            ]
        relayed = await super().get_component_candidates(component, [], timeout) if self.turn_server else []
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            candidates += [task.result()[0] for task in done if task.exception() is None]
            for task in pending:
                task.cancel()
        return candidates + relayed
