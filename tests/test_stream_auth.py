"""The media-stream websocket trusts only Twilio: a signed handshake, bound to a signed /voice request.

Each test plays an attacker (or a confused proxy) against the live agent served on loopback
and checks that the stream is refused before any pipeline is built: no SMS, no recording
file, the live-call registry unchanged, a counted, masked refusal.
"""

import asyncio
import contextlib
import json
import re
import xml.etree.ElementTree as ET

import aiohttp
import pytest
import websockets
from twilio.request_validator import RequestValidator

from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.live import LiveAgent, LiveSettings
from tests.helpers.live import LiveServer
from tests.peers.deepgram_peer import DeepgramPeer
from tests.peers.llm_peer import LLMPeer
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, TwilioPeer

PUBLIC = "https://agent.example.com"
WS_URL = "wss://agent.example.com/media"
CALLER = "+14155550123"
OTHER = "+14155550177"
AGENT = "+14155550100"
CALL_SID = "CA" + "ab" * 16
STREAM_SID = "MZ" + "cd" * 16


@contextlib.asynccontextmanager
async def live_server(tmp_path, **env):
    """The live agent on loopback, with Twilio, Deepgram and LLM peers; ``env`` adds settings."""
    async with TwilioPeer() as twilio, DeepgramPeer([(0.5, "hello there")]) as deepgram, \
            LLMPeer(lambda body: "Sure.") as llm:
        settings = LiveSettings.from_env({
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DEEPGRAM_API_KEY": "dg-test-key",
            "DEEPGRAM_BASE_URL": deepgram.base_url, "SMS_AGENT_LLM_URL": llm.base_url,
            "SMS_AGENT_LLM_MODEL": "agent", "SMS_AGENT_TTS": "tone", "PUBLIC_URL": PUBLIC,
            "TWILIO_API_BASE_URL": twilio.base_url, "SMS_STATE_DIR": str(tmp_path / "state"),
            "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS), "SMS_RECORD_DIR": str(tmp_path / "rec" / "calls"), **env})
        agent = LiveAgent(settings)
        async with LiveServer(agent.app) as server:
            server.agent, server.twilio, server.tmp = agent, twilio, tmp_path
            yield server


@pytest.fixture
async def live(tmp_path):
    async with live_server(tmp_path) as server:
        yield server


async def voice(server, *, call_sid=CALL_SID, caller=CALLER, **extra):
    """POST a signed /voice webhook; returns the <Stream> url and its parameters."""
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": caller, "To": AGENT, "Direction": "inbound",
            **extra}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/voice", form)
    async with aiohttp.ClientSession() as session, session.post(
            f"{server.url}/voice", data=form, headers={"X-Twilio-Signature": signature}) as response:
        assert response.status == 200
        root = ET.fromstring(await response.text())
    stream = root.find("./Connect/Stream")
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.iter("Parameter")}


