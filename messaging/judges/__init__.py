"""Condition judges: decide from plain-language conditions when an action fires."""

from messaging.judges.base import ConditionJudge, ConditionSpec, JudgeRequest, Match, Turn
from messaging.judges.embedded import EmbeddedJudge

__all__ = ["ConditionJudge", "ConditionSpec", "EmbeddedJudge", "JudgeRequest", "Match", "Turn"]
