"""SMS action definitions: the config model, loading from YAML, validation.

An action says *when* to text (a plain-language ``condition``), *what* (a static
template, or an LLM ``prompt`` with a template fallback, or a pre-approved
``preset`` for pool senders), *from* which number, *to* whom, and what the agent
says while sending (``filler``), after the provider accepted it
(``confirmation``) and when it failed (``failure``).

Example YAML::

    presets:
      booking_confirmed: "Your booking for {booking_time} is confirmed. Reply STOP to opt out."
    actions:
      - name: booking_confirmation
        condition: if the caller asks to receive the booking confirmation
        content:
          template: "Hi {caller_name}, you're booked for {{booking_time}}."
        variables:
          caller_name: {default: there}
          booking_time: {description: date and time of the booking}
        filler: One moment, I'm texting that to you.

Everything is validated when loaded; errors name the field
(``actions[1].sender: ...``).
"""

from __future__ import annotations

import enum
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
import yaml

from incall_sms.errors import ActionConfigError, InvalidPhoneNumberError
from incall_sms.phone import normalize_e164
from incall_sms.segments import MAX_BODY_CHARS
from incall_sms.templates import Template

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_FAILURE_LINES",
    "DEFAULT_REASK",
    "DEFAULT_WAITING_LINES",
    "DELIVERY_FAILURE_LINE",
    "ActionSet",
    "ContentSpec",
    "Destination",
    "ReplyKind",
    "ReplySpec",
    "SenderKind",
    "SmsAction",
    "VariableSpec",
    "load_actions",
    "parse_actions",
    "parse_leniently",
    "read_action_file",
]

#: Variables every call provides without declaration.
BUILTIN_VARIABLES = frozenset(
    {"caller_number", "agent_number", "call_id", "to_last2", "to_last4", "action_name"}
)

#: Spoken when a send failed, by failure reason; ``default`` covers the rest.
DEFAULT_FAILURE_LINES: Mapping[str, str] = {
    "opted_out": (
        "I can't text that number because it has opted out of our messages. "
        "You can text START to us to opt back in."
    ),
    "not_mobile": "I couldn't text that number, it doesn't seem to be a mobile number.",
    "invalid_number": "I couldn't send the text, the phone number doesn't look valid.",
    "missing_variable": "I couldn't send the text yet, I'm missing some details for it.",
    "limit_reached": "I've already sent the maximum number of texts for this call.",
    "too_long": "I couldn't send the text, it came out too long.",
    # WhatsApp: a free-form message outside the caller's 24-hour session (and no approved template)
    "whatsapp_window_closed": ("I can't send that on WhatsApp right now: WhatsApp only lets us message you "
                               "within a day of your last WhatsApp message to us. If you send us a WhatsApp "
                               "message and ask me again, I can send it."),
    "not_on_whatsapp": "I couldn't send that on WhatsApp, your number doesn't seem to be on WhatsApp.",
    "whatsapp_session_unknown": "I couldn't send that on WhatsApp just now. Ask me again in a minute and I'll retry.",
    # the provider may have the message: say so, never "it failed" (it is not resent either)
    "unconfirmed": ("I couldn't confirm the text went through. Please check your phone in a minute; "
                    "I won't send it twice."),
    "default": "Sorry, I wasn't able to send the text message just now.",
}

#: Spoken when a status callback reports a text the provider had accepted as not delivered (``{to_last2}``).
DELIVERY_FAILURE_LINE = "I'm sorry, it looks like the text to your number ending in {to_last2} didn't go through."

