"""Tool mode: each SMS action exposed as an LLM function, for pipelines where the agent LLM decides.

Functions are registered with ``cancel_on_interruption=False``: a barge-in never
cancels a send (pipecat then treats them as asynchronous tools: the LLM keeps
talking and receives the result later). The result the LLM gets is the truth:
``{"status": "sent", ...}`` only when the provider accepted the message,
otherwise ``{"status": "failed", "reason": ..., "say": <honest line>}``. A text the
carrier later reports undelivered (status callback) is never reported sent again:
the LLM is told by a developer note that runs it (pipecat's assistant aggregator
holds it while the bot speaks and until the caller's turn ends), and a later call
of the function answers ``undelivered``.

The destination is never a function argument unless the action explicitly has a
dynamic destination: the LLM cannot be talked into texting an arbitrary number.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import LLMMessagesAppendFrame, TTSSpeakFrame
from pipecat.services.llm_service import FunctionCallParams, LLMService

from incall_sms.actions import DELIVERY_FAILURE_LINE, SmsAction
from incall_sms.dispatcher import SendOutcome, SendResult
from incall_sms.engine import ActionEngine, ReplyWait
from incall_sms.events import SmsEvent
from incall_sms.judges.base import Match

__all__ = ["SmsToolset"]

_log = logging.getLogger(__name__)


def _function_name(action: SmsAction) -> str:
    return "send_sms_" + re.sub(r"[^A-Za-z0-9_]", "_", action.name)


class SmsToolset:
    """Exposes a call's SMS actions as LLM functions.

    From :meth:`register` or the first :meth:`call` on, it listens to the call's SMS events (for
    status callbacks): you must call :meth:`close` when the call ends (``CallSms`` does), or the
    dispatcher keeps the subscription, and the engine with it.

    Args:
        engine: The call's action engine.
        speak_filler: Push the action's filler when the LLM calls the function.
        tell_delivery_failures: When a status callback reports a text the LLM was told was sent
            as undelivered, append a developer note to the LLM's context that runs it (pipecat's
            assistant aggregator holds it while the bot speaks and until the caller's turn ends),
            so the agent tells the caller. Needs :meth:`register`.
        on_undelivered: Called with the status callback's event for each text of this call whose
            result said ``sent`` (or ``already_sent``) and that is then reported undelivered (for code that sends with
            :meth:`call`, e.g. a pipecat-flows node, and has no LLM registered; a report that comes
            before the send's result makes that result ``undelivered`` instead).
    """

    def __init__(self, *, engine: ActionEngine, speak_filler: bool = True, tell_delivery_failures: bool = True,
                 on_undelivered: Callable[[SmsEvent], Awaitable[None] | None] | None = None) -> None:
        self.engine = engine
        self._speak_filler = speak_filler
        self._tell_delivery_failures = tell_delivery_failures
        self._on_undelivered = on_undelivered
        self._by_function = {_function_name(a): a for a in engine.actions.actions}
        self._llm: LLMService | None = None
        self._reported_sent: set[str] = set()  # texts a tool result reported sent (a failure is then a note)
        self._failures_seen: set[str] = set()  # texts reported undelivered (see ActionEngine.report_delivery)
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    def _listen(self) -> None:
        if self._unsubscribe is None and not self._closed:
            self._unsubscribe = self.engine.dispatcher.subscribe(self._on_sms_event, call_id=self.engine.call.call_id)

    def close(self) -> None:
        """Stop listening to the call's SMS events (idempotent; the toolset does not listen again)."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def schemas(self) -> list[FunctionSchema]:
        """One function schema per action the LLM may send mid-call (declared variables: optional strings).

        Actions with ``when: call_end`` are not offered (the LLM cannot know the call has ended): send them
        from code (:meth:`call` with ``at="call_end"``, or ``CallSms.send``) or run the watcher.
        """
        out = []
        for name, action in self._by_function.items():
            if action.when == "call_end":
                continue
            properties = {
                var: {"type": "string", "description": spec.description or var.replace("_", " ")}
                for var, spec in action.variables.items()
            }
            when = action.condition or f"the caller's text reply to '{action.after_reply}' has arrived"
            description = (f"Text the caller the '{action.name}' SMS. Call it when: {when}. "
                           "The system sends it and reports whether it was really sent; never claim it was "
                           "sent before the result says so.")
            if action.ask_consent:
                description += (" Ask the caller first whether you may text their number and call this only "
                                "after a clear yes.")
            if action.await_reply is not None:
                description += (f" The text asks the caller to reply by text with their "
                                f"{action.await_reply.variable.replace('_', ' ')}; the reply reaches you as a "
                                "message when it arrives.")
            out.append(FunctionSchema(
                name=name,
                description=description,
                properties=properties,
                required=[],
            ))
        return out

    def tools(self) -> ToolsSchema:
        """A ``ToolsSchema`` for ``LLMContext(tools=...)``."""
        return ToolsSchema(standard_tools=self.schemas())

    def register(self, llm: LLMService) -> None:
        """Register every action's handler on ``llm`` (and the filler on call start)."""
        self._llm = llm
        self._listen()
        for name in self._by_function:
            llm.register_function(name, self._handle, cancel_on_interruption=False)
        if self._speak_filler:
            llm.add_event_handler("on_function_calls_started", self._on_calls_started)

    async def _on_calls_started(self, llm: LLMService, function_calls: list[Any]) -> None:
        for call in function_calls:
            action = self._by_function.get(call.function_name)
            if action is not None and action.filler:
                await llm.push_frame(TTSSpeakFrame(action.filler, append_to_context=False))

    async def _handle(self, params: FunctionCallParams) -> None:
        action = self._by_function[params.function_name]
        await params.result_callback(await self.call(action, params.arguments or {}))

    async def call(self, action: SmsAction, arguments: dict[str, Any], *, at: Literal["turn", "call_end"] = "turn",
                   ) -> dict[str, Any]:
        """Run one tool call for ``action`` and return what really happened (the tool result).

        Statuses: ``sent`` (accepted by the provider now), ``already_sent`` (accepted earlier in
        this call; nothing new was sent), ``undelivered`` (accepted, then reported not delivered by
        the carrier; with the honest line to say; nothing new was sent), ``in_progress`` (a send of
        this action is running; its result will be spoken), ``skipped`` (not sent: e.g. ``missing``
        lists the variables the LLM should ask the caller for, then call again), ``failed`` (with
        the honest line to say), ``not_now`` (this action only fires at call end: pass ``at="call_end"``
        when your code knows the call is ending or decides to send it now).
        """
        self._listen()
        state = self.engine.action_state(action.name)
        if state == "in_progress":
            return {"status": "in_progress",
                    "note": "This text is being sent right now; the system tells the caller when it is done."}
        if state == "sent" and action.once_per_call:
            last = self.engine.last_result(action.name)
            failure = self.engine.undelivered(last.key if last is not None else None)
            if failure is not None:
                return self._undelivered_result(failure.event, action)
            if last is not None:
                self._reported_sent.add(last.key)  # the LLM hears it was sent: a later report must reach it
            return {"status": "already_sent", "to": f"number ending in {last.to_last2}" if last else None,
                    "note": "It was already sent earlier in this call; nothing new was sent."}
        for var in action.variables:
            value = arguments.get(var)
            if isinstance(value, str) and value.strip():
                self.engine.variables.set(var, value)
        firings = self.engine.claim(action, at=at, match=Match(id=action.name, confidence=1.0,
                                                               reason="the agent LLM called the tool"))
        if not firings:
            last = self.engine.last_result(action.name)
            if last is not None and state == "failed":
                return {"status": "failed", "reason": last.reason,
                        "note": "It failed earlier in this call and will not be retried."}
            return {"status": "not_now", "note": "This text is not sent at this point of the call."}
        outcome = await self.engine.execute(firings[0])
        result = outcome.result
        if result.accepted:
            return self._accepted_result(result, outcome.line, wait=self.engine.wait_of(firings[0]))
        if result.outcome is SendOutcome.DUPLICATE:  # the key already stands for a send of another path
            failure = self.engine.undelivered(result.key)
            if failure is not None:
                return self._undelivered_result(failure.event, action)
            stored = (result.reason or "").removeprefix("already_")
            status = {"accepted": "already_sent", "unconfirmed": "unconfirmed"}.get(stored, "in_progress")
            if status == "already_sent":
                self._reported_sent.add(result.key)
            return {"status": status, "note": "Nothing new was sent."}
        payload: dict[str, Any] = {"status": result.outcome.value, "reason": result.reason}
        if result.missing:
            payload["missing"] = list(result.missing)
            payload["note"] = "Ask the caller for the missing details, then call this function again with them."
        else:
            payload["say"] = outcome.line
        return payload

    def _accepted_result(self, result: SendResult, line: str | None, *, wait: ReplyWait | None) -> dict[str, Any]:
        """The result of a send the provider accepted (no await: a status callback cannot slip in between)."""
        failure = self.engine.undelivered(result.key)
        if failure is not None:  # reported undelivered before the send's outcome reached us (the wait is closed)
            return self._undelivered_result(failure.event, wait.firing.action if wait else None)
        self._reported_sent.add(result.key)
        return {"status": "sent", "to": f"number ending in {result.to_last2}", "segments": result.segments,
                "say": line}

    @staticmethod
    def _undelivered_result(event: SmsEvent, action: SmsAction | None) -> dict[str, Any]:
        spec = action.await_reply if action is not None else None
        then = (f"ask the caller for their {spec.variable.replace('_', ' ')} by voice instead" if spec is not None
                else "offer to give the details by voice")
        return {"status": "undelivered", "reason": event.reason, "error_code": event.error_code,
                "say": DELIVERY_FAILURE_LINE.format(to_last2=event.to_last2),
                "note": ("The provider accepted the text but the carrier reported it did not reach the caller's "
                         f"phone; nothing new was sent. Tell the caller, and {then}.")}

    async def _on_sms_event(self, event: SmsEvent) -> None:
        # only a status callback says an accepted text did not arrive (a send's own failures are tool results)
        failure = self.engine.report_delivery(event)
        if failure is None or event.key in self._failures_seen:
            return
        self._failures_seen.add(event.key)
        wait, was_open = failure.wait, failure.wait_was_open
        if event.key not in self._reported_sent:  # the send's tool result, still to come, says it
            return
        _log.info("text for %s to %s reported undelivered (%s)", event.action, event.to_masked, event.reason)
        if self._on_undelivered is not None:
            try:
                outcome = self._on_undelivered(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # the user's callback must not keep the LLM from being told
                _log.exception("on_undelivered failed for the %s text", event.action)
        if not self._tell_delivery_failures or self._llm is None:
            return
        content = (f"[SMS system] The '{event.action}' text reported as sent earlier did not reach the caller's "
                   "phone (the carrier reported it undelivered). Tell the caller honestly")
        if was_open and wait is not None and wait.firing.action.await_reply is not None:
            what = wait.firing.action.await_reply.variable.replace("_", " ")
            content += f". Stop waiting for a text and ask the caller for their {what} by voice instead."
        else:
            content += ", and offer to give the details by voice."
        note = LLMMessagesAppendFrame([{"role": "developer", "content": content}], run_llm=True)
        note.interruptible = False  # a barge-in empties the queues it waits in: the note must not go with them
        await self._llm.push_frame(note)
