"""The replay's parts: its call clock, the provider behaviours a recording sets up, masking a recorded call."""

import asyncio
import base64
import json
import re

import pytest
import yaml

from incall_sms.actions import load_actions
from incall_sms.errors import SendError
from incall_sms.pipeline.call_clock import CallClock
from incall_sms.pipeline.masking import mask_recording, mask_text
from incall_sms.pipeline.recording import Expectations, load_recording
from incall_sms.pipeline.replay import replay
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.local import BEHAVIOURS, LocalProvider
from tests.conftest import ROOT

CALLS = ROOT / "tests" / "calls"


class FakeWall:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_call_clock_never_runs_ahead_of_what_was_delivered():
    wall = FakeWall()
    clock = CallClock(8.0, monotonic=wall)
    assert clock.now() == 0.0
    clock.start(first_event=0.02)
    wall.now += 0.001
    assert clock.now() == pytest.approx(0.008)
    wall.now += 1.0  # the driver is late: 8 s of call time have passed on the wall, but 0.02 was not delivered
    assert clock.now() == 0.02
    assert clock.wall_delay(0.02) == 0.0 and clock.wall_delay(16.0) == pytest.approx(2.0 - 1.001)
    clock.delivered(0.02, next_event=0.04)
    assert clock.now() == 0.02
    wall.now += 0.001
    assert clock.now() == pytest.approx(0.028)
    clock.delivered(0.04, next_event=None)  # the last event: the clock runs freely
    wall.now += 1.0
    assert clock.now() == pytest.approx(8.04)
    clock.wait(0.5)  # a deliberate wait pushes later events back
    assert clock.wall_delay(16.0) == pytest.approx(2.5 - 2.002)
    with pytest.raises(ValueError):
        CallClock(0)


@pytest.mark.parametrize(("behaviour", "reason", "code", "kind"), [
    ("landline", "not_mobile", 21614, "permanent"), ("opted_out", "opted_out", 21610, "permanent"),
    ("invalid", "invalid_number", 21211, "permanent"), ("timeout", "timeout", None, "ambiguous"),
    ("server_error", "server_error", None, "ambiguous"), ("rate_limited", "rate_limited", 20429, "retryable")])
async def test_provider_behaviour_per_destination(behaviour, reason, code, kind):
    provider = LocalProvider(behaviours={"+14155550199": behaviour})
    with pytest.raises(SendError) as caught:
        await provider.send(OutboundSms(to="+14155550199", from_="+14155550100", body="hi", key="k1"))
    assert (caught.value.reason, caught.value.code, caught.value.kind.value) == (reason, code, kind)
    receipt = await provider.send(OutboundSms(to="+14155550123", from_="+14155550100", body="hi", key="k1"))
    assert receipt.sid.startswith("SM")  # other destinations are accepted
    await provider.aclose()


def test_unknown_provider_behaviour_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown provider behaviour.*explode.*known: accept"):
        LocalProvider(behaviours={"+14155550199": "explode"})
    assert set(BEHAVIOURS) >= {"accept", "landline", "opted_out", "timeout", "server_error", "rate_limited"}


def test_mask_text_keeps_last_digits_and_layout():
    assert mask_text("her number is 212 867 5309, mail jo.doe+x@corp.co.uk") == \
        "her number is 415 555 5309, mail someone@example.com"
    assert mask_text("call +1 (646) 555-0142 now") == "call +1 (415) 555-0142 now"
    assert mask_text("order 4411 at 7 pm") == "order 4411 at 7 pm"


