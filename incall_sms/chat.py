"""One small client for OpenAI-compatible chat endpoints, shared by the LLM judge, writer and extractor."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ChatModel"]


class ChatModel:
    """A chat-completions model with its own deadline and no SDK-level retries.

    Args:
        base_url: API base, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:11434/v1``.
        model: Model name.
        api_key: Key (``"none"`` for local servers).
        timeout: Deadline per completion, seconds.
    """

    def __init__(self, *, base_url: str, model: str, api_key: str = "none", timeout: float = 3.0) -> None:
        from openai import AsyncOpenAI  # imported lazily: the core does not need it otherwise

        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.model = model
        self.timeout = timeout

    async def complete(
        self, messages: list[dict[str, Any]], *, temperature: float = 0.0, json_mode: bool = False,
        max_tokens: int = 400,
    ) -> str:
        """Return the assistant text of one completion (at most ``max_tokens``: a runaway answer ends).

        Raises:
            TimeoutError: The deadline passed.
            Exception: Transport or HTTP errors from the client (callers classify them).
        """
        kwargs: dict[str, Any] = {"response_format": {"type": "json_object"}} if json_mode else {}
        async with asyncio.timeout(self.timeout):
            response = await self._client.chat.completions.create(
                model=self.model, temperature=temperature, messages=messages, max_tokens=max_tokens, **kwargs
            )
        return response.choices[0].message.content or ""

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
