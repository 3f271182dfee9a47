"""An OpenAI-compatible chat-completions peer on loopback (plain and streaming answers).

`responder(request_json) -> str` decides the assistant text; `latency` delays every answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.peers.loopback import serve_app


class LLMPeer:
    """Loopback OpenAI-compatible peer. Use as ``async with LLMPeer(responder) as peer:``."""

    def __init__(self, responder: Callable[[dict[str, Any]], str | dict[str, Any]], *, latency: float = 0.0) -> None:
        self.responder = responder
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> LLMPeer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, port = await serve_app(app)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.status != 200:
            return web.json_response({"error": {"message": "scripted", "type": "server_error"}}, status=self.status)
        answer = self.responder(body)
        created = int(time.time())
        if isinstance(answer, dict):  # {"tool_call": {"name": ..., "arguments": {...}}}
            return await self._tool_call(request, body, answer["tool_call"], created)
        text = answer
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-peer", "object": "chat.completion", "created": created, "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            chunk = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": created,
                     "model": body.get("model"),
                     "choices": [{"index": 0, "delta": {"content": word + (" " if i < len(words) - 1 else "")},
                                  "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": created,
               "model": body.get("model"), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def _tool_call(self, request: web.Request, body: dict[str, Any], call: dict[str, Any],
                         created: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": created,
                "model": body.get("model")}
        delta = {"tool_calls": [{"index": 0, "id": f"call_{len(self.requests)}", "type": "function",
                                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]}
        chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
