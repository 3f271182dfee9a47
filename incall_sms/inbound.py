"""Inbound SMS/MMS and WhatsApp: validated messages, routing to live calls, dedupe, and the store for the rest.

Twilio posts a form per inbound message. :func:`parse_inbound_form` validates it
(unknown extra fields are tolerated; the fields we use are checked strictly). WhatsApp
messages come to the same webhook with ``whatsapp:+E164`` addresses: the prefix is
stripped and the message marked ``channel="whatsapp"``, so it reaches the live call of
the same (caller number, agent number) like a text.
:class:`InboundRouter` then:

1. drops retries (same ``MessageSid`` or ``I-Twilio-Idempotency-Token``); a WhatsApp
   message opens (renews) the caller's 24-hour WhatsApp session with that number,
2. applies STOP/START keywords to the opt-out list,
3. hands the message to the live call of (caller number, agent number), if any, and
   waits until the call has it in its conversation (``DELIVERED``), or until the owning
   worker took it (``FORWARDED``, multi-worker),
4. otherwise stores it: no live call, the call ended before the message reached its
   conversation, or the handler failed or took longer than ``delivery_timeout``. Never
   dropped silently, never routed to the wrong call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import pathlib
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from incall_sms.errors import InvalidPhoneNumberError, SmsError
from incall_sms.optout import OptOutStore, classify_keyword
from incall_sms.phone import mask, normalize_e164
from incall_sms.store import SqliteDb
from incall_sms.whatsapp import WhatsAppSessions

__all__ = [
    "InProcessSeenKeys",
    "InboundError",
    "InboundMedia",
    "InboundMessage",
    "InboundRouter",
    "LiveCallRegistry",
    "RouteOutcome",
    "SeenKeys",
    "message_keyword",
    "parse_inbound_form",
]

_log = logging.getLogger(__name__)

_SID = re.compile(r"^(SM|MM|SS)[0-9a-fA-F]{32}$")
_ACCOUNT = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE = re.compile(r"^MG[0-9a-fA-F]{32}$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9.+-]+/[a-z0-9.+-]+$")
_CHANNEL_PREFIX = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*):")
#: The opt-out/opt-in keywords applied to WhatsApp messages (SMS carriers' wider list is not WhatsApp's).
_WHATSAPP_KEYWORD = re.compile(r"^\W*(stop|stopall|unsubscribe|start|unstop)\W*$", re.IGNORECASE)
MAX_MEDIA = 10
MAX_BODY = 4096  # WhatsApp's limit (an SMS, concatenated, is at most 1,600); beyond it the start is kept
_MAX_DIGITS = 20  # a sender the number library does not know is kept as at most this many digits


def message_keyword(message: InboundMessage) -> str | None:
    """The opt-out/opt-in/help keyword an inbound message is, by channel (``None``: an ordinary message).

    SMS: the carriers' list (STOP, CANCEL, END, YES, START ...). WhatsApp: only an explicit STOP/STOPALL/
    UNSUBSCRIBE or START/UNSTOP ("cancel", "end" or "yes" are words there). A message with media is never one.
    """
    if message.media:
        return None
    keyword = classify_keyword(message.body)
    if keyword is not None and message.channel == "whatsapp" and not _WHATSAPP_KEYWORD.match(message.body):
        return None
    return keyword


class InboundError(SmsError):
    """An inbound form is invalid. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMedia:
    """One attachment of an MMS.

    Attributes:
        url: Provider media URL (needs the account's credentials to fetch).
        content_type: Declared MIME type (checked again when fetched).
    """

    url: str
    content_type: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """A validated inbound message. Holds personal data: log only ``describe()``.

    Attributes:
        sid: Provider message SID.
        account_sid: Provider account.
        from_number: Sender, E.164.
        to_number: The agent's number that received it, E.164.
        body: Text (may be empty for MMS).
        media: Attachments, at most 10.
        received_at: Epoch seconds.
        channel: ``sms`` (SMS/MMS) or ``whatsapp``; the numbers are bare E.164 on both.
    """

    sid: str
    account_sid: str
    from_number: str
    to_number: str
    body: str
    media: tuple[InboundMedia, ...] = ()
    received_at: float = 0.0
    channel: str = "sms"

    def describe(self) -> str:
        """A log-safe description (masked numbers, no body)."""
        kind = "WhatsApp message" if self.channel == "whatsapp" else "message"
        return (f"{kind} {self.sid} from {mask(self.from_number)} to {mask(self.to_number)}: "
                f"{len(self.body)} chars, {len(self.media)} media")

    def __repr__(self) -> str:
        return f"InboundMessage({self.describe()})"


