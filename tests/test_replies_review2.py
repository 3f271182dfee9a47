"""Problems a second outside review of await_reply / ask_consent / WhatsApp found, each fixed; these tests
failed before (the review's demonstrations, turned around)."""

import asyncio
import time

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

from incall_sms.clock import ManualClock
from incall_sms.inbound import InboundMessage, InboundRouter, InProcessCallRegistry, RouteOutcome
from incall_sms.judges.base import Match
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.optout import SqliteOptOutStore
from incall_sms.processors.sms_actions import SmsActionProcessor
from incall_sms.replies import classify_yes_no, parse_reply
from incall_sms.whatsapp import InProcessWhatsAppSessions
from tests.helpers.pipeline import run_pipeline
from tests.helpers.sms import AGENT, CALLER, make_engine
from tests.peers.twilio_peer import ACCOUNT_SID, Fault, TwilioPeer
from tests.test_await_reply import CONSENT, EMAIL_FLOW, lines, reply, said, until
from tests.test_replies_review import YES_NO_FLOW
from tests.test_whatsapp import CALL, make


@pytest.fixture
async def peer():
    async with TwilioPeer() as p:
        yield p


async def llm_answers(worker, text, *, caller_starts_before_end=False):
    """The agent LLM's response as it passes the tap (generation; playback comes later)."""
    await worker.queue_frame(LLMFullResponseStartFrame())
    await worker.queue_frame(LLMTextFrame(text))
    await asyncio.sleep(0.1)
    if caller_starts_before_end:
        await worker.queue_frame(UserStartedSpeakingFrame())
        await asyncio.sleep(0.1)
    await worker.queue_frame(LLMFullResponseEndFrame())


def consent_call(peer, **options):
    """A consent call's engine, processor and tap (the tap: the agent LLM's answers pass it)."""
    engine = make_engine(peer=peer, actions=CONSENT)
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, **options)
    return engine, sms, sms.agent_tap()


async def test_the_question_waits_for_the_caller_and_a_yes_said_before_it_is_not_consent(peer):
    engine, sms, tap = consent_call(peer)

    async def script(worker):
        await worker.queue_frame(said("Could you send me a link to the menu? And are you open tonight?"))
        await asyncio.sleep(0.2)
        await llm_answers(worker, "We're open until nine tonight. Would you like me to book you a table?",
                          caller_starts_before_end=True)
        await asyncio.sleep(0.3)
        assert ("consent", "menu_link") not in lines(sms)  # never into the caller's words
        await worker.queue_frame(said("Yes, a table for two please."))  # to the agent's own question
        await worker.queue_frame(UserStoppedSpeakingFrame())
        await until(lambda: ("consent", "menu_link") in lines(sms))
        await asyncio.sleep(0.6)

    await run_pipeline([sms, tap], script)
    assert peer.messages == [] and engine.consent_state("menu_link") != "given"


async def test_turns_during_the_questions_playback_do_not_answer_it(peer):
    engine, sms, tap = consent_call(peer)

    async def script(worker):
        await worker.queue_frame(said("Could you send me a link to the menu? What kind of menus do you have?"))
        await asyncio.sleep(0.2)
        await worker.queue_frame(BotStartedSpeakingFrame())  # the output transport reports playback
        await llm_answers(worker, "We have a garden menu and a tasting menu.")
        await until(lambda: ("consent", "menu_link") in lines(sms))
        await worker.queue_frame(said("Mhm."))  # a backchannel while the answer is still being played
        await asyncio.sleep(0.5)
        await worker.queue_frame(BotStoppedSpeakingFrame())  # the question has been played out
        await asyncio.sleep(0.2)
        assert peer.messages == []
        await worker.queue_frame(said("Yes please."))
        await until(lambda: ("confirmation", "menu_link") in lines(sms))

    await run_pipeline([sms, tap], script)
    assert [m.body for m in peer.messages] == ["Our menu: https://example.com/menu"]


class SlowJudge:
    """An LLM-like judge: right, but slower than the agent LLM's answer."""

    name = "slow"
    instant = False

    def __init__(self, delay):
        self.delay = delay
        self.inner = EmbeddedJudge()

    async def judge(self, request):
        await asyncio.sleep(self.delay)
        return self.inner.judge_now(request)

    def judge_now(self, request):
        raise NotImplementedError


async def test_with_a_slow_judge_the_question_does_not_wait_for_an_answer_already_given(peer):
    engine = make_engine(peer=peer, actions=CONSENT, judge=SlowJudge(0.3))
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05, consent_after=3.0)
    tap = sms.agent_tap()

    async def script(worker):
        await worker.queue_frame(said("Could you send me a link to the menu?"))
        await asyncio.sleep(0.05)
        await llm_answers(worker, "Sure, one moment.")  # the agent LLM answers before the judge is done
        await until(lambda: ("consent", "menu_link") in lines(sms), timeout=2.5)  # well before consent_after

    await run_pipeline([sms, tap], script)


