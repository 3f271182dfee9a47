"""Scoring a judge on a labelled JSONL file (the format of ``shared/conditions/dev.jsonl``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections import defaultdict
from typing import Any

from incall_sms.judges.base import ConditionJudge, ConditionSpec, Decision, JudgeRequest, Turn, decide

__all__ = ["EvalCase", "EvalReport", "evaluate", "load_cases"]


@dataclasses.dataclass(frozen=True, slots=True)
class EvalCase:
    """One labelled line."""

    id: str
    condition: str
    transcript: tuple[Turn, ...]
    at: str
    variables: dict[str, Any]
    fires: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Scores:
    """Counts and derived scores."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        """Precision, tp / (tp + fp); 1.0 when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """Recall, tp / (tp + fn); 1.0 when nothing should fire."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def n(self) -> int:
        """Number of cases."""
        return self.tp + self.fp + self.fn + self.tn


@dataclasses.dataclass(frozen=True, slots=True)
class EvalReport:
    """Overall and per-condition scores, the misjudged cases, and every decision explained."""

    overall: Scores
    per_condition: dict[str, Scores]
    errors: list[tuple[EvalCase, bool, str]]
    decisions: list[tuple[EvalCase, Decision]] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)


def load_cases(path: str | pathlib.Path) -> list[EvalCase]:
    """Read a labelled JSONL file.

    Raises:
        ValueError: A line is not valid JSON or misses a field (the message names the line).
    """
    cases = []
    for number, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            cases.append(
                EvalCase(
                    id=str(raw.get("id", f"line-{number}")),
                    condition=raw["condition"],
                    transcript=tuple(Turn(role=_role(t["role"]), text=t["text"]) for t in raw["transcript"]),
                    at=_one_of(raw.get("at", "turn"), "at", ("turn", "call_end")),
                    variables=dict(raw.get("variables") or {}),
                    fires=_label(raw["fires"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:  # (json.JSONDecodeError is a ValueError)
            raise ValueError(f"line {number}: {exc.__class__.__name__}: {exc}") from None
    return cases


#: Speaker names taken for the two roles (a turn with any other role is an error, not a silent miss).
_ROLES = {"user": "user", "caller": "user", "customer": "user", "agent": "agent", "assistant": "agent",
          "bot": "agent"}


def _role(value: object) -> str:
    role = _ROLES.get(str(value).strip().lower())
    if role is None:
        raise ValueError(f"role {value!r} is neither 'user' (the caller) nor 'agent'")
    return role


def _one_of(value: object, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{field} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _label(value: object) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"fires {value!r} is not true or false")


async def evaluate(judge: ConditionJudge, cases: list[EvalCase]) -> EvalReport:
    """Judge every case (one condition at a time) and score against the labels."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    errors = []
    decisions = []
    seconds = []
    for case in cases:
        request = JudgeRequest(
            conditions=[ConditionSpec(id="c", condition=case.condition)],
            transcript=case.transcript,
            at="call_end" if case.at == "call_end" else "turn",
            variables=case.variables,
        )
        started = time.perf_counter()
        [decision] = await decide(judge, request)
        seconds.append(time.perf_counter() - started)
        decisions.append((case, decision))
        predicted = decision.fires
        reason = f"{decision.part}" + (f" ({decision.reason})" if decision.reason else "")
        slot = (0 if predicted else 2) if case.fires else (1 if predicted else 3)
        counts[case.condition][slot] += 1
        if predicted != case.fires:
            errors.append((case, predicted, reason))
    per = {c: Scores(*v) for c, v in counts.items()}
    total = Scores(*(sum(v[i] for v in counts.values()) for i in range(4)))
    return EvalReport(overall=total, per_condition=per, errors=errors, decisions=decisions, seconds=seconds)
