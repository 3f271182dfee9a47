"""Tool mode: the agent LLM calls an SMS function; the result it gets is the truth."""

import asyncio

import pytest
from pipecat.frames.frames import LLMMessagesAppendFrame, TranscriptionFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.openai.llm import OpenAILLMService

from incall_sms.events import SmsEvent, SmsEventKind
from incall_sms.pipeline.local_services import ToneTTSService
from incall_sms.processors.sms_tools import SmsToolset
from tests.helpers.pipeline import SpokenText, run_pipeline
from tests.helpers.sms import CALLER, make_engine, undeliver
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


async def run_tool_call(peer, *, on_engine=None, on_llm=None):
    engine = make_engine(peer=peer)
    await engine.dispatcher.provider.warm_up()
    toolset = SmsToolset(engine=engine)
    if on_engine is not None:
        on_engine(engine)
    async with LLMPeer(tool_llm, latency=0.1) as llm:
        if on_llm is not None:
            on_llm(llm)
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
    toolset.close()
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
                with pytest.raises(ValueError, match=r"no action 'ask_emial'.*\(it has: ask_email, email_received\)"):
                    await call.send("ask_emial")  # a typo: the names it has, not a bare KeyError
                (wait,) = call.engine.waits
                assert wait.firing.at == "turn"  # an action with when: auto is sent as a turn's text, keyed so
                assert wait.open and wait.safety is not None  # the engine's own timer stands in for a processor
            assert not wait.open and wait.safety is None
            assert [m.to for m in peer.messages] == [CALLER]

            # a shared registry failing as the call ends still ends it: no subscription outlives the call
            before = service.dispatcher.subscriber_count

            async def registry_down():
                raise ConnectionError("redis down")
            with pytest.raises(ConnectionError):
                async with service.call(stream) as call:
                    call.toolset()
                    await call.send("ask_email")
                    with pytest.raises(RuntimeError, match="first call"):
                        call.toolset(on_undelivered=print)  # options once it exists would be dropped silently
                    call._unregister = registry_down
            assert service.dispatcher.subscriber_count == before and stream.call_sid not in service.calls
        finally:
            await service.aclose()


# -- a text the provider accepted and the carrier then reported undelivered (status callback) -----------------


def delivery_notes(llm):
    """The SMS system's notes about a text that did not arrive, as the agent LLM received them (deduplicated)."""
    seen = []
    for request in llm.requests:
        for m in request["messages"]:
            content = m.get("content")
            if m["role"] in ("developer", "system", "user") and "did not reach" in str(content) and content not in seen:
                seen.append(content)
    return seen


async def test_a_tool_text_reported_undelivered_after_its_result_is_told_to_the_llm():
    """The LLM heard "sent"; the carrier's later "undelivered" reaches it as a note, and the LLM runs on it."""
    async with TwilioPeer() as peer:
        told_sent = lambda: any('"status": "sent"' in str(m.get("content"))  # noqa: E731
                                for r in llm_box[0].requests for m in r["messages"] if m["role"] == "tool")
        llm_box = []
        _spoken, llm = await run_tool_call(peer, on_engine=lambda engine: undeliver(engine, after=told_sent),
                                           on_llm=llm_box.append)
    notes = delivery_notes(llm)
    assert len(notes) == 1 and "website_link" in notes[0] and "by voice" in notes[0]
    last = llm.requests[-1]["messages"]
    assert any("did not reach" in str(m.get("content")) for m in last)  # the LLM was run with the note in context


async def test_a_tool_text_reported_undelivered_before_its_result_is_never_reported_sent():
    async with TwilioPeer() as peer:
        _spoken, llm = await run_tool_call(peer, on_engine=lambda engine: undeliver(engine))
        assert [m.to for m in peer.messages] == [CALLER]  # it was sent once, and is not sent again
    tool_messages = [m for r in llm.requests for m in r["messages"] if m["role"] == "tool"]
    assert '"status": "undelivered"' in tool_messages[-1]["content"]
    assert '"status": "sent"' not in tool_messages[-1]["content"]
    assert "30003" in tool_messages[-1]["content"] or "unreachable" in tool_messages[-1]["content"]
    assert delivery_notes(llm) == []  # the tool result says it: no second note


