"""The viewer's Starlette app: server-rendered pages over run folders, nothing from the network.

Pages: `/` (the runs), `/runs/{i}` (summary and the episode table), `/runs/{i}/episodes/{line}` (one episode),
`/compare?a=i&b=j` (two runs side by side). Jinja2 autoescapes everything (the data are model output, tool
results and arena text); the pages carry no script and a Content-Security-Policy that would refuse one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clients.viewer.conversation import episode_view
from clients.viewer.runs import CHARTS, Run, TableQuery, compare

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("clients.viewer", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = _pretty
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    return env


def create_viewer(runs: list[Path], prefix: str = "") -> Starlette:
    """`runs`: the run folders, shown in this order and named in URLs by their position. `prefix`: where the
    app is mounted (links are built under it)."""
    folders = [Run(Path(p)) for p in runs]
    # index the runs now, off the request path (a page that comes first waits for its run's index, not longer)
    threading.Thread(target=lambda: [run.rows for run in folders], name="viewer-index", daemon=True).start()
    env = _environment()

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(prefix=prefix, runs=folders, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def run_of(request: Request, key: str = "run") -> tuple[int, Run]:
        i = request.path_params[key]
        if not 0 <= i < len(folders):
            raise HTTPException(404, "no such run")
        return i, folders[i]

    async def index(request: Request) -> Response:
        return render("index.html", reports=[r.report() for r in folders])

    async def run_page(request: Request) -> Response:
        i, run = run_of(request)
        try:
            query = TableQuery.model_validate({k: v for k, v in request.query_params.items() if v != ""})  # a form's empty field: not set
        except ValidationError as exc:
            raise HTTPException(400, "bad table query: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        rows = run.rows
        page, matched = query.apply(rows)
        return render(
            "run.html", i=i, run=run, report=run.report(), charts=run.charts(), query=query, page=page, matched=matched,
            total=len(rows), pages=max(1, -(-matched // query.per_page)), domains=sorted({r.domain for r in rows}),
            scenario_types=sorted({r.scenario_type for r in rows}), sort_keys=("line", "reward", "arena_id", "domain", "scenario_type", "n_calls", "n_injected"),
        )  # fmt: skip

    async def episode(request: Request) -> Response:
        i, run = run_of(request)
        try:
            record = run.record(request.path_params["line"])
        except (ValidationError, ValueError, OSError):
            raise HTTPException(422, "this episode's line is not a trajectory record")
        if record is None:
            raise HTTPException(404, "no such episode")
        return render("episode.html", i=i, run=run, line=request.path_params["line"], record=record, view=episode_view(record))

    async def chart(request: Request) -> Response:
        _, run = run_of(request)
        name = request.path_params["name"]
        if name not in CHARTS or not (run.path / name).is_file():
            raise HTTPException(404, "no such chart")
        return FileResponse(run.path / name, media_type="image/png", headers=SECURITY_HEADERS)

    async def compare_page(request: Request) -> Response:
        try:
            a, b = int(request.query_params.get("a", "0")), int(request.query_params.get("b", "1"))
        except ValueError:
            raise HTTPException(400, "a and b are run numbers")
        if not (0 <= a < len(folders) and 0 <= b < len(folders)):
            raise HTTPException(404, "no such run")
        return render("compare.html", a=a, b=b, run_a=folders[a], run_b=folders[b], result=compare(folders[a], folders[b]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return render("error.html", status=exc.status_code, code=exc.status_code, detail=exc.detail)

    static = StaticFiles(packages=[("clients.viewer", "static")])
    return Starlette(
        routes=[
            Route("/", index),
            Route("/runs/{run:int}", run_page),
            Route("/runs/{run:int}/episodes/{line:int}", episode),
            Route("/runs/{run:int}/charts/{name}", chart),
            Route("/compare", compare_page),
            Mount("/static", static, name="static"),
        ],
        exception_handlers={HTTPException: http_error},
    )
