"""DNS-rebinding protection: requests whose Host or Origin names a site this gym does not serve are refused.

A page on evil.example whose name is made to resolve to 127.0.0.1 reaches a gym on loopback from the
user's browser; its requests then carry `Host: evil.example` (and, on a POST, `Origin:
http://evil.example`). The MCP spec requires servers to validate Origin and answer an invalid one with
403; Host is checked too, because a same-origin GET (reading an arena's gold calls) carries no Origin.

Allowed by default: loopback names, IP-address Hosts (a rebinding attack always uses a DNS name: the
browser sends the name it resolved), the bind host, the host and origin of `public_url`, and same-origin
requests.
`allowed_hosts` / `allowed_origins` add more (`"*"` switches the check off). /healthz is exempt.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost"})


def _split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) -> (lowercase host without brackets, port); ValueError if malformed."""
    parts = urlsplit(f"//{value}")
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        raise ValueError(value)
    return host, parts.port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


class HostOriginGuard:
    """ASGI middleware in front of the whole app (auth included): 421 for a foreign Host, 403 for a foreign Origin."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], allowed_origins: list[str], public_url: str | None = None) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.any_origin = "*" in allowed_origins
        self.hosts = {h.strip().lower() for h in allowed_hosts if h.strip() and h != "*"}
        self.origins = {_origin_of(o.strip()) for o in allowed_origins if o.strip() and o != "*"}
        if public_url:
            self.hosts.add((urlsplit(public_url).hostname or "").lower())
            self.origins.add(_origin_of(public_url))
        self._verdicts: dict[tuple[str, str | None], tuple[bool, bool]] = {}
        """(Host, Origin) -> (host allowed, origin allowed): a gym sees few distinct pairs, and parsing them
        (urlsplit, ipaddress) on every request cost about 2% of a tool call."""

    def verdict(self, host: str | None, origin: str | None) -> tuple[bool, bool]:
        key = (host or "", origin)
        known = self._verdicts.get(key)
        if known is None:
            known = (host is None or self.host_allowed(host), origin is None or self.origin_allowed(origin, host))
            if len(self._verdicts) < 4096:  # bounded: a client making up Hosts gets no cache, not our memory
                self._verdicts[key] = known
        return known

    def host_allowed(self, value: str) -> bool:
        if self.any_host:
            return True
        try:
            host, _port = _split_host(value)
        except ValueError:
            return False
        return _is_ip(host) or host in LOOPBACK_NAMES or host in self.hosts or value.lower() in self.hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        if self.any_origin:
            return True
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:  # "http://[::1", "http://[zz]": not an origin at all
            return False
        if parts.scheme.lower() not in ("http", "https") or not hostname:
            return False  # "null" (sandboxed frames, file: pages) and anything that is not a web origin
        normalized = _origin_of(origin)
        if normalized in self.origins or _is_loopback(hostname.lower()):
            return True
        # same-origin (the gym's own page), which says something only while the Host itself is checked
        return not self.any_host and host is not None and parts.netloc.lower() == host.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        host_ok, origin_ok = self.verdict(host, origin)
        if not host_ok:
            await self._refuse(scope, receive, send, 421, f"Host {host[:200]!r} is not served here (DNS-rebinding protection); add it with --allowed-host")
            return
        if not origin_ok:
            await self._refuse(scope, receive, send, 403, f"Origin {origin[:200]!r} is not allowed (DNS-rebinding protection); add it with --allowed-origin")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        if scope["path"].endswith("/mcp"):  # the MCP spec: the body MAY be a JSON-RPC error without an id
            body: dict[str, object] = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
        else:
            body = {"error": message}
        await JSONResponse(body, status_code=status)(scope, receive, send)
