"""Condition judges: decide from plain-language conditions when an action fires."""

from incall_sms.judges.base import ConditionJudge, ConditionSpec, JudgeRequest, Match, Turn
from incall_sms.judges.embedded import EmbeddedJudge

__all__ = ["ConditionJudge", "ConditionSpec", "EmbeddedJudge", "JudgeRequest", "Match", "Turn"]
