"""Per-sender throughput limits: Twilio queues what exceeds a number's segments-per-second.

A long code sends about 1 segment/s, toll-free about 3, short codes 100+. Texts sent faster
than that wait in Twilio's queue (for hours under load), which is useless during a call. The
limiter spreads sends per sender number instead; the in-process token bucket is the embedded
default (a Redis implementation shares it across workers: issue 7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

from incall_sms.clock import Clock, SystemClock

__all__ = ["RateLimiter", "TokenBucketLimiter"]


class RateLimiter(Protocol):
    """Spreads sends per sender."""

    async def acquire(self, sender: str, segments: int) -> float:
        """Wait until ``sender`` may send ``segments``; return the seconds waited.

        Raises:
            TimeoutError: The wait would exceed the limiter's maximum.
        """
        ...


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """In-process token bucket per sender.

    Args:
        rate: Default segments per second per sender.
        burst: Segments a sender may send at once.
        rates: Per-sender overrides (E.164 -> segments/s), e.g. toll-free or short codes.
        max_wait: Longest wait for one send, seconds (beyond: ``TimeoutError``).
        clock: Time source.
    """

    def __init__(
        self,
        *,
        rate: float = 1.0,
        burst: float = 3.0,
        rates: Mapping[str, float] | None = None,
        max_wait: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = burst
        self._rates = dict(rates or {})
        self._max_wait = max_wait
        self._clock = clock or SystemClock()
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, sender: str, segments: int) -> float:
        """Reserve ``segments`` for ``sender`` now, then sleep until the reservation is due.

        The reservation is taken at once (no lock is held while sleeping), so concurrent sends
        queue by reservation and every wait is known, and bounded by ``max_wait``, up front:
        the same rule as the Redis limiter.

        Raises:
            TimeoutError: The wait would exceed ``max_wait`` (nothing is reserved then).
        """
        rate = self._rates.get(sender, self._rate)
        now = self._clock.monotonic()
        bucket = self._buckets.setdefault(sender, _Bucket(tokens=self._burst, updated=now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        needed = max(1, segments)
        wait = max(0.0, (needed - bucket.tokens) / rate)
        if wait > self._max_wait:
            raise TimeoutError(f"sender busy for {wait:.1f}s")
        bucket.tokens -= needed  # may go negative: the debt is the wait of later senders
        if wait:
            await self._clock.sleep(wait)
        return wait
