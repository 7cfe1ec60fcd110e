"""MCP tool annotations: declared by the built-in worlds and offline arenas, served by the gym in tools/list,
and used by the toolbox to decide what it may repeat after a transport failure."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from clients.toolbox import MCPToolbox
from gym_server.builtin import builtin_arenas
from gym_server.models import ToolSpec
from gym_server.serve import AppThread
from synth.arenas.offline import generate
from tests.conftest import mcp_session, new_episode

WRITERS = {"book_flight", "cancel_booking", "book_appointment", "refill_prescription", "place_order", "return_item"}


def test_every_builtin_and_offline_tool_declares_whether_it_writes():
    offline = list(generate(12, seed=3))
    for arena in [*builtin_arenas(), *offline]:
        for tool in arena.tools:
            hints = tool.annotations
            assert hints is not None and hints.title, (arena.id, tool.name)
            assert hints.read_only_hint is (tool.name not in WRITERS), (arena.id, tool.name)
            assert hints.open_world_hint is False  # an arena's world is the episode's own database
            if not hints.read_only_hint:
                assert hints.idempotent_hint is False and hints.destructive_hint is not None


async def test_tools_list_of_a_builtin_arena_shows_the_annotations(gym, http):
    episode = await new_episode(http, gym, "airline-book-cheapest-sfo-jfk")
    async with mcp_session(http, episode["mcp_url"]) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
    search, book, cancel = listed["search_flights"].annotations, listed["book_flight"].annotations, listed["cancel_booking"].annotations
    assert (search.title, search.read_only_hint, search.open_world_hint) == ("Search flights", True, False)
    assert (book.title, book.read_only_hint, book.destructive_hint, book.idempotent_hint) == ("Book a flight", False, False, False)
    assert cancel.destructive_hint is True
    created = {t["name"]: t for t in episode["tools"]}  # the REST answer carries them under MCP's wire names
    assert created["book_flight"]["annotations"]["readOnlyHint"] is False


def test_unknown_annotation_keys_are_refused_in_stores_and_dropped_from_fronted_servers():
    tool = {"name": "t", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True, "sideEffectsHint": "x"}}
    with pytest.raises(ValueError, match="sideEffectsHint"):
        ToolSpec.model_validate(tool)
    fronted = ToolSpec.from_mcp({**tool, "title": "ignored", "icons": []})
    assert fronted.annotations is not None and fronted.annotations.read_only_hint is True


def losing_first_answers(gym_url: str, answer_after_s: float) -> tuple[AppThread, list[str]]:
    """A proxy in front of the gym that forwards every request but holds back the answer to the first call of
    each tool for `answer_after_s` (longer than the client waits): the call ran, its answer was lost."""
    lost: list[str] = []

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in (b"host", b"content-length")]
        url = f"{gym_url}{scope['path']}" + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        async with httpx2.AsyncClient(timeout=30) as client:
            answer = await client.request(scope["method"], url, headers=headers, content=body)
        try:
            rpc = json.loads(body) if body else {}
        except ValueError:
            rpc = {}
        if isinstance(rpc, dict) and rpc.get("method") == "tools/call" and rpc["params"]["name"] not in lost:
            lost.append(rpc["params"]["name"])
            await asyncio.sleep(answer_after_s)
        drop = {"content-length", "transfer-encoding", "connection"}
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [(k.encode(), v.encode()) for k, v in answer.headers.items() if k.lower() not in drop]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.content})

    return AppThread(app), lost


async def test_a_read_only_call_is_retried_after_a_lost_answer_and_a_writing_call_is_not(gym, http):
    episode = await new_episode(http, gym, "airline-book-cheapest-sfo-jfk", failure_rate=0.0)
    with losing_first_answers(gym.url, answer_after_s=2.0)[0] as proxy:
        via_proxy = episode["mcp_url"].replace(gym.url, proxy.url)
        async with MCPToolbox.http_endpoint(via_proxy, http, call_timeout_s=0.5, retries=2) as box:
            read = await box.call("get_flight", {"flight_id": "AA100"})
            write = await box.call("book_flight", {"flight_id": "AA100", "passenger_id": "P001"})
    assert not read.is_error and read.structured["airline"] == "American"  # the retry answered
    assert write.is_error and write.transport_error == "timeout"  # reported as not played, never repeated
    assert len(box.transport_errors) == 1 and "book_flight" in box.transport_errors[0]
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [c["tool"] for c in log["calls"]] == ["get_flight", "get_flight", "book_flight"]  # one booking, not two


def test_emulated_tools_declare_what_the_engine_does_with_them():
    from pathlib import Path

    from emulators.compile import compile_server
    from synth.tooldocs import detect_and_load

    (server,) = detect_and_load(Path(__file__).parent / "fixtures" / "bfcl" / "ticket_api.json")[0]
    hints = {t.name: t.annotations for t in compile_server(server).tools}
    assert hints["get_ticket"].read_only_hint is True and hints["get_user_tickets"].read_only_hint is True
    assert (hints["create_ticket"].read_only_hint, hints["create_ticket"].destructive_hint) == (False, False)
    assert (hints["edit_ticket"].read_only_hint, hints["edit_ticket"].destructive_hint) == (False, True)
    assert hints["close_ticket"].destructive_hint is True
    assert hints["ticket_login"].read_only_hint is False  # a verb the engine does not know is recorded: a write
    declared = server.tools[0].model_copy(update={"annotations": ToolSpec.from_mcp(
        {"name": "x", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}).annotations})  # fmt: skip
    assert compile_server(server.model_copy(update={"tools": [declared]})).tools[0].annotations.read_only_hint is True  # the doc wins
