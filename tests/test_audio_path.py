"""Audio is never blocked: audio keeps flowing through the pipeline while a send waits at the provider.

No latency bound is asserted (this machine is shared and noisy; figures live in ``bench/``): the
tests count the audio frames that came out of the processor *while the provider held the
request* (between the peer receiving it and answering it, 2 s later). A processor that awaits
the send inside ``process_frame`` lets none through; ours lets the audio of those 2 s through.
"""

import asyncio

import pytest
from pipecat.frames.frames import TranscriptionFrame

from incall_sms.pipeline.audio_gaps import GapMeter
from incall_sms.processors.sms_actions import SmsActionProcessor
from tests.helpers.pipeline import NaiveSmsProcessor, run_pipeline
from tests.helpers.sms import make_engine
from tests.peers.twilio_peer import Fault, TwilioPeer

PROVIDER_DELAY = 2.0
#: 20 ms frames in the 2 s the provider holds the request: 100 at real-time pace. A blocked path
#: passes none; a quarter of them is a bound no scheduling noise reaches from the blocked side.
FLOWING = 25


def said(text):
    return TranscriptionFrame(text=text, user_id="", timestamp="")


async def _script(worker):
    await asyncio.sleep(0.2)
    await worker.queue_frame(said("Can you text me the link to the website?"))
    await asyncio.sleep(PROVIDER_DELAY + 0.8)


def frames_while_held(times, peer, index=0):
    """Frames that arrived between the peer receiving request ``index`` and answering it."""
    start, end = peer.request_times[index], peer.answer_times[index]
    return sum(1 for t in times if start < t < end)


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
    print("audio gaps with SMS processor:", meter.stats())
    assert frames_while_held(meter.input_times, peer) >= FLOWING
    assert frames_while_held(meter.output_times, peer) >= FLOWING


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
    assert frames_while_held(meter.output_times, peer) <= 1  # the data-frame path froze for the whole send


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
    print(f"audio gaps with {sends} sends in flight:", meter.stats())
    last = len(peer.request_times) - 1  # while even the last of the sends was held
    assert frames_while_held(meter.input_times, peer, last) >= FLOWING
    assert frames_while_held(meter.output_times, peer, last) >= FLOWING