def parse_inbound_form(form: Mapping[str, str], *, now: float | None = None) -> InboundMessage:
    """Validate a Twilio inbound-message webhook form (SMS/MMS, or WhatsApp with ``whatsapp:`` addresses).

    Args:
        form: Field name to (single) value. Unknown fields are ignored.
        now: Receive time (epoch seconds); ``time.time()`` when ``None``.

    Returns:
        The message.

    Raises:
        InboundError: A field we use is missing or malformed (the field is named;
            values are not echoed); ``From`` and ``To`` on different channels, or on a
            channel other than SMS and WhatsApp.
    """
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
    if not _SID.match(sid):
        raise InboundError("missing or malformed", field="MessageSid")
    account = form.get("AccountSid", "")
    if not _ACCOUNT.match(account):
        raise InboundError("missing or malformed", field="AccountSid")
    service = form.get("MessagingServiceSid")
    if service and not _SERVICE.match(service):
        raise InboundError("malformed", field="MessagingServiceSid")
    numbers = {}
    channels = {}
    for field in ("From", "To"):
        raw = form.get(field, "")
        prefix = _CHANNEL_PREFIX.match(raw)
        channels[field] = prefix.group(1).lower() if prefix else "sms"
        if channels[field] not in ("sms", "whatsapp"):
            raise InboundError("unsupported channel address (only phone numbers and whatsapp: addresses)",
                               field=field)
        if prefix:
            raw = raw[prefix.end():]
        try:
            numbers[field] = normalize_e164(raw, default_region=None, field=field, allow_premium=True)
        except InvalidPhoneNumberError as exc:
            # a sender the number library does not know (a short code, a new range) is Twilio's word too: kept,
            # as the digits it has, for the store (no live call has such a number); our own number must parse
            digits = "".join(ch for ch in raw if ch.isascii() and ch.isdigit())[:_MAX_DIGITS]
            if field == "To" or not digits:
                raise InboundError(exc.reason, field=field) from None
            numbers[field] = ("+" if raw.strip().startswith("+") else "") + digits
    if channels["From"] != channels["To"]:
        raise InboundError("From and To are on different channels (SMS and WhatsApp)", field="To")
    body = form.get("Body", "")
    if len(body) > MAX_BODY:  # more than WhatsApp allows: the start is kept (never the whole message refused)
        body = body[:MAX_BODY] + " [...]"
    raw_count = form.get("NumMedia", "0") or "0"
    if not (raw_count.isascii() and raw_count.isdigit()) or int(raw_count) > MAX_MEDIA:
        raise InboundError(f"must be an integer from 0 to {MAX_MEDIA}", field="NumMedia")
    media = []
    for index in range(int(raw_count)):
        url = form.get(f"MediaUrl{index}", "")
        if not url.startswith(("https://", "http://")) or len(url) > 2048 or any(c.isspace() for c in url):
            raise InboundError("must be an http(s) URL", field=f"MediaUrl{index}")
        # parameters dropped ("audio/ogg; codecs=opus"); none or an unreadable one: unknown bytes (the media
        # reader decides from the content what it can do)
        content_type = form.get(f"MediaContentType{index}", "").split(";")[0].strip().lower()
        if not _CONTENT_TYPE.match(content_type):
            content_type = "application/octet-stream"
        media.append(InboundMedia(url=url, content_type=content_type))
    return InboundMessage(
        sid=sid, account_sid=account, from_number=numbers["From"], to_number=numbers["To"], body=body,
        media=tuple(media), received_at=now if now is not None else time.time(), channel=channels["From"],
    )


