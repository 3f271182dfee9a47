"""The action engine of one call: transcript, judging, variables, content, send, spoken lines.

Framework-free: the pipecat processor feeds it turns and turns its outcomes into
frames. It decides *what* happens; the processor decides *when* it is spoken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from incall_sms.inbound import InboundMessage

from incall_sms.actions import ContentSpec, SmsAction
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome, SendResult
from incall_sms.errors import InvalidPhoneNumberError, MissingVariableError
from incall_sms.events import SmsEvent, SmsEventKind
from incall_sms.inbound import message_keyword
from incall_sms.judges.base import ConditionJudge, ConditionSpec, JudgeRequest, Match, Turn, condition_specs
from incall_sms.phone import last_digits
from incall_sms.replies import YesNo, classify_yes_no, parse_reply
from incall_sms.templates import Template
from incall_sms.variables import CallVariables, VariableExtractor
from incall_sms.writer import ContentWriter

__all__ = [
    "CALL_END_TURN_OFFSET", "ActionEngine", "ActionOutcome", "DeliveryFailure", "Firing", "ReplyWait", "SmsReply",
    "reask_name",
]

_log = logging.getLogger(__name__)

#: Failure reasons after which an action does not fire again in the same call.
_FINAL_REASONS = frozenset({
    "opted_out", "not_mobile", "invalid_number", "region_not_allowed", "unreachable", "sender_not_capable",
    "sender_invalid", "sender_unregistered", "auth_failed", "no_agent_number", "no_pool_sender", "too_long",
    "unconfirmed", "rejected", "empty_body", "invalid_media",
    "not_on_whatsapp", "blocked",  # (not whatsapp_window_closed: a WhatsApp message from the caller reopens it)
})

At = Literal["turn", "call_end"]

#: What a firing asks of the processor: ``send`` the text, ``ask`` for consent first, or say the
#: consent was ``declined``.
Stage = Literal["send", "ask", "declined"]

#: The conditions an answer to a consent question is judged against when the yes/no reader cannot read it.
CONSENT_YES = "if the caller has just agreed to receive the text message the agent offered to send"
CONSENT_NO = "if the caller has just declined or refused the text message the agent offered to send"

#: Reactions some phones send as texts ("Liked “Reply with your email”"): not replies.
_REACTION = re.compile(r"^(?:liked|loved|disliked|laughed at|emphasi[sz]ed|questioned|reacted \S+ to)\s+[\"“„«]",
                       re.IGNORECASE)

#: Seconds a reply wait stays open beyond its timeout when no processor closes it first.
_WAIT_SLACK = 5.0

#: Seconds a caller's text is held at most while an asking text is still being sent (see
#: :meth:`ActionEngine.ready_for`): about one slow request; a held text is not seen by the agent meanwhile.
EARLY_REPLY_HOLD = 8.0

#: A re-ask text's ``turn`` is the asking send's turn plus this (its idempotency key differs).
REASK_TURN_OFFSET = 2_000_000

#: A call-end firing's ``turn`` is the caller turns heard by then plus this (its idempotency key differs
#: from any turn's).
CALL_END_TURN_OFFSET = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Firing:
    """An action whose condition matched.

    Attributes:
        action: The action.
        turn: Caller-turn index that triggered it (part of the idempotency key).
        at: ``turn`` or ``call_end``.
        match: The judge's verdict (confidence, reason).
    """

    action: SmsAction
    turn: int
    at: At
    match: Match
    stage: Stage = "send"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SmsReply:
    """A text the caller sent in answer to an action's ``await_reply`` (the ``on_sms_reply`` event).

    Holds personal data (the value): do not log it.

    Attributes:
        action: The action whose text asked for the reply.
        variable: The variable the value is stored in.
        kind: The expected kind (``email``...).
        valid: Whether the reply parsed as the kind (the value is stored only then).
        value: The parsed value (``""`` when not valid).
        problem: Why it did not parse (no personal data).
        sid: The inbound message SID.
        reasked: For an invalid reply: whether a text asking again is being sent (once per wait).
        channel: ``sms`` or ``whatsapp``: how the reply came.
    """

    action: str
    variable: str
    kind: str
    valid: bool
    value: str
    problem: str
    sid: str
    reasked: bool = False
    channel: str = "sms"


@dataclasses.dataclass(slots=True, kw_only=True)
class ReplyWait:
    """An accepted asking text waiting for its reply.

    Attributes:
        firing: The firing whose text was accepted.
        result: Its send result (masked destination, SID).
        done: Resolves to the value when a valid reply arrived, ``None`` when the wait was closed.
        reasked: Whether the one re-ask text was used.
        replies: Texts taken as replies to it, valid or not (each proves the texts before it arrived).
        opened_at: Event-loop time the wait (re)started: when the text was accepted, when a re-ask
            started on its way and when it was accepted.
        safety: The engine's own closing timer (only without a processor timing the wait).
    """

    firing: Firing
    result: SendResult
    done: asyncio.Future[str | None]
    reasked: bool = False
    replies: int = 0
    opened_at: float = 0.0
    safety: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        """Still waiting."""
        return not self.done.done()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActionOutcome:
    """What came of a firing.

    Attributes:
        firing: The firing.
        result: The dispatcher's result.
        line: What the agent should say now (confirmation or honest failure), or ``None``.
        content_source: ``template``, ``prompt`` (LLM-written) or ``preset``.
    """

    firing: Firing
    result: SendResult
    line: str | None
    content_source: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryFailure:
    """A status callback's report that a text of this call the provider accepted did not reach the phone.

    Attributes:
        event: The status callback's ``FAILED`` event (reason, error code, masked destination).
        wait: The wait for the reply this text (an ask or its re-ask) asked for, or ``None``.
        wait_was_open: Whether that wait was still open when the report came (the engine closed it).
    """

    event: SmsEvent
    wait: ReplyWait | None
    wait_was_open: bool


def reask_name(action: SmsAction) -> str:
    """The name the one re-ask text of ``action``'s ``await_reply`` is sent (and reported) under."""
    return f"{action.name}-reask"


