"""Scale benchmark: concurrent simulated calls in one process until the event loop lags.

Each call is a real pipecat pipeline fed 20 ms input and output audio frames at real-time pace,
with one caller transcript (and, with ``inbound``, one text from the caller). Two variants, same
traffic: ``sms`` is ``[SmsActionProcessor, its tap, GapMeter, InboundMessageProcessor]`` (the
transcript fires one SMS to the embedded provider, 0.3 s latency); ``passthrough`` is the same
pipeline with pass-through processors in their places. A monitor measures event-loop lag (how
late a 10 ms sleep wakes up). Memory per call is the RSS growth divided by the number of calls.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from pipecat.frames.frames import EndFrame, InputAudioRawFrame, OutputAudioRawFrame, TranscriptionFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from incall_sms.actions import parse_actions
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.pipeline.audio_gaps import GapMeter
from incall_sms.processors.sms_actions import SmsActionProcessor
from incall_sms.providers.local import LocalProvider

SILENCE = b"\x00\x00" * 320
ACTIONS = parse_actions({"actions": [{"name": "link", "condition": "if the caller requests a link to the website",
                                      "content": {"template": "Menu: https://example.com/menu"}}],
                         "max_sends_per_call": 3})


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _lag_monitor(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(max(0.0, time.monotonic() - start - 0.01))


class PassThrough(FrameProcessor):
    """Stands where an SMS processor would (the baseline)."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


