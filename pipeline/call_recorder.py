"""Recording live calls as replayable recordings (``incall-sms-recording/1``), streamed to disk."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import queue
import threading
import time
from typing import Any

from incall_sms.call_binding import CALL_SID
from incall_sms.phone import mask

__all__ = ["CallRecorder"]

_log = logging.getLogger(__name__)


class CallRecorder:
    """Writes a live call as a recording (``incall-sms-recording/1``) for replays, streamed to disk.

    Captures the Media Streams messages exactly as received, the final STT results, the agent
    LLM's turns (not the SMS lines: a replay says those itself) and the bodies of inbound texts
    (attachments are not kept: note them by hand if a test needs them). Lines
    go through a queue to a writer thread, so neither memory nor the event loop carries the
    call: a 30-minute call is ~90,000 media messages. Phone numbers are masked unless
    ``unmasked``; the stream token is never written. Nothing is written for a stream that is
    refused (:meth:`discard`), and the file name is only ever the verified call SID. Unless
    ``unmasked``, phone numbers and e-mail addresses in transcripts, agent turns and inbound texts
    are masked too (:func:`~incall_sms.pipeline.masking.mask_text`: last four digits kept).

    Args:
        websocket: The accepted Media Streams websocket (its ASGI ``receive`` is wrapped).
        folder: Where ``<call_sid>.jsonl`` and ``<call_sid>.meta.json`` go.
        unmasked: Keep phone numbers as they are.
        max_early_messages: Messages kept before :meth:`bind` (the stream is not verified yet).
    """

    def __init__(self, websocket: Any, *, folder: pathlib.Path, unmasked: bool = False,
                 max_early_messages: int = 8) -> None:
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._folder = folder
        self._unmasked = unmasked
        self._early: list[str] = []
        self._max_early = max_early_messages
        self._queue: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._path: pathlib.Path | None = None
        self._closed = False
        self.stt: list[dict[str, Any]] = []
        self.agent: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.call_sid = ""
        self.caller = ""
        self.agent_number = ""
        self.count = 0
        original = websocket._receive

        async def receive() -> Any:
            event = await original()
            if event.get("type") == "websocket.receive" and event.get("text"):
                self._capture(event["text"])
            return event

        websocket._receive = receive

    def _mask(self, number: str) -> str:
        return number if self._unmasked or not number else mask(number)

    def _mask_text(self, text: str) -> str:
        """Phone numbers and e-mail addresses in what was said or texted (unless ``unmasked``)."""
        if self._unmasked:
            return text
        from incall_sms.pipeline.masking import mask_text

        return mask_text(text)

    def _capture(self, text: str) -> None:
        if self._closed:
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        params = message.get("start", {}).get("customParameters") if isinstance(message, dict) else None
        if isinstance(params, dict):
            params.pop("token", None)
            for key in ("from_number", "to_number"):
                if key in params:
                    params[key] = self._mask(str(params[key]))
        line = json.dumps({"t": round(self._clock() - self._t0, 3), "message": message}) + "\n"
        if self._writer is None:
            if len(self._early) < self._max_early:
                self._early.append(line)
            return
        self._queue.put(line)
        self.count += 1

    def bind(self, *, call_sid: str, caller: str, agent_number: str) -> None:
        """Start writing: the stream was verified as call ``call_sid``.

        Raises:
            ValueError: ``call_sid`` is not a Twilio call SID (it becomes the file name).
        """
        if not CALL_SID.match(call_sid):
            raise ValueError("call_sid must be a Twilio call SID")
        self.call_sid, self.caller, self.agent_number = call_sid, caller, agent_number
        self._folder.mkdir(parents=True, exist_ok=True)
        self._path = self._folder / f"{call_sid}.jsonl"
        for line in self._early:
            self._queue.put(line)
            self.count += 1
        self._early = []
        self._writer = threading.Thread(target=self._write, args=(self._path,), name="call-recorder", daemon=True)
        self._writer.start()

    def _write(self, path: pathlib.Path) -> None:
        with path.open("w", encoding="utf-8") as out:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    out.flush()
                    item.set()
                    continue
                out.write(item)

    async def flush(self) -> None:
        """Wait until everything captured so far is on disk."""
        if self._writer is None:
            return
        done = threading.Event()
        self._queue.put(done)
        await asyncio.to_thread(done.wait)

    def discard(self) -> None:
        """Write nothing (the stream was refused)."""
        self._closed = True
        self._early = []

    def transcripts(self) -> Any:
        """A pass-through processor (after STT) recording final transcripts with their times."""
        from pipecat.frames.frames import TranscriptionFrame
        from pipecat.processors.frame_processor import FrameProcessor

        recorder = self

        class _Tap(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, TranscriptionFrame) and frame.text.strip():
                    recorder.stt.append({"t": recorder._now(), "text": recorder._mask_text(frame.text.strip()[:2000])})
                await self.push_frame(frame, direction)

        return _Tap()

    def _now(self) -> float:
        return round(self._clock() - self._t0, 3)

    def agent_turns(self, is_own: Any) -> Any:
        """A pass-through processor (right after the SMS tap, before the TTS) recording the agent's turns.

        Args:
            is_own: ``frame -> bool``: the SMS processor's own lines (filler, confirmation), not recorded.
        """
        from pipecat.frames.frames import (
            InterruptionFrame,
            LLMFullResponseEndFrame,
            LLMFullResponseStartFrame,
            LLMTextFrame,
            TTSSpeakFrame,
        )
        from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

        recorder = self

        class _AgentTap(FrameProcessor):
            def __init__(self) -> None:
                super().__init__()
                self._parts: list[str] = []
                self._started = 0.0

            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if direction is FrameDirection.DOWNSTREAM:
                    if isinstance(frame, LLMFullResponseStartFrame):
                        self._parts, self._started = [], recorder._now()
                    elif isinstance(frame, LLMTextFrame):
                        self._parts.append(frame.text)
                    elif isinstance(frame, (LLMFullResponseEndFrame, InterruptionFrame)):
                        # an answer cut by the caller is recorded as far as the LLM had got
                        text = "".join(self._parts).strip()
                        if text:
                            recorder.agent.append({"t": self._started, "text": recorder._mask_text(text[:2000])})
                        self._parts = []
                    elif isinstance(frame, TTSSpeakFrame) and frame.text.strip() and not is_own(frame):
                        recorder.agent.append({"t": recorder._now(),
                                               "text": recorder._mask_text(frame.text.strip()[:2000])})
                await self.push_frame(frame, direction)

        return _AgentTap()

    async def note_inbound(self, _processor: Any, message: Any, _llm_message: Any) -> None:
        """``on_message_injected`` handler: keep the inbound text's body and time (not its attachments)."""
        self.inbound.append({"t": self._now(), "body": self._mask_text(str(message.body or "")[:3200]), "media": []})

    async def close(self) -> pathlib.Path | None:
        """Finish the file and write ``<call_sid>.meta.json`` (off the event loop)."""
        if self._closed:
            return None
        self._closed = True
        if self._writer is None or self._path is None:
            return None
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        from incall_sms.pipeline.recording import FORMAT

        meta = {"format": FORMAT, "call_sid": self.call_sid, "caller": self._mask(self.caller),
                "agent_number": self._mask(self.agent_number), "stt": self.stt, "agent": self.agent,
                "inbound": self.inbound, "description": "recorded from a live call"}
        meta_path = self._folder / f"{self.call_sid}.meta.json"
        await asyncio.to_thread(meta_path.write_text, json.dumps(meta, indent=2) + "\n", "utf-8")
        _log.info("call %s recorded (%d messages)", self.call_sid, self.count)
        return self._path
