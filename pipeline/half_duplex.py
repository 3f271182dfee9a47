"""Half-duplex guard: the microphone is not heard while the agent's voice plays on the speaker.

A laptop's microphone hears its own speaker. Without echo cancellation (pipecat's
``LocalAudioTransport`` has none, and neither has a plain sound card) the agent's voice comes
back in as the caller: the STT transcribes it and the agent answers itself, and an SMS
condition could fire on the agent's own words ("I'm texting you the link").

:class:`HalfDuplexGuard` stands right after the input transport. While the agent is speaking
(``BotStartedSpeakingFrame`` .. ``BotStoppedSpeakingFrame``, which the output transport sends
upstream) and for a short tail after it (the speaker's buffer and the room's echo), the
caller's audio frames are replaced by silence of the same length: VAD and STT keep their
cadence and hear nothing. The price is that the caller cannot barge in; with headphones there
is no echo, and the guard is left out (``simulate --mic --headphones``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["HalfDuplexGuard"]


class HalfDuplexGuard(FrameProcessor):
    """Silences the caller's audio while the agent speaks, and for ``tail_s`` after.

    Args:
        tail_s: Seconds the microphone stays silenced after the agent stopped speaking.
        clock: Monotonic clock (seconds); injectable for tests.
    """

    def __init__(self, *, tail_s: float = 0.6, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tail_s < 0:
            raise ValueError("tail_s must be >= 0")
        self._tail_s = tail_s
        self._clock = clock
        self._speaking = False
        self._open_at = 0.0
        #: Caller audio frames silenced so far.
        self.silenced_frames = 0

    @property
    def muted(self) -> bool:
        """Whether caller audio is being silenced now."""
        return self._speaking or self._clock() < self._open_at

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Track the agent's speech; pass caller audio on, silenced while muted."""
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self._speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._speaking = False
            self._open_at = self._clock() + self._tail_s
        elif isinstance(frame, InputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM and self.muted:
            self.silenced_frames += 1
            frame.audio = bytes(len(frame.audio))  # in place: id, pts, transport source and metadata kept
        await self.push_frame(frame, direction)
