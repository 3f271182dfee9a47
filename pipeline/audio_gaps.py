"""Measuring the audio path: gaps between consecutive audio frames at a point of the pipeline."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["GapMeter", "GapStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class GapStats:
    """Inter-arrival statistics of one kind of audio frame (seconds).

    Attributes:
        frames: Frames seen.
        max_gap: Largest gap between consecutive frames.
        p99_gap: 99th percentile gap.
        mean_gap: Mean gap.
    """

    frames: int
    max_gap: float
    p99_gap: float
    mean_gap: float

    @classmethod
    def from_times(cls, times: list[float]) -> GapStats:
        """Statistics of a list of arrival times."""
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        if not gaps:
            return cls(frames=len(times), max_gap=0.0, p99_gap=0.0, mean_gap=0.0)
        p99 = gaps[min(len(gaps) - 1, round(0.99 * (len(gaps) - 1)))]
        return cls(frames=len(times), max_gap=gaps[-1], p99_gap=p99, mean_gap=sum(gaps) / len(gaps))


class GapMeter(FrameProcessor):
    """Pass-through processor that timestamps every input and output audio frame it sees.

    Args:
        clock: Monotonic clock (seconds).
        queued_at: Frame id -> time it was queued; when given, the added delay of each
            input frame up to this point is recorded too.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        queued_at: dict[int, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._queued_at = queued_at
        self.input_times: list[float] = []
        self.output_times: list[float] = []
        self.input_delays: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Record audio arrival times; pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            now = self._clock()
            self.input_times.append(now)
            if self._queued_at is not None:
                queued = self._queued_at.pop(frame.id, None)
                if queued is not None:
                    self.input_delays.append(now - queued)
        elif isinstance(frame, OutputAudioRawFrame):
            self.output_times.append(self._clock())
        await self.push_frame(frame, direction)

    def delay_stats(self) -> tuple[float, float]:
        """Max and p99 delay (seconds) between queueing an input frame and its arrival here."""
        if not self.input_delays:
            return 0.0, 0.0
        ordered = sorted(self.input_delays)
        return ordered[-1], ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def stats(self) -> dict[str, GapStats]:
        """Gap statistics for ``input`` and ``output`` audio."""
        return {"input": GapStats.from_times(self.input_times), "output": GapStats.from_times(self.output_times)}
