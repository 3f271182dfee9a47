"""End to end: a recorded call played over a real websocket into `run_agent.py serve`, exactly as Twilio
would (signed /voice, signed handshake, the stream token), with the real Deepgram service class against a
loopback Deepgram peer, pipecat's OpenAI LLM service against a loopback LLM peer, and the real Twilio
client against the loopback Twilio peer."""

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.recording import load_recording
from tests.conftest import ROOT
from tests.helpers.twilio_call import PUBLIC, play_call, signed_voice, start_server, stop, stream_token, wait_port
from tests.peers.deepgram_peer import DeepgramPeer
from tests.peers.llm_peer import LLMPeer
from tests.peers.loopback import free_port
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer

RECORDING = ROOT / "tests" / "calls" / "e2e_link.jsonl"


@pytest.fixture
async def peers():
    events, meta = load_recording(RECORDING)
    script = [(u.t, u.text) for u in meta.stt]
    async with TwilioPeer() as twilio, DeepgramPeer(script) as deepgram, \
            LLMPeer(lambda body: "Sure, anything else?", latency=0.2) as llm:
        twilio.fault_for = lambda form: Fault(delay=0.5)
        yield twilio, deepgram, llm, events, meta


async def test_recorded_call_through_serve(peers, tmp_path):
    twilio, deepgram, llm, events, meta = peers
    port = free_port()
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_API_BASE_URL": twilio.base_url, "DEEPGRAM_API_KEY": "dg-test-key",
           "DEEPGRAM_BASE_URL": deepgram.base_url, "SMS_AGENT_LLM_URL": llm.base_url, "SMS_AGENT_LLM_MODEL": "agent",
           "SMS_AGENT_TTS": "tone", "PUBLIC_URL": PUBLIC, "SMS_STATE_DIR": str(tmp_path / "state"),
           "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS), "PYTHONPATH": str(ROOT),
           "SMS_RECORD_DIR": str(tmp_path / "recordings"), "PIPECAT_LOG_LEVEL": os.environ.get("E2E_LOG", "WARNING")}
    proc = start_server(["run_agent.py", "serve", "--port", str(port)], port=port, env=env, cwd=ROOT)
    try:
        await wait_port(port, proc)
        # 1. the voice webhook answers TwiML that streams the call with a single-use token bound to it
        status, twiml = await signed_voice(port, call_sid=meta.call_sid, caller=meta.caller,
                                           agent=meta.agent_number)
        assert status == 200
        assert '<Stream url="wss://agent.example.com/media">' in twiml
        assert meta.caller not in twiml  # the numbers travel inside the signed, single-use token only
        token = stream_token(twiml)

        # 2. play the recorded media stream as Twilio does, paced, and collect what the agent sends back
        received = await play_call(port, events, token, done=lambda r: bool(twilio.messages) and sum(
            1 for m in r if m.get("event") == "media") > 100, settle=6.0)
        # the call ends when the websocket closes; its recording is written then
        recorded = tmp_path / "recordings" / f"{meta.call_sid}.meta.json"
        for _ in range(150):
            if recorded.exists():
                break
            await asyncio.sleep(0.1)
    finally:
        log = await stop(proc)

    if os.environ.get("E2E_LOG_FILE"):
        pathlib.Path(os.environ["E2E_LOG_FILE"]).write_text(log)
    assert deepgram.connections >= 1 and deepgram.sent == [meta.stt[0].text]
    assert [(m.to, m.body) for m in twilio.messages] == [
        (meta.caller, "Here is our menu and booking page: https://example.com/menu")]
    assert twilio.requests[0]["StatusCallback"] == [PUBLIC + "/sms/status"]
    media = [m for m in received if m.get("event") == "media"]
    assert len(media) > 100, log[-3000:]  # filler, LLM answer and confirmation audio (20 ms each)
    assert all(m["streamSid"] == events[1][1]["start"]["streamSid"] for m in media)
    assert meta.caller not in log and meta.caller[-7:] not in log  # numbers are masked in logs
    assert AUTH_TOKEN not in log and "dg-test-key" not in log and token not in log  # secrets never logged

    # 3. the call was recorded (numbers masked, no token) and replays to the same SMS decision
    recorded = tmp_path / "recordings" / f"{meta.call_sid}.jsonl"
    assert recorded.exists(), log[-3000:]
    text = recorded.read_text() + recorded.with_suffix("").with_suffix(".meta.json").read_text()
    assert meta.caller not in text and "******" in text
    assert token.split(".")[0] not in text  # the stream token is never recorded
    report = tmp_path / "replay.json"
    out = subprocess.run([sys.executable, "run_agent.py", "replay", str(recorded), "--actions",
                          str(DEFAULT_ACTIONS), "--report", str(report)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    replayed = json.loads(report.read_text())
    assert [s["action"] for s in replayed["sms"] if s["outcome"] == "accepted"] == ["website_link"]
    recorded_meta = json.loads(recorded.with_suffix("").with_suffix(".meta.json").read_text())
    # the LLM's turns are recorded (the peer always answers this), the SMS lines are not: a replay says those itself
    assert {a["text"] for a in recorded_meta["agent"]} == {"Sure, anything else?"}

    # 4. the README's three commands turn the recorded call into a regression test: mask, write, check
    def run(*args):
        return subprocess.run([sys.executable, "run_agent.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    fixture = tmp_path / "fixtures" / "menu_link"
    out = run("recording", "mask", str(recorded), "--out", str(fixture))
    assert out.returncode == 0, out.stderr[-2000:]
    masked = fixture.with_name("menu_link.jsonl").read_text()
    assert meta.call_sid not in masked and '"payload": "' in masked
    expect = tmp_path / "fixtures" / "menu_link.expect.yaml"
    out = run("replay", str(fixture.with_name("menu_link.jsonl")), "--actions", str(DEFAULT_ACTIONS), "--report",
              str(tmp_path / "r1.json"), "--write-expect", str(expect))
    assert out.returncode == 0, out.stderr[-2000:]
    written = yaml.safe_load(expect.read_text())
    assert [(s["action"], s["count"], s["to"]) for s in written["sms"]] == [("website_link", 1, "caller")]
    out = run("replay", str(fixture.with_name("menu_link.jsonl")), "--actions", str(DEFAULT_ACTIONS), "--report",
              str(tmp_path / "r2.json"), "--expect", str(expect))
    assert out.returncode == 0 and "expectations: passed" in out.stdout, out.stdout + out.stderr[-2000:]
