"""What every viewer page shares: the Jinja2 environment (autoescaping: the data are model output, tool results
and arena text) with its filters, and the security headers pages are sent with."""

from __future__ import annotations

import json
import time
from typing import Any

from jinja2 import Environment, PackageLoader

CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SCRIPT_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": CSP + "; script-src 'self'"}
"""A page that runs the package's own scripts (charts): those, and nothing inline or from elsewhere."""
LIVE_HEADERS = {
    **SECURITY_HEADERS, "Content-Security-Policy": CSP + "; script-src 'self'; connect-src 'self'", "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}  # fmt: skip
"""A live page: its own scripts, which poll the gym it came from; never cached (the operator's data). Its
forms post with their real Origin (under `no-referrer` a browser sends `Origin: null`, which the gym's
DNS-rebinding guard rightly refuses); other sites still get no referrer."""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested summary (synthesis' summary.json) as (dotted key, leaf value) pairs."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.0f} h ago"


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))


def environment() -> Environment:
    env = Environment(loader=PackageLoader("clients.viewer", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = _pretty
    env.filters["flat"] = _flat
    env.filters["ago"] = _ago
    env.filters["clock"] = _clock
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    return env