class ActionEngine:
    """Runs a call's SMS actions.

    Args:
        dispatcher: Sends messages (owns the outbox and the action set).
        call: The live call.
        judge: Decides which conditions hold.
        variables: The call's variable store (created when ``None``).
        extractor: Finds variable values in the conversation; ``None`` disables extraction.
        writer: Writes prompt-mode bodies and prompt lines; ``None`` uses templates.
        extraction_wait: Seconds a send waits for a running extraction to settle.
        coalesce: Seconds a slow (non-instant) judge waits after a caller fragment: when another
            fragment of the same turn arrives meanwhile, only the later (whole) turn is judged,
            so a model is not asked once per STT fragment.
        early_reply_hold: Longest a caller's text is held (see :meth:`ready_for`) while a text asking
            for a reply is being sent and its wait is not open yet.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        call: CallContext,
        judge: ConditionJudge,
        variables: CallVariables | None = None,
        extractor: VariableExtractor | None = None,
        writer: ContentWriter | None = None,
        extraction_wait: float = 2.0,
        coalesce: float = 0.3,
        early_reply_hold: float = EARLY_REPLY_HOLD,
    ) -> None:
        self.dispatcher = dispatcher
        self.actions = dispatcher.actions
        self.call = call
        self.judge = judge
        self.variables = variables if variables is not None else CallVariables()
        self.variables.update({k: v for k, v in {
            "caller_number": call.caller_number, "agent_number": call.agent_number, "call_id": call.call_id,
        }.items() if v})
        self.extractor = extractor
        self.writer = writer
        self.extraction_wait = extraction_wait
        self.coalesce = coalesce
        self.early_reply_hold = early_reply_hold
        self._asks_out = 0  # sends of texts asking for a reply, between their firing and their wait
        self._held_texts: list[asyncio.Future[None]] = []  # texts held until no ask is out
        self._latest_caller_request: object | None = None
        self.transcript: list[Turn] = []
        self.user_turns = 0
        self._active: set[str] = set()  # actions fired and not (finally) failed/skipped
        self._running: dict[str, int] = {}  # action -> sends in progress
        self._results: dict[str, SendResult] = {}  # action -> latest result
        self._extraction: asyncio.Task[None] | None = None
        self._asking: dict[str, Firing] = {}  # consent asked, answer pending
        self._consented: set[str] = set()
        self._declined: set[str] = set()
        self.waits: list[ReplyWait] = []
        self._wait_by_key: dict[str, ReplyWait] = {}  # an ask's (or its re-ask's) idempotency key -> its wait
        self._undelivered: dict[str, DeliveryFailure] = {}  # accepted texts reported not delivered, by key
        self._waits_closed = False
        self._questions: dict[str, str] = {}  # consent question asked, by action
        self._heard_at: dict[str, int] = {}  # caller turns heard by the time the question was said
        self._new_turn_next = False
        #: Texts of this call the provider accepted (re-asks included).
        self.accepted_count = 0
        #: Called with each reply and the firings it triggers (``after_reply`` actions); set by the processor.
        self.reply_listener: Callable[[SmsReply, list[Firing]], None] | None = None
        self._wanted = {
            name: spec.description or name.replace("_", " ")
            for action in self.actions.actions
            for name, spec in action.variables.items()
        }

    # -- conversation -------------------------------------------------------------

    def add_user_text(self, text: str) -> int:
        """Record caller speech; consecutive fragments join the same turn.

        Returns:
            The caller-turn index the text belongs to.
        """
        text = " ".join(text.split())
        if not text:
            return self.user_turns
        if self.transcript and self.transcript[-1].role == "user" and not self._new_turn_next:
            self.transcript[-1] = Turn("user", f"{self.transcript[-1].text} {text}")
        else:
            self.user_turns += 1
            self.transcript.append(Turn("user", text))
        self._new_turn_next = False
        return self.user_turns

    def add_agent_text(self, text: str) -> None:
        """Record what the agent said (LLM output, filler or confirmation)."""
        text = " ".join(text.split())
        if not text:
            return
        if self.transcript and self.transcript[-1].role == "agent":
            self.transcript[-1] = Turn("agent", f"{self.transcript[-1].text} {text}")
        else:
            self.transcript.append(Turn("agent", text))

    # -- judging ------------------------------------------------------------------

    def _eligible(self, at: At) -> list[SmsAction]:
        eligible = []
        for action in self.actions.actions:
            if action.when == "call_end" and at != "call_end":
                continue
            if action.when == "turn" and at == "call_end":
                continue
            if action.once_per_call and action.name in self._active:
                continue
            if action.name in self._declined or action.name in self._asking:
                continue  # said no / answer pending
            if action.ask_consent and at == "call_end":
                continue  # nobody is left to ask
            eligible.append(action)
        return eligible

    def request(self, at: At) -> JudgeRequest:
        """The judge request for the current state (only actions that may still fire)."""
        return JudgeRequest(
            conditions=condition_specs(a for a in self._eligible(at) if a.after_reply is None),  # those fire on replies
            transcript=tuple(self.transcript),
            at=at,
            variables=dict(self.variables),
        )

    def _firings(self, matches: list[Match], at: At, *, claimed: bool = False) -> list[Firing]:
        firings = []
        # an after_reply action fires on its reply (or a tool call), never on a judge's word
        eligible = {a.name: a for a in self._eligible(at) if claimed or a.after_reply is None}
        for match in matches:
            action = eligible.get(match.id)
            if action is None:
                continue
            self._active.add(action.name)
            turn = self.user_turns if at == "turn" else self.user_turns + CALL_END_TURN_OFFSET  # call-end key differs
            stage: Stage = "send"
            if (action.ask_consent and action.name not in self._consented and self.consent_question(action)
                    and self.accepted_count < self.actions.max_sends_per_call):
                stage = "ask"  # (at the cap the send is refused honestly instead of asking for nothing)
            firing = Firing(action=action, turn=turn, at=at, match=match, stage=stage)
            if stage == "ask":
                self._asking[action.name] = firing
            firings.append(firing)
            _log.info("action %s fired at %s (turn %d, %.2f%s): %s", action.name, at, turn, match.confidence,
                      ", asking consent" if stage == "ask" else "", match.reason)
        return firings

    # -- consent --------------------------------------------------------------------

    def consent_question(self, action: SmsAction) -> str:
        """The consent question for ``action`` ("... your number ending in 42?"), ``""`` without a destination."""
        try:
            to = self.dispatcher.resolve_destination(action, self.call, self.variables)
        except InvalidPhoneNumberError:
            return ""  # no number to ask about: the send fails honestly instead
        extra = {"to_last2": last_digits(to, 2), "to_last4": last_digits(to, 4)}
        question = self._render_line(action, action.consent_question, extra)
        if question:
            self._questions[action.name] = " ".join(question.split())
        return question

    def _answer_window(self) -> list[Turn]:
        """The conversation up to and including the caller's latest turn (the agent may have answered it since)."""
        last_user = max((i for i, t in enumerate(self.transcript) if t.role == "user"), default=None)
        return [] if last_user is None else self.transcript[: last_user + 1]

    def _pending_answers(self) -> list[tuple[str, Firing]]:
        """Consent questions the caller's latest turn may answer (heard before that turn began)."""
        if not self._asking or not self._answer_window():
            return []
        return [(name, asked) for name, asked in self._asking.items() if name in self._heard_at
                and self.user_turns > self._heard_at[name]]

    def question_heard(self, name: str) -> None:
        """The consent question of ``name`` has been said (again: played out): only later caller turns answer it."""
        if name in self._asking:
            self._heard_at[name] = self.user_turns
            self._new_turn_next = True  # what the caller says from now on is a new turn, their answer

    def drop_consent(self, name: str | None = None) -> None:
        """Forget a pending consent question (all when ``name`` is ``None``): nothing sent, not declined."""
        for pending in [name] if name is not None else list(self._asking):
            if self._asking.pop(pending, None) is not None:
                self._heard_at.pop(pending, None)
                self._active.discard(pending)

    def consent_destination(self, action: SmsAction) -> str | None:
        """The number the consent question is about (``None`` when it cannot be resolved)."""
        try:
            return self.dispatcher.resolve_destination(action, self.call, self.variables)
        except InvalidPhoneNumberError:
            return None

    def _consent_request(self, names: list[str]) -> JudgeRequest:
        conditions = []
        for name in names:
            about = f" ({self._questions.get(name) or name.replace('_', ' ')})"
            conditions += [ConditionSpec(id=f"yes:{name}", condition=CONSENT_YES + about, when="turn"),
                           ConditionSpec(id=f"no:{name}", condition=CONSENT_NO + about, when="turn")]
        return JudgeRequest(conditions=conditions, transcript=tuple(self._answer_window()), at="turn",
                            variables=dict(self.variables))

    def _consent_answers(self, judged: list[Match] | None = None) -> list[Firing]:
        """Answers to pending consent questions in the caller's latest turn: a send only on a clear yes.

        A cascade: the yes/no reader decides a clear answer (``yes``, ``no thanks``, ``sí``, ``nein``...);
        an answer it cannot read goes to the judge with two conditions (agreed / declined), whose
        ``judged`` matches decide only when exactly one of them holds. No answer for two caller
        turns drops the question (nothing sent; the action may fire, and ask, again later).
        """
        answered = []
        verdicts = {m.id for m in judged or ()}
        for name, asked in self._pending_answers():
            answer = self._read_answer(name)
            part = "consent reader"
            if answer is None and judged is not None:
                yes, no = f"yes:{name}" in verdicts, f"no:{name}" in verdicts
                answer = "yes" if yes and not no else "no" if no and not yes else None
                part = f"consent judge ({self.judge.name})"
            if answer is None:
                if self.user_turns - self._heard_at[name] >= 2:  # two turns without an answer: drop the question
                    self.drop_consent(name)
                    _log.info("action %s: no clear answer to the consent question; not sent", name)
                continue
            del self._asking[name]
            self._heard_at.pop(name, None)
            if answer == "yes":
                self._consented.add(name)
                stage: Stage = "send"
            else:
                self._declined.add(name)
                stage = "declined"
            _log.info("action %s: consent %s (%s)", name, "given" if stage == "send" else "declined", part)
            match = Match(id=name, confidence=1.0, reason=f"consent: {answer} ({part})")
            answered.append(Firing(action=asked.action, turn=self.user_turns, at="turn", match=match, stage=stage))
        return answered

    @property
    def awaiting_consent(self) -> bool:
        """Whether a consent question waits for the caller's answer."""
        return bool(self._asking)

    def _unclear_consents(self) -> list[str]:
        return [name for name, _ in self._pending_answers() if self._read_answer(name) is None]

    async def answer_consents(self) -> list[Firing]:
        """Read the caller's (whole, finished) turn as the answer to pending consent questions.

        Call it once the caller's turn has ended: "yes" ... "but to my other number" is one answer.

        Returns:
            A ``send`` firing per clear yes, a ``declined`` firing per clear no.
        """
        unclear = self._unclear_consents()
        judged = None
        if unclear:
            try:
                judged = (self.judge.judge_now(self._consent_request(unclear)) if self.judge.instant
                          else await self.judge.judge(self._consent_request(unclear)))
            except Exception as exc:
                _log.warning("consent judging failed (%s); only a clear yes/no counts", exc.__class__.__name__)
                judged = []
        return self._consent_answers(judged)

    def _read_answer(self, name: str) -> YesNo | None:
        """The reader's yes/no, only when the consent question was the last thing the agent said before it."""
        window = self._answer_window()
        agent = next((t.text for t in reversed(window) if t.role == "agent"), "")
        if not agent.rstrip().endswith(self._questions.get(name, "\0")):
            return None  # the agent said more after it (another question?): a bare "yes" is for the judge
        return classify_yes_no(window[-1].text)

    def consent_state(self, name: str) -> Literal["none", "asking", "given", "declined"]:
        """Where ``name``'s consent stands in this call."""
        if name in self._declined:
            return "declined"
        if name in self._consented:
            return "given"
        return "asking" if name in self._asking else "none"

    # -- replies --------------------------------------------------------------------

    def _open_wait(self, firing: Firing, result: SendResult) -> ReplyWait:
        loop = asyncio.get_running_loop()
        wait = ReplyWait(firing=firing, result=result, done=loop.create_future(), opened_at=loop.time())
        self.waits.append(wait)
        if self._bind(result.key, wait) or self._waits_closed:  # nobody can (or is left to) answer it
            wait.done.set_result(None)
        elif self.reply_listener is None:  # no processor times the wait (tool mode): the engine closes it
            assert firing.action.await_reply is not None
            wait.safety = loop.call_later(firing.action.await_reply.timeout + _WAIT_SLACK, self.close_wait, wait)
        return wait

    def _bind(self, key: str, wait: ReplyWait) -> bool:
        """Map the accepted text ``key`` (an ask or its re-ask) to ``wait``; whether it was reported undelivered.

        A report that came before the send's outcome is recorded without its wait: the failure now names it.
        """
        self._wait_by_key[key] = wait
        failure = self._undelivered.get(key)
        if failure is not None:
            self._undelivered[key] = dataclasses.replace(failure, wait=wait)
        return failure is not None

    def wait_of(self, firing: Firing) -> ReplyWait | None:
        """The wait opened for ``firing``'s text (its reply), or ``None``."""
        return next((w for w in self.waits if w.firing is firing), None)

    def close_wait(self, wait: ReplyWait) -> None:
        """Stop waiting (timeout, call end); a later text is an ordinary inbound message."""
        if wait.safety is not None:
            wait.safety.cancel()
            wait.safety = None
        if wait.open:
            wait.done.set_result(None)

    def report_delivery(self, event: SmsEvent) -> DeliveryFailure | None:
        """Take a send event of this call; a status callback saying an accepted text did not arrive is recorded.

        Only ``FAILED`` events raised by a status callback (``delivery_report``) count: a send's own
        failures are its outcome. The report may come before the send's outcome reaches its caller. An
        open wait for the text's reply is closed (nobody can answer a text that never arrived). A report
        for a text the caller has since answered (any reply to the ask after it, valid or not; a valid
        value for the wait) is ignored: the text evidently arrived (a late or wrong report). Idempotent:
        every consumer of the call's events (the watcher processor, the toolset) may pass the same event
        and gets the same failure.

        Returns:
            The recorded failure, or ``None`` when ``event`` is no such report.
        """
        if event.kind is not SmsEventKind.FAILED or not event.delivery_report or event.call_id != self.call.call_id:
            return None
        if event.key in self._undelivered:
            return self._undelivered[event.key]
        wait = self._wait_by_key.get(event.key)
        was_open = wait is not None and wait.open
        if wait is not None:
            valued = not was_open and not wait.done.cancelled() and wait.done.result() is not None
            replied_after = wait.replies > (0 if event.key == wait.result.key else 1)  # the re-ask follows reply 1
            if valued or replied_after:
                return None
        failure = DeliveryFailure(event=event, wait=wait, wait_was_open=was_open)
        self._undelivered[event.key] = failure
        if wait is not None and was_open:
            self.close_wait(wait)
        return failure

    def undelivered(self, key: str | None) -> DeliveryFailure | None:
        """The failure recorded for the text with idempotency ``key`` (see :meth:`report_delivery`), or ``None``."""
        return self._undelivered.get(key) if key is not None else None

    def close_all_waits(self) -> None:
        """The call is ending: close every wait, and the waits of sends still finishing are born closed."""
        self._waits_closed = True
        for wait in self.waits:
            self.close_wait(wait)
        self._release_held()

    def _ask_settled(self) -> None:
        self._asks_out -= 1
        if not self._asks_out:
            self._release_held()

    def _release_held(self) -> None:
        held, self._held_texts = self._held_texts, []
        for settled in held:
            if not settled.done():
                settled.set_result(None)

    async def ready_for(self, message: InboundMessage) -> None:
        """Return when ``message`` can be offered (:meth:`offer_reply`): hold a text while an ask is out.

        A text asking for a reply has fired and its send has not settled (written, accepted, the
        wait opened): a caller's text now may be that reply, ahead of Twilio's answer to our request
        (a slow answer, a timeout and a lookup, a caller who texts while the agent says it is texting
        them). It is held until every such send settled, at most :attr:`early_reply_hold` seconds;
        then it is the wait's reply if the ask was accepted, else an ordinary text. A message that
        cannot be a reply (a picture alone, a reaction) or that answers a wait already open, and
        every message while no ask is out, pass at once, unless an earlier text is held (they keep
        their order).
        """
        if not self._asks_out or self._waits_closed:
            return
        body = message.body.strip()
        if not self._held_texts and (not body or _REACTION.match(body) or self._open_wait_takes(body)):
            return  # no reply, or the reply of a wait already open (texts held before it keep their order)
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held_texts.append(settled)
        _log.info("inbound %s held until the asking text being sent settles", message.sid)
        try:
            async with asyncio.timeout(self.early_reply_hold):
                await settled
        except TimeoutError:
            _log.info("inbound %s: the asking text is still out after %.1f s; taken as an ordinary text",
                      message.sid, self.early_reply_hold)
        finally:
            if settled in self._held_texts:
                self._held_texts.remove(settled)

    def _open_wait_takes(self, body: str) -> bool:
        region = self.actions.default_region
        return any(w.open and w.firing.action.await_reply is not None
                   and parse_reply(w.firing.action.await_reply.kind, body, default_region=region).ok
                   for w in self.waits)

    def offer_reply(self, message: InboundMessage) -> str | None:
        """Take an inbound text as the reply of an open wait, if any.

        The reply goes to the latest open wait whose kind it parses as (else the latest open wait).
        A valid reply sets the wait's variable, closes the wait and fires the ``after_reply``
        actions; an invalid one is reported (the listener texts the re-ask once). Not replies:
        a picture without text, a reaction ("Liked “...”"), an opt-in keyword other than a yes. A STOP
        closes every wait (no more texts can be sent).

        Returns:
            A note for the agent LLM about what the text was taken as, or ``None`` (an ordinary
            inbound message).
        """
        open_waits = [w for w in reversed(self.waits) if w.open]
        if not open_waits:
            return None
        keyword = message_keyword(message)
        if keyword == "opt_out":
            for wait in open_waits:
                self.close_wait(wait)
            _log.info("reply %s: STOP; waits closed", message.sid)
            return ("[SMS system] The caller texted STOP: they opted out of texts from this number. No more texts "
                    "will be sent to them; stop waiting for their text reply and continue by voice.")
        body = message.body.strip()
        if not body or _REACTION.match(body):
            return None  # a picture alone, or a reaction to the asking text, answers nothing
        region = self.actions.default_region

        def kind(wait: ReplyWait) -> str:
            assert wait.firing.action.await_reply is not None
            return wait.firing.action.await_reply.kind

        if keyword == "opt_in" and not any(kind(w) == "yes_no" for w in open_waits):
            return None  # START/UNSTOP: the opt-in was recorded; it answers no question
        wait = next((w for w in open_waits if parse_reply(kind(w), body, default_region=region).ok), open_waits[0])
        wait.replies += 1
        action = wait.firing.action
        spec = action.await_reply
        assert spec is not None
        parsed = parse_reply(spec.kind, body, default_region=region)
        what = spec.variable.replace("_", " ")
        reply = SmsReply(action=action.name, variable=spec.variable, kind=spec.kind, valid=parsed.ok,
                         value=parsed.value, problem=parsed.problem, sid=message.sid,
                         reasked=not parsed.ok and not wait.reasked and self.reply_listener is not None,
                         channel=getattr(message, "channel", "sms"))
        firings: list[Firing] = []
        if parsed.ok:
            self.variables.set(spec.variable, parsed.value)
            if wait.safety is not None:
                wait.safety.cancel()
            wait.done.set_result(parsed.value)
            # fired only where a processor runs them; without one (tool mode) the agent LLM calls them itself
            firings = self._after_reply(action.name) if self.reply_listener is not None else []
            note = (f"[SMS system] The caller's text above is their reply with their {what}; it was read as a "
                    f"valid {spec.kind.replace('_', '/')} and saved. Thank them and carry on from where the "
                    "conversation was waiting.")
        elif self.reply_listener is None:  # tool mode: nobody here texts a re-ask; the wait stays open
            note = (f"[SMS system] The caller's text above was meant as their {what} but is not a valid "
                    f"{spec.kind.replace('_', '/')} ({parsed.problem}). Ask the caller to text it again, or to "
                    "give it by voice.")
        elif reply.reasked:
            wait.reasked = True
            note = (f"[SMS system] The caller's text above was meant as their {what} but is not a valid "
                    f"{spec.kind.replace('_', '/')} ({parsed.problem}); the system is texting them once to ask "
                    "again (you will be told if that text cannot be sent). Tell the caller briefly; do not read "
                    "the text back.")
        else:
            note = (f"[SMS system] The caller's text above is again not a valid {spec.kind.replace('_', '/')} "
                    f"({parsed.problem}). Ask the caller for their {what} by voice instead.")
            self.close_wait(wait)
        _log.info("reply %s for action %s: %s", message.sid, action.name,
                  "valid" if parsed.ok else f"invalid ({parsed.problem})")
        if self.reply_listener is not None:
            self.reply_listener(reply, firings)
        return note

    def _after_reply(self, name: str) -> list[Firing]:
        actions = [a for a in self.actions.actions if a.after_reply == name
                   and not (a.once_per_call and a.name in self._active)]
        firings = []
        for action in actions:
            self._active.add(action.name)
            match = Match(id=action.name, confidence=1.0, reason=f"reply to {name} arrived")
            firings.append(Firing(action=action, turn=self.user_turns, at="turn", match=match))
            _log.info("action %s fired by the reply to %s", action.name, name)
        return firings

    async def reask(self, wait: ReplyWait, *, problem: str, channel: str | None = None) -> ActionOutcome:
        """Text the caller once more, asking for a valid reply (same sender and destination).

        The text goes out as action ``<name>-reask`` (see :func:`reask_name`), once per call, on the
        channel the invalid reply came on (a WhatsApp reply opened the session; an SMS reply to a
        WhatsApp template gets an SMS).
        """
        action = wait.firing.action
        assert action.await_reply is not None
        text = self._render_line(action, action.await_reply.reask_text(), {}) or action.await_reply.reask_text()
        asking = action.model_copy(update={
            "name": reask_name(action), "content": ContentSpec(template=text), "media_urls": (),
            "max_segments": None, "once_per_call": True, "await_reply": None,
            "channel": channel if channel in ("sms", "whatsapp") else action.channel,
        })
        firing = Firing(action=asking, turn=wait.firing.turn + REASK_TURN_OFFSET, at="turn",
                        match=Match(id=asking.name, confidence=1.0, reason=f"reply to {action.name}: {problem}"))
        result = await self.dispatcher.send(asking, call=self.call, turn=firing.turn, variables=dict(self.variables))
        self.accepted_count += result.accepted
        if result.accepted and self._bind(result.key, wait):  # a report on the re-ask concerns this wait
            self.close_wait(wait)
        return ActionOutcome(firing=firing, result=result, line=None, content_source="template")

    def claim(self, action: SmsAction, *, match: Match, at: At = "turn") -> list[Firing]:
        """Fire ``action`` because something other than the judge decided (tool mode).

        The decision includes consent: a tool's description tells the agent LLM to ask first when the
        action has ``ask_consent``, so a claim is a send, never a question.

        Returns:
            The firing, or an empty list when the action may not fire now (already sent
            in this call, declined, or not at this moment).
        """
        if action.name in self._declined:
            return []
        if action.ask_consent:
            self._consented.add(action.name)
        return self._firings([match], at, claimed=True)

    def action_state(self, name: str) -> Literal["idle", "in_progress", "sent", "failed"]:
        """What this call's action has done so far (the truth a tool result or a UI may report).

        Returns:
            ``in_progress`` while a send runs, ``sent`` once the provider accepted one,
            ``failed`` after a final failure (not retried in this call), otherwise ``idle``.
        """
        if self._running.get(name):
            return "in_progress"
        result = self._results.get(name)
        if result is None:
            return "idle"
        if result.accepted or (result.outcome is SendOutcome.DUPLICATE and result.reason == "already_accepted"):
            return "sent"
        if result.outcome in (SendOutcome.FAILED, SendOutcome.SKIPPED) and result.reason in _FINAL_REASONS:
            return "failed"
        return "idle"

    def last_result(self, name: str) -> SendResult | None:
        """The latest send result of action ``name`` in this call, or ``None``."""
        return self._results.get(name)

    def evaluate_now(self, at: At = "turn") -> list[Firing]:
        """Judge synchronously (instant judges only) and claim the firings."""
        request = self.request(at)
        if not request.conditions or not request.transcript:
            return []
        return self._firings(self.judge.judge_now(request), at)

    async def evaluate(self, at: At = "turn") -> list[Firing]:
        """Judge (any judge) and claim the firings."""
        request = self.request(at)
        if not request.conditions or not request.transcript:
            return []
        if self.judge.instant:
            return self._firings(self.judge.judge_now(request), at)
        if at == "turn" and request.transcript[-1].role == "user" and self.coalesce > 0:
            self._latest_caller_request = mine = object()
            await asyncio.sleep(self.coalesce)
            same_turn = len(self.transcript) == len(request.transcript) and self.transcript[-1].role == "user"
            if self._latest_caller_request is not mine and same_turn:
                return []  # a later fragment of this caller turn is judged with the whole turn
        return self._firings(await self.judge.judge(request), at)

    # -- variables ------------------------------------------------------------------

    async def extract(self) -> None:
        """Run the extractor once over the conversation and merge what it finds."""
        if self.extractor is None or not self._wanted:
            return
        try:
            found = await self.extractor.extract(tuple(self.transcript), self._wanted)
        except Exception as exc:
            _log.warning("variable extraction failed (%s)", exc.__class__.__name__)
            return
        for name, value in found.items():
            if name in self._wanted:
                self.variables.set(name, value)

    def track_extraction(self, task: asyncio.Task[None]) -> None:
        """Tell the engine about an extraction task created by the owner's task helper."""
        self._extraction = task

    # -- executing ------------------------------------------------------------------

    def filler_line(self, firing: Firing) -> str | None:
        """The static filler for ``firing`` rendered with the variables, or ``None``."""
        action = firing.action
        if action.filler is None or firing.at == "call_end":
            return None
        return self._render_line(action, action.filler, {}) or None

    async def filler_text(self, firing: Firing, *, deadline: float = 1.5) -> str | None:
        """The filler, LLM-phrased when the action has a ``filler_prompt`` and a writer exists."""
        action = firing.action
        if firing.at == "call_end":
            return None
        if action.filler_prompt and self.writer is not None:
            try:
                async with asyncio.timeout(deadline):
                    return await self.writer.write(action.filler_prompt, transcript=tuple(self.transcript),
                                                   variables=dict(self.variables), max_chars=140)
            except Exception as exc:
                _log.info("filler prompt failed (%s); using the static filler", exc.__class__.__name__)
        return self.filler_line(firing)

    async def _settle_extraction(self) -> None:
        task = self._extraction
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.extraction_wait)
            except (TimeoutError, asyncio.CancelledError):
                _log.info("sending without waiting longer for variable extraction")

    async def execute(self, firing: Firing) -> ActionOutcome:
        """Write the body if needed, send it, and choose the line to speak.

        Never raises for send failures; the outcome's line is honest about them.
        """
        action = firing.action
        self._running[action.name] = self._running.get(action.name, 0) + 1
        try:
            return await self._execute(firing)
        finally:
            self._running[action.name] -= 1

    async def _execute(self, firing: Firing) -> ActionOutcome:
        if firing.action.await_reply is None:
            return await self._execute_send(firing, settled=lambda: None)
        self._asks_out += 1  # a text the caller sends from now on may be its reply (see ready_for)
        out = True

        def settled() -> None:  # once: when the wait opened (or will not), or when the send ended anyhow
            nonlocal out
            if out:
                out = False
                self._ask_settled()

        try:
            return await self._execute_send(firing, settled=settled)
        finally:
            settled()

    async def _execute_send(self, firing: Firing, *, settled: Callable[[], None]) -> ActionOutcome:
        action = firing.action
        await self._settle_extraction()
        variables = dict(self.variables)
        body = None
        source = "preset" if action.content.mode == "preset" else "template"
        if action.content.mode == "prompt" and self.writer is not None:
            try:
                body = await self.writer.write(action.content.prompt or "", transcript=tuple(self.transcript),
                                               variables=variables, max_chars=300)
                source = "prompt"
            except Exception as exc:
                _log.warning("prompt content for %s failed (%s); using the template", action.name,
                             exc.__class__.__name__)
        result = await self.dispatcher.send(action, call=self.call, turn=firing.turn, variables=variables, body=body)
        self._results[action.name] = result
        self.accepted_count += result.accepted
        if action.ask_consent and not action.once_per_call:
            self._consented.discard(action.name)  # a yes covers one text: the next one is asked for again
        if result.accepted and action.await_reply is not None:
            self._open_wait(firing, result)
        settled()  # a text held for this ask's wait may be offered now
        line = await self._outcome_line(firing, result, variables)
        if result.outcome in (SendOutcome.FAILED, SendOutcome.SKIPPED) and result.reason not in _FINAL_REASONS:
            self._active.discard(action.name)  # may fire again later (e.g. once the variable is known)
        return ActionOutcome(firing=firing, result=result, line=line, content_source=source)

    async def _outcome_line(self, firing: Firing, result: SendResult, variables: Mapping[str, str]) -> str | None:
        action = firing.action
        if firing.at == "call_end" or result.outcome is SendOutcome.DUPLICATE:
            return None
        extra = {"to_last2": result.to_last2 or "", "to_last4": result.to_last4 or ""}
        if result.accepted and action.await_reply is not None and not self._waits_closed:
            return self._render_line(action, action.await_reply.waiting_line(action.channel), extra) or None
        if result.accepted:
            if action.confirmation_prompt and self.writer is not None:
                try:
                    async with asyncio.timeout(2.0):
                        return await self.writer.write(
                            action.confirmation_prompt, transcript=tuple(self.transcript),
                            variables={**variables, **extra}, max_chars=160)
                except Exception as exc:
                    _log.info("confirmation prompt failed (%s); static line", exc.__class__.__name__)
            return self._render_line(action, action.confirmation, extra) or "Done, I've sent you the text."
        return self._render_line(action, action.failure_line(result.reason or "default"), extra) or (
            "Sorry, I couldn't send the text message."
        )

    def _render_line(self, action: SmsAction, text: str, extra: Mapping[str, str]) -> str:
        values = {**self.variables, "action_name": action.name, **{k: v for k, v in extra.items() if v}}
        try:
            return Template(text).render(values, defaults=action.defaults())
        except MissingVariableError:
            return ""

    def llm_note(self, firings: list[Firing]) -> str:
        """A system note telling the agent LLM that these texts are being handled (or asked about)."""
        asking = [f for f in firings if f.stage == "ask"]
        declined = [f for f in firings if f.stage == "declined"]
        sending = [f for f in firings if f.stage == "send"]
        notes = []
        if asking:
            names = ", ".join(f.action.name.replace("_", " ") for f in asking)
            notes.append(f"[SMS system] A separate system is asking the caller right now whether they want a text "
                         f"({names}) and will send it only if they agree. Do not ask yourself, do not promise "
                         "or confirm a text; only address anything else the caller said, briefly.")
        if declined:
            names = ", ".join(f.action.name.replace("_", " ") for f in declined)
            notes.append(f"[SMS system] The caller declined the text ({names}); it will not be sent. Do not "
                         "offer it again.")
        if sending:
            notes.append(self._sending_note(sending))
        return " ".join(notes)

    def _sending_note(self, firings: list[Firing]) -> str:
        names = ", ".join(f.action.name.replace("_", " ") for f in firings)
        return (
            f"[SMS system] The caller's request is being handled: a text message ({names}) is being sent now "
            "by a separate system, which will tell the caller itself when it was sent or if it failed. Do not "
            "say that you sent a text or that it was sent; do not repeat the request. Only address anything "
            "else the caller said, briefly."
        )
