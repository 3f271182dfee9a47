"""Audio is never blocked: paced audio keeps flowing while the provider takes 2 s to answer."""

import asyncio

import pytest
from pipecat.frames.frames import TranscriptionFrame

from pipeline.audio_gaps import GapMeter
from processors.sms_actions import SmsActionProcessor
from tests.helpers.pipeline import NaiveSmsProcessor, run_pipeline
from tests.helpers.sms import make_engine
from tests.peers.twilio_peer import Fault, TwilioPeer

PROVIDER_DELAY = 2.0
#: Generous bound on the largest gap between 20 ms frames (scheduling noise on a shared 2-core machine).
MAX_GAP = 0.25


def said(text):
    return TranscriptionFrame(text=text, user_id="", timestamp="")


async def _script(worker):
    await asyncio.sleep(0.2)
    await worker.queue_frame(said("Can you text me the link to the website?"))
    await asyncio.sleep(PROVIDER_DELAY + 0.8)


async def test_audio_keeps_flowing_while_provider_is_slow():
    async with TwilioPeer() as peer:
        peer.fault_for = lambda form: Fault(delay=PROVIDER_DELAY)
        engine = make_engine(peer=peer, extractor=False)
        await engine.dispatcher.provider.warm_up()  # as the app does at start-up
        engine.add_agent_text("All our links are on the website.")
        sms = SmsActionProcessor(engine=engine)
        meter = GapMeter()
        await run_pipeline([sms, meter], _script, audio_seconds=PROVIDER_DELAY + 1.0)
        assert len(peer.messages) == 1 and sms.outcomes[0].result.accepted
    stats = meter.stats()
    print("audio gaps with SMS processor:", stats)
    assert stats["input"].frames > 100 and stats["output"].frames > 100
    assert stats["input"].max_gap < MAX_GAP
    assert stats["output"].max_gap < MAX_GAP


async def test_naive_inline_send_does_block_output_audio():
    """The same measurement catches a processor that awaits the send inside process_frame."""
    async with TwilioPeer() as peer:
        peer.fault_for = lambda form: Fault(delay=PROVIDER_DELAY)
        engine = make_engine(peer=peer, extractor=False)
        engine.add_agent_text("All our links are on the website.")

        async def send():
            return await engine.dispatcher.send("website_link", call=engine.call, turn=1)

        naive = NaiveSmsProcessor(send, lambda f: isinstance(f, TranscriptionFrame))
        meter = GapMeter()
        await run_pipeline([naive, meter], _script, audio_seconds=PROVIDER_DELAY + 1.0)
    stats = meter.stats()
    assert stats["output"].max_gap > PROVIDER_DELAY * 0.8  # the data-frame path froze for the whole send


@pytest.mark.parametrize("sends", [10])
async def test_many_sends_in_flight_do_not_block(sends):
    async with TwilioPeer() as peer:
        peer.fault_for = lambda form: Fault(delay=PROVIDER_DELAY)
        actions = {"actions": [
            {"name": f"a{i}", "condition": "whenever the caller says to send a text", "once_per_call": False,
             "content": {"template": f"Text {i}"}} for i in range(sends)
        ], "max_sends_per_call": 50}
        engine = make_engine(peer=peer, extractor=False, actions=actions)
        await engine.dispatcher.provider.warm_up()
        sms = SmsActionProcessor(engine=engine)
        meter = GapMeter()
        await run_pipeline([sms, meter], _script, audio_seconds=PROVIDER_DELAY + 1.0)
        assert len(peer.messages) == sends
    stats = meter.stats()
    print(f"audio gaps with {sends} sends in flight:", stats)
    assert stats["input"].max_gap < MAX_GAP and stats["output"].max_gap < MAX_GAP
