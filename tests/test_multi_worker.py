"""Two webhook worker processes sharing Redis: an inbound text posted to the worker that does not own
the call reaches the call on the other worker; dedupe is shared; a vanished owner loses nothing.

Run with each worker's own SQLite outbox (a status callback is forwarded to the worker that sent the
message) and with one PostgreSQL outbox shared by both (applied where it arrives, its event routed to
the call's worker)."""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import ROOT
from tests.helpers.webhooks import STRANGER, sms_form
from tests.peers.loopback import free_port, start_server_process
from tests.peers.twilio_peer import AUTH_TOKEN

PUBLIC = "https://agent.example.com"
CALLER, AGENT = "+14155552671", "+14155550100"


async def start_worker(redis_url, port, worker_id, store_db, env, *owns):
    """A webhook worker process (tests/helpers/webhook_worker.py); ``owns``: CALLER, AGENT, OUT_FILE of its call."""
    return await asyncio.to_thread(
        start_server_process, [sys.executable, "-m", "tests.helpers.webhook_worker", redis_url, str(port), worker_id,
                               str(store_db), *owns],
        port, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def post(port, form, path="/sms/inbound"):
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, form)
    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{port}{path}", data=form, headers={"X-Twilio-Signature": signature}
    ) as response:
        return response.status


async def wait_lines(path, count, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return [json.loads(line) for line in path.read_text().splitlines()]
        await asyncio.sleep(0.05)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def stored_sids(db, timeout=5.0):
    """SIDs in a worker's inbound store, once there are any."""
    stored = []
    for _ in range(int(timeout / 0.05)):
        with sqlite3.connect(db) as conn:
            stored = [row[0] for row in conn.execute("SELECT sid FROM inbound")]
        if stored:
            break
        await asyncio.sleep(0.05)
    return stored


@pytest.mark.parametrize("outbox", ["sqlite", "postgres"])
async def test_inbound_routed_to_the_worker_owning_the_call(redis_url, tmp_path, outbox, request):
    out = tmp_path / "owner_received.jsonl"
    b_events = tmp_path / "b_events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shared = None
    if outbox == "postgres":
        from incall_sms.outbox_postgres import PostgresOutbox
        from tests.helpers.postgres import fresh_database

        env["OUTBOX_DATABASE_URL"] = await fresh_database(request.getfixturevalue("postgres_server_url"), "routing")
        shared = PostgresOutbox(env["OUTBOX_DATABASE_URL"], worker_id="observer")
    ports = {"A": free_port(), "B": free_port()}
    workers = {}
    try:
        workers["A"] = await start_worker(redis_url, ports["A"], "worker-a", tmp_path / "a.db", env,
                                          CALLER, AGENT, str(out))
        workers["B"] = await start_worker(redis_url, ports["B"], "worker-b", tmp_path / "b.db",
                                          {**env, "EVENTS_OUT": str(b_events)})
        await asyncio.sleep(0.5)  # subscriptions and registrations in place after start-up

        [sent] = await wait_lines(out, 1)  # the owner texted the caller at start
        sid = sent["sent"]

        # a status callback for A's message arrives at B: the call on A hears of the delivery
        status = {"MessageSid": sid, "MessageStatus": "delivered", "ErrorCode": ""}
        assert await post(ports["B"], status, path="/sms/status") == 204
        lines = await wait_lines(out, 2)
        assert {"delivered": sid, "worker": "worker-a"} in lines
        if shared is not None:  # B applied it to the shared row, and only the event travelled to A
            row = await shared.by_sid(sid)
            assert (row.delivery, row.status) == ("delivered", "accepted")
            assert await wait_lines(b_events, 1) == [{"delivered": sid, "worker": "worker-b"}]
            await shared.aclose()
        else:  # B has no such message: the callback itself went to A, which applied it
            assert not b_events.exists()

        first = sms_form(body="my order number is 4411")
        assert await post(ports["B"], first) == 200  # B does not own the call
        received = [r for r in await wait_lines(out, 3) if "body" in r]
        assert [(r["sid"], r["worker"]) for r in received] == [(first["MessageSid"], "worker-a")]

        assert await post(ports["A"], first) == 200  # Twilio retry hitting the other worker: deduped via Redis
        assert await post(ports["B"], first) == 200
        second = sms_form(body="and the color is blue")
        assert await post(ports["A"], second) == 200  # posted to the owner directly
        received = [r for r in await wait_lines(out, 4) if "body" in r]
        assert [r["sid"] for r in received] == [first["MessageSid"], second["MessageSid"]]

        # routed to A, but A's call ends before the text reaches its conversation: A stores it
        late = sms_form(body="photo attached [the caller hangs up]")
        assert await post(ports["B"], late) == 200
        assert await stored_sids(tmp_path / "a.db") == [late["MessageSid"]]

        # the owner dies: the registration outlives it, the forward finds no receiver, B keeps the message
        owner = workers.pop("A")
        owner.kill()
        await asyncio.to_thread(owner.wait, 10)
        await asyncio.sleep(0.3)
        third = sms_form(body="are you still there?")
        assert await post(ports["B"], third) == 200
        assert await stored_sids(tmp_path / "b.db") == [third["MessageSid"]]
    finally:
        for proc in workers.values():
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)


