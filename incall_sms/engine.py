"""The action engine of one call: transcript, judging, variables, content, send, spoken lines.

Framework-free: the pipecat processor feeds it turns and turns its outcomes into
frames. It decides *what* happens; the processor decides *when* it is spoken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Literal

from incall_sms.actions import SmsAction
from incall_sms.dispatcher import CallContext, Dispatcher, SendOutcome, SendResult
from incall_sms.errors import MissingVariableError
from incall_sms.judges.base import ConditionJudge, JudgeRequest, Match, Turn, condition_specs
from incall_sms.templates import Template
from incall_sms.variables import CallVariables, VariableExtractor
from incall_sms.writer import ContentWriter

__all__ = ["CALL_END_TURN_OFFSET", "ActionEngine", "ActionOutcome", "Firing"]

_log = logging.getLogger(__name__)

#: Failure reasons after which an action does not fire again in the same call.
_FINAL_REASONS = frozenset({
    "opted_out", "not_mobile", "invalid_number", "region_not_allowed", "unreachable", "sender_not_capable",
    "sender_invalid", "sender_unregistered", "auth_failed", "no_agent_number", "no_pool_sender", "too_long",
    "unconfirmed", "rejected", "empty_body", "invalid_media",
})

At = Literal["turn", "call_end"]

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
        self._latest_caller_request: object | None = None
        self.transcript: list[Turn] = []
        self.user_turns = 0
        self._active: set[str] = set()  # actions fired and not (finally) failed/skipped
        self._running: dict[str, int] = {}  # action -> sends in progress
        self._results: dict[str, SendResult] = {}  # action -> latest result
        self._extraction: asyncio.Task[None] | None = None
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
        if self.transcript and self.transcript[-1].role == "user":
            self.transcript[-1] = Turn("user", f"{self.transcript[-1].text} {text}")
        else:
            self.user_turns += 1
            self.transcript.append(Turn("user", text))
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
            eligible.append(action)
        return eligible

    def request(self, at: At) -> JudgeRequest:
        """The judge request for the current state (only actions that may still fire)."""
        return JudgeRequest(
            conditions=condition_specs(self._eligible(at)),
            transcript=tuple(self.transcript),
            at=at,
            variables=dict(self.variables),
        )

    def _firings(self, matches: list[Match], at: At) -> list[Firing]:
        firings = []
        eligible = {a.name: a for a in self._eligible(at)}
        for match in matches:
            action = eligible.get(match.id)
            if action is None:
                continue
            self._active.add(action.name)
            turn = self.user_turns if at == "turn" else self.user_turns + CALL_END_TURN_OFFSET  # call-end key differs
            firings.append(Firing(action=action, turn=turn, at=at, match=match))
            _log.info("action %s fired at %s (turn %d, %.2f): %s", action.name, at, turn, match.confidence,
                      match.reason)
        return firings

    def claim(self, action: SmsAction, *, match: Match, at: At = "turn") -> list[Firing]:
        """Fire ``action`` because something other than the judge decided (tool mode).

        Returns:
            The firing, or an empty list when the action may not fire now (already sent
            in this call, or not at this moment).
        """
        return self._firings([match], at)

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
        line = await self._outcome_line(firing, result, variables)
        if result.outcome in (SendOutcome.FAILED, SendOutcome.SKIPPED) and result.reason not in _FINAL_REASONS:
            self._active.discard(action.name)  # may fire again later (e.g. once the variable is known)
        return ActionOutcome(firing=firing, result=result, line=line, content_source=source)

    async def _outcome_line(self, firing: Firing, result: SendResult, variables: Mapping[str, str]) -> str | None:
        action = firing.action
        if firing.at == "call_end" or result.outcome is SendOutcome.DUPLICATE:
            return None
        extra = {"to_last2": result.to_last2 or "", "to_last4": result.to_last4 or ""}
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
        """A system note telling the agent LLM that these texts are being handled."""
        names = ", ".join(f.action.name.replace("_", " ") for f in firings)
        return (
            f"[SMS system] The caller's request is being handled: a text message ({names}) is being sent now "
            "by a separate system, which will tell the caller itself when it was sent or if it failed. Do not "
            "say that you sent a text or that it was sent; do not repeat the request. Only address anything "
            "else the caller said, briefly."
        )
