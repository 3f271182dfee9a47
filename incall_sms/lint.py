"""The action linter: per-action checks a human reads before going live.

Errors make an action file unusable (the loader refuses it); warnings flag texts
likely to cost more than intended (multi-segment, UCS-2) or behaviour worth a
second look.

WhatsApp actions (``channel: whatsapp``) have no segments and no GSM-7/UCS-2 cost: their
rows check the 1,600-character body limit, the Content template (``content_sid``) and its
variables, and say when the action can be sent (a free-form text only within 24 hours of
the caller's last WhatsApp message; a Content template at any time).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

from incall_sms.actions import ActionSet, SmsAction, parse_leniently, read_action_file
from incall_sms.segments import MAX_BODY_CHARS, count_segments
from incall_sms.templates import Template

__all__ = ["LintRow", "lint_actions", "lint_data", "lint_file"]

_SAMPLE_LENGTH = 12


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LintRow:
    """What the linter found for one action.

    Attributes:
        action: Action name.
        condition: The plain-language condition.
        mode: ``static``, ``prompt``, ``preset`` or ``content`` (a WhatsApp Content template only).
        sender: ``agent_number`` or ``pool``.
        destination: ``caller``, ``static +1******0100`` or ``{{var}}``.
        encoding: Encoding of the body rendered with sample values (``WhatsApp`` for WhatsApp).
        chars: Characters of that body (0 for a Content template only: Twilio holds its text).
        segments: Segments of that body (1 for WhatsApp: segments do not apply).
        unknown_variables: Placeholders that are neither built-in nor declared.
        errors: Problems that make the action unusable.
        warnings: Problems worth a look.
        channel: ``sms`` or ``whatsapp``.
        content_sid: The WhatsApp Content template, or ``None``.
        notes: Facts worth knowing that are not problems (when a WhatsApp action can be sent).
    """

    action: str
    condition: str
    mode: str
    sender: str
    destination: str
    encoding: str
    chars: int
    segments: int
    unknown_variables: tuple[str, ...]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    channel: str = "sms"
    content_sid: str | None = None
    notes: tuple[str, ...] = ()


#: Sample values of reply variables, by ``await_reply.kind``.
_REPLY_SAMPLES = {"email": "firstname.lastname@example.com", "phone": "+14155550123", "number": "2",
                  "yes_no": "yes", "text": "x" * _SAMPLE_LENGTH}

#: Shorter waits rarely leave a caller time to read the text and type the answer.
_SHORT_REPLY_WAIT = 30.0


def _sample_values(action: SmsAction, actions: ActionSet | None = None) -> dict[str, str]:
    values = {
        "caller_number": "+14155550123",
        "agent_number": "+14155550100",
        "call_id": "CA" + "0" * 32,
        "to_last2": "23",
        "to_last4": "0123",
        "action_name": action.name,
    }
    for other in actions.actions if actions is not None else ():
        if other.await_reply is not None:
            values[other.await_reply.variable] = _REPLY_SAMPLES[other.await_reply.kind]
    for name, spec in action.variables.items():
        values[name] = spec.example or spec.default or "x" * _SAMPLE_LENGTH
    return values


def _flow(actions: ActionSet, action: SmsAction) -> tuple[list[str], list[str]]:
    """Warnings and notes about replies and consent (``await_reply``, ``after_reply``, ``ask_consent``)."""
    warnings: list[str] = []
    notes: list[str] = []
    reply = action.await_reply
    if reply is not None:
        notes.append(f"waits {reply.timeout:g} s ({reply.mode}) for a text reply: a valid {reply.kind} becomes "
                     f"{{{reply.variable}}}; an invalid one is asked again once by text")
        if reply.timeout < _SHORT_REPLY_WAIT:
            warnings.append(f"await_reply timeout {reply.timeout:g} s: little time to read the text and type "
                            "an answer")
        if not any(a.after_reply == action.name for a in actions.actions) and not any(
                reply.variable in actions.body_template(a).variables for a in actions.actions if a is not action):
            notes.append(f"no action uses {{{reply.variable}}} or fires after this reply (the agent LLM still "
                         "gets it)")
    if action.after_reply is not None:
        notes.append(f"fires when the reply to {action.after_reply!r} arrived and parsed")
    if action.ask_consent and re.search(r"\bmind\b|n't\b|\bnot\b", action.consent_question, re.IGNORECASE):
        warnings.append("consent_question is phrased negatively ('do you mind...?'): a 'no' would mean yes; "
                        "ask 'Can I text ...?' instead")
    if action.ask_consent:
        notes.append("asks first (" + action.consent_question.replace("{to_last2}", "23") + "); sends only on a "
                     "clear yes, a no is kept for the call")
    return warnings, notes


def _destination(actions: ActionSet, action: SmsAction, warnings: list[str]) -> str:
    """The action's destination, described; warns of a dynamic destination and of a missing filler."""
    what = "message" if action.channel == "whatsapp" else "text"
    try:
        dest = actions.destination(action).describe()
    except Exception:
        dest = "invalid"
    if dest.startswith("{{"):
        warnings.append(f"dynamic destination: the agent may {what} a number given during the call")
    if action.filler is None and action.filler_prompt is None and action.when != "call_end":
        warnings.append(f"no filler: the caller hears silence while the {what} is sent")
    return dest


