"""Contract tests: the embedded stores and their Redis implementations behave the same.

Redis runs for real (`redis-server` on loopback); two Redis-backed instances stand for two workers.
"""

import asyncio
import time
import uuid

import pytest

from incall_sms.clock import ManualClock
from incall_sms.inbound import InProcessSeenKeys
from incall_sms.optout import SqliteOptOutStore
from incall_sms.outbox import HELD_STATUS_SECONDS, Outbox
from incall_sms.ratelimit import TokenBucketLimiter
from incall_sms.redis_store import RedisHeldStatuses, RedisOptOutStore, RedisRateLimiter, RedisSeenKeys, connect

KINDS = ["embedded", "redis"]


@pytest.fixture
async def make(request, redis_url):
    clients = []
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def factory(kind, what, **kwargs):
        if kind == "embedded":
            return {"optouts": lambda: SqliteOptOutStore(), "seen": lambda: InProcessSeenKeys(),
                    "limiter": lambda: TokenBucketLimiter(**kwargs), "held": lambda: shared_outbox}[what]()
        client = connect(redis_url)
        clients.append(client)
        return {"optouts": lambda: RedisOptOutStore(client, prefix=prefix),
                "seen": lambda: RedisSeenKeys(client, prefix=prefix),
                "limiter": lambda: RedisRateLimiter(client, prefix=prefix, **kwargs),
                "held": lambda: RedisHeldStatuses(client, prefix=prefix, **kwargs)}[what]()

    shared_outbox = Outbox()  # the embedded held statuses: the outbox (one handle stands for both workers)

    yield factory
    for client in clients:
        await client.aclose()
    shared_outbox.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_optout_contract(make, kind):
    store = make(kind, "optouts")
    number = "+14155552671"
    assert not await store.is_opted_out(number)
    await store.opt_out(number, now=time.time())
    await store.opt_out(number, now=time.time())  # idempotent
    assert await store.is_opted_out(number)
    await store.opt_in(number)
    assert not await store.is_opted_out(number)


@pytest.mark.parametrize("kind", KINDS)
async def test_seen_keys_contract(make, kind):
    seen = make(kind, "seen")
    now = time.time()
    assert not await seen.check_and_add(["sid:SM1", "token:a"], now)
    assert await seen.check_and_add(["sid:SM1"], now)
    assert await seen.check_and_add(["sid:SM2", "token:a"], now)  # same idempotency token
    assert not await seen.check_and_add(["sid:SM3"], now)


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limiter_contract(make, kind):
    clock = ManualClock(start=time.time())
    limiter = make(kind, "limiter", rate=1.0, burst=2, max_wait=5, clock=clock)
    waits = [await limiter.acquire("+14155550100", 1) for _ in range(4)]
    assert waits[:2] == [0.0, 0.0] and all(0.9 <= w <= 1.1 or 1.9 <= w <= 2.1 for w in waits[2:])
    assert await limiter.acquire("+14155550111", 1) == 0.0  # other sender, own bucket


async def test_redis_stores_are_shared_between_workers(make):
    # two workers = two clients on the same server
    a, b = make("redis", "optouts"), make("redis", "optouts")
    await a.opt_out("+14155552671", now=time.time())
    assert await b.is_opted_out("+14155552671")
    seen_a, seen_b = make("redis", "seen"), make("redis", "seen")
    assert not await seen_a.check_and_add(["sid:SMx"], time.time())
    assert await seen_b.check_and_add(["sid:SMx"], time.time())
    clock = ManualClock(start=time.time())
    lim_a = make("redis", "limiter", rate=1.0, burst=1, max_wait=5, clock=clock)
    lim_b = make("redis", "limiter", rate=1.0, burst=1, max_wait=5, clock=clock)
    assert await lim_a.acquire("+14155550100", 1) == 0.0
    assert await lim_b.acquire("+14155550100", 1) > 0.5  # the bucket is shared


