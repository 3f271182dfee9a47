"""The private HTTP event loop: results, errors and cancellation cross threads; the twilio client's work runs there."""

import asyncio
import threading

import pytest

from incall_sms.providers.base import OutboundSms
from incall_sms.providers.loop_thread import LoopThread
from incall_sms.providers.twilio import TwilioProvider
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, TwilioPeer


async def test_result_error_and_thread():
    thread = LoopThread(name="test-loop")

    async def where():
        await asyncio.sleep(0)
        return threading.current_thread().name, asyncio.get_running_loop()

    name, loop = await thread.run(where)
    assert name == "test-loop" and loop is not asyncio.get_running_loop()

    async def fail():
        raise ValueError("raised over there")

    with pytest.raises(ValueError, match="raised over there"):
        await thread.run(fail)
    await thread.aclose()
    assert not thread.running


async def test_cancelling_the_caller_cancels_the_work_there():
    thread = LoopThread(name="test-loop")
    started, cancelled = threading.Event(), threading.Event()

    async def slow():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(thread.run(slow))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.get_running_loop().run_in_executor(None, cancelled.wait, 5)
    await thread.aclose()


async def test_close_runs_cleanup_there_then_refuses_work():
    never_started = LoopThread(name="unused")
    await never_started.aclose()  # nothing to stop
    thread = LoopThread(name="test-loop")
    seen = []

    async def cleanup():
        seen.append(threading.current_thread().name)

    await thread.run(lambda: asyncio.sleep(0))
    await thread.aclose(cleanup)
    await thread.aclose(cleanup)  # idempotent
    assert seen == ["test-loop"]
    with pytest.raises(RuntimeError, match="closed"):
        await thread.run(lambda: asyncio.sleep(0))


async def test_close_cancels_work_still_running_there():
    thread = LoopThread(name="test-loop")
    task = asyncio.create_task(thread.run(lambda: asyncio.sleep(30)))
    await asyncio.sleep(0.05)
    await thread.aclose()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_the_twilio_client_works_off_the_calling_loop():
    """A send through the real client reaches the peer; the client (and its aiohttp session) live on the HTTP thread."""
    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0)
        try:
            receipt = await provider.send(OutboundSms(key="k1", to="+14155552671", from_="+14155550100", body="hi"))

            async def where(client):
                return threading.current_thread().name, client.http_client.session._loop

            name, session_loop = await provider.run_with_client(where)
        finally:
            await provider.aclose()
        assert receipt.sid.startswith("SM") and len(peer.messages) == 1
        assert name == "twilio-http" and session_loop is not asyncio.get_running_loop()
        # http_thread=False: the caller's own loop does the work
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=2.0,
                                  http_thread=False)
        try:
            async def here(client):
                return client.http_client.session._loop

            assert await provider.run_with_client(here) is asyncio.get_running_loop()
        finally:
            await provider.aclose()


async def test_a_stuck_http_thread_is_a_timeout_not_a_hang():
    """The request's deadline runs on the HTTP thread; if that thread is stuck, the caller's backstop ends the wait."""
    import time

    from incall_sms.errors import SendError

    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=0.2)
        await provider.warm_up()

        async def stuck():
            time.sleep(6.0)  # blocks the HTTP thread's loop: no deadline can fire there

        blocker = asyncio.ensure_future(provider.run_with_client(lambda client: stuck()))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(SendError) as info:
            await provider.send(OutboundSms(key="k2", to="+14155552671", from_="+14155550100", body="hi"))
        waited = time.monotonic() - started
        await blocker
        await provider.aclose()
    assert info.value.reason == "timeout" and info.value.retryable is False
    assert waited < 5.0  # the backstop (deadline + 2 s), not the 6 s the thread was stuck