def lint_file(path: str | pathlib.Path) -> list[LintRow]:
    """Lint an action file, reporting every problem of every action.

    Raises:
        ActionConfigError: The file cannot be read, is not YAML, or its top level is invalid.
    """
    return lint_data(read_action_file(path))


def lint_data(data: Any) -> list[LintRow]:
    """Lint parsed action-file data (see :func:`lint_file`)."""
    actions, indices, invalid = parse_leniently(data)
    rows = lint_actions(actions, indices=indices)
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row.action in seen:
            rows[i] = dataclasses.replace(row, errors=(*row.errors, f"duplicate action name {row.action!r}"))
        seen.setdefault(row.action, i)
    for index, name, messages in invalid:
        rows.insert(
            min(index, len(rows)),
            LintRow(action=name, condition="?", mode="?", sender="?", destination="?", encoding="?", chars=0,
                    segments=0, unknown_variables=(), errors=tuple(messages), warnings=()),
        )
    return rows


def _lint_whatsapp(actions: ActionSet, action: SmsAction, errors: list[str]) -> LintRow:
    """The row of a WhatsApp action: body length, Content template and variables, when it can be sent."""
    warnings: list[str] = []
    notes: list[str] = []
    content = action.content
    unknown = tuple(actions.unknown_variables(action))
    samples = _sample_values(action, actions)
    samples.update({name: "x" * _SAMPLE_LENGTH for name in unknown})
    known = action.declared_variables | actions.reply_variables
    chars = 0
    if content.mode != "content":
        body = actions.body_template(action).render(samples)
        chars = len(body)
        if chars > MAX_BODY_CHARS and not any("longer than" in e for e in errors):
            errors.append(f"body is {chars:,} characters with sample values: WhatsApp allows 1,600")
        if content.mode == "prompt":
            warnings.append("LLM-written body: limited to 1,600 characters (no segments on WhatsApp)")
    for name, source in content.content_variables.items():
        missing = Template(source).unknown_variables(known)
        if missing:
            errors.append(f"content variable {name!r} uses unknown variable(s) {', '.join(missing)}")
    sid = content.content_sid
    if sid is None:
        warnings.append("free-form WhatsApp text: it can only be sent within 24 hours of the caller's last "
                        "WhatsApp message to this number (add a content_sid for the other cases)")
    elif content.mode == "content":
        shown = ", ".join(f"{{{{{k}}}}}={v}" for k, v in content.content_variables.items()) or "no variables"
        notes.append(f"sends the Content template {sid} ({shown}) at any time; its text is the approved template's")
    else:
        notes.append(f"free-form text within 24 hours of the caller's last WhatsApp message, the Content "
                     f"template {sid} otherwise")
    if action.media_urls:
        if content.mode == "content":
            warnings.append("media_urls are not sent with a Content template (the template holds its media)")
        elif len(action.media_urls) > 1:
            warnings.append("WhatsApp takes one media file per message: only use one media URL")
    if action.max_segments is not None:
        warnings.append("max_segments does not apply to WhatsApp (the limit is 1,600 characters)")
    dest = _destination(actions, action, warnings)
    return LintRow(action=action.name, condition=action.condition, mode=content.mode, sender=action.sender.value,
                   destination=dest, encoding="WhatsApp", chars=chars, segments=1, unknown_variables=unknown,
                   errors=tuple(errors), warnings=tuple(warnings), channel="whatsapp", content_sid=sid,
                   notes=tuple(notes))


