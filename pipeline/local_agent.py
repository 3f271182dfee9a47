"""A local stand-in for the agent LLM (no key, no network), clearly labelled as such.

It answers a small set of booking-desk intents from the last user message so the
local simulation has a plausible agent: bookings, opening hours, address, links,
inbound texts and photos. Anything else gets a generic helpful line. When an
OpenAI-compatible endpoint is configured the simulation uses pipecat's real
``OpenAILLMService`` instead.
"""

from __future__ import annotations

import re
from typing import Any

from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["LocalAgentLLM"]

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^\[photo\]|\b(photo|picture|image)\b", re.I),
     "Thanks, I got the photo you texted. I've added it to your booking notes."),
    (re.compile(r"^The caller sent a text message", re.I),
     "Thanks, I got your text and I've added it to your booking notes."),
    (re.compile(r"\b(book|table|reservation|reserve)\b", re.I),
     "Your table for four is booked for Friday at 7 pm."),
    (re.compile(r"\b(hours|open|close)\b", re.I), "We're open every day from 11 am to 10 pm."),
    (re.compile(r"\b(bye|goodbye|that's all|that is all)\b", re.I), "Thanks for calling, goodbye!"),
    (re.compile(r"\b(text|message|sms|send)\b", re.I), "Is there anything else I can help you with?"),
]


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict)]
            text = " ".join(p.get("text", "") for p in parts)
            if any(p.get("type") == "image_url" for p in parts):
                text = "[photo] " + text  # the stand-in cannot see images; it knows one arrived
            return text
    return ""


class LocalAgentLLM(FrameProcessor):
    """Rule-based stand-in LLM: answers ``LLMContextFrame`` with one short line."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Answer context frames (from either side); pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            reply = self.reply_for(_last_user_text(list(frame.context.get_messages())))
            self.replies.append(reply)
            await self.push_frame(LLMFullResponseStartFrame())
            await self.push_frame(LLMTextFrame(reply))
            await self.push_frame(LLMFullResponseEndFrame())
            return
        await self.push_frame(frame, direction)

    @staticmethod
    def reply_for(text: str) -> str:
        """The stand-in's answer to a caller line."""
        for pattern, reply in _RULES:
            if pattern.search(text):
                return reply
        return "Sure, I can help with that."
