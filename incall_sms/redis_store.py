"""Redis implementations of the shared stores, for several workers behind a load balancer.

Same interfaces as the embedded defaults: :class:`RedisOptOutStore` (``OptOutStore``),
:class:`RedisHeldStatuses` (``HeldStatusStore``: early status callbacks, when each worker has its own outbox),
:class:`RedisSeenKeys` (the inbound router's dedupe memory) and :class:`RedisRateLimiter`
(``RateLimiter``: one token bucket per sender number shared by every worker, kept in Redis
and updated atomically by a Lua script) and :class:`RedisWhatsAppSessions` (``WhatsAppSessions``:
WhatsApp's 24-hour windows, opened by an inbound message on any worker).
"""

from __future__ import annotations

from typing import Any

from incall_sms.clock import Clock, SystemClock
from incall_sms.outbox import HELD_STATUS_SECONDS, delivery_rank
from incall_sms.whatsapp import SAFE_WINDOW

__all__ = ["RedisCallRegistry", "RedisHeldStatuses", "RedisOptOutStore", "RedisRateLimiter", "RedisSeenKeys",
           "RedisWhatsAppSessions", "connect"]


def connect(url: str) -> Any:
    """An asyncio Redis client for ``url`` (``redis://host:port/db``)."""
    import redis.asyncio as redis

    return redis.Redis.from_url(url, decode_responses=True)


class RedisOptOutStore:
    """Opt-out list in a Redis set.

    Args:
        client: ``redis.asyncio.Redis``.
        prefix: Key prefix (several deployments can share a server).
    """

    def __init__(self, client: Any, *, prefix: str = "incall-sms") -> None:
        self._client = client
        self._key = f"{prefix}:optouts"

    async def is_opted_out(self, number: str) -> bool:
        """Whether ``number`` replied STOP and not START since."""
        return bool(await self._client.sismember(self._key, number))

    async def opt_out(self, number: str, *, now: float) -> None:
        """Add ``number``."""
        await self._client.sadd(self._key, number)

    async def opt_in(self, number: str) -> None:
        """Remove ``number``."""
        await self._client.srem(self._key, number)


class RedisSeenKeys:
    """Dedupe memory for inbound webhooks (MessageSid, idempotency tokens) with a TTL.

    Args:
        client: ``redis.asyncio.Redis``.
        ttl: Seconds a key is remembered.
        prefix: Key prefix.
    """

    def __init__(self, client: Any, *, ttl: float = 24 * 3600, prefix: str = "incall-sms") -> None:
        self._client = client
        self._ttl = int(ttl)
        self._prefix = f"{prefix}:seen:"

    async def check_and_add(self, keys: list[str], now: float) -> bool:
        """True when any key was seen; records all of them otherwise (atomically per key)."""
        seen = False
        for key in keys:
            added = await self._client.set(self._prefix + key, "1", nx=True, ex=self._ttl)
            seen = seen or not added
        return seen


