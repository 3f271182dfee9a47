"""Fault campaign: 1,000 sends through the real twilio client against a misbehaving loopback peer.

Run once on each outbox: SQLite (the embedded default, one worker) and PostgreSQL (a fleet's shared
outbox on a real server: two workers, alternate sends, each running recovery passes every 0.2 s on the
shared table throughout, so leases must keep every pass off the rows the other worker is sending).

Faults (seeded): 429 storms, 5xx before and after the message was created, timeouts after
creation, dropped connections, slow answers. Every send must end accepted or honestly failed;
no text is ever sent twice, none is lost, and none is reported sent that was not (a "false
sent": a SID that is not this row's own message). Half the traffic repeats identical texts to
the same number (a caller who asks again, or calls back), the case where a lookup after an
ambiguous error could take another send's message for its own.
"""

import asyncio
import contextlib
import io
import random
import time
import uuid
from collections import Counter

import pytest

from incall_sms.actions import parse_actions
from incall_sms.clock import SystemClock
from incall_sms.dispatcher import LOOKUP_SKEW, CallContext, Dispatcher, SendOutcome
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import Outbox
from incall_sms.providers.twilio import TwilioProvider
from incall_sms.retry import RetryPolicy
from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN, Fault, TwilioPeer

SENDS = 1000
ACTIONS = parse_actions({"actions": [{"name": "note", "condition": "whenever", "once_per_call": False,
                                      "content": {"template": "Ref {ref}"}, "variables": {"ref": {}}}],
                         "max_sends_per_call": 1, "max_sends_per_destination": 1000})


def fault_plan(seed):
    rng = random.Random(seed)
    kinds = Counter()

    def fault_for(form):
        roll = rng.random()
        if roll < 0.10:
            kinds["429"] += 1
            return Fault(status=429, code=20429, commit=False)
        if roll < 0.15:
            kinds["500_before"] += 1
            return Fault(status=500, commit=False)
        if roll < 0.20:
            kinds["500_after"] += 1
            return Fault(status=503, commit=True)
        if roll < 0.24:
            kinds["timeout_after"] += 1
            return Fault(delay=1.0, commit=True)
        if roll < 0.27:
            kinds["dropped"] += 1
            return Fault(drop=True, commit=True)
        if roll < 0.35:
            kinds["slow"] += 1
            return Fault(delay=0.1)
        return None

    return fault_for, kinds


def ref_of(i):
    """Body reference of send ``i``: the first half unique, the second half 100 texts sent 5 times each."""
    return str(i) if i < SENDS // 2 else f"again-{i % 100}"


@pytest.fixture(params=["sqlite", "postgres"])
async def outboxes(request):
    """The workers' outbox handles: one SQLite file, or two workers on one PostgreSQL database."""
    if request.param == "postgres":
        from incall_sms.outbox import default_worker_id
        from incall_sms.outbox_postgres import PostgresOutbox
        from tests.helpers.postgres import fresh_database

        url = await fresh_database(request.getfixturevalue("postgres_server_url"), f"faults_{uuid.uuid4().hex[:8]}")
        stores = [PostgresOutbox(url, worker_id=default_worker_id(), pool_size=10, lease_seconds=6)
                  for _ in range(2)]
    else:
        stores = [Outbox()]
    yield stores
    for store in stores:
        await store.aclose()


