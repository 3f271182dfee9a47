"""The SMS action processor: watches the live conversation and fires SMS actions.

Place it between STT and the user context aggregator (the aggregator swallows
transcripts), and its :meth:`SmsActionProcessor.agent_tap` right after the LLM::

    Pipeline([transport.input(), stt, sms, context.user(), llm, sms.agent_tap(), tts,
              transport.output(), context.assistant()])

Audio is never blocked: ``process_frame`` only records text and, with an
instant judge (the embedded one), judges inline in microseconds; LLM judging,
variable extraction, content writing and the send itself run as the
processor's own tasks. Interruptions cut the filler, never a send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from incall_sms.actions import DELIVERY_FAILURE_LINE
from incall_sms.engine import ActionEngine, ActionOutcome, Firing, ReplyWait, SmsReply
from incall_sms.events import SmsEvent, SmsEventKind

__all__ = [
    "LINE_TEXT_TYPE",
    "STILL_SENDING_AFTER",
    "STILL_SENDING_LINE",
    "AgentTranscriptTap",
    "SmsActionProcessor",
    "SpokenLine",
]

_log = logging.getLogger(__name__)

#: Seconds after its filler when a send still unsettled is said to take longer (a healthy one takes ~1 s; a
#: provider timeout is 10 s, and an ambiguous answer is checked for 6 s more before any resend).
STILL_SENDING_AFTER = 6.0
#: Said when a send is still unsettled long after its filler (``still_sending_after``); its outcome follows.
STILL_SENDING_LINE = "Still sending that text, one more moment."

_EVENT_NAMES = {
    SmsEventKind.QUEUED: "on_sms_queued",
    SmsEventKind.SENT: "on_sms_sent",
    SmsEventKind.DELIVERED: "on_sms_delivered",
    SmsEventKind.FAILED: "on_sms_failed",
}


#: Prefix of the ``text_type`` of the TTS text frames of this processor's lines
#: (``incall-sms:<kind>:<n>``): observers and the replay tell them apart from the agent's replies.
LINE_TEXT_TYPE = "incall-sms"


class SpokenLine:
    """A line the processor asked the TTS to speak (kept for reports and tests).

    Attributes:
        tag: The ``text_type`` of its TTS text frames (unique per line of a processor).
    """

    __slots__ = ("action", "at", "kind", "tag", "text")

    def __init__(self, *, kind: str, text: str, action: str, at: float, tag: str = "") -> None:
        self.kind = kind
        self.text = text
        self.action = action
        self.at = at
        self.tag = tag

    def __repr__(self) -> str:
        return f"SpokenLine({self.kind}, {self.action}, {self.text!r})"


class SmsActionProcessor(FrameProcessor):
    """Fires SMS actions from the conversation, speaks filler and honest outcomes.

    Event handlers (unknown names raise ``ValueError``):

    - ``on_condition_matched(processor, firing)``: a condition held (with the judge's reason).
    - ``on_sms_queued(processor, event)``: the send was claimed in the outbox.
    - ``on_sms_sent(processor, event)``: the provider accepted the message.
    - ``on_sms_delivered(processor, event)``: the carrier reported delivery.
    - ``on_sms_failed(processor, event)``: refused, undelivered or unconfirmed.
    - ``on_action_completed(processor, outcome)``: the send finished (any result).
    - ``on_sms_reply(processor, reply)``: the caller texted a reply to an ``await_reply`` action
      (:class:`~incall_sms.engine.SmsReply`; ``reply.valid``, ``reply.value``); ``reply=None`` is not
      raised: a wait that timed out raises ``on_sms_reply_timeout(processor, action_name)``.
    - ``on_consent(processor, action_name, answer)``: the caller answered a consent question
      (``"yes"`` or ``"no"``).

    Args:
        engine: The call's action engine.
        filler_threshold: Seconds the filler waits; when the send finishes sooner it is
            skipped and only the confirmation is said. With the tap in the pipeline the
            filler is released earlier if the agent LLM starts answering, so it is always
            spoken before that answer (and after the caller's turn began, which interrupts
            anything queued before it).
        end_grace: On ``EndFrame``, how long in-flight sends may take (bounded).
        cancel_grace: On ``CancelFrame``, the same, shorter; what is still running is
            cancelled and left in the outbox for ``Dispatcher.recover()``.
        user_quiet_wait: Longest wait for the caller to stop talking before the
            confirmation is spoken.
        speak_delivery_failures: Tell the caller when a delivery-failed status callback
            arrives while the call is live.
        tell_llm: Push a system note so the agent LLM does not answer the request itself.
        clock: Seconds on the call's clock, stamped on :attr:`spoken` lines (default: seconds
            since this processor was created); a replay passes its recording clock.
        time_scale: Real seconds per call second for the waits counted in call time: ``await_reply``
            timeouts, ``consent_after``, ``user_quiet_wait`` and ``still_sending_after`` (a replay running
            ``speed`` times faster passes ``1 / speed``).
        consent_after: With the tap in the pipeline, the consent question waits for the agent LLM's
            answer to the caller's turn (at most this many seconds), so it is the last thing said.
        still_sending_after: When a send is still unsettled this many seconds after its filler (a slow
            provider, an ambiguous answer being checked: up to about a minute and a half with the
            defaults), the caller hears :data:`STILL_SENDING_LINE` instead of a long silence; ``None``: never.
    """

    EVENTS = (
        "on_condition_matched",
        "on_sms_queued",
        "on_sms_sent",
        "on_sms_delivered",
        "on_sms_failed",
        "on_action_completed",
        "on_sms_reply",
        "on_sms_reply_timeout",
        "on_consent",
    )

    def __init__(
        self,
        *,
        engine: ActionEngine,
        filler_threshold: float = 0.25,
        end_grace: float = 10.0,
        cancel_grace: float = 3.0,
        user_quiet_wait: float = 5.0,
        speak_delivery_failures: bool = True,
        tell_llm: bool = True,
        clock: Callable[[], float] | None = None,
        time_scale: float = 1.0,
        consent_after: float = 4.0,
        still_sending_after: float | None = STILL_SENDING_AFTER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name in self.EVENTS:
            self._register_event_handler(name)
        self.engine = engine
        self._filler_threshold = filler_threshold
        self._end_grace = end_grace
        self._cancel_grace = cancel_grace
        self._user_quiet_wait = user_quiet_wait
        self._speak_delivery_failures = speak_delivery_failures
        self._tell_llm = tell_llm
        self._time_scale = time_scale
        self._consent_task: asyncio.Task[Any] | None = None
        self._ending = False
        self._consent_after = consent_after
        self._still_sending_after = still_sending_after
        self._still_sending_said: float | None = None  # call clock of the last still-sending line
        self._agent_responses = 0
        self._agent_spoke = asyncio.Event()
        self._responses_at_turn: dict[int, int] = {}  # caller turn -> agent responses before it
        self._questions_playing: set[str] = set()
        self._hears_playout = False
        self._played = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._user_quiet = asyncio.Event()
        self._user_quiet.set()
        self._in_user_turn = False  # between the aggregator's User{Started,Stopped}SpeakingFrame
        self._live = True
        self._own_frames: set[int] = set()
        self._sent_keys: set[str] = set()
        self._failures_seen: set[str] = set()  # sends reported undelivered (see ActionEngine.report_delivery)
        self._own_firings: set[int] = set()  # firings this processor ran (a toolset's asks are the toolset's)
        self._given_up: set[int] = set()  # waits handed over to voice
        self._line_pending: set[str] = set()  # sends whose confirmation waits for the caller to be quiet
        self._failure_said: set[str] = set()
        t0 = time.monotonic()
        self._clock: Callable[[], float] = clock or (lambda: time.monotonic() - t0)
        self._tap: AgentTranscriptTap | None = None
        self._lines: dict[int, SpokenLine] = {}
        self.outcomes: list[ActionOutcome] = []
        self.spoken: list[SpokenLine] = []
        # events of this call only; the subscription ends with the call (see cleanup)
        self._unsubscribe: Callable[[], None] | None = engine.dispatcher.subscribe(
            self._on_sms_event, call_id=engine.call.call_id)
        engine.reply_listener = self._on_reply

    # -- public -------------------------------------------------------------------

    def add_event_handler(self, event_name: str, handler: Any) -> None:
        """Add a handler; unlike pipecat's default, an unknown event name is an error.

        Raises:
            ValueError: ``event_name`` is not one of :attr:`EVENTS` (or a base event).
        """
        if event_name not in self._event_handlers:
            raise ValueError(f"unknown event {event_name!r}; known: {', '.join(sorted(self._event_handlers))}")
        super().add_event_handler(event_name, handler)

    def agent_tap(self) -> AgentTranscriptTap:
        """A processor to place right after the LLM (before the TTS).

        It reports the agent's turns to this processor, and the filler and confirmation
        lines are pushed from it straight into the TTS: a line pushed from here would
        otherwise wait in the LLM's queue until the LLM finished its own answer.
        """
        if self._tap is None:
            self._tap = AgentTranscriptTap(self)
        return self._tap

    @property
    def in_flight(self) -> int:
        """Background tasks (sends, judging, extraction) not finished yet."""
        return sum(1 for t in self._tasks if not t.done())

    async def on_agent_text(self, text: str) -> None:
        """Record an agent turn and judge conditions that depend on it (e.g. "a meeting was booked")."""
        self.engine.add_agent_text(text)
        self._agent_responses += 1
        self._agent_spoke.set()
        self._extract()
        if self.engine.judge.instant:
            self._start_all(self.engine.evaluate_now("turn"))
        else:
            self._spawn(self._judge_and_start("turn"), "sms-judge")

    # -- frame handling -------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Record transcripts, judge, and pass every frame on in its direction."""
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self._hears_playout = True  # an output transport reports what is played: questions wait for it
        if isinstance(frame, BotStoppedSpeakingFrame) and self._questions_playing:
            for name in self._questions_playing:  # played out: only turns from now on answer it
                self.engine.question_heard(name)
            self._questions_playing.clear()
            self._played.set()
        if isinstance(frame, TranscriptionFrame) and direction is FrameDirection.DOWNSTREAM:
            await self._on_transcription(frame, direction)
        elif isinstance(frame, (UserStartedSpeakingFrame, VADUserStartedSpeakingFrame)):
            self._in_user_turn = self._in_user_turn or isinstance(frame, UserStartedSpeakingFrame)
            self._user_quiet.clear()
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._in_user_turn = False
            self._user_quiet.set()
            await self.push_frame(frame, direction)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            # a pause inside the caller's turn is not its end: the turn ends when the aggregator says
            # so (its stop strategy waits for the transcript); the VAD alone decides without one
            if not self._in_user_turn:
                self._user_quiet.set()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._finish(grace=self._end_grace)
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._live = False
            await self._finish(grace=self._cancel_grace)
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _on_transcription(self, frame: TranscriptionFrame, direction: FrameDirection) -> None:
        turn = self.engine.add_user_text(frame.text)
        self._responses_at_turn.setdefault(turn, self._agent_responses)
        self._extract()
        if self.engine.awaiting_consent and (self._consent_task is None or self._consent_task.done()):
            self._consent_task = self._spawn(self._answer_consents(), "sms-consent")
        if not self.engine.judge.instant:
            await self.push_frame(frame, direction)
            self._spawn(self._judge_and_start("turn"), "sms-judge")
            return
        firings = self.engine.evaluate_now("turn")  # microseconds, no I/O
        if firings and self._tell_llm:
            # before the transcript, so the agent LLM sees it when it answers this turn
            note = {"role": "developer", "content": self.engine.llm_note(firings)}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=False), direction)
        await self.push_frame(frame, direction)
        self._start_all(firings)

    # -- background work ------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self.create_task(coroutine, name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _extract(self) -> None:
        if self.engine.extractor is not None:
            self.engine.track_extraction(self._spawn(self.engine.extract(), "sms-extract"))

    async def _judge_and_start(self, at: str) -> None:
        firings = await self.engine.evaluate(at)  # type: ignore[arg-type]
        if firings and self._tell_llm and self._live:
            note = {"role": "developer", "content": self.engine.llm_note(firings)}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=False))
        self._start_all(firings)

    def _start_all(self, firings: list[Firing]) -> None:
        """Start what fired: the first at once, the rest one per turn of the event loop.

        Many conditions can fire on one turn (50 in the benchmark); starting them all in one go would
        hold the event loop, and the audio with it, for milliseconds.
        """
        if firings:
            self._start(firings[0])
        if len(firings) > 1:
            self._spawn(self._start_rest(firings[1:]), "sms-start")

    async def _start_rest(self, firings: list[Firing]) -> None:
        for firing in firings:
            await asyncio.sleep(0)
            self._start(firing)

    def _start(self, firing: Firing) -> None:
        """Start one firing: its event, then its consent question, declined line or send."""
        if firing.stage == "ask":
            self._spawn(self._call_event_handler("on_condition_matched", firing), "sms-event")
            self._spawn(self._ask_consent(firing), f"sms-ask-{firing.action.name}")
        elif firing.stage == "declined":
            self._spawn(self._call_event_handler("on_consent", firing.action.name, "no"), "sms-event")
            line = self.engine._render_line(firing.action, firing.action.consent_declined, {})
            if line and self._live:
                self._spawn(self._speak(line, kind="consent_declined", action=firing.action.name, append=True),
                            "sms-say")
        else:
            if firing.action.ask_consent and firing.match.reason.startswith("consent:"):
                self._spawn(self._call_event_handler("on_consent", firing.action.name, "yes"), "sms-event")
            else:
                self._spawn(self._call_event_handler("on_condition_matched", firing), "sms-event")
            self._spawn(self._run(firing), f"sms-{firing.action.name}")

    async def _answer_consents(self) -> None:
        """Read the caller's answer to a consent question once their turn has ended (not per fragment)."""
        def caller_turn() -> tuple[int, str]:
            last = next((t.text for t in reversed(self.engine.transcript) if t.role == "user"), "")
            return self.engine.user_turns, last

        while True:
            if self._questions_playing and self._hears_playout:  # a turn during the question did not hear it
                self._played.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._played.wait(), 15.0)
            await self._wait_user_quiet()
            seen = caller_turn()
            await asyncio.sleep(self.engine.coalesce)  # a late fragment of the same turn joins the answer
            if caller_turn() == seen and self._user_quiet.is_set():
                break
        firings = await self.engine.answer_consents()
        if firings and self._tell_llm and self._live:
            note = {"role": "developer", "content": self.engine.llm_note(firings)}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=False))
        self._start_all(firings)

    async def _ask_consent(self, firing: Firing) -> None:
        """Say the consent question after the agent's own answer to the caller's turn, once the caller is quiet.

        It is then the last thing the caller heard: their "yes" answers it, not a question the agent LLM asked.
        Only caller turns that begin after it was played count as the answer (see ``BotStoppedSpeakingFrame``).
        """
        name = firing.action.name
        question = self.engine.consent_question(firing.action)
        if not question or not self._live or self._ending:
            return
        to = self.engine.consent_destination(firing.action)
        if to is not None and await self.engine.dispatcher.optouts.is_opted_out(to):
            self.engine.drop_consent(name)  # no question for a number that cannot be texted: say so instead
            await self._speak(firing.action.failure_line("opted_out"), kind="failure", action=name, append=True)
            return
        if self._tap is not None and self._tap.linked:
            # the agent LLM's answer to the turn that fired this (it may already have come: a slow judge)
            responses = self._responses_at_turn.get(firing.turn, self._agent_responses)
            with contextlib.suppress(TimeoutError):  # no answer from the agent LLM in time: ask anyway
                async with asyncio.timeout(self._consent_after * self._time_scale):
                    while self._agent_responses <= responses:
                        self._agent_spoke.clear()
                        await self._agent_spoke.wait()
        await self._wait_user_quiet()  # never into the caller's words
        if not self._live or self._ending:
            return
        await self._speak(question, kind="consent", action=name, append=True)
        self.engine.question_heard(name)
        self._questions_playing.add(name)

    # -- replies --------------------------------------------------------------------

    def _on_reply(self, reply: SmsReply, firings: list[Firing]) -> None:
        """The engine took an inbound text as an awaited reply (runs inside the inbound delivery)."""
        self._spawn(self._call_event_handler("on_sms_reply", reply), "sms-event")
        if reply.reasked:
            wait = next((w for w in reversed(self.engine.waits) if w.firing.action.name == reply.action), None)
            if wait is not None:
                self._spawn(self._reask(wait, reply), f"sms-reask-{reply.action}")
        self._start_all(firings)

    async def _reask(self, wait: ReplyWait, reply: SmsReply) -> None:
        # the wait's time restarts as the re-ask goes out: a slow re-ask must not time the wait out
        wait.opened_at = asyncio.get_running_loop().time()
        outcome = await self.engine.reask(wait, problem=reply.problem, channel=reply.channel)
        self.outcomes.append(outcome)
        await self._call_event_handler("on_action_completed", outcome)
        if outcome.result.accepted:
            wait.opened_at = asyncio.get_running_loop().time()  # the caller gets the whole time again
            if self.engine.undelivered(outcome.result.key) is not None:  # reported before its outcome came back
                self._give_up_wait(wait)
            return
        _log.info("re-ask text for %s not sent (%s)", wait.firing.action.name, outcome.result.reason)
        self.engine.close_wait(wait)
        if self._tell_llm and self._live:
            what = wait.firing.action.await_reply.variable.replace("_", " ") if wait.firing.action.await_reply else ""
            note = {"role": "developer", "content": (
                f"[SMS system] The text asking again could not be sent. Stop waiting for a text and ask the "
                f"caller for their {what} by voice instead.")}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=True))

    async def _await_reply(self, wait: ReplyWait) -> None:
        """Hold the wait open for its timeout; on timeout, say the fallback and tell the agent LLM."""
        spec = wait.firing.action.await_reply
        assert spec is not None
        what = spec.variable.replace("_", " ")
        if self._tell_llm and self._live:
            hold = ("Until it arrives, stay on this topic: if the caller speaks, answer briefly and remind them "
                    "you are waiting for their text." if spec.mode == "blocking" else
                    "Carry on with the conversation meanwhile; the reply will be brought in when it arrives.")
            note = {"role": "developer", "content": (
                f"[SMS system] A text asking the caller for their {what} was sent; their text reply is awaited "
                f"(up to {spec.timeout:.0f} s). {hold}")}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=False))
        loop = asyncio.get_running_loop()
        while wait.open:  # the deadline counts from the acceptance, restarted by an accepted re-ask
            left = wait.opened_at + spec.timeout * self._time_scale - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await asyncio.shield(wait.done)
        if not wait.open:
            return  # a valid reply, a second invalid one or a STOP (the agent LLM was told), or the call's end
        self.engine.close_wait(wait)
        await self._call_event_handler("on_sms_reply_timeout", wait.firing.action.name)
        if not self._live:
            return
        if self._tell_llm:
            note = {"role": "developer", "content": (
                f"[SMS system] No valid text reply with the caller's {what} arrived in time; stop waiting for it "
                "and continue by voice.")}
            await self.push_frame(LLMMessagesAppendFrame([note], run_llm=False))
        line = wait.firing.action.await_reply.fallback_line() if wait.firing.action.await_reply else None
        if line:
            await self._wait_user_quiet()
            if self._live:
                await self._speak(line, kind="reply_timeout", action=wait.firing.action.name, append=True)

    async def _run(self, firing: Firing) -> None:
        self._own_firings.add(id(firing))  # the engine keeps the firing (and its wait): the id stays unique
        send = self._spawn(self._execute(firing), f"sms-send-{firing.action.name}")
        if firing.at == "turn" and self._live:
            await self._filler(firing, send)
            await self._still_sending(firing, send)
        outcome = await asyncio.shield(send)
        if outcome is None:  # it crashed (logged): whatever happened, the caller must not hear a confirmation
            if self._live:
                await self._wait_user_quiet()
                await self._speak("Sorry, something went wrong while sending the text.", kind="failure",
                                  action=firing.action.name, append=True)
            return
        self.outcomes.append(outcome)
        await self._call_event_handler("on_action_completed", outcome)
        wait = self.engine.wait_of(firing)
        key = outcome.result.key if outcome.result.accepted else None
        if wait is not None and self.engine.undelivered(key) is not None:  # reported before the outcome reached us
            self._give_up_wait(wait)
        if outcome.line and self._live:
            if key is not None:
                self._line_pending.add(key)  # a failure report now is said instead of this line
            try:
                await self._wait_user_quiet()
            finally:
                if key is not None:
                    self._line_pending.discard(key)
            waiting = wait is not None and outcome.result.accepted
            failure = self.engine.undelivered(key)
            if failure is not None:
                # never "I've texted it" (or "I'll wait for your reply") once it is known not to have arrived
                await self._say_delivery_failure(failure.event)
            elif self._live and not (waiting and wait is not None and not wait.open):  # no "I'll wait" after the reply
                kind = "failure"
                if outcome.result.accepted:
                    kind = "waiting" if waiting else "confirmation"
                await self._speak(outcome.line, kind=kind, action=firing.action.name, append=True)
        if wait is not None and wait.open and not self._ending:
            await self._await_reply(wait)

    async def _execute(self, firing: Firing) -> ActionOutcome | None:
        """The engine's send; ``None`` when it raised, logged here.

        The engine never raises for a failed send; an exception is a bug or a broken store. It is caught
        inside the task because pipecat's task helper would log it and hand the awaiting side ``None``.
        """
        try:
            return await self.engine.execute(firing)
        except Exception:
            _log.exception("SMS action %s crashed", firing.action.name)
            return None

    async def _still_sending(self, firing: Firing, send: asyncio.Task[Any]) -> None:
        """Say once that a slow send is still going, while its outcome can still be told.

        Not when the call is ending (the outcome would not follow), not over the caller (it carries no
        news: dropped when the caller is still talking after ``user_quiet_wait``), and once for sends
        that are slow together (not again within ``still_sending_after`` of the last time).
        """
        if self._still_sending_after is None:
            return
        after = self._still_sending_after * self._time_scale
        await asyncio.wait({send}, timeout=after)
        if send.done() or not self._live or self._ending:
            return
        await self._wait_user_quiet()
        if send.done() or not self._live or self._ending or not self._user_quiet.is_set():
            return
        now = self._clock()  # call time, like the after-filler wait
        if self._still_sending_said is not None and now - self._still_sending_said < self._still_sending_after:
            return
        self._still_sending_said = now
        await self._speak(STILL_SENDING_LINE, kind="still_sending", action=firing.action.name, append=True)

    async def _filler(self, firing: Firing, send: asyncio.Task[Any]) -> None:
        tap = self._tap if self._tap is not None and self._tap.linked else None
        if tap is None:
            done, _ = await asyncio.wait({send}, timeout=self._filler_threshold)
            if not done:
                filler = await self.engine.filler_text(firing)
                if filler and not send.done() and self._live:
                    await self._speak(filler, kind="filler", action=firing.action.name, append=False)
            return
        filler = await self.engine.filler_text(firing)
        if not filler or send.done():
            return
        frame = self._line_frame(filler, kind="filler", action=firing.action.name, append=False)
        tap.hold(frame)  # released before the LLM's answer starts, or when the threshold passes
        await asyncio.wait({send}, timeout=self._filler_threshold)
        if send.done() and tap.drop(frame):
            self._forget_line(frame)
            return
        await tap.release(frame)

    async def _wait_user_quiet(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._user_quiet.wait(), self._user_quiet_wait * self._time_scale)

    def _line_frame(self, text: str, *, kind: str, action: str, append: bool) -> TTSSpeakFrame:
        tag = f"{LINE_TEXT_TYPE}:{kind}:{len(self._own_frames)}"
        frame = TTSSpeakFrame(text, append_to_context=append, text_type=tag)
        self._own_frames.add(frame.id)
        self._lines[frame.id] = SpokenLine(kind=kind, text=text, action=action, at=0.0, tag=tag)
        return frame

    def _forget_line(self, frame: TTSSpeakFrame) -> None:
        self._lines.pop(frame.id, None)

    def line_emitted(self, frame: TTSSpeakFrame) -> None:
        """Record a line as spoken (called when it is pushed toward the TTS)."""
        line = self._lines.pop(frame.id, None)
        if line is not None:
            line.at = self._clock()
            self.spoken.append(line)
            self.engine.add_agent_text(line.text)

    async def _speak(self, text: str, *, kind: str, action: str, append: bool) -> None:
        frame = self._line_frame(text, kind=kind, action=action, append=append)
        self.line_emitted(frame)
        if self._tap is not None and self._tap.linked:
            await self._tap.push_frame(frame, FrameDirection.DOWNSTREAM)
        else:
            await self.push_frame(frame)

    def mark_own(self, frame: Frame) -> None:
        """Treat ``frame`` as already recorded (the tap will not report it as an agent turn)."""
        self._own_frames.add(frame.id)

    def is_own_frame(self, frame: Frame) -> bool:
        """Whether ``frame`` was pushed by this processor (the tap ignores those)."""
        return frame.id in self._own_frames

    async def _on_sms_event(self, event: SmsEvent) -> None:
        if event.call_id != self.engine.call.call_id:
            return
        if event.kind is SmsEventKind.SENT:
            self._sent_keys.add(event.key)
        await self._call_event_handler(_EVENT_NAMES[event.kind], event)
        failure = self.engine.report_delivery(event)  # only a status callback says an accepted text did not arrive
        if failure is None or event.key not in self._sent_keys or event.key in self._failures_seen:
            return
        self._failures_seen.add(event.key)
        if failure.wait is not None and failure.wait_was_open and id(failure.wait.firing) in self._own_firings:
            self._give_up_wait(failure.wait)  # the engine closed it; the agent asks by voice
        if event.key not in self._line_pending:  # else said in place of its confirmation, once the caller is quiet
            self._spawn(self._say_delivery_failure(event), "sms-say")

    async def _say_delivery_failure(self, event: SmsEvent) -> None:
        """Tell the caller a text did not arrive (once per text; ``speak_delivery_failures``)."""
        if not self._speak_delivery_failures or not self._live or event.key in self._failure_said:
            return
        self._failure_said.add(event.key)
        line = DELIVERY_FAILURE_LINE.format(to_last2=event.to_last2)
        await self._speak(line, kind="delivery_failure", action=event.action, append=True)

    def _give_up_wait(self, wait: ReplyWait) -> None:
        """The text asking for a reply did not arrive: stop waiting and have the agent ask by voice (once)."""
        if id(wait) in self._given_up:
            return
        self._given_up.add(id(wait))
        self.engine.close_wait(wait)
        spec = wait.firing.action.await_reply
        if self._tell_llm and self._live and spec is not None:
            what = spec.variable.replace("_", " ")
            note = {"role": "developer", "content": (
                f"[SMS system] The text asking the caller for their {what} did not reach their phone. Stop waiting "
                f"for a text and ask the caller for their {what} by voice instead.")}
            self._spawn(self.push_frame(LLMMessagesAppendFrame([note], run_llm=False)), "sms-note")

    async def _finish(self, *, grace: float) -> None:
        """Judge call-end conditions, then wait (bounded) for in-flight work."""
        self._ending = True
        self.engine.close_all_waits()  # nobody is left to wait for: replies from now on are stored
        for task in list(self._tasks):  # a question nobody will answer is not a send to wait for
            if ("sms-ask-" in task.get_name() or "sms-consent" in task.get_name()) and not task.done():
                await self.cancel_task(task)
        self.engine.drop_consent()
        try:
            async with asyncio.timeout(grace):
                firings = await self.engine.evaluate("call_end")
        except TimeoutError:
            _log.warning("call-end judging timed out")
            firings = []
        self._start_all(firings)
        deadline = time.monotonic() + grace
        while True:
            pending = [t for t in self._tasks if not t.done()]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        left = [t for t in self._tasks if not t.done()]
        if left:
            _log.warning("%d SMS task(s) still running at call end; the outbox keeps them for recovery", len(left))

    async def cleanup(self) -> None:
        """Cancel what is still running (the outbox row stays for ``Dispatcher.recover()``); unsubscribe."""
        await super().cleanup()
        self._live = False
        for task in list(self._tasks):
            if not task.done():
                await self.cancel_task(task)
        self._tasks.clear()
        self.release()

    def release(self) -> None:
        """End this call's subscription to the shared dispatcher (idempotent; cleanup does it too)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class AgentTranscriptTap(FrameProcessor):
    """Reports the agent's text to an :class:`SmsActionProcessor`. Place it right after the LLM.

    Collects LLM text between ``LLMFullResponseStartFrame`` and ``LLMFullResponseEndFrame``;
    ``TTSSpeakFrame`` lines from elsewhere (greetings) count as agent turns too.
    """

    def __init__(self, owner: SmsActionProcessor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        self._parts: list[str] = []
        self._held: list[TTSSpeakFrame] = []
        self.linked = False

    def hold(self, frame: TTSSpeakFrame) -> None:
        """Keep ``frame`` until :meth:`release`, or until the LLM starts its next answer."""
        self._held.append(frame)

    def drop(self, frame: TTSSpeakFrame) -> bool:
        """Discard a held frame; False when it was already released."""
        if frame in self._held:
            self._held.remove(frame)
            return True
        return False

    async def release(self, frame: TTSSpeakFrame) -> None:
        """Push a held frame toward the TTS now (no-op if already released or dropped)."""
        if self.drop(frame):
            self._owner.line_emitted(frame)
            await self.push_frame(frame, FrameDirection.DOWNSTREAM)

    async def _release_all(self) -> None:
        for frame in list(self._held):
            await self.release(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect agent text; every frame passes on unchanged."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.linked = True
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self.linked = False
        if isinstance(frame, LLMFullResponseStartFrame) and direction is FrameDirection.DOWNSTREAM:
            await self._release_all()  # the filler goes before the agent's answer
        await self._collect(frame, direction)
        await self.push_frame(frame, direction)

    async def _collect(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, LLMFullResponseStartFrame):
                self._parts = []
            elif isinstance(frame, LLMTextFrame):
                self._parts.append(frame.text)
            elif isinstance(frame, LLMFullResponseEndFrame):
                text = "".join(self._parts).strip()
                self._parts = []
                if text:
                    await self._owner.on_agent_text(text)
            elif isinstance(frame, TTSSpeakFrame) and not self._owner.is_own_frame(frame):
                self._owner.engine.add_agent_text(frame.text)