_LATEST = """
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class RedisWhatsAppSessions:
    """WhatsApp session windows shared by all workers (``WhatsAppSessions``).

    One key per (user, business sender) holds the time of the user's last inbound message; it
    only moves forward (a Lua script compares and sets atomically) and expires with the window.

    Args:
        client: ``redis.asyncio.Redis``.
        window: Seconds a session counts as open (24 hours less a safety margin).
        prefix: Key prefix.
    """

    def __init__(self, client: Any, *, window: float = SAFE_WINDOW, prefix: str = "incall-sms") -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self._client = client
        self.window = window
        self._prefix = f"{prefix}:whatsapp:"
        self._script = client.register_script(_LATEST)

    def _key(self, user: str, business_number: str) -> str:
        return f"{self._prefix}{user}:{business_number}"

    async def opened(self, user: str, business_number: str, *, at: float) -> None:
        """Record an inbound message (never moves the time back)."""
        await self._script(keys=[self._key(user, business_number)], args=[repr(float(at)), int(self.window) + 60])

    async def is_open(self, user: str, business_number: str, *, now: float) -> bool:
        """Whether the session is open at ``now``."""
        value = await self._client.get(self._key(user, business_number))
        return value is not None and now - float(value) < self.window


_BUCKET = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local updated = tonumber(redis.call('HGET', KEYS[1], 'updated'))
local now, rate, burst, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tokens == nil then tokens = burst; updated = now end
tokens = math.min(burst, tokens + (now - updated) * rate)
local wait = 0
if tokens < need then wait = (need - tokens) / rate end
if wait > tonumber(ARGV[5]) then return tostring(-wait) end
redis.call('HSET', KEYS[1], 'tokens', tokens - need, 'updated', now)
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token bucket per sender shared by all workers (``RateLimiter``).

    Args:
        client: ``redis.asyncio.Redis``.
        rate: Segments per second per sender.
        burst: Segments a sender may send at once.
        max_wait: Longest wait for one send, seconds (beyond: ``TimeoutError``).
        clock: Time source for the wait (the bucket uses wall-clock time, shared by workers).
        prefix: Key prefix.
    """

    def __init__(self, client: Any, *, rate: float = 1.0, burst: float = 3.0, max_wait: float = 10.0,
                 clock: Clock | None = None, prefix: str = "incall-sms") -> None:
        self._client = client
        self._rate = rate
        self._burst = burst
        self._max_wait = max_wait
        self._clock = clock or SystemClock()
        self._prefix = f"{prefix}:rate:"
        self._script = client.register_script(_BUCKET)

    async def acquire(self, sender: str, segments: int) -> float:
        """Reserve ``segments`` for ``sender`` across all workers, sleeping if needed."""
        result = float(await self._script(keys=[self._prefix + sender], args=[
            self._clock.now(), self._rate, self._burst, max(1, segments), self._max_wait]))
        if result < 0:
            raise TimeoutError(f"sender busy for {-result:.1f}s")
        if result:
            await self._clock.sleep(result)
        return result


_HOLD = """
-- KEYS[1]: the held status; ARGV: rank, final (0/1), value, ttl. Forward only, like the outbox's delivery.
local current = redis.call('GET', KEYS[1])
if current then
  local rank, final = string.match(current, '^(%d+)|(%d)|')
  if final == '1' or tonumber(rank) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
"""


class RedisHeldStatuses:
    """Status callbacks for SIDs no outbox row has yet, shared by workers with their own SQLite outboxes.

    A callback can come before the create's answer reaches the sender, and land on another worker
    (``HeldStatusStore``; with a shared PostgreSQL outbox the outbox itself holds them). Each is a key
    that expires after ``ttl``; the worker that records the SID takes it (``GETDEL``: once).

    Args:
        client: ``redis.asyncio.Redis``.
        ttl: Seconds a callback is held.
        prefix: Key prefix.
    """

    def __init__(self, client: Any, *, ttl: float = HELD_STATUS_SECONDS, prefix: str = "incall-sms") -> None:
        self._client = client
        self.ttl = ttl
        self._prefix = f"{prefix}:held:"
        self._script = client.register_script(_HOLD)

    async def hold_status(self, sid: str, status: str, error_code: int | None, *, now: float) -> None:
        """Keep ``status`` for ``sid`` unless a later one is held (``now`` unused: Redis expires the key)."""
        rank = delivery_rank(status)
        if rank is None:
            return
        value = f"{rank[0]}|{int(rank[1])}|{status}|{'' if error_code is None else error_code}"
        await self._script(keys=[self._prefix + sid], args=[rank[0], int(rank[1]), value, max(1, round(self.ttl))])

    async def take_held_status(self, sid: str) -> tuple[str, int | None] | None:
        """Remove and return the held ``(status, error_code)`` of ``sid``."""
        value = await self._client.getdel(self._prefix + sid)
        if not value:
            return None
        _rank, _final, status, code = value.split("|", 3)
        return status, int(code) if code.isdigit() else None