async def test_the_calls_end_drops_a_pending_question(peer):
    engine, sms, tap = consent_call(peer, consent_after=30.0, end_grace=30.0)

    async def script(worker):
        await worker.queue_frame(said("Could you send me a link to the menu? Thanks, bye."))
        await asyncio.sleep(0.1)  # the caller hangs up before the agent answers

    await run_pipeline([sms, tap], script)  # a held end would take consent_after (30 s) here
    assert ("consent", "menu_link") not in lines(sms)
    assert engine.consent_state("menu_link") == "none" and sms.in_flight == 0


async def test_no_consent_question_for_a_number_that_opted_out(peer):
    engine = make_engine(peer=peer, actions=CONSENT)
    await engine.dispatcher.optouts.opt_out(CALLER, now=time.time())
    sms = SmsActionProcessor(engine=engine, filler_threshold=0.05)

    async def script(worker):
        await worker.queue_frame(said("Could you send me a link to the menu?"))
        await until(lambda: ("failure", "menu_link") in lines(sms))

    await run_pipeline([sms], script)
    assert ("consent", "menu_link") not in lines(sms) and peer.messages == []
    assert "opted out" in sms.spoken[0].text


async def test_tool_mode_asks_the_llm_to_get_the_value_again_instead_of_promising_a_text(peer):
    from incall_sms.processors.sms_tools import SmsToolset

    engine = make_engine(peer=peer, actions=EMAIL_FLOW)
    tools = SmsToolset(engine=engine, speak_filler=False)
    assert (await tools.call(engine.actions.get("ask_email"), {}))["status"] == "sent"
    note = engine.offer_reply(reply("it's ana at example dot org"))
    assert "texting" not in note and "text it again" in note
    assert engine.waits[0].open and not engine.waits[0].reasked
    engine.offer_reply(reply("ana@example.org"))
    assert engine.variables["email"] == "ana@example.org" and len(peer.messages) == 1


async def test_a_whatsapp_cancel_answers_a_yes_no_question(peer, tmp_path):
    engine = make_engine(peer=peer, actions=YES_NO_FLOW)
    [f] = engine.claim(engine.actions.get("ask_confirm"), match=Match(id="ask_confirm", confidence=1.0, reason="t"))
    await engine.execute(f)
    router = InboundRouter(registry=(registry := InProcessCallRegistry()), optouts=(optouts := SqliteOptOutStore()),
                           store_path=tmp_path / "in.db")
    notes = []

    async def handler(msg):
        notes.append(engine.offer_reply(msg))

    await registry.register(CALLER, AGENT, handler)
    message = InboundMessage(sid="SM" + "c" * 32, account_sid=ACCOUNT_SID, from_number=CALLER, to_number=AGENT,
                             body="No", channel="whatsapp")
    assert await router.route(message) is not RouteOutcome.OPT_OUT
    router.close()
    assert not await optouts.is_opted_out(CALLER) and "opted out" not in notes[0]
    assert engine.variables["confirmed"] == "no"


async def test_an_ambiguous_template_send_is_unconfirmed_at_once(peer):
    clock = ManualClock(start=time.time())
    peer.faults.append(Fault(drop=True, commit=True))
    dispatcher, provider = make(peer.base_url, sessions=InProcessWhatsAppSessions(), clock=clock)
    result = await dispatcher.send("reminder", call=CALL, turn=1, variables={"booking_time": "9 am"})
    await provider.aclose()
    assert result.reason == "unconfirmed" and clock.sleeps == []  # no waiting for lookups that cannot happen


@pytest.mark.parametrize("answer", [
    "Yes, but that's my old number.", "Yeah, but I changed my number.", "Sí, pero es mi número viejo.",
    "Ja, aber das ist meine alte Nummer.", "Sure, but I can't get texts on this phone.",
    "Ja, aber das Handy kann keine SMS empfangen.", "Yeah, but I'd rather you just called me back.",
    "Yes, but it ends in forty-seven.", "Passt schon.", "huh?",
])
def test_qualified_or_unclear_answers_are_no_yes(answer):
    assert classify_yes_no(answer) is None


@pytest.mark.parametrize("answer", ["I'm good with that.", "I'm fine with that.", "Don't see why not.", "Don't mind.",
                                    "No hay bronca.", "uh huh", "mm hmm"])
def test_yes_that_starts_like_a_no_or_a_filler(answer):
    assert classify_yes_no(answer) == "yes"


@pytest.mark.parametrize(("body", "value"), [("Y", "yes"), ("n", "no"), ("Confirmed", "yes"), ("👍", "yes")])
def test_texted_short_answers_to_a_yes_no_question(body, value):
    assert parse_reply("yes_no", body).value == value


def test_lint_warns_of_a_negatively_phrased_consent_question():
    from incall_sms.lint import lint_data

    action = {**CONSENT["actions"][0], "consent_question": "Do you mind if I text that to you?"}
    [row] = lint_data({"actions": [action]})
    assert any("phrased negatively" in w for w in row.warnings)


def test_reask_names_are_reserved():
    from incall_sms.actions import parse_actions
    from incall_sms.errors import ActionConfigError

    with pytest.raises(ActionConfigError, match="reserved"):
        parse_actions({"actions": [{**CONSENT["actions"][0], "name": "menu-reask"}]})
