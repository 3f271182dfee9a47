"""Tool mode: each SMS action exposed as an LLM function, for pipelines where the agent LLM decides.

Functions are registered with ``cancel_on_interruption=False``: a barge-in never
cancels a send (pipecat then treats them as asynchronous tools: the LLM keeps
talking and receives the result later). The result the LLM gets is the truth:
``{"status": "sent", ...}`` only when the provider accepted the message,
otherwise ``{"status": "failed", "reason": ..., "say": <honest line>}``.

The destination is never a function argument unless the action explicitly has a
dynamic destination: the LLM cannot be talked into texting an arbitrary number.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.services.llm_service import FunctionCallParams, LLMService

from incall_sms.actions import SmsAction
from incall_sms.dispatcher import SendOutcome
from incall_sms.engine import ActionEngine
from incall_sms.judges.base import Match

__all__ = ["SmsToolset"]

_log = logging.getLogger(__name__)


def _function_name(action: SmsAction) -> str:
    return "send_sms_" + re.sub(r"[^A-Za-z0-9_]", "_", action.name)


class SmsToolset:
    """Exposes a call's SMS actions as LLM functions.

    Args:
        engine: The call's action engine.
        speak_filler: Push the action's filler when the LLM calls the function.
    """

    def __init__(self, *, engine: ActionEngine, speak_filler: bool = True) -> None:
        self.engine = engine
        self._speak_filler = speak_filler
        self._by_function = {_function_name(a): a for a in engine.actions.actions}

    def schemas(self) -> list[FunctionSchema]:
        """One function schema per action (declared variables are optional string arguments)."""
        out = []
        for name, action in self._by_function.items():
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

    async def call(self, action: SmsAction, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run one tool call for ``action`` and return what really happened (the tool result).

        Statuses: ``sent`` (accepted by the provider now), ``already_sent`` (accepted earlier in
        this call; nothing new was sent), ``in_progress`` (a send of this action is running; its
        result will be spoken), ``skipped`` (not sent: e.g. ``missing`` lists the variables the
        LLM should ask the caller for, then call again), ``failed`` (with the honest line to say),
        ``not_now`` (this action only fires at call end).
        """
        state = self.engine.action_state(action.name)
        if state == "in_progress":
            return {"status": "in_progress",
                    "note": "This text is being sent right now; the system tells the caller when it is done."}
        if state == "sent" and action.once_per_call:
            last = self.engine.last_result(action.name)
            return {"status": "already_sent", "to": f"number ending in {last.to_last2}" if last else None,
                    "note": "It was already sent earlier in this call; nothing new was sent."}
        for var in action.variables:
            value = arguments.get(var)
            if isinstance(value, str) and value.strip():
                self.engine.variables.set(var, value)
        firings = self.engine.claim(action, match=Match(id=action.name, confidence=1.0,
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
            return {"status": "sent", "to": f"number ending in {result.to_last2}", "segments": result.segments,
                    "say": outcome.line}
        if result.outcome is SendOutcome.DUPLICATE:  # the key already stands for a send of another path
            stored = (result.reason or "").removeprefix("already_")
            status = {"accepted": "already_sent", "unconfirmed": "unconfirmed"}.get(stored, "in_progress")
            return {"status": status, "note": "Nothing new was sent."}
        payload: dict[str, Any] = {"status": result.outcome.value, "reason": result.reason}
        if result.missing:
            payload["missing"] = list(result.missing)
            payload["note"] = "Ask the caller for the missing details, then call this function again with them."
        else:
            payload["say"] = outcome.line
        return payload
