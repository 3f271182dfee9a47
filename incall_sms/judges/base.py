"""The condition-judge interface: decide which actions' conditions hold right now."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

__all__ = ["ConditionJudge", "ConditionSpec", "Decision", "JudgeRequest", "Match", "Turn", "condition_specs", "decide",
           "warmed"]


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """How a judge decided one condition (fired or not): for ``judge eval -v`` and replay reports.

    Attributes:
        id: The action name.
        fires: Whether the condition holds now.
        score: The probability or confidence behind the decision, 0..1 (``None`` when a rule
            decided without a score).
        part: Which part of the judge decided (``model``, ``rule: ...``, ``rules``, ``llm``).
        reason: Short explanation (no personal data).
        rules: Whether the embedded rules fired on it too, when a model decided with their help
            (``None`` when they were not asked).
    """

    id: str
    fires: bool
    score: float | None
    part: str
    reason: str = ""
    rules: bool | None = None

    def as_match(self) -> Match:
        """The :class:`Match` of a firing decision."""
        return Match(id=self.id, confidence=1.0 if self.score is None else self.score,
                     reason=f"{self.part}: {self.reason}" if self.reason else self.part)


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


async def decide(judge: ConditionJudge, request: JudgeRequest) -> list[Decision]:
    """Every condition's decision, explained: the judge's own ``decide`` when it has one.

    Judges without one are wrapped: a match is a firing decision (part = the judge's name),
    everything else a non-firing one without a score.
    """
    own = getattr(judge, "decide", None)
    if own is not None:
        return list(await own(request))
    matches = {m.id: m for m in await judge.judge(request)}
    return [Decision(id=c.id, fires=c.id in matches, score=matches[c.id].confidence if c.id in matches else None,
                     part=judge.name, reason=matches[c.id].reason if c.id in matches else "")
            for c in request.conditions]


def condition_specs(actions: Iterable[Any]) -> list[ConditionSpec]:
    """What a judge sees of actions (anything with ``name``, ``condition`` and ``when``)."""
    return [ConditionSpec(id=a.name, condition=a.condition, when=a.when) for a in actions]


@contextlib.asynccontextmanager
async def warmed(
    judge: ConditionJudge,
    conditions: Iterable[ConditionSpec] = (),
    *,
    while_warming: contextlib.AbstractContextManager[Any] | None = None,
) -> AsyncIterator[ConditionJudge]:
    """Warm a judge that needs it (a local model loads and caches its prompts), close it after, also on failure.

    Args:
        judge: Any judge; ones without ``warm``/``aclose`` pass through.
        conditions: The conditions it will judge (analysed while warming).
        while_warming: Entered only around the warm-up (e.g. a progress spinner).
    """
    try:
        warm = getattr(judge, "warm", None)
        if warm is not None:
            with while_warming or contextlib.nullcontext():
                await warm(list(conditions))
        yield judge
    finally:
        close = getattr(judge, "aclose", None)
        if close is not None:
            await close()
