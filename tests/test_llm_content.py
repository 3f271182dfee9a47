"""LLM-backed helpers against a loopback OpenAI-compatible peer: prompt-mode bodies, variable extraction."""

import json

from incall_sms.judges.base import Turn
from incall_sms.variables import LLMVariableExtractor, PatternExtractor
from incall_sms.writer import LLMContentWriter
from tests.helpers.sms import make_engine
from tests.peers.llm_peer import LLMPeer

PROMPT_ACTIONS = {"actions": [{
    "name": "summary",
    "condition": "if the caller asks for a summary by text",
    "content": {"prompt": "Summarise the booking in one SMS.", "template": "Your booking summary: {booking_time}"},
    "variables": {"booking_time": {"description": "date and time of the booking", "default": "see you soon"}},
}]}


async def test_prompt_mode_body_written_by_llm_and_smart_encoded():
    async with LLMPeer(lambda body: "“Booked” — Friday 7 pm, table for 4. See you then!") as llm:
        engine = make_engine(actions=PROMPT_ACTIONS)
        engine.writer = LLMContentWriter(base_url=llm.base_url, model="writer", timeout=5)
        engine.add_agent_text("You're booked for Friday at 7 pm, table for four.")
        engine.add_user_text("Can you text me a summary?")
        [firing] = engine.evaluate_now("turn")
        outcome = await engine.execute(firing)
        await engine.writer.aclose()
    assert outcome.result.accepted and outcome.content_source == "prompt"
    [msg] = await engine.dispatcher.provider.inbox()
    assert msg.body == '"Booked" - Friday 7 pm, table for 4. See you then!'
    assert msg.encoding == "GSM-7"
    sent_prompt = llm.requests[0]["messages"][1]["content"]
    assert "Summarise the booking" in sent_prompt and "Friday at 7 pm" in sent_prompt


async def test_prompt_mode_falls_back_to_template_when_llm_fails():
    async with LLMPeer(lambda body: "unused") as llm:
        llm.status = 500
        engine = make_engine(actions=PROMPT_ACTIONS)
        engine.writer = LLMContentWriter(base_url=llm.base_url, model="writer", timeout=5)
        engine.add_user_text("Can you text me a summary?")
        [firing] = engine.evaluate_now("turn")
        outcome = await engine.execute(firing)
        await engine.writer.aclose()
    assert outcome.result.accepted and outcome.content_source == "template"
    [msg] = await engine.dispatcher.provider.inbox()
    assert msg.body == "Your booking summary: see you soon"


async def test_llm_variable_extractor():
    answer = json.dumps({"booking_time": "Friday 7 pm", "unasked": "x", "caller_name": 5})
    async with LLMPeer(lambda body: answer) as llm:
        extractor = LLMVariableExtractor(base_url=llm.base_url, model="m", timeout=5)
        values = await extractor.extract([Turn("agent", "Booked for Friday at 7 pm.")],
                                         {"booking_time": "time of the booking", "caller_name": "name"})
        await extractor.aclose()
    assert values == {"booking_time": "Friday 7 pm", "caller_name": "5"}


def test_pattern_extractor():
    values = PatternExtractor().extract_now(
        [Turn("user", "Hi, this is Dana Smith."), Turn("agent", "You're booked for Tuesday at 3 pm."),
         Turn("user", "my email is dana@example.com")],
        {"caller_name": "the caller's name", "booking_time": "when", "email": "e-mail address"},
    )
    assert values == {"caller_name": "Dana Smith", "booking_time": "Tuesday at 3 pm", "email": "dana@example.com"}


async def test_llm_phrased_filler_and_confirmation():
    from pipecat.frames.frames import TranscriptionFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from incall_sms.processors.sms_actions import SmsActionProcessor
    from incall_sms.providers.local import LocalProvider

    actions = {"actions": [{
        "name": "link", "condition": "if the caller requests a link to the website",
        "content": {"template": "https://example.com/menu"},
        "filler_prompt": "Tell the caller briefly that the link is being texted.",
        "confirmation_prompt": "Tell the caller the link was texted to the number ending in {to_last2}.",
    }]}

    def writer_answer(body):
        task = body["messages"][1]["content"]
        return "Hang on, texting it now." if "being texted" in task else "All done, check your phone."

    async with LLMPeer(writer_answer) as llm:
        engine = make_engine(actions=actions, provider=LocalProvider(latency=0.6))
        engine.writer = LLMContentWriter(base_url=llm.base_url, model="writer", timeout=5)
        engine.add_agent_text("It's all on our website.")
        sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)
        await run_test(sms, frames_to_send=[TranscriptionFrame(text="Can you text me the link?", user_id="",
                                                               timestamp=""), SleepFrame(1.5)])
        await engine.writer.aclose()
    assert [(line.kind, line.text) for line in sms.spoken] == [
        ("filler", "Hang on, texting it now."), ("confirmation", "All done, check your phone.")]