async def test_concurrent_seen_keys_admit_one(make):
    stores = [make("redis", "seen") for _ in range(5)]
    results = await asyncio.gather(*(s.check_and_add(["sid:SMrace"], time.time()) for s in stores * 4))
    assert results.count(False) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_call_registry_contract(make, kind, redis_url):
    from incall_sms.inbound import InProcessCallRegistry
    from incall_sms.redis_store import RedisCallRegistry

    if kind == "embedded":
        registry = InProcessCallRegistry()
    else:
        client = connect(redis_url)
        registry = RedisCallRegistry(client, worker_id=uuid.uuid4().hex, prefix=f"t{uuid.uuid4().hex[:8]}")
        await registry.start()

    async def handler(message):
        return None

    try:
        assert await registry.lookup("+14155552671", "+14155550100") is None
        unregister = await registry.register("+14155552671", "+14155550100", handler)
        assert await registry.lookup("+14155552671", "+14155550100") is handler
        assert await registry.lookup("+14155552672", "+14155550100") is None
        await unregister()
        assert await registry.lookup("+14155552671", "+14155550100") is None

        # two live calls for one pair (a spoofed caller ID): neither gets the texts until one ends
        async def spoofer(message):
            return None

        first = await registry.register("+14155552671", "+14155550100", handler)
        second = await registry.register("+14155552671", "+14155550100", spoofer)
        assert await registry.lookup("+14155552671", "+14155550100") is None
        await second()
        assert await registry.lookup("+14155552671", "+14155550100") is handler
        await first()
        if kind == "redis":  # the second call on another worker counts too
            other = RedisCallRegistry(connect(redis_url), worker_id=uuid.uuid4().hex, prefix=registry._prefix)
            await other.start()  # a live worker: it listens on its channel
            first = await registry.register("+14155552671", "+14155550100", handler)
            elsewhere = await other.register("+14155552671", "+14155550100", spoofer)
            assert await registry.lookup("+14155552671", "+14155550100") is None
            assert await other.lookup("+14155552671", "+14155550100") is None
            await elsewhere()
            assert await registry.lookup("+14155552671", "+14155550100") is handler
            assert await other.lookup("+14155552671", "+14155550100") is not None  # a forwarder to the owner
            await first()
            await other.aclose()
            await other._client.aclose()
            # a worker killed mid-call and restarted under the same SMS_WORKER_ID: the dead process's call is
            # not counted (nobody listens at its address), so the caller's new call is not made ambiguous
            dead = RedisCallRegistry(connect(redis_url), worker_id="fixed-id", prefix=registry._prefix)
            await dead.start()
            await dead.register("+14155552671", "+14155550100", spoofer)  # never unregistered: killed
            await dead.aclose()
            await dead._client.aclose()
            restarted = RedisCallRegistry(connect(redis_url), worker_id="fixed-id", prefix=registry._prefix)
            await restarted.start()
            again = await restarted.register("+14155552671", "+14155550100", handler)
            assert await restarted.lookup("+14155552671", "+14155550100") is handler
            assert await registry.lookup("+14155552671", "+14155550100") is not None  # a forwarder to it
            await again()
            await restarted.aclose()
            await restarted._client.aclose()
    finally:
        if kind == "redis":
            await registry.aclose()
            await client.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_held_status_contract(make, kind):
    # a status callback for a SID not recorded yet, held by the worker that got it, taken once by the sender
    w1, w2 = make(kind, "held"), make(kind, "held")
    now = time.time()
    assert await w1.take_held_status("SM1") is None
    await w2.hold_status("SM1", "sent", None, now=now)
    await w2.hold_status("SM1", "undelivered", 30003, now=now + 1)
    await w1.hold_status("SM1", "delivered", None, now=now + 2)  # after a final status: ignored
    await w1.hold_status("SM1", "sending", None, now=now + 3)  # out of order: ignored
    assert await w1.take_held_status("SM1") == ("undelivered", 30003)
    assert await w2.take_held_status("SM1") is None
    await w1.hold_status("SM2", "bogus", None, now=now)  # no delivery status: nothing held
    assert await w2.take_held_status("SM2") is None


async def test_redis_held_statuses_expire(make):
    held = make("redis", "held", ttl=1)
    await held.hold_status("SM1", "failed", 30007, now=time.time())
    await asyncio.sleep(1.6)
    assert await held.take_held_status("SM1") is None
    assert make("redis", "held").ttl == HELD_STATUS_SECONDS
