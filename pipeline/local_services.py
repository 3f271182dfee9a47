"""Offline stand-in services for the simulation and tests (no keys, no network).

* :class:`ToneTTSService`: a real pipecat ``TTSService`` that "speaks" any text as
  a soft tone whose duration follows the text length (about 14 characters per second),
  in 20 ms chunks. Where a real offline voice is installed (Piper), the simulation
  uses that instead; this keeps the pipeline honest about timing either way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

__all__ = ["ToneTTSService"]


@dataclass
class ToneTTSSettings(TTSSettings):
    """Settings of :class:`ToneTTSService` (none beyond the base)."""


class ToneTTSService(TTSService):
    """Deterministic offline TTS: text in, tone audio out (duration ~ text length).

    Args:
        chars_per_second: Speaking rate used for the duration.
        sample_rate: Output sample rate (Hz).
    """

    Settings = ToneTTSSettings
    _settings: Settings

    def __init__(self, *, chars_per_second: float = 14.0, sample_rate: int = 16000, **kwargs: Any) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=sample_rate,
            settings=self.Settings(model=None, voice="tone", language=None),
            **kwargs,
        )
        self._cps = chars_per_second
        self._rate = sample_rate
        samples = int(sample_rate * 0.02)
        # one 20 ms chunk of a 200 Hz tone (a whole number of periods), computed once
        self._chunk = b"".join(
            int(1200 * math.sin(2 * math.pi * 200 * n / sample_rate)).to_bytes(2, "little", signed=True)
            for n in range(samples)
        )

    def can_generate_metrics(self) -> bool:
        """Metrics are supported."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Yield 20 ms tone chunks for ``text`` (cheap: the chunk is precomputed)."""
        seconds = max(0.2, len(text) / self._cps)
        for index in range(int(seconds / 0.02)):
            if index % 25 == 0:
                await asyncio.sleep(0)  # let the loop breathe, as a network TTS would
            yield TTSAudioRawFrame(audio=self._chunk, sample_rate=self._rate, num_channels=1, context_id=context_id)
