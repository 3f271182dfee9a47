"""One simulated voice call's CPU, split by part (VAD, STT, TTS, SMS), for sizing a fleet.

The same scripted call (caller lines spoken by the offline Piper caller voice, synthesised before
the measurement starts) is played into a pipecat pipeline at real-time pace, 20 ms frames, a
silence after each line, as a phone line delivers it. The pipeline is built up one part at a time,
each level in its own fresh process:

1. ``base``: frames flow through pipecat's user/assistant aggregators and the stand-in agent LLM;
   the caller's words enter as transcripts at the end of each line (no VAD, no STT, no TTS);
2. ``+vad``: pipecat's Silero VAD (``VADProcessor``) hears the audio;
3. ``+stt``: Whisper tiny.en (``WhisperSTTService``, segmented) produces the transcripts instead;
4. ``+tts``: the agent's answers are spoken by Piper (``PiperTTSService``);
5. ``+sms_logic``: level 2 plus this component (``SmsActionProcessor`` + tap: embedded judge,
   variables, outbox, the local provider), nothing spoken (without Whisper, whose CPU varies by
   more than ours from run to run);
6. ``full``: everything: level 4 plus this component, whose filler and confirmation lines Piper speaks;
7. ``sms_profiled``: level 5 under cProfile (thread CPU time of the event loop): this component's own
   CPU directly (its modules' own time), since its share is below the run-to-run noise of the
   differences.

A part's CPU is a difference of process CPU (user + system, every thread: ONNX Runtime and
CTranslate2 run their own) over the call only (model loading excluded): ``vad`` = 2 - 1, ``stt`` =
3 - 2, ``tts`` = 4 - 3 (the agent's answers), ``sms`` = 5 - 2 (our logic), ``sms_lines`` = 6 - 4 - ``sms``
(speaking our lines). The agent LLM of a live call is remote (its local CPU is HTTP streaming):
``base`` stands for it. Run::

    python bench/call_cpu.py [--lines N] [--repeats R]    # JSON: CPU seconds per part, per call minute, shares
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

#: level -> (VAD, STT, TTS, SMS)
LEVELS = {
    "base": (False, False, False, False),
    "+vad": (True, False, False, False),
    "+stt": (True, True, False, False),
    "+tts": (True, True, True, False),
    "+sms_logic": (True, False, False, True),
    "full": (True, True, True, True),
    "sms_profiled": (True, False, False, True),
}
#: Levels run under cProfile (thread CPU time of the event loop), not part of the differences.
PROFILED = ("sms_profiled",)
SCRIPT = (
    "Hi, I'd like to book a table for four on Friday evening.",
    "Could you send me the link to your website, please?",
    "And what are your opening hours on Sunday?",
    "Great, can you text me the confirmation?",
    "That's all, thanks, bye!",
)
PAUSE_S = 2.5  # silence after each caller line (the agent answers meanwhile)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _one_call(level: str, lines: int) -> dict[str, Any]:
    from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TranscriptionFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from incall_sms.actions import load_actions
    from incall_sms.dispatcher import CallContext, Dispatcher
    from incall_sms.engine import ActionEngine
    from incall_sms.judges.embedded import EmbeddedJudge
    from incall_sms.media.offline_speech import OfflineSpeech, piper_tts, whisper_stt
    from incall_sms.optout import SqliteOptOutStore
    from incall_sms.outbox import Outbox
    from incall_sms.pipeline import DEFAULT_ACTIONS
    from incall_sms.pipeline.local_agent import LocalAgentLLM
    from incall_sms.pipeline.simulation import _user_params
    from incall_sms.processors.sms_actions import SmsActionProcessor
    from incall_sms.providers.local import LocalProvider
    from incall_sms.variables import PatternExtractor

    vad, stt, speak, with_sms = LEVELS[level]
    speech = OfflineSpeech()
    audio = [await speech.caller_audio(text) for text in SCRIPT[:lines]]  # before the measurement

    front: list[FrameProcessor] = []
    if vad:
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.processors.audio.vad_processor import VADProcessor

        front.append(VADProcessor(vad_analyzer=SileroVADAnalyzer()))
    if stt:
        front.append(await asyncio.to_thread(whisper_stt))
    tts: FrameProcessor = piper_tts() if speak else IdentityFilter()  # below +tts: nothing spoken
    with tempfile.TemporaryDirectory() as folder:
        sms_parts: list[FrameProcessor] = []
        tap: list[FrameProcessor] = []
        if with_sms:
            provider = LocalProvider(pathlib.Path(folder) / "phone.db", latency=0.3)
            dispatcher = Dispatcher(actions=load_actions(DEFAULT_ACTIONS), provider=provider,
                                    outbox=Outbox(pathlib.Path(folder) / "outbox.db"),
                                    optouts=SqliteOptOutStore(pathlib.Path(folder) / "optouts.db"),
                                    pool_numbers=("+14155550111",), default_agent_number="+14155550100")
            engine = ActionEngine(dispatcher=dispatcher, judge=EmbeddedJudge(), extractor=PatternExtractor(),
                                  call=CallContext(call_id="CPU1", caller_number="+14155550123",
                                                   agent_number="+14155550100"))
            sms = SmsActionProcessor(engine=engine)
            sms_parts, tap = [sms], [sms.agent_tap()]
        pair = LLMContextAggregatorPair(LLMContext(), user_params=_user_params(vad))
        worker = PipelineWorker(
            Pipeline([*front, *sms_parts, pair.user(), LocalAgentLLM(), *tap, tts, pair.assistant()]),
            cancel_on_idle_timeout=False, params=PipelineParams(audio_in_sample_rate=16000))
        started = asyncio.Event()

        @worker.event_handler("on_pipeline_started")
        async def _started(_worker: Any, _frame: Any) -> None:
            started.set()

        async def drive() -> dict[str, Any]:
            await asyncio.wait_for(started.wait(), 120)
            await asyncio.sleep(1.0)  # models warm (first inference paid before the call)
            profile = None
            if level in PROFILED:
                import cProfile

                profile = cProfile.Profile(time.thread_time)  # the loop's CPU; its idle wait does not count
                profile.enable()
            cpu0, wall0 = _cpu(), time.monotonic()
            chunk, sent = 640, 0
            for text, speech_pcm in zip(SCRIPT, audio, strict=False):
                spoken_frames = -(-len(speech_pcm) // chunk)
                pcm = speech_pcm + b"\x00" * int(32000 * PAUSE_S)
                pcm += b"\x00" * (-len(pcm) % chunk)
                for number, index in enumerate(range(0, len(pcm), chunk), start=1):
                    await worker.queue_frame(InputAudioRawFrame(audio=pcm[index:index + chunk], sample_rate=16000,
                                                                num_channels=1))
                    sent += 1
                    if not stt and number == spoken_frames:  # no STT: the line's words as its transcript
                        await worker.queue_frame(TranscriptionFrame(text=text, user_id="", timestamp=""))
                    delay = wall0 + sent * 0.02 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
            result: dict[str, Any] = {"cpu_s": round(cpu, 3), "call_s": round(wall, 2)}
            if profile is not None:
                profile.disable()
                result |= _ours(profile)
            await worker.queue_frame(EndFrame())
            return result

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        _, result = await asyncio.gather(runner.run(), drive())
        if with_sms:
            result["sms_sent"] = len(await provider.inbox())
            await provider.aclose()
        return result


def _ours(profile: Any) -> dict[str, Any]:
    """Own CPU time of this component's modules (the core and the processors) vs the whole loop's."""
    import pstats

    import incall_sms

    root = pathlib.Path(incall_sms.__file__).resolve().parent
    ours = (f"{root}/", f"{root.parent}/processors/")  # installed: incall_sms/ (+ processors/ inside)
    skip = (f"{root}/pipeline/", f"{root}/media/", f"{root.parent}/pipeline/", f"{root.parent}/media/")
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values())
    mine = sum(row[2] for (filename, _line, _name), row in stats.items()
               if (path := str(pathlib.Path(filename).resolve())).startswith(ours) and not path.startswith(skip))
    return {"loop_cpu_s": round(total, 3), "sms_own_cpu_s": round(mine, 3)}


def measure(lines: int = len(SCRIPT), repeats: int = 1) -> dict[str, Any]:
    """Each level in a fresh process (``repeats`` times, the lowest CPU kept); the split as JSON."""
    by_level: dict[str, dict[str, Any]] = {}
    for level in LEVELS:
        runs = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, __file__, "--level", level, "--lines", str(lines)],
                                 capture_output=True, text=True, timeout=600, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        by_level[level] = min(runs, key=lambda r: r["cpu_s"]) | {
            "spread": round(max(r["cpu_s"] for r in runs) - min(r["cpu_s"] for r in runs), 3)}
    cpu = {level: run["cpu_s"] for level, run in by_level.items()}
    call_s = by_level["full"]["call_s"]
    total = cpu["full"]
    sms = cpu["+sms_logic"] - cpu["+vad"]
    parts = {
        "base": cpu["base"],
        "vad": cpu["+vad"] - cpu["base"],
        "stt": cpu["+stt"] - cpu["+vad"],
        "tts": cpu["+tts"] - cpu["+stt"],
        "sms": sms,
        "sms_lines": cpu["full"] - cpu["+tts"] - sms,
    }
    parts = {k: round(v, 3) for k, v in parts.items()}
    return {
        "call_s": call_s,
        "caller_lines": lines,
        "cpu_s_total": total,
        "cpu_s": parts,
        "cpu_s_per_call_minute": {k: round(v * 60 / call_s, 2) for k, v in parts.items()},
        "share": {k: round(v / total, 3) if total > 0 else None for k, v in parts.items()},
        "calls_per_core": round(call_s / total, 1) if total > 0 else None,
        "sms_sent": by_level["full"].get("sms_sent"),
        # direct: the component's own CPU on the loop (cProfile, which slows everything alike)
        "sms_own_cpu_s_profiled": by_level["sms_profiled"]["sms_own_cpu_s"],
        "sms_own_share_of_loop_profiled": round(by_level["sms_profiled"]["sms_own_cpu_s"]
                                                / by_level["sms_profiled"]["loop_cpu_s"], 4),
        "sms_own_share_of_call_cpu": round(by_level["sms_profiled"]["sms_own_cpu_s"] / total, 4) if total else None,
        # the spread of the repeats (max - min) of each level: differences smaller than this are noise
        "noise_cpu_s": {level: run.get("spread", 0.0) for level, run in by_level.items()},
        "levels": by_level,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", choices=list(LEVELS), help="run one level in this process (internal)")
    parser.add_argument("--lines", type=int, default=len(SCRIPT))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.level:
        from loguru import logger

        logger.remove()
        print(json.dumps(asyncio.run(_one_call(args.level, args.lines))))
        return
    print(json.dumps(measure(args.lines, args.repeats), indent=2))


if __name__ == "__main__":
    main()