async def test_masked_recording_replays_to_the_same_decisions(tmp_path):
    source = CALLS / "dynamic_destination.jsonl"
    events_path, meta_path = mask_recording(source, tmp_path / "masked")
    events, meta = load_recording(events_path)
    original_events, original = load_recording(source)
    assert meta.call_sid != original.call_sid and meta.caller == "+1******0123"
    assert "0199" in meta.stt[0].text and meta.stt[0].text == original.stt[0].text  # 415 555 0199 is fictional
    start = next(m for _t, m in events if m["event"] == "start")["start"]
    assert start["callSid"] == meta.call_sid and start["accountSid"] == "AC" + "0" * 32
    payloads = [base64.b64decode(m["media"]["payload"]) for _t, m in events if m["event"] == "media"]
    assert payloads and all(set(p) == {0xFF} for p in payloads)  # the caller's voice is gone, timing kept
    assert len(events) == len(original_events)
    assert original.caller not in events_path.read_text() + meta_path.read_text()
    expect = Expectations.model_validate(yaml.safe_load(source.with_suffix(".expect.yaml").read_text()))
    report = await replay(events_path, actions=load_actions(CALLS / "actions.yaml"), expectations=expect)
    assert report.expectations.passed, report.expectations.failures
    with pytest.raises(ValueError, match="must not overwrite"):
        mask_recording(events_path, events_path.with_suffix(""))
    kept, _ = mask_recording(source, tmp_path / "voice", keep_audio=True)
    first = next(json.loads(line) for line in kept.read_text().splitlines() if '"media"' in line)
    assert first["message"]["media"]["payload"] == original_events[2][1]["media"]["payload"]


def _write(folder, name, events, meta):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / f"{name}.meta.json").write_text(json.dumps(meta))
    return folder / f"{name}.jsonl"


SID = "CA" + "1" * 32
START = {"t": 0.0, "message": {"event": "start", "start": {"callSid": SID, "accountSid": "AC" + "0" * 32}}}
STOP = {"t": 9.0, "message": {"event": "stop"}}
META = {"format": "incall-sms-recording/1", "call_sid": SID, "caller": "+14155550123",
        "agent_number": "+14155550100", "stt": [{"t": 3.0, "text": "text me the link"}]}


@pytest.mark.parametrize(("events", "meta", "error"), [
    ([START], META, "needs a 'start' and a 'stop'"),
    ([STOP], META, "needs a 'start' and a 'stop'"),
    ([{**START, "t": 10.0}, STOP], META, "comes before 'start'"),
    ([START, {"t": 1.0, "message": {"event": "dance"}}, STOP], META, "unknown event(s) dance"),
    ([START, STOP], {**META, "call_sid": "CA" + "2" * 32}, "does not match the sidecar's call_sid"),
    ([START, STOP], {**META, "stt": [{"t": 99.0, "text": "late"}]}, "after the call ended"),
    ([START, STOP], {**META, "inbound": [{"t": 50.0, "body": "late"}]}, "after the call ended"),
    ([START, STOP], {**META, "opt_outs": ["not a number"]}, "is not a phone number"),
    ([START, STOP], {**META, "provider": {"destinations": {"garbage": "timeout"}}}, "is not a phone number"),
    ([START, STOP], {**META, "provider": {"destinations": {"+14155550199": "explode"}}}, "destinations"),
    ([START, STOP], {**META, "stt": [{"t": 1.0, "text": "hi", "barge_in": "yes"}]}, "barge_in"),
])
def test_a_recording_that_is_not_a_whole_call_is_refused(tmp_path, events, meta, error):
    path = _write(tmp_path, "bad", events, meta)
    with pytest.raises(ValueError, match=re.escape(error)):
        load_recording(path)