#: Default lines of ``channel: whatsapp`` actions.
_WHATSAPP_LINES: Mapping[str, str] = {
    "filler": "One moment, I'm sending that to your WhatsApp now.",
    "confirmation": "Done, I've just sent it to your WhatsApp, on the number ending in {to_last2}.",
    "consent_question": "Can I send that to your WhatsApp, on the number ending in {to_last2}?",
    "consent_declined": "No problem, I won't message you.",
    "failure": "Sorry, I wasn't able to send the WhatsApp message just now.",
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_VAR_DEST = re.compile(r"^\{\{?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}?\}$")


class SenderKind(enum.StrEnum):
    """Which number an action sends from."""

    AGENT_NUMBER = "agent_number"
    """The agent's own SMS-capable number; any content allowed."""
    POOL = "pool"
    """A pre-approved pool number; only a fixed preset template may be sent."""


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class VariableSpec(_Model):
    """A dynamic variable an action uses.

    Attributes:
        default: Value used when the variable has no value at send time and the
            action's policy is ``default``; ``None`` means no default.
        description: What the value is (guides the LLM variable extractor).
        example: Sample value used by the linter to estimate segments.
    """

    default: str | None = None
    description: str = ""
    example: str | None = None


class ContentSpec(_Model):
    """What the message says: ``template`` (optionally with ``prompt``), ``preset``, or ``content_sid``.

    Attributes:
        template: Static text with ``{var}``/``{{var}}`` placeholders. With ``prompt``,
            the fallback when no LLM is available or the LLM's text is unusable.
        prompt: Instruction for the LLM to write the text at send time.
        preset: Name of a pre-approved preset template (required for pool senders).
        content_sid: A Twilio Content template (``HX`` + 32 hex digits), e.g. a WhatsApp template
            approved by Meta: the only content a WhatsApp message may have outside the 24-hour
            session. ``template`` may accompany it as the free-form text used inside the session.
        content_variables: The Content template's variables (``"1": "{caller_name}"``); values are
            templates rendered with the call's variables.
    """

    template: str | None = None
    prompt: str | None = None
    preset: str | None = None
    content_sid: str | None = None
    content_variables: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> ContentSpec:
        if self.preset is not None and (self.template is not None or self.prompt is not None
                                        or self.content_sid is not None):
            raise ValueError("a preset cannot be combined with template, prompt or content_sid")
        if self.content_sid is not None and not _CONTENT_SID.match(self.content_sid):
            raise ValueError("content_sid must be 'HX' followed by 32 hex digits (a Twilio Content template)")
        if self.content_variables and self.content_sid is None:
            raise ValueError("content_variables need a content_sid")
        for key in self.content_variables:
            if not re.match(r"^[A-Za-z0-9_]{1,64}$", key):
                raise ValueError(f"content variable name {key!r}: use letters, digits or '_'")
        if self.preset is None and self.content_sid is None and not self.template:
            raise ValueError(
                "content needs a 'template' (also required as the fallback of a 'prompt'), "
                "a 'preset' or a 'content_sid'"
            )
        return self

    @property
    def mode(self) -> Literal["static", "prompt", "preset", "content"]:
        """``static``, ``prompt``, ``preset`` or ``content`` (a Content template only)."""
        if self.preset is not None:
            return "preset"
        if self.content_sid is not None and not self.template:
            return "content"
        return "prompt" if self.prompt else "static"


ReplyKind = Literal["text", "email", "phone", "yes_no", "number"]

#: What the agent says once the asking text was accepted, by ``await_reply.mode``.
DEFAULT_WAITING_LINES: Mapping[str, str] = {
    "blocking": "I've just texted you. Reply to that text and I'll take it from there; I'll wait.",
    "background": "I've just texted you. Reply whenever you like; meanwhile, let's carry on.",
}

#: Said when a blocking wait times out.
DEFAULT_FALLBACK = "I haven't received your text yet, so let's do it by voice instead."

#: The text sent once when a reply does not parse as its ``kind``.
DEFAULT_REASK: Mapping[str, str] = {
    "text": "Sorry, I didn't get that. Please reply to this text again.",
    "email": "Sorry, that doesn't look like an email address. Please reply with just your email address.",
    "phone": "Sorry, that doesn't look like a phone number. Please reply with just the number.",
    "yes_no": "Sorry, I didn't get that. Please reply YES or NO.",
    "number": "Sorry, I didn't get that. Please reply with just the number.",
}


class ReplySpec(_Model):
    """``await_reply``: the action's text asks the caller to reply, and the agent waits for the reply.

    Attributes:
        variable: The call variable the reply's value is stored in (usable as ``{variable}`` by later actions).
        kind: How the reply is validated: ``text`` (anything), ``email``, ``phone``, ``yes_no``, ``number``.
        timeout: Seconds to wait for a valid reply after the text was accepted.
        mode: ``blocking``: the agent says the waiting line and holds the topic until the reply (or the
            timeout); ``background``: the conversation goes on and the reply is brought in when it arrives.
        waiting: Said after the asking text was accepted (instead of the confirmation).
        fallback: Said when no valid reply came in time (default: a line for ``blocking``; nothing for
            ``background``, where only the agent LLM is told).
        reask: Texted once when a reply does not parse as ``kind``.
    """

    variable: str
    kind: ReplyKind = "text"
    timeout: float = pydantic.Field(default=120.0, gt=0, le=3600)
    mode: Literal["blocking", "background"] = "blocking"
    waiting: str | None = None
    fallback: str | None = None
    reask: str | None = None

    @pydantic.field_validator("variable")
    @classmethod
    def _check_variable(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"variable name {value!r} is not an identifier")
        if value in BUILTIN_VARIABLES:
            raise ValueError(f"{value!r} is a built-in variable")
        return value

    def waiting_line(self, channel: str = "sms") -> str:
        """The line said once the asking message was accepted."""
        if self.waiting:
            return self.waiting
        line = DEFAULT_WAITING_LINES[self.mode]
        if channel == "whatsapp":
            line = line.replace("I've just texted you", "I've just sent you a WhatsApp message").replace(
                "Reply to that text", "Reply to it")
        return line

    def fallback_line(self) -> str | None:
        """The line said when the wait times out (``None``: say nothing)."""
        if self.fallback is not None:
            return self.fallback
        return DEFAULT_FALLBACK if self.mode == "blocking" else None

    def reask_text(self) -> str:
        """The text sent once when a reply does not parse."""
        return self.reask or DEFAULT_REASK[self.kind]


class Destination(_Model):
    """Where an action sends to (parsed from the ``to`` field).

    Attributes:
        kind: ``caller`` (the inbound caller's number), ``static`` or ``variable``.
        number: E.164 number for ``static``.
        variable: Variable name for ``variable``.
    """

    kind: Literal["caller", "static", "variable"]
    number: str | None = None
    variable: str | None = None

    def describe(self) -> str:
        """Short human description with numbers masked."""
        from incall_sms.phone import mask

        if self.kind == "static":
            return f"static {mask(self.number)}"
        if self.kind == "variable":
            return f"{{{{{self.variable}}}}}"
        return "caller"


def _parse_destination(raw: str, *, default_region: str) -> Destination:
    text = raw.strip()
    if text.lower() in ("caller", "", "{{caller_number}}", "{caller_number}"):
        return Destination(kind="caller")
    match = _VAR_DEST.match(text)
    if match:
        return Destination(kind="variable", variable=match.group(1))
    return Destination(kind="static", number=normalize_e164(text, default_region=default_region))


class SmsAction(_Model):
    """One SMS action. Construct directly or load with :func:`load_actions`.

    Attributes:
        name: Unique id (letters, digits, ``_``, ``-``).
        condition: When to send, in plain language.
        content: What to send.
        sender: ``agent_number`` or ``pool``.
        to: ``caller`` (default), an E.164 number, or ``{{variable}}``.
        allow_dynamic_destination: Must be true for a ``{{variable}}`` destination:
            without it the agent never texts a number that was only spoken in the call.
        variables: Declared variables (beyond the built-ins) the texts may use.
        on_missing_variable: ``skip`` (do not send; say so) or ``default`` (use the
            declared defaults; skip if a variable still has no value).
        max_segments: Hard cap on segments; ``None``: 1 for static texts is only a lint
            warning, LLM-written texts are capped at 3.
        smart_encoding: Replace Unicode look-alikes (curly quotes, dashes) by GSM
            characters before sending, as Twilio's smart encoding does.
        once_per_call: Send at most once per call (default true).
        media_urls: Public URLs to attach (MMS).
        filler: Spoken while the send is in flight; ``None`` says nothing.
        filler_prompt: Instead of ``filler``, let the LLM phrase the filler.
        confirmation: Spoken after the provider accepted the message.
        confirmation_prompt: Instead of ``confirmation``, let the LLM phrase it.
        failure: Spoken when the send failed; per-reason lines in ``failure_reasons``.
        failure_reasons: Overrides per failure reason (``opted_out``, ``not_mobile``...).
        when: ``auto`` lets the judge decide from the condition whether it refers to
            the end of the call; ``turn`` or ``call_end`` fix it.
        channel: ``sms`` (default) or ``whatsapp`` (the same Twilio Messages API, ``whatsapp:+E164``
            addresses; free-form bodies only inside the 24-hour session, a ``content_sid`` outside).
        await_reply: Wait for the caller's reply to this text (see :class:`ReplySpec`).
        after_reply: Instead of a ``condition``: fire when the named action's awaited reply arrived
            and parsed (its variable is set by then).
        ask_consent: Ask "can I text that to your number ending in 42?" first; send only on a clear yes.
            A no is remembered for the call.
        consent_question: The question (``{to_last2}`` is the destination's last two digits).
        consent_declined: Said when the caller says no.
    """

    name: str
    condition: str = pydantic.Field(default="", max_length=500)
    content: ContentSpec
    channel: Literal["sms", "whatsapp"] = "sms"
    sender: SenderKind = SenderKind.AGENT_NUMBER
    to: str = "caller"
    allow_dynamic_destination: bool = False
    variables: dict[str, VariableSpec] = pydantic.Field(default_factory=dict)
    on_missing_variable: Literal["skip", "default"] = "default"
    max_segments: int | None = pydantic.Field(default=None, ge=1, le=10)
    smart_encoding: bool = True
    once_per_call: bool = True
    media_urls: tuple[str, ...] = ()
    filler: str | None = "One moment, I'm texting that to you now."
    filler_prompt: str | None = None
    confirmation: str = "Done, I've just texted it to your number ending in {to_last2}."
    confirmation_prompt: str | None = None
    failure: str = DEFAULT_FAILURE_LINES["default"]
    failure_reasons: dict[str, str] = pydantic.Field(default_factory=dict)
    when: Literal["auto", "turn", "call_end"] = "auto"
    await_reply: ReplySpec | None = None
    after_reply: str | None = None
    ask_consent: bool = False
    consent_question: str = "Can I text that to your number ending in {to_last2}?"
    consent_declined: str = "No problem, I won't text you."

    @pydantic.model_validator(mode="before")
    @classmethod
    def _channel_wording(cls, data: Any) -> Any:
        """A WhatsApp action's default lines say WhatsApp, not text (lines the file sets are kept)."""
        if isinstance(data, Mapping) and data.get("channel") == "whatsapp":
            data = {**{k: v for k, v in _WHATSAPP_LINES.items() if k not in data}, **data}
        return data

    @pydantic.model_validator(mode="after")
    def _trigger(self) -> SmsAction:
        if self.after_reply is None and len(self.condition) < 3:
            raise ValueError("an action needs a 'condition' (or 'after_reply: ACTION')")
        if self.after_reply is not None and self.condition:
            raise ValueError("'after_reply' fires on the reply: leave out 'condition'")
        if self.after_reply is not None and self.ask_consent:
            raise ValueError("'ask_consent' needs a spoken moment; an 'after_reply' action fires on a text")
        if self.ask_consent and self.when == "call_end":
            raise ValueError("'ask_consent' cannot be used with when: call_end (nobody is left to ask)")
        if self.await_reply is not None and self.when == "call_end":
            raise ValueError("'await_reply' cannot be used with when: call_end")
        return self

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '_' or '-', starting with a letter")
        if value.endswith("-reask"):
            raise ValueError("names ending in '-reask' are reserved (the re-ask text of an await_reply)")
        return value

    @pydantic.field_validator("variables")
    @classmethod
    def _check_variables(cls, value: dict[str, VariableSpec]) -> dict[str, VariableSpec]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"variable name {key!r} is not an identifier")
        return value

    @pydantic.field_validator("media_urls")
    @classmethod
    def _check_media(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > 10:
            raise ValueError("at most 10 media URLs per MMS")
        for url in value:
            if not url.startswith("https://"):
                raise ValueError("media URLs must be https:// URLs")
        return value

    @property
    def declared_variables(self) -> frozenset[str]:
        """Built-in plus declared variable names."""
        return BUILTIN_VARIABLES | frozenset(self.variables)

    def defaults(self) -> dict[str, str]:
        """Declared default values by variable name."""
        return {k: v.default for k, v in self.variables.items() if v.default is not None}

    def failure_line(self, reason: str) -> str:
        """The line to speak for a failure ``reason``."""
        if reason in self.failure_reasons:
            return self.failure_reasons[reason]
        if reason in DEFAULT_FAILURE_LINES and self.failure in (DEFAULT_FAILURE_LINES["default"],
                                                                _WHATSAPP_LINES["failure"]):
            return DEFAULT_FAILURE_LINES[reason]
        return self.failure


class ActionSet(_Model):
    """A validated set of actions plus the presets pool senders may use.

    Attributes:
        actions: The actions, names unique.
        presets: Pre-approved template texts by name.
        default_region: Region for numbers written without ``+country``.
        max_sends_per_call: Cap on SMS per call across all actions.
        max_sends_per_destination: Cap on SMS to one number per 24 hours, across calls (abuse guard).
    """

    actions: tuple[SmsAction, ...]
    presets: dict[str, str] = pydantic.Field(default_factory=dict)
    default_region: str = "US"
    max_sends_per_call: int = pydantic.Field(default=3, ge=1, le=50)
    max_sends_per_destination: int = pydantic.Field(default=10, ge=1, le=1000)

    @pydantic.model_validator(mode="after")
    def _cross_checks(self) -> ActionSet:
        seen: set[str] = set()
        for index, action in enumerate(self.actions):
            if action.name in seen:
                raise ActionConfigError(f"duplicate action name {action.name!r}", field=f"actions[{index}].name")
            seen.add(action.name)
            problems = self.problems(action, index)
            if problems:
                raise problems[0]
        return self

    def problems(self, action: SmsAction, index: int) -> list[ActionConfigError]:
        """Every cross-field problem of ``action`` (sender rules, destination, variables, length).

        Args:
            action: An action that passed its own field validation.
            index: Its position in the file, used in error messages.

        Returns:
            The problems found (empty when the action is valid in this set).
        """
        where = f"actions[{index}]"
        found: list[ActionConfigError] = []
        for check in (self._check_sender, self._check_destination, self._check_channel, self._check_reply):
            try:
                check(action, where)
            except ActionConfigError as exc:
                found.append(exc)
        if action.content.preset is not None and action.content.preset not in self.presets:
            return found  # texts cannot be checked without the preset
        unknown = self.unknown_variables(action)
        if unknown:
            found.append(
                ActionConfigError(
                    "unknown template variable(s) "
                    + ", ".join(unknown)
                    + "; declare them under 'variables' (built-ins: "
                    + ", ".join(sorted(BUILTIN_VARIABLES))
                    + ")",
                    field=where,
                )
            )
        if any(len(text) > MAX_BODY_CHARS for text in self.texts(action)):
            found.append(ActionConfigError(f"text longer than {MAX_BODY_CHARS} characters", field=f"{where}.content"))
        return found

    def _check_sender(self, action: SmsAction, where: str) -> None:
        content = action.content
        if action.sender is SenderKind.POOL:
            if content.mode != "preset":
                raise ActionConfigError(
                    "pool senders may only send a fixed preset template: use "
                    "'content: {preset: NAME}' (custom templates and prompts are not allowed)",
                    field=f"{where}.content",
                )
            if action.media_urls:
                raise ActionConfigError("pool senders cannot attach media", field=f"{where}.media_urls")
        if content.preset is not None and content.preset not in self.presets:
            raise ActionConfigError(
                f"unknown preset {content.preset!r} (defined: {', '.join(sorted(self.presets)) or 'none'})",
                field=f"{where}.content.preset",
            )

    def _check_channel(self, action: SmsAction, where: str) -> None:
        if action.channel == "whatsapp":
            if action.sender is SenderKind.POOL:
                raise ActionConfigError("WhatsApp messages go from the agent's own WhatsApp sender, not a pool",
                                        field=f"{where}.sender")
        elif action.content.content_sid is not None:
            raise ActionConfigError("content_sid (a Content template) is for 'channel: whatsapp'",
                                    field=f"{where}.content.content_sid")

    def _check_reply(self, action: SmsAction, where: str) -> None:
        if action.await_reply is not None and action.sender is SenderKind.POOL:
            raise ActionConfigError("await_reply needs the agent's own number (replies to a pool number do not "
                                    "reach the call)", field=f"{where}.await_reply")
        if action.await_reply is not None and self.destination(action).kind != "caller":
            raise ActionConfigError("await_reply texts the caller (replies are matched to the caller's number); "
                                    "use 'to: caller'", field=f"{where}.to")
        if action.after_reply is None:
            return
        try:
            asking = self.get(action.after_reply)
        except KeyError:
            raise ActionConfigError(f"after_reply names no action {action.after_reply!r}",
                                    field=f"{where}.after_reply") from None
        if asking.await_reply is None:
            raise ActionConfigError(f"after_reply: action {action.after_reply!r} has no await_reply",
                                    field=f"{where}.after_reply")
        if asking.name == action.name:
            raise ActionConfigError("after_reply cannot name the action itself", field=f"{where}.after_reply")

    @property
    def reply_variables(self) -> frozenset[str]:
        """Variables set by awaited replies (usable by every action's texts)."""
        return frozenset(a.await_reply.variable for a in self.actions if a.await_reply is not None)

    def _check_destination(self, action: SmsAction, where: str) -> None:
        try:
            dest = _parse_destination(action.to, default_region=self.default_region)
        except InvalidPhoneNumberError as exc:
            raise ActionConfigError(f"invalid destination: {exc.reason}", field=f"{where}.to") from None
        if dest.kind == "variable":
            if not action.allow_dynamic_destination:
                raise ActionConfigError(
                    "a variable destination needs 'allow_dynamic_destination: true' "
                    "(otherwise the agent only texts the caller or a fixed number)",
                    field=f"{where}.to",
                )
            if dest.variable not in action.declared_variables | self.reply_variables:
                raise ActionConfigError(
                    f"destination variable {dest.variable!r} is not declared", field=f"{where}.to"
                )

    def destination(self, action: SmsAction) -> Destination:
        """Parsed destination of ``action`` (validated at load)."""
        return _parse_destination(action.to, default_region=self.default_region)

    def body_template(self, action: SmsAction) -> Template:
        """The static template of ``action`` (its preset's text for preset content)."""
        if action.content.preset is not None:
            return Template(self.presets[action.content.preset])
        return Template(action.content.template or "")

    def texts(self, action: SmsAction) -> list[str]:
        """Every templated text of ``action``: body, filler, confirmation and failures."""
        texts = [self.body_template(action).source, action.confirmation, action.failure]
        if action.filler:
            texts.append(action.filler)
        texts.extend(action.failure_reasons.values())
        texts.extend(action.content.content_variables.values())
        if action.ask_consent:
            texts += [action.consent_question, action.consent_declined]
        if action.await_reply is not None:
            reply = action.await_reply
            texts += [reply.waiting_line(action.channel), reply.fallback_line() or "", reply.reask_text()]
        return texts

    def unknown_variables(self, action: SmsAction) -> list[str]:
        """Placeholders used by ``action``'s texts that are neither built-in nor declared."""
        known = action.declared_variables | self.reply_variables
        unknown: dict[str, None] = {}
        for text in self.texts(action):
            for name in Template(text).unknown_variables(known):
                unknown[name] = None
        return list(unknown)

    def get(self, name: str) -> SmsAction:
        """Return the action called ``name``.

        Raises:
            KeyError: No such action.
        """
        for action in self.actions:
            if action.name == name:
                return action
        raise KeyError(name)


def _format_validation_error(exc: pydantic.ValidationError, *, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = prefix
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '<root>'}: {msg}")
    return "; ".join(lines)


def parse_actions(data: Any) -> ActionSet:
    """Validate already-parsed config data (a mapping with ``actions``, or a list of actions).

    Raises:
        ActionConfigError: The data is not a valid action set; the message names each
            offending field.
    """
    if isinstance(data, list):
        data = {"actions": data}
    if not isinstance(data, Mapping):
        raise ActionConfigError("expected a mapping with an 'actions' list")
    try:
        return ActionSet.model_validate(data)
    except ActionConfigError:
        raise
    except pydantic.ValidationError as exc:
        # ActionConfigError raised inside a validator arrives wrapped: unwrap it.
        for err in exc.errors():
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, ActionConfigError):
                raise ctx_error from None
        raise ActionConfigError(_format_validation_error(exc)) from None