def lint_actions(actions: ActionSet, *, indices: list[int] | None = None) -> list[LintRow]:
    """Lint every action of a set, including cross-field problems.

    Args:
        actions: Actions valid on their own (from :func:`~incall_sms.actions.load_actions`
            or :func:`~incall_sms.actions.parse_leniently`).
        indices: Position of each action in its file, for error messages.

    Returns:
        One row per action, in order.
    """
    rows = []
    for index, action in enumerate(actions.actions):
        position = indices[index] if indices else index
        errors = [str(p) for p in actions.problems(action, position)]
        warnings: list[str] = []
        if action.content.preset is not None and action.content.preset not in actions.presets:
            rows.append(LintRow(action=action.name, condition=action.condition, mode="preset",
                                sender=action.sender.value, destination=action.to, encoding="?", chars=0,
                                segments=0, unknown_variables=(), errors=tuple(errors), warnings=(),
                                channel=action.channel))
            continue
        flow_warnings, flow_notes = _flow(actions, action)
        condition = action.condition or f"after the reply to {action.after_reply}"
        if action.channel == "whatsapp":
            row = _lint_whatsapp(actions, action, errors)
            rows.append(dataclasses.replace(row, condition=condition, warnings=(*row.warnings, *flow_warnings),
                                            notes=(*row.notes, *flow_notes)))
            continue
        warnings += flow_warnings
        unknown = tuple(actions.unknown_variables(action))
        template = actions.body_template(action)
        body = template.source
        samples = _sample_values(action, actions)
        samples.update({name: "x" * _SAMPLE_LENGTH for name in unknown})
        body = template.render(samples)
        info = count_segments(body, smart_encoding=action.smart_encoding)
        if action.max_segments is not None and info.segments > action.max_segments:
            errors.append(f"{info.segments} segments with sample values exceeds max_segments={action.max_segments}")
        elif action.content.mode != "prompt" and info.segments > 1:
            warnings.append(f"{info.segments} segments: static texts should fit one segment")
        if info.encoding == "UCS-2":
            shown = "".join(info.non_gsm[:5])
            warnings.append(f"UCS-2 because of {shown!r}: 70 chars per segment instead of 160")
        if action.content.mode == "prompt" and action.max_segments is None:
            warnings.append("LLM-written body: capped at 3 segments (set max_segments to change)")
        dest = _destination(actions, action, warnings)
        for name, spec in action.variables.items():
            if spec.default is None and action.on_missing_variable == "default" and name in template.variables:
                warnings.append(f"variable {name!r} has no default: the send is skipped while it is unknown")
            elif spec.default is not None and action.on_missing_variable == "skip" and name in template.variables:
                warnings.append(f"variable {name!r}: its default is not used (on_missing_variable: skip does not "
                                "send while it is unknown)")
        rows.append(
            LintRow(
                action=action.name,
                condition=condition,
                mode=action.content.mode,
                sender=action.sender.value,
                destination=dest,
                encoding=info.encoding,
                chars=len(info.body),
                segments=info.segments,
                unknown_variables=unknown,
                errors=tuple(errors),
                warnings=tuple(warnings),
                notes=tuple(flow_notes),
            )
        )
    return rows
