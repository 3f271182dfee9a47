"""Replaying a recorded call through the live agent's pipeline pieces, faster than real time.

The caller's audio goes through pipecat's real ``TwilioFrameSerializer`` (mu-law 8 kHz to
PCM 16 kHz) into the SMS processor; recorded STT results enter as final transcripts at
their times; recorded agent turns are reported to the processor and spoken by the TTS
(or, without them, the local stand-in LLM answers); inbound texts go through the inbound
router into the call. Sends go to the embedded provider configured by the recording.

One clock: everything is scheduled and reported on the recording's clock (a
:class:`~incall_sms.pipeline.call_clock.CallClock` running ``speed`` times faster than the
wall clock, never ahead of the recorded events delivered so far). The agent's audio is played out on that clock by
:class:`~incall_sms.pipeline.playout.SpeechPlayout`, so the pipeline knows when the agent is
talking (inbound texts wait for the agent to finish; a barge-in cuts the filler). With
``stt="whisper"`` a recorded agent turn waits until the caller turns it answers have been
recognised (call time waits with it), so a slow STT cannot reorder the conversation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import pathlib
import time
import types
import uuid
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, InterruptionFrame, TranscriptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.workers.runner import WorkerRunner

from incall_sms.actions import ActionSet
from incall_sms.clock import ScaledClock
from incall_sms.dispatcher import CallContext, Dispatcher
from incall_sms.engine import CALL_END_TURN_OFFSET, EARLY_REPLY_HOLD, ActionEngine, ActionOutcome, reask_name
from incall_sms.inbound import InboundMedia, InboundMessage, InboundRouter, InProcessCallRegistry, RouteOutcome
from incall_sms.judges.base import ConditionJudge, JudgeRequest, Match, decide
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.media.content import Transcriber
from incall_sms.media.loopback_host import LoopbackMediaHost
from incall_sms.media.offline_speech import OfflineSpeech, available, whisper_stt
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.phone import mask
from incall_sms.pipeline.audio_gaps import GapMeter
from incall_sms.pipeline.call_clock import CallClock
from incall_sms.pipeline.local_agent import LocalAgentLLM
from incall_sms.pipeline.local_services import ToneTTSService
from incall_sms.pipeline.playout import Speech, SpeechPlayout
from incall_sms.pipeline.recording import (
    Expectations,
    ReplayReport,
    ReportAudio,
    ReportDecision,
    ReportExpectations,
    ReportInbound,
    ReportLine,
    ReportSms,
    ReportTurn,
    load_recording,
)
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import LINE_TEXT_TYPE, SmsActionProcessor, SpokenLine
from incall_sms.providers.local import LocalProvider
from incall_sms.retry import RetryPolicy
from incall_sms.variables import PatternExtractor

__all__ = ["replay", "replay_caller"]


def _real_or_fake(number: str) -> str:
    """Recordings from live calls carry masked numbers: replay them as a fake number, same last digits."""
    if "*" not in number:
        return number
    digits = "".join(ch for ch in number if ch.isdigit())[-4:].rjust(4, "0")
    return f"+1415555{digits}"


def replay_caller(recording: str | pathlib.Path) -> str:
    """The caller's number a replay of ``recording`` uses (a fake one for masked recordings)."""
    return _real_or_fake(load_recording(recording)[1].caller)


#: Decisions that did not fire but scored at least this are reported as near misses.
NEAR_MISS_FLOOR = 0.3

#: With ``--stt whisper``: the longest wall-clock wait for the caller turns a recorded agent
#: turn answers to be recognised (the clock is held meanwhile); then the replay goes on and warns.
STT_CATCH_UP_LIMIT = 20.0


