"""Inbound SMS/MMS ingestion into the live conversation.

Place :class:`InboundMessageProcessor` at the very end of the pipeline (after the
assistant context aggregator). :meth:`InboundMessageProcessor.deliver` is the
live-call handler the inbound router calls; it returns at once, builds the LLM
message (media fetch, transcription) in a background task, and pushes
``LLMMessagesAppendFrame(run_llm=True)`` **upstream**: the assistant aggregator
adds it and runs the LLM when neither the bot nor the caller is speaking, so the
agent never talks over itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pipecat.frames.frames import Frame, LLMMessagesAppendFrame, StartFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from media.content import Transcriber, build_user_message
from media.fetch import MediaFetcher
from messaging.inbound import InboundMessage

__all__ = ["InboundMessageProcessor"]

_log = logging.getLogger(__name__)


class InboundMessageProcessor(FrameProcessor):
    """Injects texts the caller sends during the call into the conversation.

    Event handlers: ``on_message_injected(processor, message, llm_message)``.

    Args:
        fetcher: Media fetcher (``None``: attachments are noted, not fetched).
        transcriber: Speech-to-text for voice notes and video sound.
    """

    def __init__(self, *, fetcher: MediaFetcher | None = None, transcriber: Transcriber | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._register_event_handler("on_message_injected")
        self._fetcher = fetcher
        self._transcriber = transcriber
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: list[InboundMessage] = []
        self._started = False
        self._t0 = time.monotonic()
        self.injected: list[tuple[float, str, dict[str, Any]]] = []

    def add_event_handler(self, event_name: str, handler: Any) -> None:
        """Add a handler; unknown event names raise ``ValueError``."""
        if event_name not in self._event_handlers:
            raise ValueError(f"unknown event {event_name!r}; known: {', '.join(sorted(self._event_handlers))}")
        super().add_event_handler(event_name, handler)

    async def deliver(self, message: InboundMessage) -> None:
        """Accept a message for this call (returns at once; the work runs as a task).

        A text that arrives before the pipeline started waits for the start.
        """
        if not self._started:
            self._pending.append(message)
            return
        self._spawn(message)

    def _spawn(self, message: InboundMessage) -> None:
        task = self.create_task(self._inject(message), "inbound-inject")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _inject(self, message: InboundMessage) -> None:
        llm_message = await build_user_message(message, fetcher=self._fetcher, transcriber=self._transcriber)
        self.injected.append((time.monotonic() - self._t0, message.sid, llm_message))
        await self.push_frame(LLMMessagesAppendFrame([llm_message], run_llm=True), FrameDirection.UPSTREAM)
        await self._call_event_handler("on_message_injected", message, llm_message)
        _log.info("inbound %s injected into the conversation", message.sid)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass every frame on; texts that arrived before the start are injected once started."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and not self._started:
            self._started = True
            pending, self._pending = self._pending, []
            for message in pending:
                self._spawn(message)

    async def cleanup(self) -> None:
        """Cancel injections still running."""
        await super().cleanup()
        for task in list(self._tasks):
            if not task.done():
                await self.cancel_task(task)