async def test_a_texted_reply_reaches_the_waiting_call_on_another_worker(redis_url, tmp_path):
    """await_reply across workers: the reply lands on B, the Redis registry routes it to A, whose call's engine
    takes it as the awaited email; a stranger's text is not taken as anybody's reply."""
    out = tmp_path / "owner_received.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWAIT_REPLY": "1"}
    ports = {"A": free_port(), "B": free_port()}
    workers = {}
    try:
        workers["A"] = await start_worker(redis_url, ports["A"], "worker-a", tmp_path / "a.db", env,
                                          CALLER, AGENT, str(out))
        workers["B"] = await start_worker(redis_url, ports["B"], "worker-b", tmp_path / "b.db", env)
        await asyncio.sleep(0.5)
        await wait_lines(out, 2)  # the link and the "reply with your email" text were sent by A
        stranger = sms_form(body="mallory@evil.example", from_=STRANGER)
        assert await post(ports["B"], stranger) == 200
        assert await stored_sids(tmp_path / "b.db") == [stranger["MessageSid"]]  # no call: stored, nobody's reply
        reply = sms_form(body="sure, it's Ana.Lopez@Example.org")
        assert await post(ports["B"], reply) == 200
        got = [r for r in await wait_lines(out, 3) if "body" in r]
        assert got == [{"sid": reply["MessageSid"], "body": reply["Body"], "as_reply": True,
                        "email": "Ana.Lopez@example.org", "worker": "worker-a"}]
    finally:
        for proc in workers.values():
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)


