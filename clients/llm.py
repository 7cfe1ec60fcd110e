"""The one OpenAI-compatible chat-completions client: the agent loop's `ChatEndpoint`, the LLM emulator and
every synthesis step post through here.

`post_chat_completion` is one POST with bounded retries (the transport under everything). `LLMClient` adds
bounded concurrency, a SQLite cache keyed by the full request (a rerun is free, a crashed run resumes where it
stopped), JSON extraction with one repair attempt, and token accounting. Failures raise `LLMError`: no caller
ever turns an LLM failure into a passing score.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import aiosqlite
import httpx2
from pydantic import BaseModel, ConfigDict, Field


class ChatHTTPError(RuntimeError):
    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


async def post_chat_completion(
    http: httpx2.AsyncClient, base_url: str, body: dict[str, Any], *, api_key: str | None = None,
    retries: int = 3, timeout_s: float = 300.0,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """(response JSON with a choices[0].message, attempts made). Retries transport errors, 408/409/429/5xx
    and malformed 200s with exponential backoff; any other 4xx fails at once (retrying cannot help)."""
    url = f"{base_url.rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    delay, last = 0.5, ""
    for attempt in range(1, retries + 2):
        try:
            response = await http.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx2.HTTPError as exc:
            last = f"cannot reach the model endpoint {url}: {type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                try:
                    data = response.json()
                    data["choices"][0]["message"].get
                    return data, attempt
                except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                    last = f"the model endpoint {url} answered 200 with no choices[0].message: {response.text[:300]}"
            elif response.status_code in (408, 409, 429) or response.status_code >= 500:
                last = f"the model endpoint {url} answered {response.status_code}: {response.text[:300]}"
            else:
                raise ChatHTTPError(f"the model endpoint {url} answered {response.status_code}: {response.text[:500]}", attempt)
        if attempt <= retries:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise ChatHTTPError(f"gave up after {retries + 1} attempts: {last}", retries + 1)


class LLMError(RuntimeError):
    """The model could not be reached, kept failing, or did not produce what was asked (after repair)."""


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://localhost:8001/v1")
    model: str = Field(description="The model name sent with each request.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    concurrency: int = Field(default=16, ge=1, le=4096)
    retries: int = Field(default=3, ge=0, le=10)
    timeout_s: float = Field(default=120.0, gt=0)
    temperature: float = 0.0
    max_tokens: int = Field(default=1024, ge=1)
    cache_path: Path | None = Field(default=None, description="SQLite cache file; None keeps no cache.")


class LLMResponse(BaseModel):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class Usage(BaseModel):
    requests: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON object or array in a model's answer (fenced or bare); ValueError when there is none."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            return json.loads(candidate)
        except ValueError:
            pass
        for opener, closer in (("{", "}"), ("[", "]")):
            start = candidate.find(opener)
            end = candidate.rfind(closer)
            if start != -1 and end > start:
                try:
                    return json.loads(candidate[start : end + 1])
                except ValueError:
                    continue
    raise ValueError("no JSON object or array in the answer")


class LLMClient:
    def __init__(self, config: LLMConfig, http: httpx2.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http
        self._own_http = http is None
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._db: aiosqlite.Connection | None = None
        self.usage = Usage()
        self.in_flight = 0
        self.peak_in_flight = 0
        key_env = config.api_key_env
        self._api_key = os.environ.get(key_env) if key_env else None
        if key_env and self._api_key is None:
            raise LLMError(f"environment variable {key_env} is not set")

    async def __aenter__(self) -> LLMClient:
        if self._http is None:
            limits = httpx2.Limits(max_connections=self.config.concurrency * 2, max_keepalive_connections=self.config.concurrency * 2)
            self._http = httpx2.AsyncClient(timeout=self.config.timeout_s, limits=limits)
        if self.config.cache_path is not None:
            self.config.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.config.cache_path)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL NOT NULL)"
            )
            await self._db.commit()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.close()
        if self._own_http and self._http is not None:
            await self._http.aclose()

    def _key(self, body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    async def chat(
        self, messages: list[dict[str, Any]], *, temperature: float | None = None, max_tokens: int | None = None,
        json_mode: bool = False, cache: bool = True,
    ) -> LLMResponse:  # fmt: skip
        body: dict[str, Any] = {
            "model": self.config.model, "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }  # fmt: skip
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        key = self._key(body)
        if cache and self._db is not None:
            async with self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                self.usage.cached += 1
                return LLMResponse.model_validate_json(row[0]).model_copy(update={"cached": True})
        async with self._semaphore:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                response = await self._post(body)
            finally:
                self.in_flight -= 1
        if cache and self._db is not None:
            await self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", (key, response.model_dump_json(), time.time())
            )
            await self._db.commit()
        return response

    async def _post(self, body: dict[str, Any]) -> LLMResponse:
        assert self._http is not None, "use `async with LLMClient(...)`"
        try:
            data, attempts = await post_chat_completion(
                self._http, self.config.base_url, body, api_key=self._api_key, retries=self.config.retries,
                timeout_s=self.config.timeout_s,
            )  # fmt: skip
        except ChatHTTPError as exc:
            self.usage.requests += exc.attempts
            self.usage.failed += 1
            raise LLMError(str(exc)) from None
        self.usage.requests += attempts
        usage = data.get("usage") or {}
        result = LLMResponse(
            text=data["choices"][0]["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
        )  # fmt: skip
        self.usage.prompt_tokens += result.prompt_tokens
        self.usage.completion_tokens += result.completion_tokens
        return result

    async def chat_json(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """A JSON answer; one repair round (the model sees its answer and the parse error) before `LLMError`."""
        first = await self.chat(messages, json_mode=True, **kwargs)
        try:
            return extract_json(first.text)
        except ValueError as exc:
            repair = [*messages, {"role": "assistant", "content": first.text},
                      {"role": "user", "content": f"That was not valid JSON ({exc}). Reply with the JSON only."}]  # fmt: skip
            second = await self.chat(repair, json_mode=True, **kwargs)
            try:
                return extract_json(second.text)
            except ValueError as exc2:
                raise LLMError(f"the model gave no valid JSON, even after a repair request: {exc2}") from None
