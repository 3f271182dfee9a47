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
from typing import Any, Literal

import pydantic

__all__ = [
    "FORMAT",
    "Expectations",
    "RecordingMeta",
    "ReplayReport",
    "load_recording",
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
    barge_in: bool = False


class InboundAttachment(_Model):
    """An attachment of an inbound MMS, embedded in the sidecar (served to the media fetcher on loopback)."""

    content_type: str
    data_b64: str = pydantic.Field(max_length=8_000_000)


class InboundText(_Model):
    """A text (or MMS) the caller sent to the agent's number during the call."""

    t: float = pydantic.Field(ge=0)
    body: str = pydantic.Field(default="", max_length=3200)
    media: list[InboundAttachment] = []


class ProviderBehaviour(_Model):
    """How the embedded provider answers during the replay."""

    landlines: list[str] = []
    opted_out: list[str] = []
    latency: float = pydantic.Field(default=0.3, ge=0, le=30)


class RecordingMeta(_Model):
    """The sidecar of a recording."""

    format: Literal["incall-sms-recording/1"] = FORMAT
    call_sid: str
    caller: str
    agent_number: str
    variables: dict[str, str] = {}
    stt: list[TimedText] = []
    agent: list[TimedText] = []
    inbound: list[InboundText] = []
    provider: ProviderBehaviour = ProviderBehaviour()
    description: str = ""


def load_recording(path: str | pathlib.Path) -> tuple[list[tuple[float, dict[str, Any]]], RecordingMeta]:
    """Load ``NAME.jsonl`` and its ``NAME.meta.json``.

    Raises:
        ValueError: Missing file, bad JSON (the line is named) or invalid metadata.
    """
    events_path = pathlib.Path(path)
    meta_path = events_path.with_suffix("").with_suffix(".meta.json")
    if events_path.suffix != ".jsonl" or not events_path.exists():
        raise ValueError(f"recording {events_path.name} must be an existing .jsonl file")
    if not meta_path.exists():
        raise ValueError(f"missing sidecar {meta_path.name}")
    events: list[tuple[float, dict[str, Any]]] = []
    for number, line in enumerate(events_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            events.append((float(item["t"]), dict(item["message"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{events_path.name} line {number}: {exc.__class__.__name__}") from None
    try:
        meta = RecordingMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
    except pydantic.ValidationError as exc:
        raise ValueError(f"{meta_path.name}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    events.sort(key=lambda e: e[0])
    return events, meta


class ReportSms(_Model):
    """One SMS decision of the call (``judged``: the judge part that fired it and why; ``score``: its score)."""

    action: str
    outcome: str
    reason: str | None = None
    to_masked: str | None = None
    body: str | None = None
    encoding: str | None = None
    segments: int | None = None
    trigger_turn: int
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
    """A filler, confirmation or failure line the agent spoke."""

    kind: str
    action: str
    text: str
    t: float


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
    magnified by the speed too). Agent audio is only counted: a replay has no output
    transport pacing it.
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
    """The JSON report of ``run_agent.py replay``."""

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


class SmsExpectation(_Model):
    """An SMS that must have been sent (accepted)."""

    action: str
    body_contains: str | None = None
    outcome: str = "accepted"
    reason: str | None = None


class Expectations(_Model):
    """What ``--expect FILE`` (YAML or JSON) asserts about a replay."""

    sms: list[SmsExpectation] = []
    no_sms: list[str] = []
    lines: list[dict[str, str]] = []
    max_sms: int | None = None
    max_audio_delay_ms: float | None = None
    inbound_injected: int | None = None
    inbound_contains: list[str] = []
    inbound_images: int | None = None

    def check(self, report: ReplayReport) -> list[str]:
        """Return the failed expectations, as sentences."""
        failures = []
        for want in self.sms:
            found = [s for s in report.sms if s.action == want.action and s.outcome == want.outcome
                     and (want.reason is None or s.reason == want.reason)
                     and (want.body_contains is None or (s.body or "").find(want.body_contains) >= 0)]
            if not found:
                failures.append(f"expected SMS {want.action} ({want.outcome}"
                                f"{', ' + want.reason if want.reason else ''}) not found")
        for action in self.no_sms:
            if any(s.action == action and s.outcome in ("accepted", "duplicate") for s in report.sms):
                failures.append(f"SMS {action} was sent but must not be")
        for want_line in self.lines:
            if not any(all(getattr(line, k, None) == v for k, v in want_line.items()) for line in report.lines):
                failures.append(f"expected line {want_line} not spoken")
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
