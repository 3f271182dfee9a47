"""Live agent settings and caller-number capture."""

import dataclasses

import pytest

from incall_sms.dispatcher import CallContext
from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.live import LiveAgent, LiveSettings, SettingsError, TwilioStream, stream_twiml
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, TwilioPeer


def test_missing_settings_are_all_named():
    with pytest.raises(SettingsError) as info:
        LiveSettings.from_env({})
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "DEEPGRAM_API_KEY", "PUBLIC_URL", "OPENAI_API_KEY"):
        assert name in str(info.value)


def test_twiml_escapes_parameters():
    import xml.etree.ElementTree as ET

    twiml = stream_twiml(ws_url="wss://a.example.com/media", params={"from_number": '+1"><x', "to_number": ""})
    root = ET.fromstring(twiml)  # well-formed: the value cannot break out of its attribute
    [param] = root.iter("Parameter")
    assert param.get("value") == '+1"><x' and "to_number" not in twiml


async def test_caller_number_falls_back_to_calls_api(tmp_path):
    async with TwilioPeer() as peer:
        peer.calls["CA" + "9" * 32] = {"from": "+14155552671", "from_formatted": "(415) 555-2671",
                                        "to": "+14155550100"}
        settings = LiveSettings.from_env({
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DEEPGRAM_API_KEY": "k",
            "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "TWILIO_API_BASE_URL": peer.base_url,
            "SMS_STATE_DIR": str(tmp_path), "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS)})
        agent = LiveAgent(settings)
        try:
            signed = TwilioStream(call_sid="CA" + "9" * 32, stream_sid="MZ" + "1" * 32, caller="+14155550199",
                                  agent_number="+14155550100")
            assert await agent._caller_number(signed) == "+14155550199"
            anonymous = dataclasses.replace(signed, caller=None)  # /voice had no usable From: ask the Calls API
            assert await agent._caller_number(anonymous) == "+14155552671"
            unknown = dataclasses.replace(anonymous, call_sid="CA" + "8" * 32)
            assert await agent._caller_number(unknown) is None
        finally:
            await agent.aclose()


async def test_redis_url_shares_stores(tmp_path, redis_url):
    from incall_sms.redis_store import RedisOptOutStore

    settings = LiveSettings.from_env({
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DEEPGRAM_API_KEY": "k",
        "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "REDIS_URL": redis_url,
        "SMS_STATE_DIR": str(tmp_path), "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS)})
    first, second = LiveAgent(settings), LiveAgent(settings)  # two workers
    try:
        assert isinstance(first.optouts, RedisOptOutStore)
        await first.optouts.opt_out("+14155552671", now=0)
        assert await second.dispatcher.optouts.is_opted_out("+14155552671")
        await first.optouts.opt_in("+14155552671")
        # each has its own SQLite outbox: a status callback for a SID not recorded yet waits in Redis, for
        # whichever worker records it
        sid = "SM" + "4" * 32
        await second.sms.dispatcher.handle_status(sid, "failed", 30007)
        assert await first.sms.dispatcher.held_statuses.take_held_status(sid) == ("failed", 30007)
    finally:
        await first.aclose()
        await second.aclose()


async def test_database_url_shares_the_outbox(tmp_path, redis_url, postgres_server_url):
    from incall_sms.outbox_postgres import PostgresOutbox
    from tests.helpers.postgres import fresh_database

    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DEEPGRAM_API_KEY": "k",
           "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "REDIS_URL": redis_url,
           "DATABASE_URL": await fresh_database(postgres_server_url, "live_settings"), "SMS_OUTBOX_LEASE": "16",
           "SMS_STATE_DIR": str(tmp_path), "SMS_ACTIONS_FILE": str(DEFAULT_ACTIONS)}
    async with TwilioPeer() as peer:
        env["TWILIO_API_BASE_URL"] = peer.base_url
        first = LiveAgent(LiveSettings.from_env({**env, "SMS_WORKER_ID": "worker-1"}))
        second = LiveAgent(LiveSettings.from_env({**env, "SMS_WORKER_ID": "worker-2"}))
        try:
            await first.sms.start()
            await second.sms.start()
            assert isinstance(first.sms.outbox, PostgresOutbox)
            assert (first.sms.outbox.worker_id, first.sms.outbox.lease_seconds) == ("worker-1", 16.0)
            assert first.sms.registry.worker_id == "worker-1"
            call = CallContext(call_id="CA" + "5" * 32, caller_number="+14155552671", agent_number="+14155550100")
            sent = await first.sms.dispatcher.send(first.sms.actions.actions[0].name, call=call, turn=1,
                                                   variables={"caller_name": "Sam", "booking_time": "Friday 7 pm"})
            assert sent.accepted, sent
            assert (await second.sms.outbox.by_sid(sent.sid)).key == sent.key  # one outbox for the fleet
            assert first.sms.dispatcher.held_statuses is first.sms.outbox  # early status callbacks: in that outbox too
        finally:
            await first.aclose()
            await second.aclose()


@pytest.mark.parametrize(("env", "named"), [
    ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
    ({"SMS_OUTBOX_LEASE": "0"}, "SMS_OUTBOX_LEASE"),
])
def test_bad_fleet_settings_are_named(tmp_path, env, named):
    base = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DEEPGRAM_API_KEY": "k",
            "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "SMS_STATE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match=named):
        LiveAgent(LiveSettings.from_env({**base, **env}))