@pytest.mark.solo  # how many sends end unconfirmed depends on the machine's load
async def test_thousand_sends_no_duplicates_none_lost_none_falsely_sent(outboxes):
    async with TwilioPeer() as peer, contextlib.AsyncExitStack() as running:
        peer.fault_for, kinds = fault_plan(seed=7)
        provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=peer.base_url, timeout=0.5)
        workers = [Dispatcher(actions=ACTIONS, provider=provider, outbox=store, optouts=SqliteOptOutStore(),
                              clock=SystemClock(),  # the peer's clock is the real one: lookups compare with it
                              retry_policy=RetryPolicy(attempts=5, base_delay=0.01, jitter=0),
                              ambiguity_delay=0.0, ambiguity_checks=3, recovery_interval=0.2, recovery_min_age=0.0)
                   for store in outboxes]
        if len(workers) > 1:  # a fleet: every worker's recovery runs all along
            for worker in workers:
                await running.enter_async_context(worker.recovery())
        outbox = outboxes[0]
        semaphore = asyncio.Semaphore(50)

        async def one(i):
            async with semaphore:
                call = CallContext(call_id=f"CA{i:032d}", caller_number="+14155552671", agent_number="+14155550100")
                return await workers[i % len(workers)].send("note", call=call, turn=1, variables={"ref": ref_of(i)})

        lags = []
        done = asyncio.Event()

        async def monitor():  # the event loop (and so the audio path) must stay responsive throughout
            while not done.is_set():
                start = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - start - 0.01)

        watcher = asyncio.get_running_loop().create_task(monitor())
        try:  # a stuck send must fail the test (with where it is stuck), not stall the suite
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(SENDS))), 300)
        except TimeoutError:
            stuck = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=stuck)
            raise AssertionError("sends still running after 300 s:\n" + stuck.getvalue()[-20000:]) from None
        done.set()
        await watcher
        await running.aclose()  # recovery stops before the provider closes
        await provider.aclose()
        recovered = sum(w.leases_lost for w in workers)

        rows = {r.key: await outbox.get(r.key) for r in results}

    outcomes = Counter(r.outcome for r in results)
    messages = {m.sid: m for m in peer.messages}
    per_body = Counter(m.body for m in peer.messages)
    requested = Counter(f"Ref {ref_of(i)}" for i in range(SENDS))
    duplicates = sum(max(0, per_body[b] - requested[b]) for b in per_body)
    # every "sent" is this row's own message: it exists, has this body, was created by this attempt, and no
    # other row claims it
    accepted = [(i, r) for i, r in enumerate(results) if r.accepted]
    sids = Counter(r.sid for _, r in accepted)
    false_sent = [i for i, r in accepted
                  if r.sid not in messages or messages[r.sid].body != f"Ref {ref_of(i)}" or sids[r.sid] > 1
                  or messages[r.sid].created < (rows[r.key].first_attempt_at or 0) - LOOKUP_SKEW]
    # a message that exists but no "sent" row claims must belong to a row the caller was told was unconfirmed
    claimed = set(sids)
    unconfirmed = Counter(f"Ref {ref_of(i)}" for i, r in enumerate(results) if r.reason == "unconfirmed")
    orphans = Counter(m.body for m in peer.messages if m.sid not in claimed)
    lost = {b: n - unconfirmed[b] for b, n in orphans.items() if n > unconfirmed[b]}
    lags.sort()
    p99 = lags[int(0.99 * (len(lags) - 1))]
    print(f"faults injected: {dict(kinds)}; outcomes: {dict(outcomes)}; messages at peer: {len(peer.messages)}; "
          f"duplicates: {duplicates}; false sent: {len(false_sent)}; lost: {sum(lost.values())}; "
          f"unconfirmed: {sum(unconfirmed.values())}; loop lag p99 {p99 * 1000:.1f} ms max {lags[-1] * 1000:.1f} ms; "
          f"workers: {len(outboxes)}, leases lost: {recovered}")
    assert duplicates == 0
    assert recovered == 0  # no worker's recovery ever took a row from under the other's live send
    assert false_sent == []
    assert lost == {}  # a message that exists at the provider is never reported as a plain failure
    # Each send that is not accepted is an honest "unconfirmed" (its lookups timed out too: how many depends on
    # how loaded the machine is, ~3 when quiet, ~100 with another process saturating both cores) or, rarely, an
    # honest "rate_limited" (every attempt answered 429 until the retry budget ran out: nothing was created, and
    # `lost` above proves no message exists for it); the campaign must still deliver the bulk.
    assert {r.reason for r in results if not r.accepted} <= {"unconfirmed", "rate_limited"}, Counter(
        r.reason for r in results if not r.accepted)
    assert outcomes[SendOutcome.ACCEPTED] >= SENDS * 0.8
    assert sum(kinds.values()) > 250  # the campaign really injected faults
