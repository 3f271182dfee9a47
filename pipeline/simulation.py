"""The local simulation: a whole call on this machine, no phone, no keys, no network.

The same pipeline pieces as the live agent (SMS processor and tap, pipecat's context
aggregators, a TTS service, inbound-message injection), with local stand-ins where a
live call has remote services:

* caller: a script of lines (``caller: ...``), inbound texts (``text: ...``) and
  ``hangup``; or typed (or piped) on stdin with ``--interactive`` (end of input hangs up;
  empty lines are ignored). With voice on, caller lines are spoken by Piper over an 8 kHz
  mu-law line and recognised by pipecat's Silero VAD + WhisperSTTService; with voice off
  they enter as final transcripts;
* agent LLM: :class:`~incall_sms.pipeline.local_agent.LocalAgentLLM` (labelled "local stand-in"),
  or pipecat's ``OpenAILLMService`` when ``SMS_AGENT_LLM_URL`` is set (e.g. a local Ollama);
* TTS: pipecat's ``PiperTTSService`` (voice on) or the offline
  :class:`~incall_sms.pipeline.local_services.ToneTTSService`;
* SMS provider: the embedded :class:`~incall_sms.providers.local.LocalProvider`,
  whose "phone inbox" is shown as texts arrive.

Ctrl-C ends the call the way a hang-up does (call-end actions judged, texts in flight
finish within the grace period or stay in the outbox) and :func:`simulate` reports it as
interrupted (the CLI exits 130); a second Ctrl-C cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, TranscriptionFrame, TTSTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner
from rich.console import Console
from rich.table import Table

from incall_sms.actions import load_actions
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import ActionEngine
from incall_sms.events import SmsEvent, SmsEventKind
from incall_sms.inbound import InboundMedia, InboundMessage, InboundRouter, InProcessCallRegistry
from incall_sms.judges.base import ConditionJudge, condition_specs, warmed
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.judges.local import LocalModelJudge
from incall_sms.judges.select import local_model_available, make_judge
from incall_sms.local_model import MODELS, QWEN_CODER_1_5B, LocalModel
from incall_sms.media.loopback_host import LoopbackMediaHost
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.pipeline.local_agent import LocalAgentLLM
from incall_sms.pipeline.local_services import ToneTTSService
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import SmsActionProcessor
from incall_sms.providers.local import LocalProvider
from incall_sms.variables import PatternExtractor

__all__ = ["ScriptStep", "SimulationResult", "load_script", "simulate"]

CALLER = "+14155550123"
AGENT = "+14155550100"
POOL = ("+14155550111",)
SYSTEM_PROMPT = (
    "You are the phone agent of a restaurant. Keep answers short. Texts (SMS) are sent by a separate "
    "system which confirms them itself: never claim you sent a text."
)
#: For a real model as the agent (``--agent local`` or ``SMS_AGENT_LLM_URL``): the facts the stand-in knows.
AGENT_FACTS = (
    " The restaurant is at 500 Market St, Suite 2, San Francisco, open every day from 11 am to 10 pm; the "
    "menu and booking page is on the website. You can book tables: confirm the party size, day and time the "
    "caller asked for (Friday evenings: 7 pm). Answer in one or two short spoken sentences."
)


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptStep:
    """One step of a simulated call.

    ``say`` (caller speaks), ``text`` (caller texts the agent), ``mms`` (caller texts a photo
    with this caption), ``hangup``.
    """

    kind: str
    text: str = ""


def load_script(path: str | pathlib.Path) -> list[ScriptStep]:
    """Read a call script (``caller: ...``, ``text: ...``, ``hangup``; ``#`` comments).

    Raises:
        ValueError: A line is not understood (the line number is named).
    """
    steps = []
    for number, raw in enumerate(pathlib.Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "hangup":
            steps.append(ScriptStep("hangup"))
            continue
        kind, _, text = line.partition(":")
        kind = kind.strip().lower()
        if kind not in ("caller", "text", "mms") or not text.strip():
            raise ValueError(f"line {number}: expected 'caller: ...', 'text: ...', 'mms: ...' or 'hangup'")
        steps.append(ScriptStep({"caller": "say", "text": "text", "mms": "mms"}[kind], text.strip()))
    return steps


@dataclasses.dataclass
class SimulationResult:
    """What happened in the simulated call."""

    call_id: str
    inbox: list[Any]
    events: list[SmsEvent]
    spoken: list[Any]
    seconds: float
    interrupted: bool = False


async def _speak_into(worker: PipelineWorker, pcm16k: bytes, *, trailing_silence: float = 1.0) -> None:
    """Queue caller audio as 20 ms input frames at real-time pace (as a phone line delivers it)."""
    chunk = 640  # 20 ms at 16 kHz, 16-bit mono
    audio = pcm16k + b"\x00" * int(32000 * trailing_silence)
    audio += b"\x00" * (-len(audio) % chunk)
    start = time.monotonic()
    for index in range(0, len(audio), chunk):
        await worker.queue_frame(InputAudioRawFrame(audio=audio[index:index + chunk], sample_rate=16000,
                                                    num_channels=1))
        delay = start + (index // chunk + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _StdinLines:
    """Caller lines typed or piped on stdin, read by a daemon thread.

    The thread never holds up the end of the call (it is not the event loop's executor, which
    ``asyncio.run`` would wait for); end of input (Ctrl-D, or the end of a pipe) is ``None``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, prompt: bool) -> None:
        self._loop = loop
        self._prompt = prompt
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="caller-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            if self._prompt:
                print("you (caller)> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, None)
                return
            self._loop.call_soon_threadsafe(self.queue.put_nowait, line.rstrip("\n"))


async def _unless(interrupted: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Await ``work`` unless Ctrl-C comes first (then ``work`` is cancelled). True when it completed."""
    task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
    stop = asyncio.get_running_loop().create_task(interrupted.wait())
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stop):
        if pending not in done:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    if task in done:
        task.result()
        return True
    return False


class _HeardPrinter(FrameProcessor):
    """Prints what the STT heard."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._console.print(f"[dim]  (heard by STT: {frame.text})[/]", highlight=False)
        await self.push_frame(frame, direction)


class _Printer(FrameProcessor):
    """Prints what the agent says, labelling SMS filler / confirmation / failure lines."""

    def __init__(self, console: Console, sms: SmsActionProcessor) -> None:
        super().__init__()
        self._console = console
        self._sms = sms
        self.agent_spoke = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame) and frame.text.strip():
            kind = next((line.kind for line in reversed(self._sms.spoken) if line.text == frame.text), None)
            label = {"filler": "agent (filler)", "confirmation": "agent (SMS confirmed)",
                     "failure": "agent (SMS failed)", "delivery_failure": "agent (delivery failed)"}.get(
                kind or "", "agent")
            style = "magenta" if kind else "green"
            self._console.print(f"[{style}]{label}:[/] {frame.text}", highlight=False)
            if kind is None:
                self.agent_spoke.set()
        await self.push_frame(frame, direction)


def _agent_llm(console: Console, local: LocalModel | None = None) -> FrameProcessor:
    if local is not None:  # the local model, through pipecat's own OpenAI service over loopback
        from pipecat.services.openai.llm import OpenAILLMService

        console.print(f"[dim]agent LLM: {local.spec.name} (local, {local.base_url})[/]")
        return OpenAILLMService(api_key=local.api_key, base_url=local.base_url, settings=OpenAILLMService.Settings(
            model=local.spec.name, system_instruction=SYSTEM_PROMPT + AGENT_FACTS, temperature=0.0, max_tokens=80))
    url = os.environ.get("SMS_AGENT_LLM_URL")
    if not url:
        console.print("[dim]agent LLM: local stand-in (rule-based; set SMS_AGENT_LLM_URL for a real model)[/]")
        return LocalAgentLLM()
    from pipecat.services.openai.llm import OpenAILLMService

    model = os.environ.get("SMS_AGENT_LLM_MODEL", "llama3.1")
    console.print(f"[dim]agent LLM: {model} at {url}[/]")
    return OpenAILLMService(api_key=os.environ.get("SMS_AGENT_LLM_KEY", "none"), base_url=url,
                            settings=OpenAILLMService.Settings(model=model,
                                                               system_instruction=SYSTEM_PROMPT + AGENT_FACTS))


def simulate(
    *,
    actions_path: str | pathlib.Path,
    steps: list[ScriptStep] | None,
    console: Console,
    state_dir: str | pathlib.Path | None = None,
    pace: float = 1.0,
    voice: str = "auto",
    mic: bool = False,
    judge: str = "embedded",
    agent: str = "stand-in",
    headphones: bool = False,
) -> SimulationResult:
    """Run one simulated call (blocking; starts its own event loop).

    Args:
        actions_path: Action file.
        steps: The caller's script; ``None`` reads lines typed at the prompt.
        console: Where the live transcript goes.
        state_dir: Keep outbox/inbox databases here (default: a temporary directory).
        pace: Seconds to wait after each caller line for the agent to answer.
        voice: ``on``: the caller's lines are spoken (Piper) over the phone path and
            recognised (faster-whisper), the agent speaks with Piper; ``off``: text mode
            (lines enter as transcripts, tone TTS); ``auto``: ``on`` when installed.
        mic: You are the caller: your microphone and speaker through pipecat's
            ``LocalAudioTransport`` (needs PyAudio and a device; implies voice). Type
            ``text: ...`` to text the agent, ``hangup`` to end.
        judge: The condition judge (``auto``, ``local``, ``embedded``, ``llm``; see
            :func:`incall_sms.judges.select.make_judge`); a local model is loaded before the call.
        agent: ``stand-in`` (rule-based; or ``SMS_AGENT_LLM_URL``) or ``local``: the local model
            (``SMS_LOCAL_MODEL``, the ``[local]`` extra) answers through pipecat's
            ``OpenAILLMService`` over loopback, its system prompt warmed before the call. With
            ``judge`` local too, both share one loaded model.
        headphones: With ``mic``: full duplex (you can talk over the agent). Without it the
            microphone is muted while the agent speaks (:class:`HalfDuplexGuard`), so its voice
            from the speaker is not heard as the caller.

    Raises:
        ValueError: Voice or microphone asked for but not possible, or the judge is unavailable.
    """
    from incall_sms.media.offline_speech import available

    reason = available()
    if voice == "on" and reason:
        raise ValueError(f"--voice on is not possible here: {reason}")
    use_voice = voice == "on" or (voice == "auto" and reason is None) or mic
    if mic and reason:
        raise ValueError(f"--mic needs offline speech: {reason}")
    actions = load_actions(actions_path)
    local_agent: LocalModel | None = None
    if agent == "local":
        # the 1.5B unless SMS_LOCAL_MODEL says otherwise: the 0.5B judges, but repeats itself as an agent
        agent_model = os.environ.get("SMS_LOCAL_MODEL") or QWEN_CODER_1_5B.name
        reason = local_model_available(agent_model)
        if reason:
            raise ValueError(f"--agent local: {reason}")
        local_agent = LocalModel(MODELS[agent_model], http_port=0)
    elif agent != "stand-in":
        raise ValueError(f"unknown agent {agent!r} (stand-in or local)")
    condition_judge = make_judge(judge)
    if local_agent is not None and isinstance(condition_judge, LocalModelJudge) and \
            condition_judge.model.spec == local_agent.spec:
        condition_judge = LocalModelJudge(model=local_agent)  # one model in memory for both
    with tempfile.TemporaryDirectory(prefix="incall-sms-sim-") as temp:
        folder = pathlib.Path(state_dir or temp)
        folder.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_simulate(actions=actions, folder=folder, steps=steps, console=console, pace=pace,
                                     use_voice=use_voice, mic=mic, judge=condition_judge,
                                     local_agent=local_agent, headphones=headphones))


