"""One POST to an OpenAI-compatible /chat/completions, with bounded retries: the transport under both the
agent loop's `ChatEndpoint` and synthesis' `LLMClient`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2


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
