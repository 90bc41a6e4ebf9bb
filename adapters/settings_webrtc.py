"""The WebRTC settings' values and their parsers: ICE servers, the addresses and UDP ports the server gathers on.

They are declared in adapters/settings.py with the other variables; the
parsing lives here, below both settings.py and the transport that reads the
values (adapters/transports/webrtc/), so that neither imports the other and a
bad value stops start-up naming its variable and what is accepted.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, NamedTuple

from adapters.settings_errors import SettingsError

_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
ICE_SERVERS_EXPECTED = (
    'a JSON list of ICE servers as browsers take them, [{"urls": "stun:HOST:PORT"}, '
    '{"urls": ["turn:HOST:PORT?transport=udp"], "username": "U", "credential": "C"}], or comma-separated stun:/turn: URLs'
)


class IceServer(NamedTuple):
    """One STUN or TURN server: its URLs and, for TURN, the credentials (RTCIceServer's fields)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def link_headers(self) -> list[str]:
        """The server as RFC 9725 section 4.6 Link header values: one per URL, with the TURN credentials."""
        links = []
        for url in self.urls:
            value = f'<{url}>; rel="ice-server"'
            if self.username is not None and self.credential is not None:
                username = self.username.replace('"', '\\"')
                credential = self.credential.replace('"', '\\"')
                value += f'; username="{username}"; credential="{credential}"; credential-type="password"'
            links.append(value)
        return links


class PortRange(NamedTuple):
    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def parse_ice_servers(variable: str, raw: str) -> tuple[IceServer, ...]:
    text = raw.strip()
    if not text:
        return ()
    entries: list[Any]
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as error:
            raise SettingsError(f"{variable} is not valid JSON ({error}); expected {ICE_SERVERS_EXPECTED}") from None
        if not isinstance(entries, list):
            raise SettingsError(f"{variable} is JSON but not a list; expected {ICE_SERVERS_EXPECTED}")
    else:
        entries = [{"urls": part.strip()} for part in text.split(",") if part.strip()]
    servers = []
    for position, entry in enumerate(entries):
        where = f"{variable} entry {position}"
        if not isinstance(entry, dict) or "urls" not in entry:
            raise SettingsError(f"{where} is {entry!r}; expected an object with \"urls\"")
        unknown = sorted(set(entry) - {"urls", "username", "credential"})
        if unknown:
            raise SettingsError(f"{where} has unknown fields {unknown}; expected urls, username, credential")
        urls = entry["urls"]
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
            raise SettingsError(f"{where}: urls is {entry['urls']!r}; expected a URL or a non-empty list of URLs")
        for url in urls:
            if not url.startswith(_ICE_SCHEMES) or len(url) <= url.index(":") + 1:
                raise SettingsError(f"{where}: {url!r} is not a STUN or TURN URL; expected stun:, stuns:, turn: or turns:HOST[:PORT]")
        username, credential = entry.get("username"), entry.get("credential")
        turn = any(url.startswith(("turn:", "turns:")) for url in urls)
        if turn and not (isinstance(username, str) and isinstance(credential, str)):
            raise SettingsError(f"{where}: a TURN server needs \"username\" and \"credential\" strings")
        servers.append(IceServer(tuple(urls), username if turn else None, credential if turn else None))
    return tuple(servers)


def parse_host_addresses(variable: str, raw: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not addresses:
        raise SettingsError(f"{variable} is empty; expected comma-separated IP addresses of this machine, e.g. 127.0.0.1")
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise SettingsError(f"{variable}: {address!r} is not an IP address; expected comma-separated IPv4 or IPv6 addresses") from None
    return addresses


def parse_port_range(variable: str, raw: str) -> PortRange:
    low_text, dash, high_text = raw.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text if dash else low_text)
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not a port range; expected LOW-HIGH, UDP ports in [1024, 65535], LOW <= HIGH") from None
    if not 1024 <= low <= high <= 65535:
        raise SettingsError(f"{variable}={raw!r} is out of range; expected LOW-HIGH, UDP ports in [1024, 65535], LOW <= HIGH")
    return PortRange(low, high)
