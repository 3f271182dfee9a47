"""Tool mode: the agent LLM calls an SMS function; the result it gets is the truth."""

import asyncio

from pipecat.frames.frames import TranscriptionFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.openai.llm import OpenAILLMService

from incall_sms.pipeline.local_services import ToneTTSService
from incall_sms.processors.sms_tools import SmsToolset
from tests.helpers.pipeline import SpokenText, run_pipeline
from tests.helpers.sms import CALLER, make_engine
from tests.peers.llm_peer import LLMPeer
from tests.peers.twilio_peer import Fault, TwilioPeer


def tool_llm(body):
    messages = body["messages"]
    tool_results = [m for m in messages if m["role"] == "tool"]
    if tool_results:
        return "The result is in: " + tool_results[-1]["content"][:40]
    names = [t["function"]["name"] for t in body.get("tools", [])]
    assert "send_sms_website_link" in names
    return {"tool_call": {"name": "send_sms_website_link", "arguments": {}}}


async def run_tool_call(peer):
    engine = make_engine(peer=peer)
    await engine.dispatcher.provider.warm_up()
    toolset = SmsToolset(engine=engine)
    async with LLMPeer(tool_llm, latency=0.1) as llm:
        service = OpenAILLMService(api_key="none", base_url=llm.base_url,
                                   settings=OpenAILLMService.Settings(model="agent"))
        toolset.register(service)
        pair = LLMContextAggregatorPair(LLMContext(tools=toolset.tools()))
        spoken = SpokenText()

        async def script(worker):
            await worker.queue_frame(TranscriptionFrame(text="Text me the link.", user_id="", timestamp=""))
            await asyncio.sleep(3.0)

        await run_pipeline([pair.user(), service, ToneTTSService(), spoken, pair.assistant()], script)
        await service._client.close()
    return spoken, llm


async def test_tool_sends_and_llm_hears_sent():
    async with TwilioPeer() as peer:
        peer.faults = [Fault(delay=0.5)]
        spoken, llm = await run_tool_call(peer)
        assert [m.to for m in peer.messages] == [CALLER]
    assert spoken.texts[0] == "Sure, sending the link now."  # the action's filler
    tool_messages = [m for r in llm.requests for m in r["messages"] if m["role"] == "tool"]
    assert tool_messages and '"status": "sent"' in tool_messages[-1]["content"]


async def test_tool_failure_is_reported_as_failure():
    async with TwilioPeer() as peer:
        peer.error_numbers[CALLER] = 21614
        _spoken, llm = await run_tool_call(peer)
        assert peer.messages == []
    tool_messages = [m for r in llm.requests for m in r["messages"] if m["role"] == "tool"]
    assert '"status": "failed"' in tool_messages[-1]["content"]
    assert "not_mobile" in tool_messages[-1]["content"]


async def test_the_end_of_a_tool_mode_call_closes_its_waits(tmp_path):
    """No processor times a tool-mode wait: leaving the call closes it (no timer outlives the call)."""
    import yaml

    from incall_sms.pipeline.service import SmsService, SmsSettings, TwilioStream
    from tests.helpers.sms import AGENT
    from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN
    from tests.test_await_reply import EMAIL_FLOW

    actions = tmp_path / "actions.yaml"
    actions.write_text(yaml.safe_dump(EMAIL_FLOW))
    async with TwilioPeer() as peer:
        service = SmsService(SmsSettings.from_env({
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": "https://a.example.com",
            "TWILIO_API_BASE_URL": peer.base_url, "SMS_STATE_DIR": str(tmp_path), "SMS_ACTIONS_FILE": str(actions)}))
        await service.start()
        try:
            stream = TwilioStream(call_sid="CA" + "7" * 32, stream_sid="MZ" + "7" * 32, caller=CALLER,
                                  agent_number=AGENT)
            async with service.call(stream) as call:
                assert (await call.send("ask_email"))["status"] == "sent"
                (wait,) = call.engine.waits
                assert wait.open and wait.safety is not None  # the engine's own timer stands in for a processor
            assert not wait.open and wait.safety is None
            assert [m.to for m in peer.messages] == [CALLER]
        finally:
            await service.aclose()
