"""The live pages of a running gym (`astra-gym serve` mounts them at /view): the episodes it runs now with calls
per second, and one episode's call log as it grows. Server-rendered like the run pages; `static/live.js` polls
the fragment routes and puts their HTML in place.

The data come from the gym's `LiveSource` (gym_server.live), in process: one gym's episodes, or under
`serve --processes N` every process's, asked by the front. Who may see them is the gym's auth (its BearerAuth
lets only the operator reach any path here but the login form and the static files); this app renders, and
sets or clears the login cookie the way `ViewAccess` says.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clients.viewer.render import LIVE_HEADERS, environment
from gym_server.auth import VIEW_PATH
from gym_server.episodes import EpisodeNotFound
from gym_server.live import LiveSource, LiveUnavailable, ViewAccess

POLL_MS = 2000
LISTED = 200
EPISODE_ID = re.compile(r"[A-Za-z0-9._\-]{1,256}")
MAX_LOGIN_BYTES = 4096


class CallsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: int = Field(default=0, ge=0, le=1_000_000_000)
    """The index of the first call wanted (the page has the ones before)."""


def create_live_viewer(live: LiveSource, access: ViewAccess, prefix: str = VIEW_PATH) -> Starlette:
    env = environment()

    def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(prefix=prefix, home_label="live episodes", access=access, poll_ms=POLL_MS, **context)
        return HTMLResponse(html, status_code=status, headers={**LIVE_HEADERS, **(headers or {})})

    def episode_id(request: Request) -> str:
        value = request.path_params["episode_id"]
        if not EPISODE_ID.fullmatch(value):
            raise HTTPException(404, "no such episode")
        return value

    async def index(request: Request) -> Response:
        return render("live_index.html", listed=await live.episodes(LISTED))

    async def episodes_fragment(request: Request) -> Response:
        return render("_live_episodes.html", listed=await live.episodes(LISTED))

    async def episode_page(request: Request) -> Response:
        return render("live_episode.html", log=await live.log(episode_id(request), 0))

    async def calls_fragment(request: Request) -> Response:
        try:
            query = CallsQuery.model_validate(dict(request.query_params))
        except ValidationError:
            raise HTTPException(400, "since must be a call index")
        log = await live.log(episode_id(request), query.since)
        return render("_live_calls.html", calls=log.calls, headers={"X-Next-Since": str(query.since + len(log.calls))})

    async def login_form(request: Request) -> Response:
        if access.open:
            return RedirectResponse(f"{prefix}/", 303)
        return render("login.html", failed=False)

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BYTES:
                raise HTTPException(413, "a login form is not that long")
        tokens = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4).get("token", [])
        response = RedirectResponse(f"{prefix}/", 303)
        if len(tokens) == 1 and access.login(response, tokens[0], https=request.url.scheme == "https"):
            return response
        return render("login.html", status=401, failed=True)

    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{prefix}/login", 303)
        access.logout(response)
        return response

    def problem(request: Request, status: int, text: str) -> Response:
        """A fragment's problem is plain text (live.js shows it); a page's is a page."""
        if request.url.path.startswith(f"{prefix}/fragments/"):
            return PlainTextResponse(text[:500], status, headers=LIVE_HEADERS)
        return render("error.html", status=status, code=status, detail=text[:500])

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(request, 404, f"the episode ended or does not exist: {exc.args[0] if exc.args else ''}")

    async def unavailable(request: Request, exc: Exception) -> Response:
        return problem(request, 503, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return render("error.html", status=exc.status_code, code=exc.status_code, detail=exc.detail)

    async def parse_error(request: Request, exc: Exception) -> Response:
        return render("error.html", status=400, code=400, detail="a query or form that cannot be read")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/fragments/episodes", episodes_fragment),
            Route("/episodes/{episode_id}", episode_page),
            Route("/fragments/episodes/{episode_id}/calls", calls_fragment),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("clients.viewer", "static")]), name="static"),
        ],
        exception_handlers={
            EpisodeNotFound: not_found, LiveUnavailable: unavailable, HTTPException: http_error, UnicodeDecodeError: parse_error,
        },
    )  # fmt: skip