#: A live call's handler: returns once the message is in the call's conversation (``None``), or
#: ``RouteOutcome.FORWARDED`` when it handed the message to the worker owning the call; raises
#: when the message could not reach the call (the router then stores it).
MessageHandler = Callable[[InboundMessage], Awaitable["RouteOutcome | None"]]


Unregister = Callable[[], Awaitable[None]]


class LiveCallRegistry(Protocol):
    """Live calls keyed by (caller number, agent number) (in-process, or Redis across workers)."""

    async def register(self, caller: str, agent: str, handler: MessageHandler) -> Unregister:
        """Route messages from ``caller`` to ``agent`` to ``handler``; returns the unregister coroutine."""
        ...

    async def lookup(self, caller: str, agent: str) -> MessageHandler | None:
        """The handler of the live call (maybe one forwarding to another worker), or ``None``."""
        ...


class InProcessCallRegistry:
    """Live-call registry for one worker process.

    Two live calls for the same (caller, agent) pair are ambiguous: a text from that number cannot be
    told apart (a spoofed caller ID can place the second call), so while both last neither gets it and
    the router stores it. A call never replaces another.
    """

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], list[MessageHandler]] = {}

    async def register(self, caller: str, agent: str, handler: MessageHandler) -> Unregister:
        """Register a live call."""
        key = (caller, agent)
        self._calls.setdefault(key, []).append(handler)

        async def unregister() -> None:
            handlers = self._calls.get(key, [])
            if handler in handlers:
                handlers.remove(handler)
                if not handlers:
                    del self._calls[key]

        return unregister

    async def lookup(self, caller: str, agent: str) -> MessageHandler | None:
        """The live call's handler, or ``None`` (no call, or two calls for the pair)."""
        handlers = self._calls.get((caller, agent), [])
        if len(handlers) > 1:
            _log.warning("two live calls from one number to %s: its texts are stored, not routed", mask(agent))
        return handlers[0] if len(handlers) == 1 else None

    def __len__(self) -> int:
        return sum(len(h) for h in self._calls.values())


class RouteOutcome(enum.StrEnum):
    """What the router did with a message."""

    DELIVERED = "delivered"
    """In the live call's conversation."""
    FORWARDED = "forwarded"
    """Handed to the worker that owns the live call (it delivers or stores it)."""
    STORED = "stored"
    """No live call: kept in the inbound store."""
    DUPLICATE = "duplicate"
    """A retry of a message already handled."""
    OPT_OUT = "opt_out"
    """A STOP keyword: opt-out recorded (and stored)."""
    OPT_IN = "opt_in"
    """A START keyword: opt-out lifted (and stored)."""


class SeenKeys(Protocol):
    """Dedupe memory of handled webhooks (in-process by default, Redis across workers)."""

    async def check_and_add(self, keys: list[str], now: float) -> bool:
        """True when any key was seen; records all keys otherwise."""
        ...


class InProcessSeenKeys:
    """Bounded memory of handled keys (MessageSid, idempotency tokens) with a time-to-live."""

    def __init__(self, *, ttl: float = 24 * 3600, capacity: int = 100_000) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._keys: OrderedDict[str, float] = OrderedDict()

    async def check_and_add(self, keys: list[str], now: float) -> bool:
        """True when any key was seen within the TTL; records all keys otherwise."""
        while self._keys and next(iter(self._keys.values())) < now - self._ttl:
            self._keys.popitem(last=False)
        if any(k in self._keys for k in keys):
            return True
        for key in keys:
            self._keys[key] = now
            if len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
        return False