async def test_calling_the_tool_again_after_an_undelivered_report_says_undelivered_not_already_sent():
    engine = make_engine()
    toolset = SmsToolset(engine=engine)
    reports = undeliver(engine, after=lambda: True)
    link = engine.actions.get("website_link")
    first = await toolset.call(link, {})
    assert first["status"] == "sent"
    await asyncio.gather(*reports)
    again = await toolset.call(link, {})
    assert again["status"] == "undelivered"
    assert "didn't go through" in again["say"] and CALLER[-2:] in again["say"] and CALLER not in again["say"]
    assert engine.dispatcher.provider.requests == 1  # nothing new was sent
    toolset.close()


async def test_a_tool_mode_ask_reported_undelivered_closes_its_wait():
    from tests.test_await_reply import EMAIL_FLOW

    engine = make_engine(actions=EMAIL_FLOW)
    toolset = SmsToolset(engine=engine)
    reports = undeliver(engine, after=lambda: True)
    result = await toolset.call(engine.actions.get("ask_email"), {})
    assert result["status"] == "sent"
    (wait,) = engine.waits
    assert wait.open
    await asyncio.gather(*reports)
    assert not wait.open  # no reply can come to a text that did not arrive
    toolset.close()


async def test_a_tool_mode_ask_reported_undelivered_before_its_result_never_waits():
    from tests.test_await_reply import EMAIL_FLOW

    engine, toolset, _pushed = registered(EMAIL_FLOW)  # subscribed first: the report reaches it during the send
    undeliver(engine)
    result = await toolset.call(engine.actions.get("ask_email"), {})
    assert result["status"] == "undelivered" and "email by voice" in result["note"]
    (wait,) = engine.waits
    assert not wait.open  # born closed: nobody can answer a text that never arrived
    assert engine.undelivered(wait.result.key).wait is wait
    toolset.close()


async def test_call_end_actions_are_no_functions_and_code_can_send_them():
    # found by a new user: a call-end action was offered to the LLM as a function that always answered not_now,
    # and call.send() from code could not send it either
    actions = {"actions": [
        {"name": "link", "condition": "if the caller wants the link", "content": {"template": "https://x.example"}},
        {"name": "recap", "condition": "when the call ends and a visit was booked", "when": "call_end",
         "content": {"template": "Your visit is booked."}},
    ]}
    engine = make_engine(actions=actions)
    toolset = SmsToolset(engine=engine, speak_filler=False)
    assert [f.name for f in toolset.schemas()] == ["send_sms_link"]
    recap = engine.actions.get("recap")
    assert (await toolset.call(recap, {}))["status"] == "not_now"  # a mid-call claim by the LLM
    assert (await toolset.call(recap, {}, at="call_end"))["status"] == "sent"  # your code decides
    assert engine.dispatcher.provider.requests == 1
    toolset.close()


class PushedFrames:
    """The frames a toolset pushes from its LLM service (the seam: no pipeline runs these tests)."""

    def __init__(self):
        self.service = OpenAILLMService(api_key="none", base_url="http://127.0.0.1:9/v1",
                                        settings=OpenAILLMService.Settings(model="agent"))
        self.frames = []

        async def push_frame(frame, direction=None):
            self.frames.append(frame)
        self.service.push_frame = push_frame

    def notes(self):
        return [m["content"] for f in self.frames if isinstance(f, LLMMessagesAppendFrame) for m in f.messages]


def registered(actions=None, **options):
    """An engine and its toolset registered on an LLM service whose pushed frames are kept."""
    engine = make_engine(actions=actions)
    pushed = PushedFrames()
    toolset = SmsToolset(engine=engine, speak_filler=False, **options)
    toolset.register(pushed.service)
    return engine, toolset, pushed


async def report_undelivered(engine, action):
    """The carrier's status callback: the action's last text was not delivered (30003)."""
    await engine.dispatcher.handle_status(engine.last_result(action).sid, "undelivered", 30003)


