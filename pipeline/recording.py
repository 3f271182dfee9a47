"""The recorded-call format (``incall-sms-recording/1``) and the replay report schema.

A recording is two files:

* ``NAME.jsonl``: the Twilio Media Streams websocket messages exactly as Twilio sent
  them, one JSON object per line: ``{"t": <seconds since the websocket opened>,
  "message": {...}}`` (``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``).
* ``NAME.meta.json``: call metadata (:class:`RecordingMeta`): caller and agent numbers
  (masked by default when recorded from live calls; replays use the fake numbers
  given here), variables known up front, and optionally the recorded STT results
  (``stt``) and agent turns (``agent``), so a replay is deterministic without an STT
  or an LLM, plus inbound texts (``inbound``) and provider behaviour (``provider``).

The report written by ``run_agent.py replay`` follows :class:`ReplayReport`
(JSON schema: ``python -c "from incall_sms.pipeline.recording import ReplayReport; ..."`` or
``schemas/replay-report.schema.json``).
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Literal

import pydantic

__all__ = [
    "FORMAT",
    "Expectations",
    "RecordingMeta",
    "ReplayReport",
    "load_recording",
    "sidecar_of",
]

FORMAT = "incall-sms-recording/1"


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class TimedText(_Model):
    """A recorded utterance: seconds since the call started, and the text.

    ``barge_in`` marks a caller utterance that interrupted the agent (the replay
    interrupts the agent's speech there, as the user aggregator does live).
    """

    t: float = pydantic.Field(ge=0)
    text: str = pydantic.Field(min_length=1, max_length=2000)
    barge_in: pydantic.StrictBool = False


class InboundAttachment(_Model):
    """An attachment of an inbound MMS, embedded in the sidecar (served to the media fetcher on loopback)."""

    content_type: str
    data_b64: str = pydantic.Field(max_length=8_000_000)


class InboundText(_Model):
    """A text (or MMS) the caller sent to the agent's number during the call."""

    t: float = pydantic.Field(ge=0)
    body: str = pydantic.Field(default="", max_length=3200)
    media: list[InboundAttachment] = []


#: How the embedded provider answers a send to one destination (see :class:`ProviderBehaviour`).
Behaviour = Literal["accept", "landline", "opted_out", "invalid", "timeout", "server_error", "rate_limited"]


class ProviderBehaviour(_Model):
    """How the embedded provider answers during the replay.

    ``destinations`` maps a number (E.164, or ``caller`` for the caller's number) to what a
    send there does, as Twilio would answer it: ``accept``; ``landline`` (21614),
    ``opted_out`` (21610, the carrier's STOP list), ``invalid`` (21211), all refused for
    good; ``timeout`` (no answer: the message may or may not exist, so the dispatcher asks
    the provider before any resend), ``server_error`` (HTTP 500, as ambiguous as a timeout) and
    ``rate_limited`` (429, retried with back-off). ``landlines``/``opted_out`` are the older
    spelling of the first two and stay valid.
    """

    landlines: list[str] = []
    opted_out: list[str] = []
    destinations: dict[str, Behaviour] = {}
    latency: float = pydantic.Field(default=0.3, ge=0, le=30)


class RecordingMeta(_Model):
    """The sidecar of a recording.

    What the call starts with: ``variables`` (values known at call start, e.g. from a CRM),
    ``opt_outs`` (numbers on the opt-out list before the call; ``caller`` is the caller's),
    and ``provider`` (how sends are answered, per destination). What happened: ``stt``
    (the caller's final transcripts), ``agent`` (the agent's turns; without them the local
    stand-in LLM answers), ``inbound`` (texts and MMS the caller sent during the call).
    """

    format: Literal["incall-sms-recording/1"] = FORMAT
    call_sid: str
    caller: str
    agent_number: str
    variables: dict[str, str] = {}
    opt_outs: list[str] = []
    stt: list[TimedText] = []
    agent: list[TimedText] = []
    inbound: list[InboundText] = []
    provider: ProviderBehaviour = ProviderBehaviour()
    description: str = ""

    @pydantic.field_validator("opt_outs")
    @classmethod
    def _numbers(cls, numbers: list[str]) -> list[str]:
        for number in numbers:
            _check_number(number)
        return numbers

    @pydantic.model_validator(mode="after")
    def _destinations(self) -> RecordingMeta:
        for number in (*self.provider.destinations, *self.provider.landlines, *self.provider.opted_out):
            _check_number(number)
        return self


#: A number in a recording's set-up: E.164, masked E.164 (``+1******0123``), or ``caller``.
_NUMBER = re.compile(r"^(caller|\+[1-9][0-9*]{6,14})$")


def _check_number(number: str) -> None:
    if number == "caller":
        return
    if not _NUMBER.match(number) or sum(ch.isdigit() for ch in number) < 5:
        raise ValueError(f"{number!r} is not a phone number in E.164 (+14155550123, or masked: +1******0123) "
                         "nor 'caller'")


def sidecar_of(events_path: pathlib.Path) -> pathlib.Path:
    """``NAME.meta.json`` next to ``NAME.jsonl`` (``NAME`` may contain dots)."""
    name = events_path.name
    return events_path.with_name((name[: -len(".jsonl")] if name.endswith(".jsonl") else name) + ".meta.json")


def load_recording(path: str | pathlib.Path) -> tuple[list[tuple[float, dict[str, Any]]], RecordingMeta]:
    """Load ``NAME.jsonl`` and its ``NAME.meta.json``.

    Raises:
        ValueError: Missing file, bad JSON (the line is named) or invalid metadata.
    """
    events_path = pathlib.Path(path)
    meta_path = sidecar_of(events_path)
    if events_path.suffix != ".jsonl" or not events_path.exists():
        raise ValueError(f"recording {events_path.name} must be an existing .jsonl file")
    if not meta_path.exists():
        raise ValueError(f"missing sidecar {meta_path.name}")
    events: list[tuple[float, dict[str, Any]]] = []
    for number, line in enumerate(events_path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            events.append((float(item["t"]), dict(item["message"])))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{events_path.name} line {number}: not JSON ({exc.msg} at column {exc.colno})") from None
        except KeyError as exc:
            raise ValueError(f"{events_path.name} line {number}: missing key {exc.args[0]!r} (each line is "
                             '{"t": seconds, "message": {...}})') from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{events_path.name} line {number}: {exc}") from None
    try:
        meta = RecordingMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise ValueError(f"{meta_path.name}: {where}: {error['msg']}") from None
    events.sort(key=lambda e: e[0])
    _check_events(events_path.name, events, meta)
    return events, meta


#: Media Streams events a recording may hold.
EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


def _check_events(name: str, events: list[tuple[float, dict[str, Any]]], meta: RecordingMeta) -> None:
    """A recording must be a whole call: one start (of the sidecar's call), a stop after it, everything between."""
    kinds = [str(message.get("event")) for _t, message in events]
    unknown = sorted(set(kinds) - EVENTS)
    if unknown:
        raise ValueError(f"{name}: unknown event(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENTS))}")
    if "start" not in kinds or "stop" not in kinds:
        raise ValueError(f"{name}: a recording needs a 'start' and a 'stop' event (the call's beginning and end)")
    start_t, start = next((t, m) for t, m in events if m.get("event") == "start")
    stop_t = next(t for t, m in events if m.get("event") == "stop")
    if stop_t < start_t:
        raise ValueError(f"{name}: 'stop' (t={stop_t}) comes before 'start' (t={start_t})")
    call_sid = start.get("start", {}).get("callSid") if isinstance(start.get("start"), dict) else None
    if call_sid != meta.call_sid:
        raise ValueError(f"{name}: the start event's callSid does not match the sidecar's call_sid")
    late = [f"{what} at t={item.t}" for what, items in (("stt", meta.stt), ("agent", meta.agent),
                                                        ("inbound", meta.inbound))
            for item in items if item.t > stop_t]
    if late:
        raise ValueError(f"{name}: after the call ended (stop at t={stop_t}): {', '.join(late)}")


class ReportSms(_Model):
    """One SMS decision of the call.

    ``t``: when the send finished (call time); ``trigger_turn``: the caller turn (1 = first)
    whose words fired it, ``trigger_text``: those words as recognised (``None`` at call end);
    ``judged``: the judge part that fired it and why; ``score``: its score.
    """

    action: str
    outcome: str
    reason: str | None = None
    to_masked: str | None = None
    body: str | None = None
    encoding: str | None = None
    segments: int | None = None
    trigger_turn: int
    trigger_text: str | None = None
    at: str
    t: float
    sid: str | None = None
    judged: str | None = None
    score: float | None = None


class ReportDecision(_Model):
    """A judge decision near the threshold that did not fire (``score`` >= the report's floor)."""

    action: str
    at: str
    t: float
    score: float
    part: str
    reason: str = ""


class ReportLine(_Model):
    """A filler, confirmation or failure line the agent said.

    ``t``: when it was handed to the TTS; ``start``/``end``: when it was heard (``None``:
    never heard, cut before it began); ``interrupted``: the caller cut it.
    """

    kind: str
    action: str
    text: str
    t: float
    start: float | None = None
    end: float | None = None
    interrupted: bool = False


class ReportTurn(_Model):
    """One entry of the conversation, in call time.

    ``who``/``kind``: ``caller``/``transcript`` (as recognised; ``turn`` is its caller-turn
    index), ``agent``/``reply``, ``filler``, ``confirmation``, ``failure`` or
    ``delivery_failure`` (``t`` when heard, or when queued if never heard; ``queued``: when
    the agent decided to say it; ``end``; ``interrupted``: cut by a barge-in or the hang-up;
    ``heard``: whether any of it was heard), ``sms``/<outcome> (``text`` is the body; ``detail`` the judge's
    explanation, ``score``), ``inbound``/``text`` or ``mms``, ``judge``/``near_miss``.
    """

    t: float
    who: Literal["caller", "agent", "sms", "inbound", "judge"]
    kind: str
    text: str = ""
    action: str | None = None
    turn: int | None = None
    end: float | None = None
    interrupted: bool = False
    heard: bool | None = None
    queued: float | None = None
    to_masked: str | None = None
    detail: str | None = None
    score: float | None = None


class ReportInbound(_Model):
    """An inbound text injected into the conversation."""

    t: float
    sid: str
    parts: int
    images: int = 0
    texts: list[str] = []


class ReportAudio(_Model):
    """Audio-path figures of the caller audio after the SMS processor.

    ``max_delay_ms``/``p99_delay_ms``: wall-clock time between queueing a recorded 20 ms
    frame and its arrival after the processor: what the SMS work added to the audio path
    (independent of the replay speed). ``max_gap_ms``/``p99_gap_ms``: gaps between
    consecutive frames in call time (wall-clock gap times the speed; scheduling noise is
    magnified by the speed too). ``output_frames``: agent audio frames (played out on the
    call clock by the replay's stand-in for the output transport).
    """

    input_frames: int
    output_frames: int
    expected_interval_ms: float = 20.0
    max_delay_ms: float
    p99_delay_ms: float
    max_gap_ms: float
    p99_gap_ms: float


class ReportExpectations(_Model):
    """Result of checking ``--expect``."""

    checked: bool
    passed: bool
    failures: list[str] = []


class ReplayReport(_Model):
    """The JSON report of ``run_agent.py replay``.

    Every time in it (``t``, ``start``, ``end``, ``duration_s``) is call time: seconds on the
    recording's clock, never ahead of the recorded events delivered to the pipeline (a stamp lies
    between the last one delivered and the next); it stands still at the recording's ``stop``, so
    what happens after the hang-up (call-end texts) is stamped with the hang-up's time.
    ``duration_s``: the hang-up's time. ``stt_wait_s``:
    wall-clock seconds the replay waited for a slow STT to catch up before recorded agent turns
    (``--stt whisper``). ``conversation``: everything in order.
    """

    format: Literal["incall-sms-replay-report/1"] = "incall-sms-replay-report/1"
    recording: str
    call_sid: str
    duration_s: float
    speed: float
    sms: list[ReportSms]
    lines: list[ReportLine]
    inbound: list[ReportInbound]
    audio: ReportAudio
    expectations: ReportExpectations
    judge: str = "embedded"
    near_misses: list[ReportDecision] = []
    conversation: list[ReportTurn] = []
    stt_wait_s: float = 0.0
    warnings: list[str] = []


def _tail(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


class SmsExpectation(_Model):
    """Texts of one action that must be in the report (by default: at least one, accepted).

    ``to``: ``caller``, a full number (``+14155550199``), or its last digits (``0199``,
    ``***0199``); ``count``: exactly this many of them; ``at``: ``turn`` (during the call) or
    ``call_end``; ``after_turn``: fired by the caller's N-th turn (1 = first);
    ``trigger_contains``: the words that fired it contain this (case-insensitive).
    """

    action: str
    body_contains: str | None = None
    outcome: str = "accepted"
    reason: str | None = None
    to: str | None = None
    count: int | None = pydantic.Field(default=None, ge=0)
    at: Literal["turn", "call_end"] | None = None
    after_turn: int | None = pydantic.Field(default=None, ge=1)
    trigger_contains: str | None = None

    @pydantic.field_validator("to", mode="before")
    @classmethod
    def _to_is_text(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"write it quoted: to: \"{value}\" (YAML reads unquoted digits as a number, and a "
                             "leading 0 as octal)")
        return value

    def matches(self, sms: ReportSms, *, caller_masked: str) -> bool:
        """Whether ``sms`` is one of the texts this expectation describes."""
        if sms.action != self.action or sms.outcome != self.outcome:
            return False
        if self.reason is not None and sms.reason != self.reason:
            return False
        if self.body_contains is not None and self.body_contains not in (sms.body or ""):
            return False
        if self.at is not None and sms.at != self.at:
            return False
        if self.after_turn is not None and (sms.at != "turn" or sms.trigger_turn != self.after_turn):
            return False
        if self.trigger_contains is not None and \
                self.trigger_contains.lower() not in (sms.trigger_text or "").lower():
            return False
        return self.to is None or _destination_matches(self.to, sms.to_masked, caller_masked)

    def describe(self) -> str:
        """The expectation in words, for failure messages."""
        extras = [f"{k}={v!r}" for k, v in self.model_dump(exclude_defaults=True).items() if k != "action"]
        return f"{self.action} ({self.outcome}{', ' + ', '.join(extras) if extras else ''})"


def _destination_matches(want: str, to_masked: str | None, caller_masked: str) -> bool:
    from incall_sms.phone import mask

    if to_masked is None:
        return False
    if want == "caller":
        return to_masked == caller_masked
    if want.startswith("+"):
        return (want if "*" in want else mask(want)) == to_masked
    digits = _tail(want)
    return bool(digits) and _tail(to_masked).endswith(digits)


class LineExpectation(_Model):
    """A line the agent says: any field given must match.

    ``kind``: ``reply`` (the agent's own answer), ``filler``, ``confirmation``, ``failure``,
    ``delivery_failure``, ``waiting`` (an ``await_reply`` text was accepted), ``reply_timeout``,
    ``consent`` (the consent question), ``consent_declined``, ``still_sending`` (a send unsettled long after its
    filler); ``text``: the exact wording, ``contains``: part of it
    (case-insensitive); ``interrupted``: whether it was cut (barge-in or hang-up); ``heard``:
    whether any of it was heard (a line queued behind others may never be).
    """

    kind: Literal["reply", "filler", "confirmation", "failure", "delivery_failure", "waiting", "reply_timeout",
                  "consent", "consent_declined", "still_sending"] | None = None
    action: str | None = None
    text: str | None = None
    contains: str | None = None
    interrupted: bool | None = None
    heard: bool | None = None

    def matches(self, turn: ReportTurn) -> bool:
        """Whether the agent's ``turn`` is such a line."""
        return (turn.who == "agent"
                and (self.kind is None or turn.kind == self.kind)
                and (self.action is None or turn.action == self.action)
                and (self.text is None or turn.text == self.text)
                and (self.contains is None or self.contains.lower() in turn.text.lower())
                and (self.interrupted is None or turn.interrupted == self.interrupted)
                and (self.heard is None or bool(turn.heard) == self.heard))

    def describe(self) -> str:
        """The expectation in words, for failure messages."""
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in self.model_dump(exclude_none=True).items()) + "}"


class Expectations(_Model):
    """What ``--expect FILE`` (YAML or JSON) asserts about a replay.

    ``sms``: texts that must be there; ``no_sms``: actions that must not send (no accepted
    text; a refused or failed attempt is allowed: expect it under ``sms``); ``max_sms``:
    at most this many accepted texts. ``lines``: lines the agent must say (in this order when
    ``lines_in_order`` is true; with ``per_action``, in this order among each action's lines only,
    since lines of actions fired close together may interleave differently from run to run; a
    line naming no action is then ordered against each action's lines);
    ``not_spoken``: lines it must never say. ``inbound_*``: what inbound
    texts must bring into the conversation. ``max_audio_delay_ms``: the audio-path bound.
    """

    sms: list[SmsExpectation] = []
    no_sms: list[str] = []
    lines: list[LineExpectation] = []
    lines_in_order: bool | Literal["per_action"] = False
    not_spoken: list[LineExpectation] = []
    max_sms: int | None = None
    max_audio_delay_ms: float | None = None
    inbound_injected: int | None = None
    inbound_contains: list[str] = []
    inbound_images: int | None = None

    def unknown_actions(self, known: set[str]) -> list[str]:
        """Action names these expectations use that ``known`` lacks (a typo would pass silently)."""
        named = [w.action for w in self.sms] + list(self.no_sms) + [
            line.action for line in (*self.lines, *self.not_spoken) if line.action is not None]
        return sorted({name for name in named if name not in known})

    def check(self, report: ReplayReport, *, caller_masked: str = "") -> list[str]:
        """Return the failed expectations, as sentences.

        Args:
            report: The replay's report.
            caller_masked: The caller's number, masked (``to: caller`` compares with it).
        """
        failures = []
        for want in self.sms:
            found = [s for s in report.sms if want.matches(s, caller_masked=caller_masked)]
            if want.count is not None and len(found) != want.count:
                failures.append(f"expected {want.count} SMS {want.describe()}, found {len(found)}")
            elif want.count is None and not found:
                failures.append(f"expected SMS {want.describe()} not found")
        for action in self.no_sms:
            if any(s.action == action and s.outcome in ("accepted", "duplicate") for s in report.sms):
                failures.append(f"SMS {action} was sent but must not be")
        said = [turn for turn in report.conversation if turn.who == "agent"]
        named = list(dict.fromkeys(line.action for line in self.lines if line.action is not None))
        if self.lines_in_order == "per_action" and named:
            for action in named:  # a line naming no action is ordered against every action's lines
                wanted = [line for line in self.lines if line.action in (action, None)]
                failures += _missing_lines(wanted, said, in_order=True, of=f" of {action}")
        else:  # per_action naming no action: one order over all lines
            failures += _missing_lines(self.lines, said, in_order=bool(self.lines_in_order))
        for banned in self.not_spoken:
            for turn in said:
                if banned.matches(turn):
                    failures.append(f"line {banned.describe()} must not be spoken, but was at t={turn.t}: "
                                    f"{turn.text!r}")
                    break
        accepted = [s for s in report.sms if s.outcome == "accepted"]
        if self.max_sms is not None and len(accepted) > self.max_sms:
            failures.append(f"{len(accepted)} SMS sent, at most {self.max_sms} expected")
        if self.max_audio_delay_ms is not None and report.audio.max_delay_ms > self.max_audio_delay_ms:
            failures.append(f"audio delay {report.audio.max_delay_ms:.1f} ms exceeds {self.max_audio_delay_ms} ms")
        if self.inbound_injected is not None and len(report.inbound) != self.inbound_injected:
            failures.append(f"{len(report.inbound)} inbound texts injected, {self.inbound_injected} expected")
        injected_text = " ".join(t for item in report.inbound for t in item.texts).lower()
        for fragment in self.inbound_contains:
            if fragment.lower() not in injected_text:
                failures.append(f"inbound context lacks {fragment!r}")
        images = sum(item.images for item in report.inbound)
        if self.inbound_images is not None and images != self.inbound_images:
            failures.append(f"{images} inbound image part(s), {self.inbound_images} expected")
        return failures

    @classmethod
    def snapshot(cls, report: ReplayReport, *, actions: list[str], caller_masked: str = "") -> Expectations:
        """What ``report`` shows, as expectations to review and keep (``replay --write-expect``).

        Each action's texts become one expectation per outcome and destination (with ``count``,
        ``at``, the triggering turn when there is one, and ``to``); actions never tried become
        ``no_sms``; the SMS lines become ``lines``, ordered per action (``lines_in_order:
        per_action``: which of two actions' lines came first can change with the host's load);
        failure lines that were not said become ``not_spoken``; inbound texts become
        ``inbound_injected``/``inbound_images``.
        Wording checks (``body_contains``, ``contains``, ``trigger_contains``) are left for you
        to add: they are what the test is about.
        """
        groups: dict[tuple[str, str, str | None, str, str | None], list[ReportSms]] = {}
        for row in report.sms:
            to = None
            if row.to_masked:
                to = "caller" if row.to_masked == caller_masked else "***" + _tail(row.to_masked)[-4:]
            groups.setdefault((row.action, row.outcome, row.reason, row.at, to), []).append(row)
        sms = []
        for (action, outcome, reason, at, to), rows in groups.items():
            turns = {row.trigger_turn for row in rows}
            sms.append(SmsExpectation(action=action, outcome=outcome, reason=reason, to=to, count=len(rows),
                                      at=at,  # type: ignore[arg-type]
                                      after_turn=turns.pop() if at == "turn" and len(turns) == 1 and min(turns) >= 1
                                      else None))
        tried = {row.action for row in report.sms}
        said = [turn for turn in report.conversation if turn.who == "agent" and turn.kind != "reply"]
        not_spoken = [LineExpectation(kind=kind) for kind in ("failure", "delivery_failure")
                      if not any(turn.kind == kind for turn in said)]
        return cls(
            sms=sms,
            no_sms=[name for name in actions if name not in tried],
            max_sms=sum(1 for row in report.sms if row.outcome == "accepted"),
            lines=[LineExpectation(kind=turn.kind, action=turn.action) for turn in said],
            lines_in_order="per_action" if said else False,
            not_spoken=not_spoken,
            inbound_injected=len(report.inbound),
            inbound_images=sum(item.images for item in report.inbound) or None,
        )


def _missing_lines(wanted: list[LineExpectation], said: list[ReportTurn], *, in_order: bool,
                   of: str = "") -> list[str]:
    """The ``wanted`` lines not found among the agent's ``said`` lines, as sentences.

    With ``in_order``, each line is looked for after the previous one's match; ``of`` names
    the group the previous line belongs to in the message (`` of booking_confirmation``).
    """
    failures = []
    position = 0
    for want_line in wanted:
        pool = said[position:] if in_order else said
        hit = next((i for i, turn in enumerate(pool) if want_line.matches(turn)), None)
        if hit is None:
            where = f" after the previous expected line{of}" if in_order and position else ""
            failures.append(f"expected line {want_line.describe()} not spoken{where}")
        elif in_order:
            position += hit + 1
    return failures
