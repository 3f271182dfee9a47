"""Running a real pipecat pipeline in tests and benchmarks, with paced audio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, OutputAudioRawFrame, TTSTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

SILENCE_20MS_16K = b"\x00\x00" * 320


class SpokenText(FrameProcessor):
    """Records the text the TTS says (TTSTextFrame)."""

    def __init__(self):
        super().__init__()
        self.texts = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self.texts.append(frame.text)
        await self.push_frame(frame, direction)


class NaiveSmsProcessor(FrameProcessor):
    """What not to do: awaits a slow send inside process_frame (for comparisons only)."""

    def __init__(self, send: Callable[[], Awaitable[object]], trigger: Callable[[Frame], bool], **kwargs):
        super().__init__(**kwargs)
        self._send = send
        self._trigger = trigger

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if self._trigger(frame):
            await self._send()
        await self.push_frame(frame, direction)


async def run_pipeline(
    processors: Sequence[FrameProcessor],
    script: Callable[[PipelineWorker], Awaitable[None]],
    *,
    audio_seconds: float = 0.0,
    audio_interval: float = 0.02,
    end: bool = True,
) -> None:
    """Run ``processors`` in a pipeline; ``script(worker)`` queues frames while paced audio flows.

    Audio: one InputAudioRawFrame (system frame) and one OutputAudioRawFrame (data frame) every
    ``audio_interval`` seconds for ``audio_seconds``, queued at the pipeline's start.
    """
    worker = PipelineWorker(Pipeline(list(processors)), cancel_on_idle_timeout=False, params=PipelineParams())
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    async def audio():
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < audio_seconds:
            await worker.queue_frame(InputAudioRawFrame(audio=SILENCE_20MS_16K, sample_rate=16000, num_channels=1))
            await worker.queue_frame(OutputAudioRawFrame(audio=SILENCE_20MS_16K, sample_rate=16000, num_channels=1))
            n += 1
            await asyncio.sleep(max(0.0, start + n * audio_interval - time.monotonic()))

    async def drive():
        try:
            await asyncio.wait_for(started.wait(), 5)
            await asyncio.gather(audio(), script(worker))
        except BaseException:
            await worker.cancel()
            raise
        if end:
            await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())


__all__ = ["SILENCE_20MS_16K", "FrameDirection", "NaiveSmsProcessor", "SpokenText", "run_pipeline"]