_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbound (
    sid TEXT PRIMARY KEY,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    body TEXT NOT NULL,
    media TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at REAL NOT NULL,
    channel TEXT NOT NULL DEFAULT 'sms'
);
CREATE TABLE IF NOT EXISTS seen_sids (
    sid TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_sids_age ON seen_sids(seen_at);
"""

#: How long this worker remembers a MessageSid it took (a signed webhook can be replayed, byte for byte, at any
#: time: Twilio's signature has no time in it), in its own store, across restarts.
SEEN_SIDS_SECONDS = 31 * 24 * 3600.0
#: Tries at recording a STOP/START when the opt-out list fails, and the first pause between them (it grows).
_KEYWORD_TRIES = 3
_KEYWORD_RETRY_S = 0.2


def _migrate_store(conn: sqlite3.Connection) -> None:
    """Add the ``channel`` column to an inbound store of an earlier version."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(inbound)")}
    if columns and "channel" not in columns:
        conn.execute("ALTER TABLE inbound ADD COLUMN channel TEXT NOT NULL DEFAULT 'sms'")


class InboundRouter:
    """Dedupe, keywords, routing and storage of inbound messages.

    Args:
        registry: Live calls.
        optouts: The opt-out list shared with the dispatcher.
        store_path: SQLite file keeping messages that reached no live call (and keywords).
        clock: ``time.time``-like callable.
        seen: Dedupe memory (in-process by default; ``RedisSeenKeys`` across workers).
        delivery_timeout: Longest wait (seconds) for a live call to take a message in (media
            fetch and transcription included); beyond it the message is stored.
        whatsapp_sessions: Where an inbound WhatsApp message opens the caller's 24-hour session
            with the agent's number (the dispatcher's store); ``None``: not recorded.
    """

    def __init__(
        self,
        *,
        registry: LiveCallRegistry,
        optouts: OptOutStore,
        store_path: str | pathlib.Path = ":memory:",
        clock: Callable[[], float] = time.time,
        seen: SeenKeys | None = None,
        delivery_timeout: float = 120.0,
        whatsapp_sessions: WhatsAppSessions | None = None,
    ) -> None:
        self.registry = registry
        self.whatsapp_sessions = whatsapp_sessions
        self._delivery_timeout = delivery_timeout
        self.optouts = optouts
        self._db = SqliteDb(store_path, schema=_STORE_SCHEMA, migrate=_migrate_store)
        self._seen = seen or InProcessSeenKeys()
        self._clock = clock

    async def route(self, message: InboundMessage, *, idempotency_token: str | None = None) -> RouteOutcome:
        """Handle one validated inbound message (call after replying to the webhook).

        Returns:
            What was done with it.
        """
        keys = [f"sid:{message.sid}"] + ([f"token:{idempotency_token}"] if idempotency_token else [])
        now = self._clock()
        try:
            duplicate = await self._seen.check_and_add(keys, now)
        except Exception as exc:  # the shared memory is down: this worker's own still knows what it took
            _log.warning("inbound %s: shared dedupe unavailable (%s)", message.sid, exc.__class__.__name__)
            duplicate = False
        # a Twilio retry within the day (any worker), or a replay after a restart or weeks later (this worker)
        if not duplicate:
            try:
                duplicate = not await self._first_sight(message.sid, now)
            except Exception as exc:  # this worker's store failing (disk full) must not lose the text either
                _log.warning("inbound %s: not remembered for dedupe (%s)", message.sid, exc.__class__.__name__)
        if duplicate:
            _log.info("inbound %s: duplicate delivery ignored", message.sid)
            return RouteOutcome.DUPLICATE
        try:
            return await self._route(message)
        except Exception as exc:  # a shared store down (Redis): kept, never lost
            _log.warning("inbound %s: not routed (%s); stored", message.sid, exc.__class__.__name__)
            await self._store(message, RouteOutcome.STORED)
            return RouteOutcome.STORED

    async def _apply_keyword(self, message: InboundMessage, keyword: str) -> None:
        """Record a STOP or START in the opt-out list; a failing list (a Redis blip) is tried again, then logged."""
        for attempt in range(_KEYWORD_TRIES):
            try:
                if keyword == "opt_out":
                    await self.optouts.opt_out(message.from_number, now=self._clock())
                else:
                    await self.optouts.opt_in(message.from_number)
            except Exception as exc:
                if attempt + 1 == _KEYWORD_TRIES:
                    _log.error("inbound %s: %s NOT recorded in the opt-out list (%s); kept in the store as %s",
                               message.sid, keyword.replace("_", "-"), exc.__class__.__name__, keyword)
                    return
                await asyncio.sleep(_KEYWORD_RETRY_S * (attempt + 1))
            else:
                _log.info("inbound %s: %s recorded", message.describe(), keyword.replace("_", "-"))
                return

    async def _first_sight(self, sid: str, now: float) -> bool:
        """Remember ``sid`` in this worker's store; ``False`` when it was already there."""

        def _add(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM seen_sids WHERE seen_at < ?", (now - SEEN_SIDS_SECONDS,))
            return conn.execute("INSERT OR IGNORE INTO seen_sids (sid, seen_at) VALUES (?, ?)",
                                (sid, now)).rowcount == 1

        return bool(await self._db.run(_add))

    async def _route(self, message: InboundMessage) -> RouteOutcome:
        if message.channel == "whatsapp" and self.whatsapp_sessions is not None:
            try:  # the caller may now be sent free-form WhatsApp messages from this number for 24 hours
                await self.whatsapp_sessions.opened(message.from_number, message.to_number, at=message.received_at)
            except Exception as exc:  # the message itself must still get through
                _log.warning("inbound %s: WhatsApp session not recorded (%s)", message.sid, exc.__class__.__name__)
        keyword = message_keyword(message)
        if keyword in ("opt_out", "opt_in"):
            outcome = RouteOutcome.OPT_OUT if keyword == "opt_out" else RouteOutcome.OPT_IN
            await self._store(message, outcome)  # kept as what it is, whatever happens next
            await self._apply_keyword(message, keyword)
            # a live call hears of it too: a YES may answer its question, a STOP ends its texting
            handler = await self.registry.lookup(message.from_number, message.to_number)
            if handler is not None:
                await self.hand_over(message, handler)
            return outcome
        handler = await self.registry.lookup(message.from_number, message.to_number)
        if handler is None:
            await self._store(message, RouteOutcome.STORED)
            _log.info("inbound %s: no live call, stored", message.describe())
            return RouteOutcome.STORED
        return await self.hand_over(message, handler)

    async def hand_over(self, message: InboundMessage, handler: MessageHandler) -> RouteOutcome:
        """Give ``message`` to a live call's ``handler``; store it when it does not get there."""
        try:
            async with asyncio.timeout(self._delivery_timeout):
                result = await handler(message)
        except Exception as exc:
            _log.info("inbound %s: not delivered to the live call (%s); stored", message.sid,
                      exc.__class__.__name__)
            await self._store(message, RouteOutcome.STORED)
            return RouteOutcome.STORED
        if result is RouteOutcome.FORWARDED:
            _log.info("inbound %s: forwarded to the worker owning the call", message.describe())
            return RouteOutcome.FORWARDED
        _log.info("inbound %s: delivered to the live call", message.describe())
        return RouteOutcome.DELIVERED

    async def store_unrouted(self, message: InboundMessage) -> None:
        """Keep a message whose live call went away before it could be delivered."""
        await self._store(message, RouteOutcome.STORED)

    async def _store(self, message: InboundMessage, outcome: RouteOutcome) -> None:
        media = "\n".join(f"{m.content_type} {m.url}" for m in message.media)
        await self._db.run(lambda c: c.execute(
            "INSERT OR IGNORE INTO inbound (sid, from_number, to_number, body, media, outcome, received_at, channel) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message.sid, message.from_number, message.to_number, message.body, media, outcome.value,
             message.received_at, message.channel),
        ))

    async def stored(self) -> list[dict[str, object]]:
        """Messages kept in the store, oldest first."""

        def _q(conn):
            rows = conn.execute("SELECT * FROM inbound ORDER BY received_at, sid").fetchall()
            return [dict(r) for r in rows]

        return await self._db.run(_q)

    def close(self) -> None:
        """Close the store."""
        self._db.close()
