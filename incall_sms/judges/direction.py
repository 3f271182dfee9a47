"""Who sends the text: the caller or the business. A rule the local judge applies before the model.

A 1.5B model reads "can I text you my email?" as a request for a text to the caller, and "can you text
me the form?" as the caller offering to text something (on a 60-case set written blind, 18 of its 60
answers were such wrong texts). The embedded judge's reading of the turn decides it instead, and only
when it is clear: the caller's turn has the caller as the sender ("can i text you", "let me send you",
"i'll shoot you a screenshot") and no request to be texted, for a condition about a text to the caller;
or a request to be texted ("text me", "can you send me") and no offer to send, for a condition about
the caller texting something ("wants to send their email address by text"). A turn with both, an
answer to the agent's offer or request, or a turn in another language is left to the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from incall_sms.judges.embedded import normalize, parse_condition, read_senders

__all__ = ["veto_reason"]

#: Positive evidence that a condition is about a text *to* the caller (the veto needs it, never guesses).
_RECEIVE_CONDITION = re.compile(
    r"\b(?:texted|sent|messaged|sms'?d|emailed) (?:to (?:them|him|her|the caller|the customer|their)|over)\b"
    r"|\bto be (?:texted|sent|messaged)\b|\b(?:by|via|over|in a) (?:text|sms|message)\b"
    r"|\b(?:get|receive|have) (?:a |an |the )?(?:text|sms|message|link|copy)\b"
    r"|\b(?:text|send|message) (?:them|him|her)\b|\bto (?:get|receive|have) (?:it|them|the \w+) (?:texted|sent)\b"
    r"|\b(?:texted|sent) to them\b|\breminder text\b|\btext reminder\b|\bupdates by text\b")


def veto_reason(condition: str, turns: Sequence[tuple[str, str]]) -> str | None:
    """Why the caller's last turn cannot satisfy ``condition`` (an English caller condition), or ``None``.

    Args:
        condition: The condition (in English).
        turns: The conversation so far as ``(role, text)``, the caller's turn last.
    """
    parsed = parse_condition(condition)
    if parsed.kind != "request" or parsed.at_end:
        return None
    turn = read_senders(turns)
    if turn is None or turn.answers_agent or turn.caller_sends == turn.asks_to_be_texted:
        return None
    if parsed.inbound and turn.asks_to_be_texted:
        return "the caller asks to be texted; the condition is about the caller texting something"
    if not parsed.inbound and turn.caller_sends and not turn.wants and _RECEIVE_CONDITION.search(
            normalize(condition)):
        return "the caller offers to text something; the condition is about a text to the caller"
    return None