def start_message(params, *, call_sid=CALL_SID, stream_sid=STREAM_SID, account_sid=ACCOUNT_SID):
    return {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
            "start": {"accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": params,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def handshake_signature(url=WS_URL):
    return RequestValidator(AUTH_TOKEN).compute_signature(url, {})


async def play(server, start, *, signature="valid", seconds=1.5):
    """Open the stream, send connected + start + a little audio; return what happened.

    Returns ``("rejected", http_status)`` when the handshake is refused, ``("closed", code)``
    when the server closes the stream, or ``("open", None)`` when it is still running after
    ``seconds`` (the client then hangs up).
    """
    headers = {}
    if signature == "valid":
        headers["X-Twilio-Signature"] = handshake_signature()
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    try:
        ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/media", additional_headers=headers)
    except websockets.exceptions.InvalidStatus as exc:
        return "rejected", exc.response.status_code
    try:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps(start))
        silence = {"event": "media", "streamSid": start["streamSid"],
                   "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "/" * 216}}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            try:
                await ws.send(json.dumps(silence))
                await asyncio.wait_for(ws.recv(), 0.02)
            except TimeoutError:
                continue
            except websockets.exceptions.ConnectionClosed as closed:
                return "closed", closed.rcvd.code if closed.rcvd else None
        await ws.send(json.dumps({"event": "stop", "streamSid": start["streamSid"]}))
        return "open", None
    finally:
        await ws.close()


async def live_calls(server):
    """The server's calls once one has started (and its start-up, registration included, has run)."""
    for _ in range(100):
        if server.agent.calls:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    return list(server.agent.calls.values())


async def settle(server):
    for _ in range(100):  # let the server finish the call (recording written at the end)
        if not server.agent.calls:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


def assert_refused_cleanly(server, outcome, *, refused_before=0):
    assert outcome[0] in ("rejected", "closed"), outcome
    if outcome[0] == "closed":
        assert outcome[1] == 1008, outcome  # policy violation
    assert len(server.agent.registry) == 0  # no caller's inbound texts were routed to the attacker
    assert server.twilio.messages == []  # nothing was texted
    files = [p for p in server.tmp.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json")]
    assert files == []  # no recording anywhere (inside or outside SMS_RECORD_DIR)
    assert server.agent.stream_refusals > refused_before


async def test_genuine_stream_is_accepted(live):
    url, params = await voice(live)
    assert url == WS_URL
    outcome = await play(live, start_message(params))
    assert outcome == ("open", None)
    await settle(live)
    assert live.agent.stream_refusals == 0


async def test_unsigned_handshake_is_refused(live):
    _, params = await voice(live)
    outcome = await play(live, start_message(params), signature=None)
    assert outcome == ("rejected", 403)
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_wrong_signature_is_refused(live):
    _, params = await voice(live)
    forged = RequestValidator("not-the-auth-token").compute_signature(WS_URL, {})
    outcome = await play(live, start_message(params), signature=forged)
    assert outcome == ("rejected", 403)
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_signed_handshake_without_a_voice_request_is_refused(live):
    # the attacker replays a captured handshake signature (it only covers the URL) and invents the call
    params = {"from_number": CALLER, "to_number": AGENT, "call_sid": CALL_SID}
    outcome = await play(live, start_message(params))
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_token_cannot_be_reused(live):
    _, params = await voice(live)
    assert await play(live, start_message(params)) == ("open", None)
    await settle(live)
    before = live.agent.stream_refusals
    outcome = await play(live, start_message(params, stream_sid="MZ" + "ee" * 16))
    await settle(live)
    assert outcome == ("closed", 1008)
    assert len(live.agent.registry) == 0 and live.agent.stream_refusals == before + 1


async def test_a_replayed_voice_request_opens_no_second_stream(live):
    # an attacker who saw one signed /voice (e.g. in a proxy's log) replays it, minutes or hours later, for a
    # fresh token and a second stream on the victim's call: its texts would go to the attacker
    _, params = await voice(live)
    form = {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": AGENT, "Direction": "inbound"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/voice", form)
    async with aiohttp.ClientSession() as session, session.post(
            f"{live.url}/voice", data=form, headers={"X-Twilio-Signature": signature}) as response:
        assert response.status == 409 and "Stream" not in await response.text()
    assert live.agent.stream_refusals == 1
    assert await play(live, start_message(params)) == ("open", None)  # the real call is unaffected
    await settle(live)


async def test_a_call_gets_one_stream_whatever_its_token():
    from incall_sms.call_binding import CallBinder, StreamAuthError
    from incall_sms.inbound import InProcessSeenKeys

    shared = InProcessSeenKeys()
    binder = CallBinder(auth_token=AUTH_TOKEN, calls=shared)
    other = CallBinder(auth_token=AUTH_TOKEN)  # e.g. a worker that does not share the call memory
    first = await binder.mint(call_sid=CALL_SID, caller=CALLER, agent_number=AGENT)
    with pytest.raises(StreamAuthError, match="already announced"):
        await binder.mint(call_sid=CALL_SID, caller=CALLER, agent_number=AGENT)
    second = await other.mint(call_sid=CALL_SID, caller=OTHER, agent_number=AGENT)
    assert (await binder.redeem(first, call_sid=CALL_SID)).caller == CALLER
    with pytest.raises(StreamAuthError, match="already has a stream"):
        await binder.redeem(second, call_sid=CALL_SID)


async def test_forged_from_number_is_refused(live):
    _, params = await voice(live, caller=CALLER)
    forged = dict(params, from_number=OTHER)
    outcome = await play(live, start_message(forged))
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_token_of_another_call_is_refused(live):
    _, params = await voice(live, call_sid=CALL_SID)
    outcome = await play(live, start_message(params, call_sid="CA" + "12" * 16))
    await settle(live)
    assert_refused_cleanly(live, outcome)


@pytest.mark.parametrize("call_sid", ["../../x", "CA../../../../tmp/x", "CA" + "g" * 32, ""])
async def test_malformed_call_sid_never_becomes_a_path(live, call_sid):
    params = {"from_number": CALLER, "to_number": AGENT, "call_sid": call_sid}
    outcome = await play(live, start_message(params, call_sid=call_sid))
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_malformed_stream_sid_is_refused(live):
    _, params = await voice(live)
    outcome = await play(live, start_message(params, stream_sid="MZ../x"))
    await settle(live)
    assert_refused_cleanly(live, outcome)


async def test_voice_refuses_a_malformed_call_sid(live):
    form = {"CallSid": "../../x", "AccountSid": ACCOUNT_SID, "From": CALLER, "To": AGENT}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/voice", form)
    async with aiohttp.ClientSession() as session, session.post(
            f"{live.url}/voice", data=form, headers={"X-Twilio-Signature": signature}) as response:
        assert response.status == 400


async def test_refusals_log_no_number(live, caplog_all):
    params = {"from_number": OTHER, "to_number": AGENT, "call_sid": CALL_SID}
    await play(live, start_message(params))
    await settle(live)
    text = caplog_all.text
    assert OTHER not in text and OTHER[-7:] not in text
    assert re.search(r"media stream refused", text)


async def test_a_body_trickled_in_gets_408_not_a_held_connection(live, monkeypatch):
    # an outside attack held 200 unsigned POSTs open indefinitely by sending a byte every 5 s
    import incall_sms.pipeline.server as server

    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(b"POST /sms/inbound HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100\r\n\r\nFrom=")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status


async def test_health_and_ready(live):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{live.url}/health") as response:
            health = await response.json()
        async with session.get(f"{live.url}/ready") as response:
            ready = await response.json()
            assert response.status == 200  # provider warmed, outbox recovered
    assert health["status"] == "ok" and ready["ready"] is True
    assert set(ready) >= {"calls", "stream_refusals", "refused_webhooks"}


@pytest.mark.parametrize("verstat", ["TN-Validation-Failed-C", "TN-Validation-Failed"])
async def test_a_caller_id_that_failed_stir_shaken_gets_no_texts_either_way(live, verstat):
    # Twilio's verdict on a spoofed caller ID (signed, in /voice): the call goes on, but the number is not the
    # caller's: the victim's texts to the agent are stored, not read to this caller, and nothing is sent to it
    _url, params = await voice(live, StirVerstat=verstat, StirStatus="C")
    call = asyncio.get_running_loop().create_task(play(live, start_message(params), seconds=3.0))
    [sms_call] = await live_calls(live)
    assert sms_call.caller is None and len(live.agent.registry) == 0
    form = {"MessageSid": "SM" + "7" * 32, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": AGENT,
            "Body": "Here is my card's security code: 123", "NumMedia": "0"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/sms/inbound", form)
    async with aiohttp.ClientSession() as session, session.post(
            f"{live.url}/sms/inbound", data=form, headers={"X-Twilio-Signature": signature}) as response:
        assert response.status == 200
    assert await call == ("open", None)
    await settle(live)
    assert [r["outcome"] for r in await live.agent.router.stored()] == ["stored"]
    assert live.twilio.messages == [] and not live.twilio.calls_fetched


async def test_a_passed_or_absent_verdict_keeps_the_caller(live):
    _url, params = await voice(live, StirVerstat="TN-Validation-Passed-A")
    call = asyncio.get_running_loop().create_task(play(live, start_message(params), seconds=1.5))
    [sms_call] = await live_calls(live)
    assert sms_call.caller == CALLER and len(live.agent.registry) == 1
    await call
    await settle(live)


@pytest.mark.parametrize("verstat, trust, untrusted", [
    ("TN-Validation-Failed-A", "unless-failed", True),
    (" tn-validation-failed ", "unless-failed", True),
    ("TN-Validation-Passed-C", "unless-failed", False),
    ("No-TN-Validation", "unless-failed", False),
    (None, "unless-failed", False),
    ("TN-Validation-Passed-A", "attested", False),
    ("TN-Validation-Passed-B", "attested", False),
    ("TN-Validation-Passed-C", "attested", True),  # the carrier signed the call, not the number
    ("No-TN-Validation", "attested", True),
    (None, "attested", True),
    ("TN-Validation-Failed-A", "attested", True),
])
def test_which_caller_ids_are_trusted(verstat, trust, untrusted):
    from incall_sms.pipeline.service import caller_id_untrusted

    assert caller_id_untrusted(verstat, trust=trust) is untrusted


def test_a_bad_caller_id_trust_setting_is_named():
    from incall_sms.pipeline.service import SettingsError, SmsSettings

    with pytest.raises(SettingsError, match="SMS_CALLER_ID_TRUST"):
        SmsSettings.from_env({"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                              "PUBLIC_URL": PUBLIC, "SMS_CALLER_ID_TRUST": "paranoid"})


async def test_attested_only_makes_a_call_signed_for_the_carrier_but_not_the_number_anonymous(tmp_path):
    async with live_server(tmp_path, SMS_CALLER_ID_TRUST="attested") as server:
        _url, params = await voice(server, StirVerstat="TN-Validation-Passed-C")
        call = asyncio.get_running_loop().create_task(play(server, start_message(params), seconds=1.5))
        [sms_call] = await live_calls(server)
        assert sms_call.caller is None and len(server.agent.registry) == 0
        await call
        await settle(server)