class RedisCallRegistry:
    """Live calls shared by all workers; inbound texts are routed to the worker that owns the call.

    Each worker registers its calls in the hash ``calls:{caller}:{agent}`` (one field per call: its
    worker id and when the registration lapses) and listens on its own channel. Two live calls for
    one pair, on any workers, are ambiguous (a spoofed caller ID can place the second): neither gets
    the pair's texts, which are stored. A registration that lapsed is dropped at the next lookup; one
    of a worker nobody listens for (it died) is ignored while that lasts. A lookup on another worker
    returns a forwarder that publishes the message to the owner's channel; if no worker receives it,
    the forwarder raises and the router stores the message (never lost silently).

    Args:
        client: ``redis.asyncio.Redis``.
        worker_id: Unique id of this worker.
        orphan: Called with messages that arrive for a call this worker no longer has.
        ttl: Seconds a registration lives without being renewed (calls are shorter).
        prefix: Key prefix.
    """

    def __init__(self, client: Any, *, worker_id: str, orphan: Any = None, ttl: int = 4 * 3600,
                 prefix: str = "incall-sms") -> None:
        self._client = client
        self.worker_id = worker_id
        import secrets

        #: This process's address (its channel, the owner in its registrations and SID claims): the worker id
        #: plus a per-process suffix, so a restarted worker with the same id never vouches for a dead one's calls.
        self.address = f"{worker_id}.{secrets.token_hex(4)}"
        self.orphan = orphan
        self._ttl = ttl
        self._prefix = prefix
        self._local: dict[tuple[str, str], dict[str, Any]] = {}  # pair -> registration id -> handler
        self._routed: set[Any] = set()  # tasks delivering routed messages
        self.status_handler: Any = None  # async (sid, status, error_code) -> None, for routed callbacks
        self.event_handler: Any = None  # async (SmsEvent) -> None: events raised on another worker for our calls
        self.deliver: Any = None  # async (message, handler) -> outcome: the router's hand_over
        self._pubsub: Any = None
        self._listener: Any = None
        self.forwarded = 0
        self.received = 0

    def _key(self, caller: str, agent: str) -> str:
        return f"{self._prefix}:calls:{caller}:{agent}"

    def _one_local(self, key: tuple[str, str]) -> Any:
        handlers = list(self._local.get(key, {}).values())
        return handlers[0] if len(handlers) == 1 else None

    def _channel(self, worker_id: str) -> str:
        return f"{self._prefix}:worker:{worker_id}"

    async def start(self) -> None:
        """Subscribe to this worker's channel (call before serving)."""
        import asyncio

        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._channel(self.address))
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        import asyncio
        import json
        import logging

        from incall_sms.inbound import InboundMedia, InboundMessage

        log = logging.getLogger(__name__)
        async for item in self._pubsub.listen():
            if item.get("type") != "message":
                continue
            try:
                data = json.loads(item["data"])
                if data.get("type") == "status":
                    if self.status_handler is not None:
                        await self.status_handler(data["sid"], data["status"], data.get("error_code"))
                    continue
                if data.get("type") == "event":
                    if self.event_handler is not None:
                        from incall_sms.events import SmsEvent

                        # routed events are status callbacks applied on another worker (an older one omits the field)
                        await self.event_handler(SmsEvent.from_dict({"delivery_report": True, **data["event"]}))
                    continue
                message = InboundMessage(
                    sid=data["sid"], account_sid=data["account_sid"], from_number=data["from_number"],
                    to_number=data["to_number"], body=data["body"], received_at=data["received_at"],
                    media=tuple(InboundMedia(url=m[0], content_type=m[1]) for m in data["media"]),
                    channel=data.get("channel", "sms"))
            except (ValueError, KeyError, TypeError):
                log.warning("malformed routed message ignored")
                continue
            self.received += 1
            # one task per message: a slow media download must not hold up the channel
            task = asyncio.get_running_loop().create_task(self._deliver_routed(message))
            self._routed.add(task)
            task.add_done_callback(self._routed.discard)

    async def _deliver_routed(self, message: Any) -> None:
        """Deliver a message routed here to its local call; store it (``orphan``) when it does not get there."""
        import logging

        handler = self._one_local((message.from_number, message.to_number))
        try:
            if handler is None:
                raise LookupError("the call is no longer on this worker (or it has two)")
            if self.deliver is not None:
                outcome = await self.deliver(message, handler)  # the router's hand_over: stores on failure
                logging.getLogger(__name__).info("routed message %s: %s", message.sid, outcome)
                return
            await handler(message)
        except Exception as exc:
            logging.getLogger(__name__).info("routed message %s not delivered (%s); stored", message.sid,
                                             exc.__class__.__name__)
            if self.orphan is not None:
                await self.orphan(message)

    async def register(self, caller: str, agent: str, handler: Any) -> Any:
        """Own the call of (``caller``, ``agent``) on this worker."""
        import asyncio
        import secrets
        import time

        key = (caller, agent)
        registration = f"{self.worker_id}:{secrets.token_hex(8)}"
        self._local.setdefault(key, {})[registration] = handler

        def forget() -> bool:
            local = self._local.get(key, {})
            found = local.pop(registration, None) is not None
            if not local:
                self._local.pop(key, None)
            return found

        try:
            await self._client.hset(self._key(caller, agent), registration,
                                    f"{self.address} {time.time() + self._ttl}")
            await self._client.expire(self._key(caller, agent), self._ttl)
        except BaseException:  # not registered (Redis down, the call hung up meanwhile): nothing is left behind
            forget()
            raise

        async def unregister() -> None:
            if forget():  # shielded: a cancelled call end must not leave its field to make the pair ambiguous
                await asyncio.shield(self._client.hdel(self._key(caller, agent), registration))

        return unregister

    async def lookup(self, caller: str, agent: str) -> Any:
        """The local handler, a forwarder to the owning worker, or ``None`` (no call, or two for the pair)."""
        import logging
        import time

        fields = await self._client.hgetall(self._key(caller, agent))
        now = time.time()
        live: dict[str, str] = {}
        local = self._local.get((caller, agent), {})
        for registration, value in fields.items():
            owner, _, lapses = str(value).rpartition(" ")
            try:
                lapsed = float(lapses) <= now
            except ValueError:
                lapsed = True
            if lapsed:
                await self._client.hdel(self._key(caller, agent), registration)
                continue
            if owner == self.address:
                if registration in local:
                    live[str(registration)] = owner
                continue
            # a worker that died (killed, crashed) left its call: nobody listens on its channel. Ignored for this
            # lookup, not deleted: a listener reconnecting counts again at the next one
            [(_, listeners)] = await self._client.pubsub_numsub(self._channel(owner))
            if listeners:
                live[str(registration)] = owner
        calls = set(live) | set(local)
        if len(calls) > 1:
            logging.getLogger(__name__).warning("two live calls from one number to one agent number: its texts are "
                                                "stored, not routed")
            return None
        if not calls:
            return None
        [registration] = calls
        if registration in local:
            return local[registration]
        return self._forwarder(live[registration])

    def _forwarder(self, owner: str) -> Any:
        import json

        async def forward(message: Any) -> None:
            payload = json.dumps({
                "sid": message.sid, "account_sid": message.account_sid, "from_number": message.from_number,
                "to_number": message.to_number, "body": message.body, "received_at": message.received_at,
                "media": [[m.url, m.content_type] for m in message.media], "channel": message.channel,
            })
            receivers = await self._client.publish(self._channel(owner), payload)
            if not receivers:
                raise RuntimeError("the worker owning the call is gone")
            self.forwarded += 1
            from incall_sms.inbound import RouteOutcome

            return RouteOutcome.FORWARDED

        return forward

    async def claim_sid(self, sid: str) -> None:
        """Record that this worker sent message ``sid`` (its status callbacks are routed here)."""
        await self._client.set(f"{self._prefix}:sid:{sid}", self.address, ex=3 * 24 * 3600)

    async def route_status(self, sid: str, status: str, error_code: int | None) -> bool:
        """Forward a status callback to the worker that sent ``sid``; False when none can take it."""
        import json

        owner = await self._client.get(f"{self._prefix}:sid:{sid}")
        if not owner or owner == self.address:
            return False
        payload = json.dumps({"type": "status", "sid": sid, "status": status, "error_code": error_code})
        return bool(await self._client.publish(self._channel(owner), payload))

    async def route_event(self, event: Any) -> bool:
        """Send ``event`` (an ``SmsEvent`` raised here about another worker's message) to that worker.

        With a shared outbox a status callback is applied by whichever worker receives it; the
        event it raises must still reach the call, on the worker that sent the message.

        Returns:
            Whether it reached the worker that sent the message: ``True`` when that is this worker
            (it was raised here), ``False`` when no worker has claimed the SID (yet) or its worker is gone.
        """
        import json

        if not event.sid:
            return False
        owner = await self._client.get(f"{self._prefix}:sid:{event.sid}")
        if not owner:
            return False
        if owner == self.address:
            return True
        payload = json.dumps({"type": "event", "event": event.to_dict()})
        return bool(await self._client.publish(self._channel(owner), payload))

    async def aclose(self) -> None:
        """Stop listening."""
        import asyncio
        import contextlib

        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._routed:  # deliveries in progress finish (or store) before the worker goes
            await asyncio.wait(set(self._routed), timeout=10)
        if self._pubsub is not None:
            await self._pubsub.aclose()
