"""The twilio client's requests made by a helper process: real client, real helper, real peer on loopback."""

import asyncio
import os
import signal

import pytest

from incall_sms.errors import SendError, SendErrorKind
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.http_process import HttpProcess, ProcessHttpClient, RequestLost, RequestNotSent
from incall_sms.providers.twilio import TwilioProvider
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer


def _sms(key: str = "k1", body: str = "hi") -> OutboundSms:
    return OutboundSms(key=key, to="+14155552671", from_="+14155550100", body=body)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


async def _helper_of(provider: TwilioProvider) -> HttpProcess:
    async def helper(client):
        assert isinstance(client.http_client, ProcessHttpClient)
        return client.http_client.process

    return await provider.run_with_client(helper)


async def test_requests_are_made_by_a_helper_process_that_ends_with_the_provider():
    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=5)
        await provider.warm_up()
        helper = await _helper_of(provider)
        pid = helper.pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        receipts = await asyncio.gather(*(provider.send(_sms(f"k{i}", f"text {i}")) for i in range(20)))
        assert helper.pid == pid  # one helper for every request
        await provider.aclose()
    assert sorted(r.sid for r in receipts) == sorted(m.sid for m in peer.messages) and len(peer.messages) == 20
    assert {m.body for m in peer.messages} == {f"text {i}" for i in range(20)}
    assert not _alive(pid)


async def test_a_helper_that_dies_mid_request_is_an_ambiguous_send_and_the_next_send_starts_a_new_one():
    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=5)
        await provider.warm_up()
        helper = await _helper_of(provider)
        first_pid = helper.pid
        peer.faults = [Fault(delay=3.0, commit=True)]
        send = asyncio.create_task(provider.send(_sms("k1")))
        while not peer.messages:  # created at the peer: its answer is 3 s away
            await asyncio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(SendError) as info:
            await asyncio.wait_for(send, 5)
        # the request was written: the message exists (the dispatcher looks it up before any resend)
        assert info.value.kind is SendErrorKind.AMBIGUOUS and info.value.reason == "connection_lost"
        receipt = await provider.send(_sms("k2", "again"))
        assert helper.pid not in (None, first_pid)
        await provider.aclose()
    assert receipt.sid == peer.messages[-1].sid and len(peer.messages) == 2


async def test_a_helper_that_cannot_start_sends_nothing_and_the_send_may_be_retried():
    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=5)

        async def broken_python(client):
            client.http_client.process = HttpProcess(python="/nonexistent/python3")

        await provider.run_with_client(broken_python)
        with pytest.raises(SendError) as info:
            await provider.send(_sms())
        await provider.aclose()
    assert info.value.kind is SendErrorKind.RETRYABLE and info.value.reason == "connection_refused"
    assert peer.messages == []


async def test_a_request_given_up_on_is_cancelled_in_the_helper():
    """The waiter's deadline passes: the helper is told, drops the request, and keeps serving."""
    async with TwilioPeer() as peer:
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=0.5)
        await provider.warm_up()
        helper = await _helper_of(provider)
        peer.faults = [Fault(delay=3.0, commit=True)]
        with pytest.raises(SendError) as info:
            await provider.send(_sms("k1"))
        assert info.value.reason == "timeout" and info.value.kind is SendErrorKind.AMBIGUOUS
        assert helper._waiting == {}  # nothing left waiting here
        receipt = await provider.send(_sms("k2", "next"))  # the helper still serves
        await provider.aclose()
    assert receipt.sid == peer.messages[-1].sid


async def test_the_helper_protocol_errors():
    """Straight at the helper: a refused connection is 'not sent', a dropped one 'lost', a closed helper takes none."""
    helper = HttpProcess(name="test-http")
    client = ProcessHttpClient(process=helper, deadline=5)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # accepts, then hangs up
    port = server.sockets[0].getsockname()[1]
    unused = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_port = unused.sockets[0].getsockname()[1]
    unused.close()
    await unused.wait_closed()
    try:
        with pytest.raises(RequestNotSent):
            await client.request("POST", f"http://127.0.0.1:{closed_port}/x", data={"a": "b"})
        with pytest.raises(RequestLost):
            await client.request("POST", f"http://127.0.0.1:{port}/x", data={"a": "b"})
        with pytest.raises(ValueError):
            await client.request("GET", f"http://127.0.0.1:{port}/x", timeout=0)
    finally:
        server.close()
        await server.wait_closed()
        await client.close()
    with pytest.raises(RequestNotSent, match="closed"):
        await client.request("GET", f"http://127.0.0.1:{port}/x")
