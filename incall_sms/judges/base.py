"""The condition-judge interface: decide which actions' conditions hold right now."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

__all__ = ["ConditionJudge", "ConditionSpec", "JudgeRequest", "Match", "Turn"]


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the conversation.

    Attributes:
        role: ``user`` (the caller) or ``agent``.
        text: What was said.
    """

    role: Literal["user", "agent"]
    text: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConditionSpec:
    """A condition to judge.

    Attributes:
        id: Action name the condition belongs to.
        condition: The plain-language condition.
        when: ``auto`` (judge infers from the wording), ``turn`` or ``call_end``.
    """

    id: str
    condition: str
    when: Literal["auto", "turn", "call_end"] = "auto"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JudgeRequest:
    """Everything a judge sees.

    Attributes:
        conditions: The active actions' conditions (all judged at once).
        transcript: The conversation so far, oldest first.
        at: ``turn`` (end of the last turn, call goes on) or ``call_end``.
        variables: Values extracted so far.
    """

    conditions: Sequence[ConditionSpec]
    transcript: Sequence[Turn]
    at: Literal["turn", "call_end"] = "turn"
    variables: Mapping[str, object] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """A condition that holds.

    Attributes:
        id: The action name.
        confidence: 0..1.
        reason: Short explanation (no personal data).
    """

    id: str
    confidence: float
    reason: str


class ConditionJudge(Protocol):
    """Decides which conditions hold. Implementations must not block the event loop.

    Attributes:
        name: Short name for logs and reports.
        instant: True when :meth:`judge_now` answers synchronously in microseconds
            (no I/O), so a processor may call it inline before forwarding a transcript.
    """

    name: str
    instant: bool

    async def judge(self, request: JudgeRequest) -> list[Match]:
        """Return the conditions that hold now (may do I/O, has its own deadline)."""
        ...

    def judge_now(self, request: JudgeRequest) -> list[Match]:
        """Synchronous judgement for instant judges; others raise ``NotImplementedError``."""
        ...
