"""The one retry helper of the project.

Only :class:`~incall_sms.errors.SendError` with ``kind == RETRYABLE`` is retried.
Permanent and ambiguous errors propagate at once: ambiguity is resolved by the
dispatcher (ask the provider), never by blindly resending.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from incall_sms.clock import Clock, SystemClock
from incall_sms.errors import SendError

__all__ = ["RetryPolicy", "retry"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential back-off with jitter.

    Attributes:
        attempts: Total attempts including the first (>= 1).
        base_delay: Delay before the first retry, seconds.
        max_delay: Cap on any single delay, seconds (also caps ``Retry-After``).
        jitter: Fraction of the delay randomised (0 = none).
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter within [0, 1]")

    def delay(self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        raw = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock | None = None,
    on_retry: Callable[[int, SendError, float], None] | None = None,
) -> T:
    """Run ``operation``, retrying retryable :class:`SendError` per ``policy``.

    Args:
        operation: Zero-argument coroutine function; called once per attempt.
        policy: How often and how long to wait.
        clock: Sleeps go through it (a :class:`~incall_sms.clock.ManualClock` in tests).
        on_retry: Called with (attempt, error, delay) before each wait.

    Returns:
        The operation's result.

    Raises:
        SendError: The last error when attempts ran out, or the first non-retryable one.
    """
    clock = clock or SystemClock()
    attempt = 1
    while True:
        try:
            return await operation()
        except SendError as exc:
            if not exc.retryable or attempt >= policy.attempts:
                raise
            delay = policy.delay(attempt, retry_after=exc.retry_after)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await clock.sleep(delay)
            attempt += 1
