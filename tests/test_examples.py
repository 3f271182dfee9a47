"""The example bots in examples/ run as users run them, against the loopback peers (Twilio, Deepgram, LLM).

Each example is started as its own process (``python examples/<bot>.py``) with the environment of
the README; a call is played into it exactly as Twilio would (signed /voice, signed handshake, the
stream token, paced media), and what reached the Twilio peer and the LLM is checked.
"""

import json

import pytest

from incall_sms.pipeline.recording import load_recording
from tests.conftest import ROOT
from tests.helpers.twilio_call import PUBLIC, play_call, signed_voice, start_server, stop, stream_token, wait_port
from tests.peers.deepgram_peer import DeepgramPeer
from tests.peers.llm_peer import LLMPeer
from tests.peers.loopback import free_port
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, TwilioPeer

RECORDING = ROOT / "tests" / "calls" / "e2e_link.jsonl"


def env_for(twilio, deepgram, llm, tmp_path):
    return {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": PUBLIC,
            "TWILIO_API_BASE_URL": twilio.base_url, "DEEPGRAM_API_KEY": "dg-test-key",
            "DEEPGRAM_BASE_URL": deepgram.base_url, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "none",
            "OPENAI_MODEL": "agent", "EXAMPLE_TTS": "tone", "SMS_STATE_DIR": str(tmp_path / "state"),
            "HOST": "127.0.0.1"}


async def run_example(name, responder, tmp_path, *, cwd=ROOT, python=None, errors=None, done=None):
    """Run one example for one call; returns (twilio peer, llm peer, stream messages back, server log)."""
    events, meta = load_recording(RECORDING)
    async with TwilioPeer() as twilio, DeepgramPeer([(u.t, u.text) for u in meta.stt]) as deepgram, \
            LLMPeer(responder, latency=0.1) as llm:
        twilio.error_numbers.update(errors or {})
        port = free_port()
        command = [str(ROOT / "examples" / f"{name}.py")]
        kwargs = {"python": python} if python else {}
        proc = start_server(command, port=port, env=env_for(twilio, deepgram, llm, tmp_path), cwd=cwd, **kwargs)
        try:
            await wait_port(port, proc)
            status, twiml = await signed_voice(port, call_sid=meta.call_sid, caller=meta.caller,
                                               agent=meta.agent_number)
            assert status == 200, twiml
            received = await play_call(port, events, stream_token(twiml), done=done or (lambda r: False),
                                       settle=15.0)
        finally:
            log = await stop(proc)
    return twilio, llm, received, log, meta


def last_user_text(body):
    users = [m for m in body["messages"] if m["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


async def test_watcher_bot_texts_the_caller(tmp_path):
    twilio, llm, received, log, meta = await run_example(
        "twilio_sms_watcher", lambda body: "Sure, anything else?", tmp_path,
        done=lambda r: sum(1 for m in r if m.get("event") == "media") > 100)
    assert [(m.to, m.body) for m in twilio.messages] == [
        (meta.caller, "Here is our menu and booking page: https://example.com/menu")], log[-3000:]
    assert "texted +1******0123: website_link (1 segment(s))" in log  # the example's on_sms_sent handler
    assert meta.caller not in log
    assert sum(1 for m in received if m.get("event") == "media") > 100  # the agent spoke (filler, confirmation)


async def test_tool_mode_bot_sends_when_the_llm_calls_the_function(tmp_path):
    def responder(body):
        tool_results = [m for m in body["messages"] if m["role"] == "tool"]
        if tool_results:
            return "Done, it's on your phone."
        if "menu" in last_user_text(body):
            assert "send_sms_website_link" in [t["function"]["name"] for t in body.get("tools", [])]
            return {"tool_call": {"name": "send_sms_website_link", "arguments": {}}}
        return "Hello, how can I help?"

    twilio, llm, _, log, meta = await run_example("twilio_sms_tools", responder, tmp_path,
                                                  done=lambda r: False)
    assert [m.to for m in twilio.messages] == [meta.caller], log[-3000:]
    tool_messages = [m for r in llm.requests for m in r["messages"] if m["role"] == "tool"]
    assert tool_messages and json.loads(tool_messages[-1]["content"])["status"] == "sent"


def flows_responder(body):
    messages = body["messages"]
    if any(m["role"] == "tool" for m in messages):
        return "All set."
    if "menu" in last_user_text(body) and any(t["function"]["name"] == "text_confirmation"
                                              for t in body.get("tools", [])):
        return {"tool_call": {"name": "text_confirmation", "arguments": {"booking_time": "Friday 7 pm"}}}
    return "Hello, how can I help with your booking?"


def node_instructions(llm):
    return " ".join(str(m.get("content")) for r in llm.requests for m in r["messages"] if m["role"] != "user")


@pytest.mark.parametrize("outcome", ["sent", "failed"])
async def test_flows_node_branches_on_what_really_happened(tmp_path, outcome):
    errors = {"+14155550123": 21614} if outcome == "failed" else {}  # a landline: Twilio refuses the text
    twilio, llm, _, log, meta = await run_example("flows_sms_node", flows_responder, tmp_path, errors=errors)
    said = node_instructions(llm)
    if outcome == "sent":
        assert [(m.to, m.body) for m in twilio.messages] == [
            (meta.caller, "Hi there, your booking for Friday 7 pm is confirmed. Reply STOP to opt out.")], log[-3000:]
        assert "The confirmation text was sent" in said and "could NOT be sent" not in said
    else:
        assert twilio.messages == []
        assert "could NOT be sent (not_mobile)" in said and "The confirmation text was sent" not in said