def _user_params(use_voice: bool) -> LLMUserAggregatorParams:
    """How the agent's user aggregator starts a caller turn.

    With voice, the Silero VAD in front starts turns. Whisper is a segmented STT: it transcribes
    each stretch of speech after it ended, so the words after a pause ("..., please?") can arrive
    after the smart-turn model already ended the turn. pipecat's default fallback would start a new
    turn on that late transcript and interrupt whatever the agent was saying (a caller who said
    nothing more); here the late words join the caller's next turn instead.
    """
    if not use_voice:
        return LLMUserAggregatorParams()
    from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    return LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(start=[VADUserTurnStartStrategy()]))


async def _say(worker: PipelineWorker, speech: Any, text: str) -> None:
    await _speak_into(worker, await speech.caller_audio(text))


def _agent_tts(use_voice: bool) -> FrameProcessor:
    if not use_voice:
        return ToneTTSService()
    from incall_sms.media.offline_speech import piper_tts

    return piper_tts()


async def _simulate(
    *, actions: Any, folder: pathlib.Path, steps: list[ScriptStep] | None, console: Console, pace: float,
    use_voice: bool, mic: bool = False, judge: ConditionJudge | None = None,
    local_agent: LocalModel | None = None, headphones: bool = False,
) -> SimulationResult:
    judge = judge or EmbeddedJudge()
    try:
        # the judge's model loaded and its prompts cached before the caller speaks
        async with warmed(judge, condition_specs(actions.actions),
                          while_warming=console.status(f"loading the {judge.name} judge...")):
            if local_agent is not None:  # the system prompt evaluated once, so the first answer is quick
                with console.status(f"loading the agent ({local_agent.spec.name})..."):
                    await local_agent.chat([{"role": "system", "content": SYSTEM_PROMPT + AGENT_FACTS},
                                            {"role": "user", "content": "Hello?"}], max_tokens=1)
            return await _simulate_call(actions=actions, folder=folder, steps=steps, console=console, pace=pace,
                                        use_voice=use_voice, mic=mic, judge=judge, local_agent=local_agent,
                                        headphones=headphones)
    finally:
        if local_agent is not None:
            await local_agent.aclose()