async def run_calls(calls: int, seconds: float = 4.0, *, inbound: bool = False, variant: str = "sms",
                    shared: Any = None, first_caller: int = 0, texts_for: int | None = None,
                    ready: Any = None) -> dict:
    """Run ``calls`` concurrent calls for ``seconds``; return lag, gaps, sends and memory.

    With ``inbound``, each caller also texts the agent once; the text goes through the inbound
    router into the call's context (counted as injected).

    Multi-worker runs (``bench/scale_out.py``) pass ``shared`` (``(registry, optouts, seen)``
    backed by Redis), number their callers from ``first_caller``, send their texts to the calls
    numbered from ``texts_for`` (another worker's: the router forwards them) and await ``ready()``
    once their calls are registered, before the traffic starts.
    """
    from incall_sms.inbound import InboundMessage, InboundRouter, InProcessCallRegistry
    from incall_sms.processors.inbound import InboundMessageProcessor

    provider = LocalProvider(latency=0.3)
    outbox = Outbox()
    if shared is None:
        registry, optouts, seen = InProcessCallRegistry(), SqliteOptOutStore(), None
    else:
        registry, optouts, seen = shared
    router = InboundRouter(registry=registry, optouts=optouts, seen=seen)
    if shared is not None:
        registry.deliver = router.hand_over  # routed texts: injected, or stored when the call is gone
    texts_for = first_caller if texts_for is None else texts_for
    injectors: list[InboundMessageProcessor] = []
    dispatcher = Dispatcher(actions=ACTIONS, provider=provider, outbox=outbox, optouts=optouts,
                            default_agent_number="+14155550100")
    rss_before = _rss_mb()
    workers, meters = [], []
    for index in range(calls):
        call = CallContext(call_id=f"CA{first_caller + index:032d}",
                           caller_number=f"+1415555{(first_caller + index) % 10000:04d}", agent_number="+14155550100")
        engine = ActionEngine(dispatcher=dispatcher, call=call, judge=EmbeddedJudge())
        engine.add_agent_text("All our links are on the website.")
        meter = GapMeter()
        meters.append(meter)
        if variant == "passthrough":
            # as many processors as the SMS variant: processor, tap, meter, inbound
            workers.append(PipelineWorker(Pipeline([PassThrough(), PassThrough(), meter, PassThrough()]),
                                          cancel_on_idle_timeout=False, params=PipelineParams()))
            continue
        processor = SmsActionProcessor(engine=engine)
        stages: list = [processor, processor.agent_tap(), meter]
        if inbound:
            injector = InboundMessageProcessor()
            injectors.append(injector)
            stages.append(injector)
            await registry.register(call.caller_number or "", "+14155550100", injector.deliver)
        workers.append(PipelineWorker(Pipeline(stages), cancel_on_idle_timeout=False, params=PipelineParams()))
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(*workers)
    rss_after = _rss_mb()  # all calls built and registered
    lags: list[float] = []
    stop = asyncio.Event()

    async def feed(worker: PipelineWorker, offset: float) -> None:
        await asyncio.sleep(0.5 + offset)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            await worker.queue_frame(InputAudioRawFrame(audio=SILENCE, sample_rate=16000, num_channels=1))
            await worker.queue_frame(OutputAudioRawFrame(audio=SILENCE, sample_rate=16000, num_channels=1))
            if n == 25:
                # a different sentence per call: the judge's per-turn caches must not make calls look alike
                await worker.queue_frame(TranscriptionFrame(
                    text=f"Can you text me the link? I'm caller number {first_caller + workers.index(worker)}.",
                    user_id="", timestamp=""))
            if inbound and variant == "sms" and n == 50:
                index = texts_for + workers.index(worker)
                await router.route(InboundMessage(
                    sid=f"SM{index:032x}", account_sid="AC" + "0" * 32, from_number=f"+1415555{index % 10000:04d}",
                    to_number="+14155550100", body="here is my order number", received_at=time.time()))
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        await worker.queue_frame(EndFrame())

    async def drive() -> None:
        if ready is not None:
            await ready()
        monitor = asyncio.get_running_loop().create_task(_lag_monitor(stop, lags))
        await asyncio.gather(*(feed(w, (i % 50) * 0.0004) for i, w in enumerate(workers)))
        stop.set()
        await monitor

    cpu_start = time.process_time()
    await asyncio.gather(runner.run(), drive())
    cpu_s = time.process_time() - cpu_start  # this process's CPU (all threads) for the calls' whole life
    inbox = await provider.inbox()
    sent = len(inbox)
    injected = sum(len(i.injected) for i in injectors)
    stored = len(await router.stored())
    await provider.aclose()
    router.close()
    outbox.close()
    if shared is None:
        optouts.close()
    steady = sorted(lags[len(lags) // 10:]) or [0.0]  # skip start-up
    gaps = [m.stats()["output"].max_gap for m in meters if m.output_times]
    return {
        "calls": calls,
        "seconds": seconds,
        "variant": variant,
        "sms_sent": sent,
        "sms_lost": calls - sent if variant == "sms" else 0,
        **({"inbound_injected": injected, "inbound_stored": stored, "inbound_lost": calls - injected - stored}
           if inbound else {}),
        "loop_lag_p99_ms": round(steady[min(len(steady) - 1, int(0.99 * len(steady)))] * 1000, 2),
        "loop_lag_max_ms": round(steady[-1] * 1000, 2),
        "audio_max_gap_ms_median_call": round(statistics.median(gaps) * 1000, 2) if gaps else None,
        **({"sids": [m.sid for m in inbox]} if shared is not None else {}),
        "cpu_ms_per_call_second": round(cpu_s * 1000 / (calls * seconds), 2),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "memory_per_call_kb": round((rss_after - rss_before) * 1024 / calls, 1),
    }


def _crossing(points: list[dict], limit: float) -> float:
    """Calls at which a curve of (calls, median p99 lag) first rises over ``limit`` (linear between levels)."""
    for low, high in zip([None, *points], points, strict=False):
        if high["loop_lag_p99_ms"] > limit:
            if low is None:
                return high["calls"] * limit / high["loop_lag_p99_ms"]  # over at the first level: scaled down
            span = high["loop_lag_p99_ms"] - low["loop_lag_p99_ms"]
            share = (limit - low["loop_lag_p99_ms"]) / span if span > 0 else 0.0
            return low["calls"] + share * (high["calls"] - low["calls"])
    return float(points[-1]["calls"]) if points else 0.0  # never over: at least the last level


async def paired_scale(*, start: int = 8, seconds: float = 4.0, trials: int = 3, lag_limit_ms: float = 20.0,
                       levels: int = 4, refine: int = 3, max_calls: int = 400) -> dict:
    """Sustained calls of the pass-through and the SMS pipelines, measured side by side.

    A single 4-second run per level is too noisy on a shared 2-core host (a curve that held 4.7 ms at
    15 calls after 8.5 ms at 10), and two curves run one after the other see different hosts. So:

    1. Coarse (pass-through, one run each): double the calls from ``start`` until the p99 loop lag
       passes the limit.
    2. Fine: ``levels`` levels from half that level to it; at each, both variants run ``trials``
       times, alternating which goes first; a level's figure is the median p99 lag (the point kept
       is that median run). A variant still under the limit at the top gets levels above it; then
       up to ``refine`` times, a level halfway between each variant's last level under the limit
       and its first over it (the host's load moves the knee between the coarse and the fine pass).
    3. A variant's sustained calls: where its median curve crosses the limit, interpolated linearly
       between the last level under it and the first over it (``crossing``); reported floored.
       The ratio is of the crossings (no rounding of either to whole calls).
    4. Each variant's CPU per call-second (this process, all threads; median over all its paired runs):
       the capacity ratio the CPU alone predicts, without the loop lag's noise.
    """
    calls = start
    coarse = []
    while True:
        coarse.append(await run_calls(calls, seconds, inbound=True, variant="passthrough"))
        if coarse[-1]["loop_lag_p99_ms"] > lag_limit_ms or calls >= max_calls:
            break
        calls = min(max_calls, calls * 2)
    top = coarse[-1]["calls"]
    low = max(2, top // 2)
    grid = sorted({round(low + (top - low) * i / (levels - 1)) for i in range(levels)})
    runs: dict[str, dict[int, list[dict]]] = {"passthrough": {}, "sms": {}}

    async def measure(level: int) -> None:
        for trial in range(trials):
            order = ("passthrough", "sms") if trial % 2 == 0 else ("sms", "passthrough")
            for variant in order:
                runs[variant].setdefault(level, []).append(
                    await run_calls(level, seconds, inbound=True, variant=variant))

    def curve(variant: str) -> list[dict]:
        points = []
        for level in sorted(runs[variant]):
            ordered = sorted(runs[variant][level], key=lambda r: r["loop_lag_p99_ms"])
            median = dict(ordered[len(ordered) // 2])
            median["trials_p99_ms"] = [r["loop_lag_p99_ms"] for r in runs[variant][level]]
            points.append(median)
        return points

    for level in grid:
        await measure(level)
    if any(curve(v)[0]["loop_lag_p99_ms"] > lag_limit_ms for v in runs) and grid[0] > 2:
        await measure(max(2, grid[0] // 2))  # a variant over the limit already at the bottom: look lower
    extra = top
    while any(all(p["loop_lag_p99_ms"] <= lag_limit_ms for p in curve(v)) for v in runs) and extra < max_calls:
        extra = min(max_calls, round(extra * 1.5))
        await measure(extra)
    for _ in range(refine):  # a level between each variant's last one under the limit and its first one over
        wanted = set()
        for variant in runs:
            points = curve(variant)
            over = next((i for i, p in enumerate(points) if p["loop_lag_p99_ms"] > lag_limit_ms), None)
            if over:
                under, above = points[over - 1]["calls"], points[over]["calls"]
                if above - under > max(1, under // 10):
                    wanted.add((under + above) // 2)
        if not wanted:
            break
        for level in sorted(wanted):
            await measure(level)
    result = {}
    for variant in runs:
        points = curve(variant)
        crossing = _crossing(points, lag_limit_ms)
        # CPU per call-second over every paired run: capacity without the lag's noise
        cpu = statistics.median(r["cpu_ms_per_call_second"] for level in runs[variant].values() for r in level)
        result[variant] = {"lag_limit_ms": lag_limit_ms, "sustained_calls": int(crossing),
                           "crossing": round(crossing, 2), "curve": points, "cpu_ms_per_call_second": round(cpu, 2)}
    result["coarse"] = coarse
    return result


async def cpu_share(calls: int, seconds: float) -> dict:
    """Our share of the event loop's CPU time with ``calls`` SMS calls (cProfile, own time per function).

    Ours: the package (``incall_sms``: core, pipeline, processors, media). The rest: pipecat, asyncio,
    aiohttp, SQLite... (cProfile slows everything alike; the share is what matters).
    """
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU time: the loop's idle wait in epoll does not count
    profile.enable()
    try:
        await run_calls(calls, seconds, inbound=True, variant="sms")
    finally:
        profile.disable()
    return {"calls": calls, "seconds": seconds, **_own_time(profile)}


def _own_time(profile: object) -> dict:
    import pstats

    import incall_sms

    package = Path(incall_sms.__file__).resolve().parent.parent
    ours_dirs = tuple(f"{package}/{d}/" for d in ("incall_sms", "pipeline", "processors", "media"))
    stats = pstats.Stats(profile).stats  # type: ignore[arg-type, attr-defined]
    total = sum(row[2] for row in stats.values())
    ours = sum(row[2] for (filename, _line, _name), row in stats.items()
               if str(Path(filename).resolve()).startswith(ours_dirs))
    return {"ours_s": round(ours, 3), "total_s": round(total, 3), "share": round(ours / total, 4) if total else None}


def plot(curve: dict, path: Path, *, baseline: dict | None = None) -> None:
    """Draw calls vs p99 loop lag (and the limit) as a PNG with Pillow; ``baseline`` (pass-through) in grey."""
    from PIL import Image, ImageDraw

    points = curve["curve"] + (baseline["curve"] if baseline else [])
    width, height, margin = 640, 400, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    max_calls = max(p["calls"] for p in points)
    max_lag = max(max(p["loop_lag_p99_ms"] for p in points), curve["lag_limit_ms"] * 1.5)

    def xy(calls: float, lag: float) -> tuple[float, float]:
        return (margin + (width - 2 * margin) * calls / max_calls,
                height - margin - (height - 2 * margin) * lag / max_lag)

    draw.line([(margin, height - margin), (width - margin, height - margin)], fill="black")
    draw.line([(margin, margin), (margin, height - margin)], fill="black")
    limit = curve["lag_limit_ms"]
    draw.line([xy(0, limit), xy(max_calls, limit)], fill=(200, 0, 0))
    draw.text((width - margin - 120, xy(0, limit)[1] - 14), f"{limit:.0f} ms limit", fill=(200, 0, 0))
    for series, colour, labelled in ((baseline, (150, 150, 150), False), (curve, (0, 60, 200), True)):
        if series is None:
            continue
        own = sorted(series["curve"], key=lambda p: p["calls"])
        coords = [xy(p["calls"], p["loop_lag_p99_ms"]) for p in own]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=3)
        for (x, y), p in zip(coords, own, strict=True):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            if labelled:
                label = f"{p['calls']}: {p['loop_lag_p99_ms']:.1f} ms"
                draw.text((x - 110 if x > width - 130 else x + 6, y - 16 if y > margin + 20 else y + 6), label,
                          fill="black")
    draw.text((margin, 15), "Event-loop lag (p99) vs concurrent calls, one process, 2 cores", fill="black")
    if baseline is not None:
        draw.text((margin, 30), "blue: SMS processor + tap + inbound   grey: pass-through, same traffic",
                  fill="black")
    draw.text((width // 2 - 60, height - 30), "concurrent calls", fill="black")
    draw.text((5, margin - 20), "lag ms", fill="black")
    image.save(path)