async def test_an_early_failure_applied_by_another_worker_reaches_the_call_whose_claim_lags(redis_url, tmp_path):
    # A shared outbox (one outbox file for both workers here), Redis routing. Twilio posts the failure to B
    # before its 201 reaches A; B holds it, sees A record the SID, applies it itself and routes the event,
    # while A's claim of the SID in Redis lags by 20 ms: the event must still reach A's call.
    import time
    import uuid

    from incall_sms.actions import parse_actions
    from incall_sms.clock import ManualClock
    from incall_sms.dispatcher import CallContext, Dispatcher
    from incall_sms.optout import SqliteOptOutStore
    from incall_sms.outbox import Outbox
    from incall_sms.pipeline.server import WebhookService, WebhookSettings
    from incall_sms.providers.local import LocalProvider
    from incall_sms.redis_store import RedisCallRegistry, connect

    client = connect(redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    outbox = Outbox(tmp_path / "shared.db")
    clock = ManualClock(start=time.time())
    recorded = asyncio.Event()
    actions = parse_actions({"actions": [{"name": "link", "condition": "if the caller wants the link",
                                          "content": {"template": "https://example.com"}}]})

    class EarlyFailure(LocalProvider):
        async def send(self, sms):
            receipt = await super().send(sms)
            webhook_b.spawn(webhook_b.apply_status(receipt.sid, "failed", 30007))  # posted to B at once
            await asyncio.sleep(0.005)  # B looks first (no row yet) ...
            return receipt  # ... then the 201 reaches A

    workers = []
    for name, provider in (("A", EarlyFailure()), ("B", LocalProvider())):
        dispatcher = Dispatcher(actions=actions, provider=provider, outbox=outbox, optouts=SqliteOptOutStore(),
                                clock=clock)
        registry = RedisCallRegistry(client, worker_id=name, prefix=prefix)
        registry.status_handler, registry.event_handler = dispatcher.handle_status, dispatcher.publish
        await registry.start()

        async def claim(event, registry=registry):  # as SmsService wires it, lagging like a busy loop
            if event.kind.value == "sent" and event.sid:
                await asyncio.sleep(0.02)
                await registry.claim_sid(event.sid)

        dispatcher.subscribe(claim)
        workers.append((dispatcher, registry))
    (a, registry_a), (b, registry_b) = workers
    webhook_b = WebhookService(settings=WebhookSettings(public_url=PUBLIC, auth_token=AUTH_TOKEN), router=None,
                               dispatcher=b, status_router=registry_b.route_status,
                               event_router=registry_b.route_event)
    update, hold = outbox.update, outbox.hold_status

    async def recording_update(key, **fields):
        row = await update(key, **fields)
        if fields.get("sid"):
            recorded.set()
        return row

    async def hold_after_the_record(sid, status, code, *, now):  # B's hold lands just after A's write
        await recorded.wait()
        return await hold(sid, status, code, now=now)

    outbox.update, outbox.hold_status = recording_update, hold_after_the_record
    call = CallContext(call_id="CA" + "6" * 32, caller_number=CALLER, agent_number=AGENT)
    heard = []
    a.subscribe(heard.append, call_id=call.call_id)  # the call's processor on A
    try:
        result = await a.send("link", call=call, turn=1)
        await webhook_b.drain(5.0)
        for _ in range(50):
            if any(e.kind.value == "failed" for e in heard):
                break
            await asyncio.sleep(0.05)
        assert result.accepted
        assert [e.kind.value for e in heard] == ["queued", "sent", "failed"]
        assert heard[-1].delivery_report and heard[-1].reason == "filtered"
    finally:
        for dispatcher, registry in workers:
            await registry.aclose()
            await dispatcher.provider.aclose()
        outbox.close()
        await client.aclose()


async def test_an_early_failure_held_by_another_worker_after_the_sender_looked_reaches_the_call(redis_url, tmp_path):
    # each worker its own SQLite outbox, Redis: B finds no owner, A records, claims and looks (nothing held
    # yet), then B holds: B must try the owner again, or the failure waits in Redis until it expires
    import time
    import uuid

    from incall_sms.actions import parse_actions
    from incall_sms.clock import ManualClock
    from incall_sms.dispatcher import CallContext, Dispatcher
    from incall_sms.optout import SqliteOptOutStore
    from incall_sms.outbox import Outbox
    from incall_sms.pipeline.server import WebhookService, WebhookSettings
    from incall_sms.providers.local import LocalProvider
    from incall_sms.redis_store import RedisCallRegistry, RedisHeldStatuses, connect

    client = connect(redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    clock = ManualClock(start=time.time())
    actions = parse_actions({"actions": [{"name": "link", "condition": "if the caller wants the link",
                                          "content": {"template": "https://example.com"}}]})
    a_took = asyncio.Event()

    class HeldA(RedisHeldStatuses):
        async def take_held_status(self, sid):
            got = await super().take_held_status(sid)
            a_took.set()
            return got

    class HeldB(RedisHeldStatuses):
        async def hold_status(self, sid, status, code, *, now):  # B's hold lands just after A's look
            await a_took.wait()
            return await super().hold_status(sid, status, code, now=now)

    class EarlyFailure(LocalProvider):
        async def send(self, sms):
            receipt = await super().send(sms)
            webhook_b.spawn(webhook_b.apply_status(receipt.sid, "failed", 30007))  # posted to B at once
            await asyncio.sleep(0.05)  # B asks Redis for the SID's owner first: none yet
            return receipt

    workers = []
    for name, provider, held in (("A", EarlyFailure(), HeldA(client, prefix=prefix)),
                                 ("B", LocalProvider(), HeldB(client, prefix=prefix))):
        outbox = Outbox(tmp_path / f"{name}.db")
        dispatcher = Dispatcher(actions=actions, provider=provider, outbox=outbox, optouts=SqliteOptOutStore(),
                                clock=clock, held_statuses=held)
        registry = RedisCallRegistry(client, worker_id=name, prefix=prefix)
        registry.status_handler, registry.event_handler = dispatcher.handle_status, dispatcher.publish
        await registry.start()

        async def claim(event, registry=registry):  # as SmsService wires it
            if event.kind.value == "sent" and event.sid:
                await registry.claim_sid(event.sid)

        dispatcher.subscribe(claim)
        workers.append((dispatcher, registry, outbox))
    (a, registry_a, _), (b, registry_b, _) = workers
    webhook_b = WebhookService(settings=WebhookSettings(public_url=PUBLIC, auth_token=AUTH_TOKEN), router=None,
                               dispatcher=b, status_router=registry_b.route_status,
                               event_router=registry_b.route_event)
    call = CallContext(call_id="CA" + "6" * 32, caller_number=CALLER, agent_number=AGENT)
    heard = []
    a.subscribe(heard.append, call_id=call.call_id)
    try:
        result = await a.send("link", call=call, turn=1)
        await webhook_b.drain(5.0)
        await asyncio.sleep(0.5)
        stranded = await client.keys(f"{prefix}:held:*")
        assert result.accepted
        assert [e.kind.value for e in heard] == ["queued", "sent", "failed"], (heard, stranded)
    finally:
        for dispatcher, registry, outbox in workers:
            await registry.aclose()
            await dispatcher.provider.aclose()
            outbox.close()
        await client.aclose()
