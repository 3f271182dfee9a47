"""A whole agent pipeline: SMS processor, real context aggregators, pipecat's OpenAI LLM service
against a loopback OpenAI-compatible peer, the tap, an offline TTS, and the real Twilio client
against the loopback Twilio peer."""

import asyncio

from pipecat.frames.frames import TranscriptionFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.openai.llm import OpenAILLMService

from incall_sms.pipeline.audio_gaps import GapMeter
from incall_sms.pipeline.local_services import ToneTTSService
from incall_sms.processors.sms_actions import SmsActionProcessor
from tests.helpers.pipeline import SpokenText, run_pipeline
from tests.helpers.sms import CALLER, make_engine
from tests.peers.llm_peer import LLMPeer
from tests.peers.twilio_peer import Fault, TwilioPeer


def agent_llm(body):
    users = [m for m in body["messages"] if m["role"] == "user"]
    return "Your table is booked for Friday at 7 pm." if len(users) == 1 else "Anything else I can help with?"


async def test_filler_reaches_tts_before_the_llm_answer_and_confirmation_after():
    async with TwilioPeer() as peer, LLMPeer(agent_llm, latency=0.3) as llm:
        peer.faults = [Fault(delay=1.0)]
        engine = make_engine(peer=peer)
        await engine.dispatcher.provider.warm_up()
        sms = SmsActionProcessor(engine=engine)
        pair = LLMContextAggregatorPair(LLMContext())
        service = OpenAILLMService(
            api_key="none", base_url=llm.base_url,
            settings=OpenAILLMService.Settings(model="agent", system_instruction="You are a booking agent."),
        )
        spoken = SpokenText()
        meter = GapMeter()

        async def script(worker):
            await worker.queue_frame(TranscriptionFrame(text="I'd like a table for Friday.", user_id="", timestamp=""))
            await asyncio.sleep(2.5)
            await worker.queue_frame(
                TranscriptionFrame(text="Great, can you text me the confirmation?", user_id="", timestamp=""))
            await asyncio.sleep(3.0)

        await run_pipeline([sms, pair.user(), service, sms.agent_tap(), ToneTTSService(), spoken, meter,
                            pair.assistant()], script)
        await service._client.close()

    assert spoken.texts == [
        "Your table is booked for Friday at 7 pm.",
        "One moment, I'm texting that to you.",
        "Anything else I can help with?",
        "Done, I've texted it to your number ending in 71.",
    ]
    assert peer.messages[0].to == CALLER
    assert peer.messages[0].body == "Your booking for Friday at 7 pm is confirmed."
    # the agent LLM saw the SMS note before the caller's request in the same turn
    second = [(m["role"], m["content"]) for m in llm.requests[1]["messages"]]
    roles = [r for r, _ in second]
    assert roles[-2:] == ["developer", "user"] and second[-2][1].startswith("[SMS system]")
    assert meter.stats()["output"].frames > 50
