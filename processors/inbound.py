"""Inbound SMS/MMS ingestion into the live conversation.

Place :class:`InboundMessageProcessor` at the very end of the pipeline (after the
assistant context aggregator). :meth:`InboundMessageProcessor.deliver` is the
live-call handler the inbound router calls; it builds the LLM message (media fetch,
transcription) in a task of the processor, pushes ``LLMMessagesAppendFrame`` **upstream**
(the assistant aggregator adds it to the context and runs the LLM once neither the agent
nor the caller is speaking), and returns only then.

One pipecat behaviour is worked around: the assistant aggregator defers a run asked for while
the agent speaks, but when the agent's response then ends, the aggregation push resets that
deferral (``reset()``), so a text arriving mid-sentence was never answered. When a text came
while the agent spoke, this processor re-asks (an empty ``LLMMessagesAppendFrame(run_llm=True)``)
as soon as the aggregator reports the end of that response (``LLMContextAssistantTurnFrame``):
the deferral is set again and the aggregator runs the LLM once when the agent stops, bundled with
anything else it deferred (a function result). A caller who starts talking cancels the re-ask:
their turn's answer sees the text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    LLMContextAssistantTurnFrame,
    LLMMessagesAppendFrame,
    StartFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from incall_sms.errors import SmsError
from incall_sms.inbound import InboundMessage
from incall_sms.media.content import Transcriber, build_user_message
from incall_sms.media.fetch import MediaFetcher

__all__ = ["CallEndedError", "InboundMessageProcessor", "ReplySink"]

_log = logging.getLogger(__name__)


class ReplySink(Protocol):
    """Takes an inbound text as an awaited reply (see :meth:`~incall_sms.engine.ActionEngine.offer_reply`)."""

    async def ready_for(self, message: InboundMessage) -> None:
        """Return when ``message`` can be offered (a text may be held while a text asking for a reply is out)."""
        ...

    def offer_reply(self, message: InboundMessage) -> str | None:
        """A note for the agent LLM when the text was taken as a reply, else ``None``."""
        ...


class CallEndedError(SmsError):
    """The call ended before an inbound message reached its conversation (the router stores it)."""


class InboundMessageProcessor(FrameProcessor):
    """Injects texts the caller sends during the call into the conversation.

    Event handlers: ``on_message_injected(processor, message, llm_message)``.

    Args:
        fetcher: Media fetcher (``None``: attachments are noted, not fetched).
        transcriber: Speech-to-text for voice notes and video sound.
        clock: Seconds on the call's clock, stamped on :attr:`injected` (default: seconds since
            this processor was created); a replay passes its recording clock.
        replies: Where texts are offered first as awaited replies (the call's
            :class:`~incall_sms.engine.ActionEngine`); its note goes into the context with the text.
    """

    def __init__(self, *, fetcher: MediaFetcher | None = None, transcriber: Transcriber | None = None,
                 clock: Callable[[], float] | None = None, replies: ReplySink | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._replies = replies
        self._register_event_handler("on_message_injected")
        self._fetcher = fetcher
        self._transcriber = transcriber
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: list[tuple[InboundMessage, asyncio.Future[None]]] = []
        self._started = False
        self._ended = False
        t0 = time.monotonic()
        self._clock: Callable[[], float] = clock or (lambda: time.monotonic() - t0)
        self.injected: list[tuple[float, str, dict[str, Any]]] = []
        self._bot_speaking = False
        self._rearm = False

    def add_event_handler(self, event_name: str, handler: Any) -> None:
        """Add a handler; unknown event names raise ``ValueError``."""
        if event_name not in self._event_handlers:
            raise ValueError(f"unknown event {event_name!r}; known: {', '.join(sorted(self._event_handlers))}")
        super().add_event_handler(event_name, handler)

    async def deliver(self, message: InboundMessage) -> None:
        """Bring ``message`` into this call's conversation; return once it was pushed to the context.

        A text that arrives before the pipeline started waits for the start.

        Raises:
            CallEndedError: The call ended before the message reached the conversation.
        """
        if self._ended:
            raise CallEndedError("the call has ended")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._started:
            self._pending.append((message, done))
        else:
            self._spawn(message, done)
        await done

    def _spawn(self, message: InboundMessage, done: asyncio.Future[None]) -> None:
        task = self.create_task(self._inject(message, done), "inbound-inject")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _inject(self, message: InboundMessage, done: asyncio.Future[None]) -> None:
        try:
            note = None
            if self._replies is not None:
                ready = getattr(self._replies, "ready_for", None)  # a sink written before ready_for existed
                if ready is not None:
                    await ready(message)  # it may be the reply to a text still being sent
            llm_message = await build_user_message(message, fetcher=self._fetcher, transcriber=self._transcriber)
            if self._ended:
                raise CallEndedError("the call ended while the message was being prepared")
            if done.cancelled():  # the router stopped waiting (its delivery timeout) and stored it: not now,
                _log.info("inbound %s prepared after the router gave up on it; not injected (stored)", message.sid)
                return  # and not an answer to the call's waits either
            if self._replies is not None:
                note = self._replies.offer_reply(message)
            # agent talking: the aggregator defers the run; re-ask if its response's end drops the deferral
            self._rearm = self._rearm or self._bot_speaking
            messages = [llm_message] + ([{"role": "developer", "content": note}] if note else [])
            await self.push_frame(LLMMessagesAppendFrame(messages, run_llm=True), FrameDirection.UPSTREAM)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else CallEndedError("the call has ended"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.injected.append((self._clock(), message.sid, llm_message))
        if not done.done():
            done.set_result(None)
        await self._call_event_handler("on_message_injected", message, llm_message)
        _log.info("inbound %s injected into the conversation", message.sid)

    def _end(self) -> None:
        """No more injections: messages waiting for the start are handed back (the router stores them)."""
        self._ended = True
        pending, self._pending = self._pending, []
        for _message, done in pending:
            if not done.done():
                done.set_exception(CallEndedError("the call ended before it started"))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass every frame on; texts that arrived before the start are injected once started."""
        await super().process_frame(frame, direction)
        if isinstance(frame, (EndFrame, CancelFrame)):
            self._end()
        await self.push_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            await self._track_turns(frame)
        if isinstance(frame, StartFrame) and not self._started:
            self._started = True
            pending, self._pending = self._pending, []
            for message, done in pending:
                self._spawn(message, done)

    async def _track_turns(self, frame: Frame) -> None:
        """Whether the agent speaks; re-ask for a run the aggregator dropped at its response's end."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._rearm = False  # the aggregator has run (or will, for the caller's turn)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._rearm = False  # the caller's turn is answered with the text in the context
        elif isinstance(frame, LLMContextAssistantTurnFrame) and self._rearm and not self._ended:
            self._rearm = False
            await self.push_frame(LLMMessagesAppendFrame([], run_llm=True), FrameDirection.UPSTREAM)

    async def cleanup(self) -> None:
        """Cancel injections still running; their messages go back to the router (stored)."""
        await super().cleanup()
        self._end()
        for task in list(self._tasks):
            if not task.done():
                await self.cancel_task(task)
