"""Redis implementations of the shared stores, for several workers behind a load balancer.

Same interfaces as the embedded defaults: :class:`RedisOptOutStore` (``OptOutStore``),
:class:`RedisSeenKeys` (the inbound router's dedupe memory) and :class:`RedisRateLimiter`
(``RateLimiter``: one token bucket per sender number shared by every worker, kept in Redis
and updated atomically by a Lua script).
"""

from __future__ import annotations

from typing import Any

from messaging.clock import Clock, SystemClock

__all__ = ["RedisOptOutStore", "RedisRateLimiter", "RedisSeenKeys", "connect"]


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
