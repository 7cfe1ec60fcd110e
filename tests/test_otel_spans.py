"""The SDK's OpenTelemetry middleware is off by default (a span per message costs a few percent of a call
and goes nowhere without an OTel SDK) and back on with `otel_spans=True`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext

from gym_server.config import ServeConfig
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session, new_episode


class RecordingTracer(trace.Tracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: object, **kwargs: object) -> Span:
        self.names.append(name)
        return NonRecordingSpan(SpanContext(0, 0, False))

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, *args: object, **kwargs: object) -> Iterator[Span]:
        span = self.start_span(name)
        with trace.use_span(span, end_on_exit=False):
            yield span


class RecordingProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
        return RecordingTracer(self.names)


PROVIDER = RecordingProvider()
trace.set_tracer_provider(PROVIDER)


async def _one_call(http, otel_spans: bool) -> list[str]:
    config = ServeConfig(port=0, otel_spans=otel_spans, sandbox=SandboxConfig(workers=1))
    with GymThread(config) as gym:
        episode = await new_episode(http, gym, "airline-seats-aa100")
        before = len(PROVIDER.names)
        async with mcp_session(http, episode["mcp_url"]) as client:
            result = await client.call_tool("get_flight", {"flight_id": "AA100"})
            assert result.structured_content["seats_left"] == 12
        return PROVIDER.names[before:]


async def test_otel_spans_are_off_by_default_and_on_when_asked(http):
    assert "tools/call get_flight" not in await _one_call(http, otel_spans=False)
    assert "tools/call get_flight" in await _one_call(http, otel_spans=True)
