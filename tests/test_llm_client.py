"""clients.llm: cache, retries, JSON extraction and repair, failures that never pass silently."""

from __future__ import annotations

import pytest

from gym_server.serve import AppThread
from clients.llm import LLMClient, LLMConfig, LLMError, extract_json
from tests.fixtures.scripted_llm import create_scripted_llm


@pytest.fixture(scope="module")
def llm(gym):
    with AppThread(create_scripted_llm(gym.url)) as server:
        yield server.url


def test_extract_json():
    assert extract_json('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('noise [1, 2] more') == [1, 2]
    assert extract_json('{"ok": true}') == {"ok": True}
    with pytest.raises(ValueError):
        extract_json("no json at all")


async def test_cache_makes_reruns_free(llm, http, tmp_path):
    config = LLMConfig(base_url=llm + "/v1", model="emulator", cache_path=tmp_path / "cache.sqlite")
    messages = [{"role": "user", "content": 'Earlier calls, oldest first:\n(none)\n\nNew call: {"arguments": {}, "tool": "t"}'}]
    async with LLMClient(config) as client:
        first = await client.chat_json(messages)
        assert first["ok"] and client.usage.requests == 1
    before = (await http.get(llm + "/stats")).json()["emulator"]
    async with LLMClient(config) as again:  # a new process would see the same file
        assert await again.chat_json(messages) == first
        assert again.usage.cached == 1 and again.usage.requests == 0
    assert (await http.get(llm + "/stats")).json()["emulator"] == before


async def test_unparsable_answers_and_dead_endpoints_raise(llm):
    async with LLMClient(LLMConfig(base_url=llm + "/v1", model="emulator-bad")) as client:
        with pytest.raises(LLMError, match="even after a repair"):
            await client.chat_json([{"role": "user", "content": "x"}])
        assert client.usage.requests == 2  # the answer, then one repair round
    async with LLMClient(LLMConfig(base_url=llm + "/v1", model="broken", retries=1)) as client:
        with pytest.raises(LLMError, match="gave up after 2 attempts"):
            await client.chat([{"role": "user", "content": "x"}])
    async with LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="x", retries=0)) as client:
        with pytest.raises(LLMError, match="cannot reach"):
            await client.chat([{"role": "user", "content": "x"}])
    with pytest.raises(LLMError, match="not set"):
        LLMClient(LLMConfig(base_url="http://x", model="m", api_key_env="ASTRA_NO_SUCH_VAR"))
