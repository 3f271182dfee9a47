"""WhatsApp's 24-hour customer service window, per (user, business sender).

WhatsApp lets a business send a free-form message (any text, media) only within 24 hours of
the user's last message to that business number; outside it only an approved template (a
Twilio Content template, ``content_sid``) may be sent, and Twilio refuses anything else with
error 63016. The inbound router records every inbound WhatsApp message here
(:meth:`WhatsAppSessions.opened`); the dispatcher asks :meth:`WhatsAppSessions.is_open` before
a WhatsApp send and picks the free-form body, the Content template, or an honest refusal.

Numbers are bare E.164 (``+14155550123``), never ``whatsapp:`` addresses. Two
implementations: :class:`InProcessWhatsAppSessions` (one worker) and
:class:`incall_sms.redis_store.RedisWhatsAppSessions` (shared by the workers of a fleet).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SAFE_WINDOW", "SESSION_MARGIN", "SESSION_WINDOW", "InProcessWhatsAppSessions", "WhatsAppSessions"]

#: Seconds a WhatsApp session stays open after the user's last inbound message.
SESSION_WINDOW = 24 * 3600.0

#: Seconds before the end of the session from which it already counts as closed here: our record is the
#: webhook's arrival, later than WhatsApp's own, and a message may wait in Twilio's queue.
SESSION_MARGIN = 15 * 60.0

#: The window the stores apply by default.
SAFE_WINDOW = SESSION_WINDOW - SESSION_MARGIN


class WhatsAppSessions(Protocol):
    """Where the user's last inbound WhatsApp message to each business sender is remembered."""

    async def opened(self, user: str, business_number: str, *, at: float) -> None:
        """Record an inbound WhatsApp message from ``user`` to ``business_number`` at ``at`` (epoch seconds).

        An earlier ``at`` than the one recorded changes nothing (webhooks may arrive out of order).
        """
        ...

    async def is_open(self, user: str, business_number: str, *, now: float) -> bool:
        """Whether ``business_number`` may send ``user`` a free-form WhatsApp message at ``now``."""
        ...


class InProcessWhatsAppSessions:
    """Session windows of one worker process, in memory.

    Args:
        window: Seconds a session stays open (WhatsApp's rule is 24 hours; tests may shorten it).
        capacity: Most (user, sender) pairs remembered; the oldest sessions are forgotten first
            (a forgotten session counts as closed: the safe side).
    """

    def __init__(self, *, window: float = SAFE_WINDOW, capacity: int = 100_000) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("window must be > 0 and capacity >= 1")
        self.window = window
        self._capacity = capacity
        self._last: dict[tuple[str, str], float] = {}

    async def opened(self, user: str, business_number: str, *, at: float) -> None:
        """Record an inbound message (see :meth:`WhatsAppSessions.opened`)."""
        key = (user, business_number)
        latest = max(at, self._last.pop(key, at))
        self._last[key] = latest  # re-inserted: the dict is ordered by last refresh
        while len(self._last) > self._capacity:
            del self._last[next(iter(self._last))]

    async def is_open(self, user: str, business_number: str, *, now: float) -> bool:
        """Whether the session is open at ``now``."""
        last = self._last.get((user, business_number))
        return last is not None and now - last < self.window
