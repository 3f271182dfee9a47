"""The agent's voice played out on the call clock, where a replay has no output transport.

A live call's output transport plays the TTS audio in real time and tells the pipeline when
the agent starts and stops talking; pipecat's assistant aggregator relies on that to hold an
appended message (an inbound text) until the agent has finished its sentence. A replay runs
faster than real time with no transport, so :class:`SpeechPlayout` stands in its place: every
TTS audio frame occupies its duration of call time on one output channel, in order, and the
processor pushes ``BotStartedSpeakingFrame``/``BotStoppedSpeakingFrame`` both ways as
pipecat's ``BaseOutputTransport`` does (stopped :data:`BOT_VAD_STOP_SECS` after the last
audio). As in a transport, the frames that follow audio (the TTS text, the end of the LLM's
response) go on downstream only once that audio has played, so the assistant aggregator sees
the agent's turn end when the caller would hear it end. An ``InterruptionFrame`` (the caller
barging in) cuts what is still queued; the call's end stops the agent mid-sentence.
:attr:`SpeechPlayout.speech` says what the agent said and when it was heard.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BOT_VAD_STOP_SECS

__all__ = ["Speech", "SpeechPlayout"]


@dataclasses.dataclass(slots=True)
class Speech:
    """One utterance of the agent (one TTS context), on the call clock.

    Attributes:
        text: What the TTS said (its text frames, joined).
        queued: When its first frame reached the output (the agent decided to say it).
        start: When its first audio was heard, or ``None`` if none was.
        end: When its last audio ended (or was cut).
        interrupted: Cut by the caller before it ended.
        text_type: The ``text_type`` of its text frames (the SMS processor tags its own lines).
    """

    text: str = ""
    queued: float = 0.0
    start: float | None = None
    end: float | None = None
    interrupted: bool = False
    text_type: str = ""


class SpeechPlayout(FrameProcessor):
    """Plays TTS audio out on a call clock and reports when the agent talks (see module docs).

    Place it right after the TTS. Every frame passes on unchanged.

    Args:
        clock: Seconds of call time (a replay's :class:`~incall_sms.pipeline.call_clock.CallClock.now`).
        speed: Call seconds per wall-clock second (how fast the clock runs).
        stop_secs: Silence after the last audio before the agent counts as stopped.
    """

    def __init__(self, *, clock: Callable[[], float], speed: float, stop_secs: float = BOT_VAD_STOP_SECS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._speed = speed
        self._stop_secs = stop_secs
        self._until = 0.0
        self._speaking = False
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._by_context: dict[str, Speech] = {}
        self._held: collections.deque[tuple[float, Frame]] = collections.deque()
        self._tts_text: dict[int, str] = {}
        self.speech: list[Speech] = []

    @property
    def speaking(self) -> bool:
        """Whether the agent is talking (audio playing, or within ``stop_secs`` of its end)."""
        return self._speaking

    def _utterance(self, context_id: str | None) -> Speech:
        key = context_id or ""
        speech = self._by_context.get(key)
        if speech is None or (not key and speech.end is not None and speech.end < self._clock()):
            speech = Speech(queued=round(self._clock(), 3))
            self._by_context[key] = speech
            self.speech.append(speech)
        return speech

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Schedule audio on the output channel; other frames follow the audio queued before them."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._watcher is None:
            await self.push_frame(frame, direction)
            self._watcher = self.create_task(self._watch(), "speech-playout")
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_watching()
            await self._release(everything=True)
            if self._speaking:  # the call ended mid-sentence: the agent stops talking, as a transport says
                self._speaking = False
                await self._push_both(BotStoppedSpeakingFrame, BotStoppedSpeakingFrame())
        elif isinstance(frame, InterruptionFrame):
            self._cut()
            await self._release(everything=True)
        elif direction is FrameDirection.DOWNSTREAM and isinstance(frame, TTSAudioRawFrame):
            await self._play(frame)
        elif direction is FrameDirection.DOWNSTREAM and not isinstance(frame, SystemFrame):
            self._note_text(frame)
            if self._held or self._until > self._clock():
                # like an output transport: a frame after audio goes on once that audio has played
                self._held.append((self._until, frame))
                self._wake.set()
                return
        await self.push_frame(frame, direction)

    def _note_text(self, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame):  # after the audio; the aggregated text came before it
            speech = self._utterance(frame.context_id)
            speech.text_type = speech.text_type or str(frame.text_type)
            if frame.text.strip():
                self._tts_text[id(speech)] = f"{self._tts_text.get(id(speech), '')} {frame.text.strip()}".strip()
                if not speech.text:
                    speech.text = self._tts_text[id(speech)]
        elif isinstance(frame, AggregatedTextFrame):
            speech = self._utterance(getattr(frame, "context_id", None))
            speech.text_type = str(frame.text_type)
            if frame.text.strip():
                speech.text = f"{speech.text} {frame.text.strip()}".strip()

    async def _play(self, frame: TTSAudioRawFrame) -> None:
        seconds = len(frame.audio) / (2 * max(1, frame.num_channels) * max(1, frame.sample_rate))
        now = self._clock()
        speech = self._utterance(frame.context_id)
        begins = max(now, self._until)
        if speech.start is None:
            speech.start = round(begins, 3)
        self._until = begins + seconds
        speech.end = round(self._until, 3)
        if not self._speaking:
            self._speaking = True
            await self._push_both(BotStartedSpeakingFrame, BotStartedSpeakingFrame())
        await self.push_frame(frame)
        self._wake.set()

    def _cut(self) -> None:
        """The caller barged in: what has not been heard yet is dropped."""
        now = round(self._clock(), 3)
        if self._until <= now:
            return
        for speech in self.speech:
            if speech.end is not None and speech.end > now:
                speech.interrupted = True
                if speech.start is not None and speech.start >= now:
                    speech.start = None  # never heard
                speech.end = now if speech.start is not None else None
        self._until = now
        self._wake.set()

    async def _release(self, *, everything: bool = False) -> None:
        now = self._clock()
        while self._held and (everything or self._held[0][0] <= now):
            _at, frame = self._held.popleft()
            await self.push_frame(frame)

    async def _push_both(self, kind: type[Frame], downstream: Frame) -> None:
        upstream = kind()
        upstream.broadcast_sibling_id = downstream.id
        downstream.broadcast_sibling_id = upstream.id
        await self.push_frame(downstream)
        await self.push_frame(upstream, FrameDirection.UPSTREAM)

    async def _watch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._speaking or self._held:
                await self._release()
                now = self._clock()
                if self._speaking and self._until + self._stop_secs <= now:
                    self._speaking = False
                    await self._push_both(BotStoppedSpeakingFrame, BotStoppedSpeakingFrame())
                due = [self._held[0][0]] if self._held else []
                if self._speaking:
                    due.append(self._until + self._stop_secs)
                if not due:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):  # new audio or a cut wakes it early
                    await asyncio.wait_for(self._wake.wait(), max(0.002, (min(due) - now) / self._speed))

    async def _stop_watching(self) -> None:
        if self._watcher is not None:
            await self.cancel_task(self._watcher)
            self._watcher = None

    async def cleanup(self) -> None:
        """Stop the watcher task."""
        await super().cleanup()
        await self._stop_watching()