class CallerLog(FrameProcessor):
    """Records the caller's final transcripts as recognised, with call time and caller-turn index.

    Place it right after the SMS processor (which has counted the turn by then).
    """

    def __init__(self, *, clock: Any, engine: ActionEngine, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._engine = engine
        self.entries: list[tuple[float, str, int]] = []
        self._more = asyncio.Event()

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` transcripts were recorded (bound it with ``asyncio.timeout``)."""
        while len(self.entries) < count:
            self._more.clear()
            await self._more.wait()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Note final transcripts; pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and direction is FrameDirection.DOWNSTREAM and frame.text.strip():
            self.entries.append((round(self._clock(), 3), frame.text.strip(), self._engine.user_turns))
            self._more.set()
        await self.push_frame(frame, direction)

    def turn_text(self, turn: int) -> str | None:
        """What the caller said in turn ``turn`` (its fragments joined), or ``None``."""
        parts = [text for _t, text, index in self.entries if index == turn]
        return " ".join(parts) if parts else None


class ExplainingJudge:
    """The replay's judge, explained.

    Every decision goes through :func:`decide`, so the report can say which part fired each action
    with what score, and list the near misses (not fired, score >= :data:`NEAR_MISS_FLOOR`).
    """

    def __init__(self, inner: ConditionJudge, near_misses: list[ReportDecision], clock: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.instant = inner.instant
        self._near = near_misses
        self._clock = clock

    def _note(self, request: JudgeRequest, decisions: list[Any]) -> list[Match]:
        for d in decisions:
            if not d.fires and d.score is not None and d.score >= NEAR_MISS_FLOOR:
                self._near.append(ReportDecision(action=d.id, at=request.at, t=round(self._clock(), 3),
                                                 score=round(d.score, 4), part=d.part, reason=d.reason))
        return [d.as_match() for d in decisions if d.fires]

    async def judge(self, request: JudgeRequest) -> list[Match]:
        """The inner judge's matches, its near misses noted."""
        return self._note(request, await decide(self.inner, request))

    def judge_now(self, request: JudgeRequest) -> list[Match]:
        """Instant judges: their matches as they are (rules carry no scores to miss by)."""
        return self.inner.judge_now(request)


async def replay(
    recording: str | pathlib.Path,
    *,
    actions: ActionSet,
    speed: float = 8.0,
    expectations: Expectations | None = None,
    stt: str = "recorded",
    judge: ConditionJudge | None = None,
    transcriber: Transcriber | None = None,
) -> ReplayReport:
    """Replay one recording and build its report.

    Args:
        recording: Path of ``NAME.jsonl`` (its ``NAME.meta.json`` sits next to it).
        actions: The action set to run.
        speed: Replay speed (8 = eight times faster than the call).
        expectations: Checked against the report when given.
        stt: ``recorded`` feeds the recorded STT results (fast, deterministic); ``whisper``
            runs the caller audio through pipecat's Silero VAD and WhisperSTTService
            (offline tiny.en) instead.

        judge: The condition judge (default: the embedded rules, deterministic); the caller
            owns it (warms and closes it).
        transcriber: Speech-to-text for inbound voice notes and video sound (default: the
            offline Whisper model when installed, loaded before the call starts).

    Raises:
        ValueError: The recording is invalid.
    """
    events, meta = load_recording(recording)
    if stt == "whisper":
        reason = available()
        if reason:
            raise ValueError(f"--stt whisper is not possible here: {reason}")
        if meta.stt and _silent(events):
            raise ValueError("this recording has no caller audio (masked without --keep-audio?): "
                             "replay it with --stt recorded")
    if expectations is not None:
        unknown = expectations.unknown_actions({a.name for a in actions.actions} | {
            reask_name(a) for a in actions.actions if a.await_reply is not None})
        if unknown:
            raise ValueError(f"the expectations name action(s) not in the action file: {', '.join(unknown)}")
    meta = meta.model_copy(update={"caller": _real_or_fake(meta.caller),
                                   "agent_number": _real_or_fake(meta.agent_number)})

    def number(value: str) -> str:  # set-up numbers: "caller", real or masked (replayed as the same fake)
        return meta.caller if value == "caller" else _real_or_fake(value)

    clock = CallClock(speed)
    async with contextlib.AsyncExitStack() as cleanup:
        provider = LocalProvider(landlines=frozenset(map(number, meta.provider.landlines)),
                                 opted_out=frozenset(map(number, meta.provider.opted_out)),
                                 latency=meta.provider.latency / speed,
                                 behaviours={number(n): what for n, what in meta.provider.destinations.items()})
        cleanup.push_async_callback(provider.aclose)
        outbox = Outbox()
        cleanup.callback(outbox.close)
        optouts = SqliteOptOutStore()
        cleanup.callback(optouts.close)
        for listed in meta.opt_outs:
            await optouts.opt_out(number(listed), now=time.time())
        # retries without jitter, waits in call time: a replay decides the same way every run
        dispatcher = Dispatcher(actions=actions, provider=provider, outbox=outbox, optouts=optouts,
                                pool_numbers=("+14155550111",), default_agent_number=meta.agent_number,
                                clock=ScaledClock(max(1.0, speed)), retry_policy=RetryPolicy(jitter=0.0))
        call = CallContext(call_id=meta.call_sid, caller_number=meta.caller, agent_number=meta.agent_number)
        near_misses: list[ReportDecision] = []
        explained = ExplainingJudge(judge or EmbeddedJudge(), near_misses, clock.now)
        engine = ActionEngine(dispatcher=dispatcher, call=call, judge=explained, extractor=PatternExtractor(),
                              early_reply_hold=EARLY_REPLY_HOLD / speed)
        engine.variables.update(meta.variables)
        sms = SmsActionProcessor(engine=engine, filler_threshold=0.25 / speed, end_grace=10.0, clock=clock.now,
                                 time_scale=1.0 / speed)
        caller_log = CallerLog(clock=clock.now, engine=engine)
        playout = SpeechPlayout(clock=clock.now, speed=speed)
        media_host = LoopbackMediaHost()
        await media_host.start()
        cleanup.push_async_callback(media_host.stop)
        fetcher = media_host.fetcher()
        cleanup.push_async_callback(fetcher.aclose)
        if transcriber is None and available() is None:
            transcriber = OfflineSpeech()  # voice notes, offline
            if any(not a.content_type.startswith("image/") for m in meta.inbound for a in m.media):
                await transcriber.preload()  # before the call: loading would stall the loop mid-call
        inbound = InboundMessageProcessor(fetcher=fetcher, transcriber=transcriber, clock=clock.now,
                                          replies=engine)
        registry = InProcessCallRegistry()
        router = InboundRouter(registry=registry, optouts=optouts)
        cleanup.callback(router.close)
        await registry.register(meta.caller, meta.agent_number, inbound.deliver)
        queued_at: dict[int, float] = {}
        meter = GapMeter(queued_at=queued_at)
        tap = sms.agent_tap()
        front: list[FrameProcessor] = []
        if stt == "whisper":
            from pipecat.audio.vad.silero import SileroVADAnalyzer
            from pipecat.processors.audio.vad_processor import VADProcessor

            front = [VADProcessor(vad_analyzer=SileroVADAnalyzer()), whisper_stt()]
        processors: list[FrameProcessor]
        if meta.agent:
            processors = [*front, sms, caller_log, tap, ToneTTSService(), playout, meter, inbound]
        else:
            pair = LLMContextAggregatorPair(LLMContext(), user_params=_user_params(stt))
            processors = [*front, sms, caller_log, pair.user(), LocalAgentLLM(), tap, ToneTTSService(), playout, meter,
                          pair.assistant(), inbound]
        worker = PipelineWorker(Pipeline(processors), cancel_on_idle_timeout=False, params=PipelineParams())
        serializer = TwilioFrameSerializer(meta.call_sid, params=TwilioFrameSerializer.InputParams(
            sample_rate=16000, auto_hang_up=False))
        await serializer.setup(types.SimpleNamespace(audio_in_sample_rate=16000))  # only the rate is read
        started = asyncio.Event()
        sms_times: dict[str, float] = {}
        warnings: list[str] = []
        hangup = [math.inf]  # call time of the recording's "stop" (the caller hung up)

        @worker.event_handler("on_pipeline_started")
        async def _started(_worker: Any, _frame: Any) -> None:
            started.set()

        async def completed(_processor: Any, outcome: ActionOutcome) -> None:
            sms_times[outcome.result.key] = clock.now()

        sms.add_event_handler("on_action_completed", completed)

        timeline: list[tuple[float, str, Any]] = [(t, "ws", m) for t, m in events]
        if stt == "recorded":
            timeline += [(u.t, "stt", u) for u in meta.stt]
        else:
            timeline += [(u.t - 1.2, "barge", u) for u in meta.stt if u.barge_in]
        timeline += [(u.t, "agent", u.text) for u in meta.agent]
        timeline += [(m.t, "inbound", m) for m in meta.inbound]
        timeline.sort(key=lambda item: item[0])

        gave_up = [False]

        async def catch_up(t: float) -> None:
            """Hold the clock until the caller turns recorded before ``t`` have been recognised."""
            wanted = sum(1 for u in meta.stt if u.t < t)
            if len(caller_log.entries) >= wanted or gave_up[0]:
                return
            began = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STT_CATCH_UP_LIMIT):
                    await caller_log.wait_for(wanted)
            clock.wait(time.monotonic() - began)  # call time stood at t meanwhile (not delivered yet)
            if len(caller_log.entries) < wanted:
                gave_up[0] = True  # the STT merged or missed turns: later agent turns do not wait again
                warnings.append(f"agent turn at t={t}: {len(caller_log.entries)} of the {wanted} caller turn(s) it "
                                f"answers were recognised after {STT_CATCH_UP_LIMIT:.0f} s; went on without them "
                                "(and without waiting for later turns)")

        routing: list[asyncio.Task[Any]] = []

        async def drive() -> None:
            await asyncio.wait_for(started.wait(), 10)
            clock.start(first_event=timeline[0][0] if timeline else None)
            for index, (t, kind, payload) in enumerate(timeline):
                if kind == "agent" and stt != "recorded":
                    await catch_up(t)
                delay = clock.wall_delay(t)
                if delay > 0:
                    await asyncio.sleep(delay)
                last = kind == "ws" and payload.get("event") == "stop"
                # after the hang-up call time stands still: what happens then happens "at call end"
                following = timeline[index + 1][0] if index + 1 < len(timeline) else None
                clock.delivered(t, next_event=t if last else following)
                if last:
                    hangup[0] = t
                    break
                if kind == "ws":
                    frame = await serializer.deserialize(json.dumps(payload))
                    if frame is not None:
                        queued_at[frame.id] = time.monotonic()
                        await worker.queue_frame(frame)
                elif kind == "stt":
                    if payload.barge_in:
                        await worker.queue_frame(InterruptionFrame())  # the caller talks over the agent
                    await worker.queue_frame(TranscriptionFrame(text=payload.text, user_id="", timestamp=""))
                elif kind == "barge":
                    await worker.queue_frame(InterruptionFrame())
                elif kind == "agent":
                    await sms.on_agent_text(payload)
                    frame = TTSSpeakFrame(payload, append_to_context=False)
                    sms.mark_own(frame)
                    await tap.push_frame(frame, FrameDirection.DOWNSTREAM)
                else:
                    media = tuple(InboundMedia(url=media_host.add(base64.b64decode(a.data_b64), a.content_type),
                                               content_type=a.content_type) for a in payload.media)
                    # as a webhook would: the call's audio goes on while the attachments are fetched,
                    # decoded and transcribed
                    routing.append(asyncio.get_running_loop().create_task(router.route(InboundMessage(
                        sid=f"{'MM' if media else 'SM'}{uuid.uuid4().hex}", account_sid="AC" + "0" * 32,
                        from_number=meta.caller, to_number=meta.agent_number, body=payload.body, media=media,
                        received_at=time.time()))))
            await asyncio.sleep(1.0 / speed)
            # attachments (fetch, decode, transcription) may still be on their way into the context
            if routing:
                await asyncio.wait(routing, timeout=5.0)
            await worker.queue_frame(EndFrame())

        runner = WorkerRunner()
        await runner.add_workers(worker)
        try:
            await asyncio.gather(runner.run(), drive())
        finally:
            late = [task for task in routing if not task.done()]
            for task in late:
                task.cancel()
            outcomes = await asyncio.gather(*routing, return_exceptions=True)  # none outlives the call
        if late:
            warnings.append(f"{len(late)} inbound text(s) still being prepared when the call ended")
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None and not isinstance(outcome, BaseException) and \
                    outcome is not RouteOutcome.DELIVERED:
                warnings.append(f"an inbound text was {outcome.value}, not brought into the conversation")
        duration = hangup[0] if hangup[0] != math.inf else clock.now()
        inbox = {m.sid: m for m in await provider.inbox()}
        sms_rows = []
        for outcome in sms.outcomes:
            result = outcome.result
            message = inbox.get(result.sid or "")
            firing = outcome.firing
            sms_rows.append(ReportSms(
                action=firing.action.name, outcome=result.outcome.value, reason=result.reason,
                to_masked=result.to_masked, body=message.body if message else None, encoding=result.encoding,
                segments=result.segments,
                trigger_turn=firing.turn if firing.at == "turn" else firing.turn - CALL_END_TURN_OFFSET,
                trigger_text=caller_log.turn_text(firing.turn) if firing.at == "turn" else None, at=firing.at,
                t=round(sms_times.get(result.key, duration), 3), sid=result.sid, judged=firing.match.reason,
                score=round(firing.match.confidence, 4),
            ))
        stats = meter.stats()
        max_delay, p99_delay = meter.delay_stats()
        speech = [_until_hangup(s, hangup[0]) for s in playout.speech]
        lines = _lines_heard(sms.spoken, speech)
        inbound_rows = [_report_inbound(t, sid, msg) for t, sid, msg in inbound.injected]
        report = ReplayReport(
            recording=pathlib.Path(recording).name,
            call_sid=meta.call_sid,
            duration_s=round(duration, 3),
            speed=speed,
            sms=sms_rows,
            judge=explained.name,
            near_misses=sorted(near_misses, key=lambda d: d.t),
            lines=[line for line, _speech in lines],
            inbound=inbound_rows,
            audio=ReportAudio(
                input_frames=stats["input"].frames, output_frames=stats["output"].frames,
                max_delay_ms=round(max_delay * 1000, 2),
                p99_delay_ms=round(p99_delay * 1000, 2),
                max_gap_ms=round(stats["input"].max_gap * 1000 * speed, 1),
                p99_gap_ms=round(stats["input"].p99_gap * 1000 * speed, 1),
            ),
            expectations=ReportExpectations(checked=False, passed=True),
            stt_wait_s=round(clock.waited, 3),
            warnings=warnings,
        )
        report.conversation = _conversation(report, caller_log.entries, lines, speech)
        if expectations is not None:
            failures = expectations.check(report, caller_masked=mask(meta.caller))
            report.expectations = ReportExpectations(checked=True, passed=not failures, failures=failures)
        return report


def _user_params(stt: str) -> LLMUserAggregatorParams:
    """How the stand-in LLM's user aggregator ends a caller turn.

    A recorded final transcript is a whole caller turn: it ends the turn at once (no smart-turn
    model whose inference time, under load, would decide whether a text arriving a moment later
    lands before or after the caller's words). With ``--stt whisper``, pipecat's defaults.
    """
    if stt != "recorded":
        return LLMUserAggregatorParams()
    from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies

    return LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(
        stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)]))


def _silent(events: list[tuple[float, dict[str, Any]]]) -> bool:
    """Whether every media payload is mu-law silence (a masked recording without its audio)."""
    payloads = [m["media"].get("payload", "") for _t, m in events
                if m.get("event") == "media" and isinstance(m.get("media"), dict)]
    return all(set(base64.b64decode(p)) <= {0xFF, 0x7F} for p in payloads)


def _until_hangup(speech: Speech, hangup: float) -> Speech:
    """What the caller heard of ``speech`` before hanging up at ``hangup``."""
    if speech.end is None or speech.end <= hangup:
        return speech
    if speech.start is not None and speech.start >= hangup:
        return dataclasses.replace(speech, start=None, end=None, interrupted=True)
    return dataclasses.replace(speech, end=hangup, interrupted=True)


def _lines_heard(spoken: list[SpokenLine], speech: list[Speech]) -> list[tuple[ReportLine, Speech | None]]:
    """The SMS lines with when they were heard (each matched to its utterance by the tag of its text frames)."""
    by_tag = {s.text_type: s for s in speech if s.text_type.startswith(LINE_TEXT_TYPE)}
    out = []
    for line in spoken:
        heard = by_tag.get(line.tag)
        out.append((ReportLine(kind=line.kind, action=line.action, text=line.text, t=round(line.at, 3),
                               start=heard.start if heard else None, end=heard.end if heard else None,
                               interrupted=bool(heard and heard.interrupted)), heard))
    return out


def _conversation(report: ReplayReport, callers: list[tuple[float, str, int]],
                  lines: list[tuple[ReportLine, Speech | None]], speech: list[Speech]) -> list[ReportTurn]:
    """Everything that happened, in call-time order."""
    turns = [ReportTurn(t=t, who="caller", kind="transcript", text=text, turn=index) for t, text, index in callers]
    own = {id(heard) for _line, heard in lines if heard is not None}
    for line, heard in lines:
        turns.append(ReportTurn(t=line.start if line.start is not None else line.t, who="agent", kind=line.kind,
                                text=line.text, action=line.action, end=line.end, interrupted=line.interrupted,
                                heard=line.start is not None, queued=heard.queued if heard else line.t))
    for utterance in speech:
        if id(utterance) in own or not utterance.text:
            continue
        turns.append(ReportTurn(t=utterance.start if utterance.start is not None else utterance.queued, who="agent",
                                kind="reply", text=utterance.text, end=utterance.end,
                                interrupted=utterance.interrupted, heard=utterance.start is not None,
                                queued=utterance.queued))
    for row in report.sms:
        turns.append(ReportTurn(t=row.t, who="sms", kind=row.outcome, text=row.body or "", action=row.action,
                                turn=row.trigger_turn if row.at == "turn" else None, to_masked=row.to_masked,
                                detail=row.judged if row.reason is None else f"{row.judged}; {row.reason}",
                                score=row.score))
    for item in report.inbound:
        turns.append(ReportTurn(t=item.t, who="inbound", kind="mms" if item.parts > 1 or item.images else "text",
                                text=" ".join(item.texts)))
    for miss in report.near_misses:
        turns.append(ReportTurn(t=miss.t, who="judge", kind="near_miss", action=miss.action, score=miss.score,
                                detail=f"{miss.part}: {miss.reason}" if miss.reason else miss.part))
    order = {"caller": 0, "judge": 1, "agent": 2, "sms": 3, "inbound": 4}
    return sorted(turns, key=lambda turn: (turn.t, order[turn.who]))


def _report_inbound(t: float, sid: str, message: dict[str, Any]) -> ReportInbound:
    content = message["content"]
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
    return ReportInbound(
        t=round(t, 3), sid=sid, parts=len(parts),
        images=sum(1 for p in parts if p.get("type") == "image_url"),
        texts=[str(p.get("text", "")) for p in parts if p.get("type") == "text"],
    )
