"""What a call leaves behind when it ends: no processors kept alive, no inbound text lost, recordings on disk."""

import asyncio
import gc
import json
import signal
import weakref

from pipecat.frames.frames import TranscriptionFrame
from pipecat.tests.utils import SleepFrame, run_test

from incall_sms.inbound import InboundMedia, InboundMessage, InboundRouter, InProcessCallRegistry, RouteOutcome
from incall_sms.optout import SqliteOptOutStore
from incall_sms.processors.inbound import InboundMessageProcessor
from incall_sms.processors.sms_actions import SmsActionProcessor
from tests.helpers.sms import AGENT, CALLER, make_engine


async def test_processors_are_released_after_their_calls():
    shared = make_engine(call_id="CA-first")
    dispatcher = shared.dispatcher
    refs = []
    for n in range(30):
        engine = make_engine(call_id=f"CA-{n}")
        engine.dispatcher = dispatcher  # every call of a worker shares one dispatcher
        sms = SmsActionProcessor(engine=engine)
        await run_test(sms, frames_to_send=[TranscriptionFrame(text="what are your hours", user_id="",
                                                                timestamp="")])
        refs.append(weakref.ref(sms))
        del sms, engine
    # pipecat's run_test harness leaves its runner as the loop's SIGINT handler (the live agent's runners
    # do not handle signals): drop it, so only references of ours could keep a call alive
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert alive == []
    assert dispatcher.subscriber_count == 0
    events = []
    dispatcher.subscribe(events.append)  # the dispatcher itself still works for whoever subscribes
    await dispatcher.send("website_link", call=shared.call, turn=1)
    assert len(events) == 2


class StuckFetcher:
    """Media fetch that never finishes (the caller hangs up while the photo downloads)."""

    class policy:
        max_total_bytes = 5_000_000

    def __init__(self):
        self.started = asyncio.Event()

    async def fetch(self, media, *, budget):
        self.started.set()
        await asyncio.Event().wait()


def mms(sid="MM" + "1" * 32):
    return InboundMessage(sid=sid, account_sid="AC" + "0" * 32, from_number=CALLER, to_number=AGENT,
                          body="here is the photo of the damage",
                          media=(InboundMedia(url="https://api.twilio.com/x/Media/ME1", content_type="image/jpeg"),),
                          received_at=1.0)


async def test_mms_is_stored_when_the_caller_hangs_up_during_media_fetch():
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=SqliteOptOutStore())
    fetcher = StuckFetcher()
    inbound = InboundMessageProcessor(fetcher=fetcher)
    unregister = await registry.register(CALLER, AGENT, inbound.deliver)
    outcome = None

    async def text_arrives():
        nonlocal outcome
        await asyncio.sleep(0.3)  # the call is up
        outcome = await router.route(mms())

    texter = asyncio.get_running_loop().create_task(text_arrives())
    await run_test(inbound, frames_to_send=[SleepFrame(1.0)])  # ... then the caller hangs up (EndFrame)
    await unregister()
    await asyncio.wait_for(texter, 5)
    stored = await router.stored()
    assert fetcher.started.is_set()
    assert outcome is RouteOutcome.STORED  # "delivered" only once it is in the conversation
    assert [row["sid"] for row in stored] == [mms().sid] and "photo of the damage" in stored[0]["body"]
    router.close()


async def test_text_delivered_only_once_injected():
    registry = InProcessCallRegistry()
    router = InboundRouter(registry=registry, optouts=SqliteOptOutStore())
    inbound = InboundMessageProcessor()
    await registry.register(CALLER, AGENT, inbound.deliver)
    outcome = None

    async def text_arrives():
        nonlocal outcome
        await asyncio.sleep(0.3)
        outcome = await router.route(InboundMessage(sid="SM" + "2" * 32, account_sid="AC" + "0" * 32,
                                                    from_number=CALLER, to_number=AGENT, body="my email is x@y.z"))

    texter = asyncio.get_running_loop().create_task(text_arrives())
    await run_test(inbound, frames_to_send=[SleepFrame(1.0)])
    await texter
    assert outcome is RouteOutcome.DELIVERED and len(inbound.injected) == 1
    assert await router.stored() == []
    router.close()


async def test_recording_is_streamed_to_disk_not_kept_in_memory(tmp_path):
    from incall_sms.pipeline.call_recorder import CallRecorder

    class FakeSocket:  # the recorder wraps the ASGI receive of the websocket
        def __init__(self):
            self.queue = asyncio.Queue()

        async def _receive(self):
            return await self.queue.get()

    socket = FakeSocket()
    recorder = CallRecorder(socket, folder=tmp_path, unmasked=False)
    recorder.bind(call_sid="CA" + "ab" * 16, caller=CALLER, agent_number=AGENT)
    media = {"event": "media", "streamSid": "MZ" + "cd" * 16,
             "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "/" * 216}}
    for _ in range(2000):
        await socket.queue.put({"type": "websocket.receive", "text": json.dumps(media)})
        await socket._receive()
    await recorder.flush()
    path = tmp_path / ("CA" + "ab" * 16 + ".jsonl")
    assert len(path.read_text().splitlines()) == 2000  # on disk while the call is still running
    assert not getattr(recorder, "messages", [])  # nothing accumulates in memory
    await recorder.close()
    meta = json.loads((tmp_path / ("CA" + "ab" * 16 + ".meta.json")).read_text())
    assert meta["caller"] != CALLER and meta["call_sid"] == "CA" + "ab" * 16