async def test_the_note_is_uninterruptible_and_runs_the_llm():
    engine, toolset, pushed = registered()
    reports = undeliver(engine, after=lambda: True)
    assert (await toolset.call(engine.actions.get("website_link"), {}))["status"] == "sent"
    await asyncio.gather(*reports)
    (note,) = [f for f in pushed.frames if isinstance(f, LLMMessagesAppendFrame)]
    assert note.run_llm and not note.interruptible  # an interruption empties the queues it waits in
    assert "did not reach" in note.messages[0]["content"] and "offer to give the details" in note.messages[0]["content"]
    toolset.close()


async def test_only_a_status_callback_makes_a_text_undelivered():
    """A send's own FAILED event for the same key (an outbox outage, recovery) is no carrier report."""
    engine, toolset, pushed = registered()
    link = engine.actions.get("website_link")
    first = await toolset.call(link, {})
    last = engine.last_result("website_link")
    await engine.dispatcher.publish(SmsEvent(kind=SmsEventKind.FAILED, key=last.key, call_id=engine.call.call_id,
                                             action="website_link", to_masked=last.to_masked,
                                             reason="outbox_unavailable"))
    assert first["status"] == "sent" and pushed.notes() == []
    assert (await toolset.call(link, {}))["status"] == "already_sent"
    toolset.close()


async def test_a_late_undelivered_report_for_an_ask_already_answered_tells_the_llm_nothing():
    from tests.test_await_reply import EMAIL_FLOW, reply

    told = []
    engine, toolset, pushed = registered(EMAIL_FLOW, on_undelivered=told.append)
    assert (await toolset.call(engine.actions.get("ask_email"), {}))["status"] == "sent"
    (wait,) = engine.waits
    engine.offer_reply(reply("it's jane@example.com"))  # the caller's reply arrived: the text did reach them
    assert not wait.open and engine.variables.get("email") == "jane@example.com"
    await report_undelivered(engine, "ask_email")
    assert pushed.notes() == [] and told == []  # no "ask for their email by voice" for an e-mail the agent has
    assert (await toolset.call(engine.actions.get("ask_email"), {}))["status"] == "already_sent"
    toolset.close()


async def test_an_ask_reported_undelivered_while_waiting_hands_over_to_voice():
    from tests.test_await_reply import EMAIL_FLOW

    engine, toolset, pushed = registered(EMAIL_FLOW)
    assert (await toolset.call(engine.actions.get("ask_email"), {}))["status"] == "sent"
    await report_undelivered(engine, "ask_email")
    (note,) = pushed.notes()
    assert "ask the caller for their email by voice" in note and not engine.waits[0].open
    again = await toolset.call(engine.actions.get("ask_email"), {})
    assert again["status"] == "undelivered" and "email by voice" in again["note"]
    toolset.close()


async def test_with_failures_not_told_only_the_callback_hears_and_close_ends_the_subscription():
    engine = make_engine()
    pushed = PushedFrames()
    told = []

    async def on_undelivered(event):
        told.append(event.error_code)

    before = engine.dispatcher.subscriber_count
    toolset = SmsToolset(engine=engine, speak_filler=False, tell_delivery_failures=False,
                         on_undelivered=on_undelivered)
    toolset.register(pushed.service)
    assert engine.dispatcher.subscriber_count == before + 1
    assert (await toolset.call(engine.actions.get("website_link"), {}))["status"] == "sent"
    await report_undelivered(engine, "website_link")
    assert told == [30003] and pushed.notes() == []
    toolset.close()
    toolset.close()
    assert engine.dispatcher.subscriber_count == before


async def test_a_text_the_llm_heard_was_already_sent_and_then_undelivered_is_told():
    engine, toolset, pushed = registered()
    link = engine.actions.get("website_link")
    assert (await toolset.call(link, {}))["status"] == "sent"
    assert (await toolset.call(link, {}))["status"] == "already_sent"
    await report_undelivered(engine, "website_link")
    assert len(pushed.notes()) == 1
    toolset.close()


def test_routed_events_from_other_versions_are_read():
    """A newer worker's fields are left out; a routed event without delivery_report is still one (Redis listener)."""
    event = SmsEvent(kind=SmsEventKind.FAILED, key="k", call_id="CA1", action="a", to_masked="+1******0142",
                     delivery_report=True)
    data = {**event.to_dict(), "added_in_a_later_version": 1}
    assert SmsEvent.from_dict(data) == event