async def _simulate_call(
    *, actions: Any, folder: pathlib.Path, steps: list[ScriptStep] | None, console: Console, pace: float,
    use_voice: bool, mic: bool, judge: ConditionJudge, local_agent: LocalModel | None, headphones: bool = False,
) -> SimulationResult:
    call_id = f"SIM{uuid.uuid4().hex[:16]}"
    provider = LocalProvider(folder / "phone.db", latency=0.6)  # a provider answers in about this time
    outbox = Outbox(folder / "outbox.db")
    optouts = SqliteOptOutStore(folder / "optouts.db")
    dispatcher = Dispatcher(actions=actions, provider=provider, outbox=outbox, optouts=optouts,
                            pool_numbers=POOL, default_agent_number=AGENT)
    call = CallContext(call_id=call_id, caller_number=CALLER, agent_number=AGENT)
    engine = ActionEngine(dispatcher=dispatcher, call=call, judge=judge, extractor=PatternExtractor())
    sms = SmsActionProcessor(engine=engine)
    events: list[SmsEvent] = []

    async def on_event(event: SmsEvent) -> None:
        events.append(event)
        if event.kind is SmsEventKind.SENT:
            [message] = [m for m in await provider.inbox() if m.sid == event.sid] or [None]
            body = message.body if message else "?"
            console.print(f"[bold cyan]  >> SMS to {event.to_masked} ({event.encoding}, {event.segments} "
                          f"segment(s)):[/] {body}", highlight=False)
        elif event.kind is SmsEventKind.FAILED:
            console.print(f"[bold red]  >> SMS {event.action} not sent: {event.reason}[/]", highlight=False)

    dispatcher.subscribe(on_event)
    media_host = LoopbackMediaHost()
    await media_host.start()
    fetcher = media_host.fetcher()
    inbound = InboundMessageProcessor(fetcher=fetcher, replies=engine)
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=optouts, store_path=folder / "inbound.db")
    await registry.register(CALLER, AGENT, inbound.deliver)
    pair = LLMContextAggregatorPair(LLMContext(), user_params=_user_params(use_voice))
    llm = _agent_llm(console, local_agent)
    speech = None
    front: list[FrameProcessor] = []
    if use_voice:
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.processors.audio.vad_processor import VADProcessor

        from incall_sms.media.offline_speech import OfflineSpeech, whisper_stt

        speech = OfflineSpeech()
        with console.status("loading offline speech: the caller's Piper voice, Whisper tiny.en (STT)..."):
            await speech.preload_voice()
            stt = await asyncio.to_thread(whisper_stt)
        front = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt, _HeardPrinter(console)]
    back: list[FrameProcessor] = []
    if mic:
        from pipecat.transports.local.audio import LocalAudioTransport, LocalAudioTransportParams

        from incall_sms.pipeline.half_duplex import HalfDuplexGuard

        transport = LocalAudioTransport(LocalAudioTransportParams(audio_in_enabled=True, audio_out_enabled=True))
        # no echo cancellation here: unless you wear headphones, the mic is off while the agent speaks
        guard: list[FrameProcessor] = [] if headphones else [HalfDuplexGuard()]
        front = [transport.input(), *guard, *front]
        back = [transport.output()]
        steps = None  # you speak; typed lines can still text the agent
        console.print("[bold]--mic: speak to the agent; type 'text: ...' to text it, 'hangup' to end[/]")
        console.print("[dim]voice: your microphone through pipecat's LocalAudioTransport; Silero VAD and "
                      "WhisperSTTService (tiny.en) hear you; the agent speaks with Piper[/]")
        console.print("[dim]" + ("--headphones: full duplex, you can talk over the agent" if headphones else
                                 "half duplex: your mic is muted while the agent speaks, so the speaker's sound "
                                 "is not heard as you (wear headphones and add --headphones to talk over it)")
                      + "[/]")
    elif use_voice:
        console.print("[dim]voice: on (the caller speaks with Piper over an 8 kHz mu-law line; pipecat's Silero VAD "
                      "and WhisperSTTService (tiny.en) hear it; the agent speaks with Piper)[/]")
    else:
        console.print("[dim]voice: off (text mode: caller lines enter as transcripts; tone TTS)[/]")
    printer = _Printer(console, sms)
    worker = PipelineWorker(
        Pipeline([*front, sms, pair.user(), llm, sms.agent_tap(), _agent_tts(use_voice), printer, *back,
                  pair.assistant(), inbound]),
        cancel_on_idle_timeout=False, params=PipelineParams(audio_in_sample_rate=16000),
    )
    started = asyncio.Event()
    interrupted = asyncio.Event()
    cancelling: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    def on_sigint() -> None:
        if interrupted.is_set():  # the second Ctrl-C: cancel now (what is in flight stays in the outbox)
            console.print("[red]cancelling the call[/]")
            cancelling.append(loop.create_task(worker.cancel()))
            return
        interrupted.set()
        console.print("\n[yellow]Ctrl-C: the caller hangs up (texts in flight finish or stay in the outbox; "
                      "Ctrl-C again to cancel)[/]")

    stdin = _StdinLines(loop, prompt=sys.stdin.isatty()) if steps is None else None

    async def caller_lines():
        if steps is not None:
            for step in steps:
                yield step
            return
        assert stdin is not None
        while True:
            line = await stdin.queue.get()
            if line is None or line.strip().lower() in ("hangup", "bye!", "quit", "exit"):
                yield ScriptStep("hangup")
                return
            if not line.strip():
                continue  # an empty line is not a hang-up
            if line.lower().startswith("text:"):
                yield ScriptStep("text", line[5:].strip())
            else:
                yield ScriptStep("say", line.strip())

    async def drive() -> None:
        with console.status("starting the call (pipecat pipeline, VAD, speech services)..."):
            if not await _unless(interrupted, asyncio.wait_for(started.wait(), 60)):
                await worker.cancel()
                return
        if mic:  # the microphone is open from here on
            console.print("[bold green]the call is live: speak now[/]")
        sequence = 0
        lines = caller_lines()
        while not interrupted.is_set():
            box: list[ScriptStep] = []

            async def take(box: list[ScriptStep] = box) -> None:
                with contextlib.suppress(StopAsyncIteration):
                    box.append(await lines.__anext__())

            if not await _unless(interrupted, take()) or not box:
                break
            step = box[0]
            if step.kind == "hangup":
                console.print("[yellow]caller hangs up[/]")
                break
            if step.kind == "say" and mic:
                console.print("[dim](with --mic, speak instead of typing; typed lines are ignored)[/]")
                continue
            if step.kind == "say":
                console.print(f"[yellow]caller:[/] {step.text}", highlight=False)
                printer.agent_spoke.clear()
                if speech is None:
                    await worker.queue_frame(TranscriptionFrame(text=step.text, user_id=CALLER, timestamp=""))
                elif not await _unless(interrupted, _say(worker, speech, step.text)):
                    break
                # like a person on the phone: wait for the agent's answer before going on
                with contextlib.suppress(TimeoutError):
                    await _unless(interrupted, asyncio.wait_for(printer.agent_spoke.wait(), 10.0))
            else:
                sequence += 1
                media: tuple[InboundMedia, ...] = ()
                if step.kind == "mms":
                    media = (InboundMedia(url=media_host.add_photo(step.text), content_type="image/jpeg"),)
                    console.print(f"[yellow]caller texts the agent a photo:[/] {step.text}", highlight=False)
                else:
                    console.print(f"[yellow]caller texts the agent:[/] {step.text}", highlight=False)
                message = InboundMessage(sid=f"{'MM' if media else 'SM'}{uuid.uuid4().hex}",
                                         account_sid="AC" + "0" * 32, from_number=CALLER, to_number=AGENT,
                                         body=step.text, media=media, received_at=time.time())
                # as the webhook does: reply at once, deliver in the background (it waits for the context)
                deliveries.append(loop.create_task(router.route(message)))
            await _unless(interrupted, asyncio.sleep(pace))
        await worker.queue_frame(EndFrame())

    deliveries: list[asyncio.Task[Any]] = []
    start = time.monotonic()
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await asyncio.gather(runner.run(), drive())
        if deliveries:
            await asyncio.wait(deliveries, timeout=10)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    inbox = await provider.inbox()
    for _, _, llm_message in inbound.injected:
        parts = llm_message["content"] if isinstance(llm_message["content"], list) else []
        images = sum(1 for p in parts if p.get("type") == "image_url")
        if images:
            console.print(f"[dim]  (the photo reached the agent's context as {images} image part(s))[/]")
    await fetcher.aclose()
    await media_host.stop()
    result = SimulationResult(call_id=call_id, inbox=inbox, events=events, spoken=list(sms.spoken),
                              seconds=time.monotonic() - start, interrupted=interrupted.is_set())
    await provider.aclose()
    outbox.close()
    optouts.close()
    router.close()
    table = Table(title=f"simulated phone inbox of {CALLER[:2]}******{CALLER[-4:]} ({len(inbox)} text(s))")
    for column in ("from", "segments", "encoding", "text"):
        table.add_column(column, overflow="fold")
    for message in inbox:
        table.add_row(message.from_number or "-", str(message.segments), message.encoding, message.body)
    console.print(table)
    return result
