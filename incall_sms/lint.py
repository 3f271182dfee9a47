"""The action linter: per-action checks a human reads before going live.

Errors make an action file unusable (the loader refuses it); warnings flag texts
likely to cost more than intended (multi-segment, UCS-2) or behaviour worth a
second look.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from incall_sms.actions import ActionSet, SmsAction, parse_leniently, read_action_file
from incall_sms.segments import count_segments

__all__ = ["LintRow", "lint_actions", "lint_data", "lint_file"]

_SAMPLE_LENGTH = 12


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LintRow:
    """What the linter found for one action.

    Attributes:
        action: Action name.
        condition: The plain-language condition.
        mode: ``static``, ``prompt`` or ``preset``.
        sender: ``agent_number`` or ``pool``.
        destination: ``caller``, ``static +1******0100`` or ``{{var}}``.
        encoding: Encoding of the body rendered with sample values.
        chars: Characters of that body.
        segments: Segments of that body.
        unknown_variables: Placeholders that are neither built-in nor declared.
        errors: Problems that make the action unusable.
        warnings: Problems worth a look.
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


def _sample_values(action: SmsAction) -> dict[str, str]:
    values = {
        "caller_number": "+14155550123",
        "agent_number": "+14155550100",
        "call_id": "CA" + "0" * 32,
        "to_last2": "23",
        "to_last4": "0123",
        "action_name": action.name,
    }
    for name, spec in action.variables.items():
        values[name] = spec.example or spec.default or "x" * _SAMPLE_LENGTH
    return values


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
                                segments=0, unknown_variables=(), errors=tuple(errors), warnings=()))
            continue
        unknown = tuple(actions.unknown_variables(action))
        template = actions.body_template(action)
        body = template.source
        samples = _sample_values(action)
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
        try:
            dest = actions.destination(action).describe()
        except Exception:
            dest = "invalid"
        if dest.startswith("{{"):
            warnings.append("dynamic destination: the agent may text a number given during the call")
        if action.filler is None and action.filler_prompt is None and action.when != "call_end":
            warnings.append("no filler: the caller hears silence while the text is sent")
        for name, spec in action.variables.items():
            if spec.default is None and action.on_missing_variable == "default" and name in template.variables:
                warnings.append(f"variable {name!r} has no default: the send is skipped while it is unknown")
        rows.append(
            LintRow(
                action=action.name,
                condition=action.condition,
                mode=action.content.mode,
                sender=action.sender.value,
                destination=dest,
                encoding=info.encoding,
                chars=len(info.body),
                segments=info.segments,
                unknown_variables=unknown,
                errors=tuple(errors),
                warnings=tuple(warnings),
            )
        )
    return rows
