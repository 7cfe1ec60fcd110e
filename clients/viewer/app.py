"""The viewer's Starlette app: server-rendered pages over run folders, nothing from the network.

Pages: `/` (the runs), `/runs/{i}` (summary, a training run's metric curves, and the episode table),
`/runs/{i}/episodes/{line}` (one episode), `/compare?a=i&b=j` (two runs side by side). Jinja2 autoescapes
everything (the data are model output, tool results and arena text). Pages carry a Content-Security-Policy that
refuses every script except, on the pages that draw charts, the package's own files (`script-src 'self'`: the
vendored uPlot and its caller); the charts' data travel in a JSON block that is never executed.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clients.viewer.conversation import episode_view
from clients.viewer.render import SCRIPT_HEADERS, SECURITY_HEADERS, environment
from clients.viewer.runs import CHARTS, Run
from clients.viewer.table import SORT_KEYS, TableQuery, compare


def create_viewer(runs: list[Path], prefix: str = "") -> Starlette:
    """`runs`: the run folders, shown in this order and named in URLs by their position. `prefix`: where the
    app is mounted (links are built under it)."""
    folders = [Run(Path(p)) for p in runs]
    # index the runs now, off the request path (a page that comes first waits for its run's index, not longer)
    threading.Thread(target=lambda: [run.rows for run in folders], name="viewer-index", daemon=True).start()
    env = environment()

    def render(name: str, status: int = 200, scripts: bool = False, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(prefix=prefix, runs=folders, **context)
        return HTMLResponse(html, status_code=status, headers=SCRIPT_HEADERS if scripts else SECURITY_HEADERS)

    def run_of(request: Request, key: str = "run") -> tuple[int, Run]:
        i = request.path_params[key]
        if not 0 <= i < len(folders):
            raise HTTPException(404, "no such run")
        return i, folders[i]

    async def index(request: Request) -> Response:
        return render("index.html", overviews=await asyncio.to_thread(lambda: [r.overview() for r in folders]))

    async def run_page(request: Request) -> Response:
        i, run = run_of(request)
        try:
            query = TableQuery.model_validate({k: v for k, v in request.query_params.items() if v != ""})  # a form's empty field: not set
        except ValidationError as exc:
            raise HTTPException(400, "bad table query: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        rows = run.rows
        page, matched = query.apply(rows)
        metrics = await asyncio.to_thread(run.metrics) if run.kind == "training" else None
        sort_keys = [k for k in SORT_KEYS if k != "error" and (k != "judge" or run.kind == "synthesis")]
        return render(
            "run.html", scripts=metrics is not None, i=i, run=run, report=run.report(), synthesis=run.synthesis_summary(),
            metrics=metrics, charts=run.charts(), query=query, page=page, matched=matched, total=len(rows),
            pages=max(1, -(-matched // query.per_page)), domains=sorted({r.domain for r in rows}),
            scenario_types=sorted({r.scenario_type for r in rows}), sort_keys=sort_keys,
        )  # fmt: skip

    async def episode(request: Request) -> Response:
        i, run = run_of(request)
        try:
            found = run.episode(request.path_params["line"])
        except (ValidationError, ValueError, OSError, RecursionError):
            raise HTTPException(422, "this episode's line is not a trajectory record")
        if found is None:
            raise HTTPException(404, "no such episode")
        return render(
            "episode.html", i=i, run=run, line=request.path_params["line"], record=found.record, source=found.source,
            judged=found.judged, view=episode_view(found.record),
        )  # fmt: skip

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
