"""End to end: a recorded call played over a real websocket into `run_agent.py serve`, exactly as Twilio
would, with the real Deepgram service class against a loopback Deepgram peer, pipecat's OpenAI LLM
service against a loopback LLM peer, and the real Twilio client against the loopback Twilio peer."""

import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys

import aiohttp
import pytest
import websockets
from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.recording import load_recording
from twilio.request_validator import RequestValidator

from tests.conftest import ROOT
from tests.peers.deepgram_peer import DeepgramPeer
from tests.peers.llm_peer import LLMPeer
from tests.peers.loopback import free_port
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer

PUBLIC = "https://agent.example.com"
RECORDING = ROOT / "tests" / "calls" / "e2e_link.jsonl"


def _with_token(message, token):
    if message.get("event") != "start":
        return message
    start = dict(message["start"], customParameters={"token": token})
    return dict(message, start=start)


async def wait_port(port, proc, timeout=60):
    for _ in range(int(timeout / 0.1)):
        if proc.poll() is not None:
            raise AssertionError("serve exited: " + proc.stderr.read().decode()[-3000:])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("serve did not start")


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
    env = {**os.environ, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "TWILIO_API_BASE_URL": twilio.base_url, "DEEPGRAM_API_KEY": "dg-test-key",
           "DEEPGRAM_BASE_URL": deepgram.base_url, "SMS_AGENT_LLM_URL": llm.base_url, "SMS_AGENT_LLM_MODEL": "agent",
           "SMS_AGENT_TTS": "tone", "PUBLIC_URL": PUBLIC, "SMS_STATE_DIR": str(tmp_path / "state"),
           "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS), "PYTHONPATH": str(ROOT),
           "SMS_RECORD_DIR": str(tmp_path / "recordings"), "PIPECAT_LOG_LEVEL": os.environ.get("E2E_LOG", "WARNING")}
    proc = subprocess.Popen([sys.executable, "run_agent.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await wait_port(port, proc)
        # 1. the voice webhook answers TwiML that streams the call with the numbers as parameters
        form = {"CallSid": meta.call_sid, "AccountSid": ACCOUNT_SID, "From": meta.caller, "To": meta.agent_number}
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/voice", form)
        async with aiohttp.ClientSession() as session, session.post(f"http://127.0.0.1:{port}/voice", data=form,
                                headers={"X-Twilio-Signature": signature}) as response:
            twiml = await response.text()
        assert response.status == 200
        assert '<Stream url="wss://agent.example.com/media">' in twiml
        assert meta.caller not in twiml  # the numbers travel inside the signed, single-use token only
        [token] = re.findall(r'<Parameter name="token" value="([^"]+)"/>', twiml)

        # 2. play the recorded media stream as Twilio does (signed handshake, the token in the start
        # message), paced, and collect what the agent sends back
        events = [(t, _with_token(m, token)) for t, m in events]
        handshake = {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(
            "wss://agent.example.com/media", {})}
        received = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/media", additional_headers=handshake) as ws:
            async def reader():
                async for message in ws:
                    received.append(json.loads(message))

            reader_task = asyncio.get_running_loop().create_task(reader())
            start = asyncio.get_running_loop().time()
            for t, message in events:
                if message["event"] == "stop":
                    break
                delay = t / 2.0 - (asyncio.get_running_loop().time() - start)  # twice real time
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(json.dumps(message))
            for _ in range(60):  # let the send, filler and confirmation finish
                if twilio.messages and sum(1 for m in received if m.get("event") == "media") > 100:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            await ws.send(json.dumps(events[-1][1]))  # stop
            await asyncio.sleep(0.5)
            reader_task.cancel()
        # the call ends when the websocket closes; its recording is written then
        recorded = tmp_path / "recordings" / f"{meta.call_sid}.meta.json"
        for _ in range(150):
            if recorded.exists():
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        try:  # never block the loop: the loopback peers live on it
            _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = await asyncio.to_thread(proc.communicate)

    if os.environ.get("E2E_LOG_FILE"):
        pathlib.Path(os.environ["E2E_LOG_FILE"]).write_bytes(stderr)
    assert deepgram.connections >= 1 and deepgram.sent == [meta.stt[0].text]
    assert [(m.to, m.body) for m in twilio.messages] == [
        (meta.caller, "Here is our menu and booking page: https://example.com/menu")]
    assert twilio.requests[0]["StatusCallback"] == [PUBLIC + "/sms/status"]
    media = [m for m in received if m.get("event") == "media"]
    assert len(media) > 100, stderr.decode()[-3000:]  # filler, LLM answer and confirmation audio (20 ms each)
    assert all(m["streamSid"] == events[1][1]["start"]["streamSid"] for m in media)
    log = stderr.decode()
    assert meta.caller not in log and meta.caller[-7:] not in log  # numbers are masked in logs
    assert AUTH_TOKEN not in log and "dg-test-key" not in log  # secrets never logged

    # 3. the call was recorded (numbers masked) and replays to the same SMS decision
    recorded = tmp_path / "recordings" / f"{meta.call_sid}.jsonl"
    assert recorded.exists(), stderr.decode()[-3000:]
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
