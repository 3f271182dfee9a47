"""The replay's parts: its call clock, the provider behaviours a recording sets up, masking a recorded call."""

import base64
import json

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