def read_action_file(path: str | pathlib.Path) -> Any:
    """Read an action file and return the parsed YAML data (not validated).

    Raises:
        ActionConfigError: The file is missing, unreadable or not YAML.
    """
    file = pathlib.Path(path)
    try:
        raw = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ActionConfigError(f"cannot read {file.name}: {exc.__class__.__name__}") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ActionConfigError(f"{file.name} is not valid YAML: {describe_yaml_error(exc)}") from None


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """Where and why a YAML document is invalid, citing the lines (1-based) the parser names.

    A construct left open (a ``{`` or ``[`` never closed, a quote never ended) is only
    noticed where the next token does not fit; the line where it was opened is named too.
    """
    problem = getattr(exc, "problem", None) or "syntax error"
    mark = getattr(exc, "problem_mark", None)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else str(problem)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        text += f" ({context} opened at line {context_mark.line + 1})"
    return text


def parse_leniently(data: Any) -> tuple[ActionSet, list[int], list[tuple[int, str, list[str]]]]:
    """Validate each action on its own, collecting problems instead of stopping at the first.

    Used by the linter to report every problem of every action in one run.

    Returns:
        ``(action_set, indices, invalid)``: the set of the actions that are valid on
        their own (not cross-checked; call :meth:`ActionSet.problems`), their
        positions in the file, and for every action that failed field validation
        ``(index, name, messages)``.

    Raises:
        ActionConfigError: The top level (presets, region, caps) is invalid.
    """
    if isinstance(data, list):
        data = {"actions": data}
    if not isinstance(data, Mapping):
        raise ActionConfigError("expected a mapping with an 'actions' list")
    raw_actions = data.get("actions")
    if not isinstance(raw_actions, list):
        raise ActionConfigError("'actions' must be a list")
    valid: list[SmsAction] = []
    indices: list[int] = []
    invalid: list[tuple[int, str, list[str]]] = []
    for index, raw in enumerate(raw_actions):
        name = str(raw.get("name", f"#{index}")) if isinstance(raw, Mapping) else f"#{index}"
        try:
            valid.append(SmsAction.model_validate(raw))
            indices.append(index)
        except pydantic.ValidationError as exc:
            invalid.append((index, name, _format_validation_error(exc, prefix=f"actions[{index}]").split("; ")))
    try:
        top = ActionSet.model_validate({**data, "actions": []})
    except pydantic.ValidationError as exc:
        raise ActionConfigError(_format_validation_error(exc)) from None
    return ActionSet.model_construct(**{**top.__dict__, "actions": tuple(valid)}), indices, invalid


def load_actions(path: str | pathlib.Path) -> ActionSet:
    """Load and validate an action file (YAML or JSON).

    Raises:
        ActionConfigError: The file is missing, not YAML, or not a valid action set.
    """
    return parse_actions(read_action_file(path))
