"""Who may do what: the operator's token, scoped agent tokens, and per-episode MCP keys.

Three kinds of credential, each a capability for exactly what its holder needs:
- the operator's bearer token (`--token`): every REST path (create, score, delete, logs, arenas with gold);
- agent tokens (`agent_tokens`): list arenas, create episodes on the arenas `agent_arenas` exposes (no seed
  or failure overrides), score once and delete their own episodes; no gold, no logs, no other episode;
- an episode's key, carried in its MCP URL (`/episodes/{episode_id}/mcp?key=KEY`): that episode's tools and
  nothing else. The episode id alone (it appears in REST paths, logs and listings) opens nothing, and no
  bearer token, not even the operator's, stands in for the key.

A gym without `--token` is open: every request acts as the operator, but MCP URLs still need their key.

The live pages under /view (mounted by `astra-gym serve`) are the operator's too: a bearer token, or the cookie
their login form sets once it was given the operator's token (HttpOnly, SameSite=Strict, scoped to /view,
signed with a key made when the gym started, expiring). The cookie opens those pages and nothing else: the REST
API never reads it, so no other site can make a browser spend it there. The token never appears in a page or a link.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs

from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MCP_PATH = re.compile(r"^/episodes/[^/]+/mcp$")
"""The per-episode MCP route: authorized by the episode key inside the endpoint, not by a bearer token."""
VIEW_PATH = "/view"
"""Where `astra-gym serve` mounts the live pages."""
VIEW_COOKIE = "astra_gym_view"
VIEW_SESSION_S = 12 * 3600
VIEW_PUBLIC = (f"{VIEW_PATH}/login", f"{VIEW_PATH}/static/")
"""Under /view, what anyone may load: the login form and the package's CSS and scripts (they hold no data)."""


class Role(str, Enum):
    operator = "operator"
    agent = "agent"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a REST request. `name` keys quotas and episode ownership; it never holds the token itself."""

    role: Role
    name: str


OPEN_GYM = Principal(Role.operator, "anonymous")
"""Everyone, on a gym served without a token."""


def bearer_credentials(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer T` header; the scheme is case-insensitive (RFC 9110 11.1)."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


class Authenticator:
    """Maps a bearer token to its principal, comparing against every known token in constant time."""

    def __init__(self, operator_token: str | None, agent_tokens: list[str] | None = None) -> None:
        self.enabled = bool(operator_token)
        self._view_key = secrets.token_bytes(32)
        """Signs the live pages' cookies; made anew at every start, so a restart ends every browser session."""
        self._known: list[tuple[str, Principal]] = []
        if operator_token:
            self._known.append((operator_token, Principal(Role.operator, "operator")))
        for i, token in enumerate(agent_tokens or [], 1):  # numbered: two tokens never share a quota or episodes
            fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
            self._known.append((token, Principal(Role.agent, f"agent-{i}:{fingerprint}")))

    def identify(self, header: str | None) -> Principal | None:
        """The principal for an Authorization header, None for a missing or wrong token; always OPEN_GYM
        when the gym has no token."""
        return self.principal_for(bearer_credentials(header))

    def principal_for(self, token: str | None) -> Principal | None:
        if not self.enabled:
            return OPEN_GYM
        found = None
        for known, principal in self._known:  # no early exit: the time taken does not say which token was close
            if token is not None and _same(token, known):
                found = principal
        return found


    def _view_signature(self, expires: str) -> str:
        return hmac.new(self._view_key, f"view|{expires}".encode(), hashlib.sha256).hexdigest()

    def view_cookie(self, token: str, now: float | None = None) -> str | None:
        """The live pages' cookie for whoever gave `token`, if it is the operator's (None otherwise)."""
        principal = self.principal_for(token)
        if principal is None or principal.role is not Role.operator:
            return None
        expires = str(int((now or time.time()) + VIEW_SESSION_S))
        return f"{expires}.{self._view_signature(expires)}"

    def view_principal(self, cookie: str | None, now: float | None = None) -> Principal | None:
        """The operator, for a cookie this gym signed that has not expired."""
        expires, _, signature = (cookie or "").partition(".")
        if not (expires.isascii() and expires.isdigit() and len(expires) < 12) or not _same(signature, self._view_signature(expires)):
            return None
        return Principal(Role.operator, "operator") if int(expires) > (now or time.time()) else None


def _refuse(status: int, message: str) -> JSONResponse:
    response = JSONResponse({"error": message}, status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


class BearerAuth:
    """ASGI middleware: puts the request's `Principal` into `scope["state"]["principal"]`.

    Every REST path needs a known bearer token; `/healthz` takes one optionally (it says more to the
    operator); the MCP route is left to the episode's key."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or MCP_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        principal = self.authenticator.identify(header)
        if scope["path"] == VIEW_PATH or scope["path"].startswith(VIEW_PATH + "/"):
            await self._view(scope, receive, send, principal)
            return
        if principal is None and scope["path"] != "/healthz":
            await _refuse(401, "missing or wrong bearer token")(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


    async def _view(self, scope: Scope, receive: Receive, send: Send, principal: Principal | None) -> None:
        if principal is None:
            cookies = cookie_parser(next((v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie"), ""))
            principal = self.authenticator.view_principal(cookies.get(VIEW_COOKIE))
        if not scope["path"].startswith(VIEW_PUBLIC):
            if principal is None:
                await _login_first()(scope, receive, send)
                return
            if principal.role is not Role.operator:
                await _refuse(403, "the live pages need the operator's token")(scope, receive, send)
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _login_first() -> HTMLResponse:
    """The 401 of a live page: a way to the login form, and nothing of the gym's."""
    return HTMLResponse(
        f'<!doctype html><meta charset="utf-8"><title>401</title><p>These pages need the operator\'s token: <a href="{VIEW_PATH}/login">log in</a>.</p>',
        status_code=401, headers={"WWW-Authenticate": "Bearer", "Content-Security-Policy": "default-src 'none'", "Cache-Control": "no-store"},
    )  # fmt: skip


def principal_of(request: Request) -> Principal | None:
    return request.scope.get("state", {}).get("principal")


class Forbidden(Exception):
    """The principal is known but this action is not its to take (403)."""


def require_operator(request: Request, what: str) -> Principal:
    principal = principal_of(request)
    if principal is None or principal.role is not Role.operator:
        raise Forbidden(f"{what} needs the operator's token")
    return principal


def episode_key_matches(scope: Scope, key: str) -> bool:
    """Whether the request's `?key=` is the episode's key (constant-time; a missing key never matches)."""
    query = scope.get("query_string", b"").decode("latin-1")
    if "%" in query or "+" in query:  # percent-encoded: let the standard parser decode it
        values = parse_qs(query).get("key", [])
    else:  # the common case (the mcp_url as the gym wrote it), without parse_qs on every call
        values = [part[4:] for part in query.split("&") if part.startswith("key=")]
    return len(values) == 1 and _same(values[0], key)