def test_broken_lines_are_named(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps(START) + "\n{not json\n")
    (tmp_path / "x.meta.json").write_text(json.dumps(META))
    with pytest.raises(ValueError, match=r"x.jsonl line 2: not JSON"):
        load_recording(tmp_path / "x.jsonl")
    (tmp_path / "x.jsonl").write_text(json.dumps({"message": {}}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: missing key 't'"):
        load_recording(tmp_path / "x.jsonl")


async def test_expectations_naming_unknown_actions_are_refused():
    expect = Expectations.model_validate({"no_sms": ["webiste_link"], "lines": [{"action": "nope"}]})
    with pytest.raises(ValueError, match="not in the action file: nope, webiste_link"):
        await replay(CALLS / "booking_confirmation.jsonl", actions=load_actions(CALLS / "actions.yaml"),
                     expectations=expect)
    with pytest.raises(ValueError):
        Expectations.model_validate({"not_spoken": [{"kind": "failur"}]})


async def test_masking_keeps_the_set_up_pointing_at_the_same_people(tmp_path):
    """Masked destinations and opt-outs still apply to the same (faked) caller and colleague."""
    source = CALLS / "known_name_colleague_timeout.jsonl"
    events_path, meta_path = mask_recording(source, tmp_path / "masked")
    masked = json.loads(meta_path.read_text())
    assert masked["provider"]["destinations"] == {"+1******0199": "timeout"}
    actions = load_actions(CALLS / "actions.yaml")
    expect = Expectations.model_validate(yaml.safe_load(source.with_suffix(".expect.yaml").read_text()))
    report = await replay(events_path, actions=actions, expectations=expect)
    assert report.expectations.passed, report.expectations.failures


def test_unquoted_digits_in_to_get_a_clear_error():
    with pytest.raises(ValueError, match='write it quoted: to: "83"'):
        Expectations.model_validate(yaml.safe_load("sms:\n- {action: x, to: 0123}\n"))
    masked = Expectations.model_validate({"sms": [{"action": "x", "to": "+1******0199"}]}).sms[0]
    from incall_sms.pipeline.recording import ReportSms

    row = ReportSms(action="x", outcome="accepted", to_masked="+61*****0199", trigger_turn=1, at="turn", t=1.0)
    assert not masked.matches(row, caller_masked="")
    assert masked.matches(row.model_copy(update={"to_masked": "+1******0199"}), caller_masked="")


def test_mask_handles_dotted_names_custom_parameters_and_keypresses(tmp_path):
    source = tmp_path / "src.jsonl"
    start = {"t": 0.0, "message": {"event": "start", "start": {
        "callSid": SID, "accountSid": "AC" + "9" * 32, "customParameters": {
            "from_number": "+12128675309", "crm_phone": "+1 212 867 5309", "token": "secret"}}}}
    dtmf = {"t": 1.0, "message": {"event": "dtmf", "dtmf": {"digit": "7"}}}
    _write(tmp_path, "src", [start, dtmf, STOP], META)
    events_path, meta_path = mask_recording(source, tmp_path / "out.v2")
    assert events_path.name == "out.v2.jsonl" and meta_path.name == "out.v2.meta.json"
    events, _meta = load_recording(events_path)  # the loader finds the sidecar of a dotted name
    text = events_path.read_text()
    assert "867" not in text and "secret" not in text and "AC" + "9" * 32 not in text
    assert next(m for _t, m in events if m["event"] == "dtmf")["dtmf"]["digit"] == "0"
    with pytest.raises(ValueError, match="must not overwrite"):
        mask_recording(events_path, tmp_path / "out.v2")


async def test_call_time_stands_still_at_the_hang_up():
    """What happens after the recording's stop (call-end texts) is stamped with the hang-up's time, at any speed."""
    for speed in (4.0, 16.0):
        report = await replay(CALLS / "call_end_booking.jsonl", actions=load_actions(CALLS / "actions.yaml"),
                              speed=speed)
        (sms,) = report.sms
        assert (sms.at, sms.t, report.duration_s) == ("call_end", 8.05, 8.05)
        assert sms.trigger_turn == 1  # the caller turns heard by the end (not an internal key)


async def test_whisper_refuses_a_recording_without_audio(tmp_path):
    events_path, _ = mask_recording(CALLS / "e2e_link.jsonl", tmp_path / "silent")
    with pytest.raises(ValueError, match="no caller audio"):
        await replay(events_path, actions=load_actions(CALLS / "actions.yaml"), stt="whisper")


async def test_the_call_goes_on_while_a_voice_note_is_transcribed():
    """An inbound voice note is prepared beside the call, as a webhook would be: the recorded audio keeps
    flowing and call time keeps running meanwhile (the driver used to wait for the transcription, which
    froze the caller's audio and call time until it was done)."""

    class SlowTranscriber:
        async def transcribe(self, wav_16k_mono: bytes) -> str:
            await asyncio.sleep(0.6)  # 4.8 s of call time at speed 8 (the call ends 4.05 s after the note)
            return "my order number is four two"

    report = await replay(CALLS / "inbound_voice_note.jsonl", actions=load_actions(CALLS / "actions.yaml"),
                          speed=8.0, transcriber=SlowTranscriber())
    (injected,) = report.inbound
    arrived = 4.0  # when the recording's voice note reached the agent's number
    # call time ran on during the transcription (it stood still at ~4.02 before): a generous lower bound,
    # the driver needs only 1/8 of the transcription's wall time to deliver one call second
    assert injected.t >= arrived + 1.0
    assert any("order number" in text for text in injected.texts)
