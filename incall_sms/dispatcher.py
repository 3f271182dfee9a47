"""The dispatcher: turns "action X fired in call C at turn T" into at most one SMS.

Order of work for one send (:meth:`Dispatcher.send`):

1. Prepare: resolve the destination (caller / static / variable, normalised to
   E.164), the sender (agent number or pool), render the body (or take the
   LLM-written body), apply smart encoding and the segment cap. A WhatsApp action
   (``channel: whatsapp``) instead gets the 24-hour session rule: inside the user's
   session the free-form body (1,600 characters at most, no segments), outside it the
   action's Content template (``content_sid``), or an honest ``whatsapp_window_closed``.
2. Check the opt-out list.
3. Claim the idempotency key in the outbox, atomically with the per-call cap and
   the "once per call" rule. A key is sent at most once, ever.
4. Send through the provider with the one retry helper (only retryable errors
   are retried). An ambiguous error (timeout, 5xx, dropped connection) is
   resolved by asking the provider whether the message exists before any resend.
5. Record the outcome and raise typed events.

The ambiguity rule: after a timeout, a 5xx or a dropped connection the provider is
asked which messages to the destination, from the sender, with the same body exist.
Only a message created after this row's first attempt began (minus ``lookup_skew``,
the bounded clock difference between this host and the provider) and not already
claimed by another outbox row can be this attempt's; otherwise the answer is "none"
(resend, if allowed) or "unknown" (the caller hears "couldn't confirm", and the row is
never sent later).

:meth:`Dispatcher.recover` finishes what a crashed process or an ended call left
unfinished, with the same rule, at start-up and periodically (:meth:`Dispatcher.recovery`);
rows older than the recovery window are closed as ``expired``, never sent.
:meth:`Dispatcher.handle_status` applies status callbacks. The row states are drawn in
:mod:`incall_sms.outbox`.

Several workers may share one outbox (PostgreSQL, ``DATABASE_URL``): each row being worked on
is leased by one worker. A send's row is leased at its claim and the lease is renewed every
third of its length while the send is in flight (real time: it guards against real deaths);
a recovery pass takes only rows whose lease is free or expired, so any worker finishes a dead
worker's sends, and a worker that finds its lease taken stops writing the row (the caller is
told the text could not be confirmed: the worker that took it over decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from incall_sms.actions import ActionSet, SenderKind, SmsAction
from incall_sms.clock import Clock, SystemClock
from incall_sms.errors import (
    InvalidPhoneNumberError,
    MissingVariableError,
    OutboxUnavailableError,
    SendError,
    SendErrorKind,
)
from incall_sms.events import SmsEvent, SmsEventKind
from incall_sms.optout import OptOutStore
from incall_sms.outbox import (
    ClaimOutcome,
    HeldStatusStore,
    LeaseLostError,
    OutboxRecord,
    OutboxStore,
    SidTakenError,
    idempotency_key,
)
from incall_sms.phone import last_digits, mask, normalize_e164
from incall_sms.providers.base import (
    FAILED_STATUSES,
    OutboundSms,
    ProviderReceipt,
    SmsProvider,
    content_variables_json,
    delivery_reason,
)
from incall_sms.ratelimit import RateLimiter
from incall_sms.retry import RetryPolicy, retry
from incall_sms.segments import MAX_BODY_CHARS, count_segments
from incall_sms.templates import Template
from incall_sms.whatsapp import WhatsAppSessions

__all__ = ["CallContext", "Dispatcher", "SendOutcome", "SendResult", "delivery_reason"]

_log = logging.getLogger(__name__)


def _unclassified(key: str, step: str, exc: Exception, *, reason: str) -> SendError:
    """Classify an error a provider raised without classifying it: ambiguous (the request may be out).

    Providers classify their errors (:class:`SendError`); anything else is a bug or an answer the
    provider could not read, raised after its request may have reached the API. It is logged by type
    and place only (its message may carry a number or a body) and handled like a timeout: looked up
    before any resend, never raised to the call.
    """
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else ""
    _log.warning("SMS %s: the provider's %s raised %s%s, not a classified error; treated as %s (ambiguous)",
                 key, step, type(exc).__name__, where, reason)
    return SendError(reason, kind=SendErrorKind.AMBIGUOUS)

#: Seconds of a lease kept in reserve when a request starts (clock and scheduling slack).
_LEASE_MARGIN = 1.0
#: Least lease beyond the provider's request timeout (the margin, and up to 4 s for the write that starts a
#: request: a slower write makes the attempt retry on a fresh lease instead of sending).
_LEASE_HEADROOM = 5.0
#: Rows one recovery take leases at once (a pass takes batches until none is left).
_RECOVERY_BATCH = 100

#: Cap on segments for LLM-written bodies when the action sets none.
PROMPT_MAX_SEGMENTS = 3

#: Default clock difference (seconds) tolerated between this host and the provider when deciding
#: whether a message found by a lookup can be this attempt's. Twilio's ``date_created`` has a
#: resolution of one second and NTP keeps hosts well under a second apart.
LOOKUP_SKEW = 5.0

#: Seconds before a second try at applying a held status callback the store failed to give.
_HELD_RETRY_DELAY = 0.2

#: Default age (seconds) after which recovery closes an unfinished row as ``expired``.
RECOVERY_WINDOW = 600.0

#: What SendResult.encoding says for WhatsApp messages (no segments, no GSM-7/UCS-2).
WHATSAPP_ENCODING = "WhatsApp"

_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")

EventHandler = Callable[[SmsEvent], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallContext:
    """What the dispatcher knows about the live call.

    Attributes:
        call_id: Unique call id (Twilio CallSid, or a simulation id).
        caller_number: The inbound caller (E.164), or ``None`` when unknown.
        agent_number: The agent's own SMS-capable number (the called number).
    """

    call_id: str
    caller_number: str | None = None
    agent_number: str | None = None


class SendOutcome(enum.StrEnum):
    """How one send request ended."""

    ACCEPTED = "accepted"
    """The provider accepted the message (now or earlier for the same key)."""
    FAILED = "failed"
    """Not sent, or sending could not be confirmed; see ``reason``."""
    SKIPPED = "skipped"
    """Deliberately not sent (missing variable, per-call limit)."""
    DUPLICATE = "duplicate"
    """Already handled for this key / call; nothing new was sent."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """Outcome of :meth:`Dispatcher.send`.

    Attributes:
        outcome: Accepted, failed, skipped or duplicate.
        key: Idempotency key.
        action: Action name.
        reason: Why it failed or was skipped (``opted_out``, ``missing_variable`` ...).
        sid: Provider SID when accepted.
        to_masked: Masked destination (``+1******0142``), or ``None`` if unresolved.
        to_last2: Last two digits of the destination, for the spoken confirmation.
        to_last4: Last four digits of the destination.
        segments: Segment count of the body (1 for a WhatsApp message).
        encoding: ``GSM-7`` or ``UCS-2`` (``WhatsApp`` for WhatsApp: segments do not apply).
        error_code: Provider error code, when there was one.
        retryable: For failures: whether a later attempt could succeed.
        missing: Missing variable names, for ``missing_variable``.
    """

    outcome: SendOutcome
    key: str
    action: str
    reason: str | None = None
    sid: str | None = None
    to_masked: str | None = None
    to_last2: str | None = None
    to_last4: str | None = None
    segments: int | None = None
    encoding: str | None = None
    error_code: int | None = None
    retryable: bool = False
    missing: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """True when the provider really accepted the message."""
        return self.outcome is SendOutcome.ACCEPTED


class _Refused(Exception):
    def __init__(self, outcome: SendOutcome, reason: str, **extra: object) -> None:
        self.outcome = outcome
        self.reason = reason
        self.extra = extra
        super().__init__(reason)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    sms: OutboundSms
    segments: int
    encoding: str


class Dispatcher:
    """Sends SMS for actions, exactly once per idempotency key.

    Args:
        actions: The validated action set.
        provider: Where messages go.
        outbox: Durable outbox: the worker's SQLite file (the same across its restarts) or
            the fleet's PostgreSQL table.
        optouts: The opt-out list.
        clock: Time source (a ``ManualClock`` in tests).
        retry_policy: Back-off for retryable errors.
        pool_numbers: Pre-approved pool sender numbers (E.164) for ``pool`` actions.
        messaging_service_sid: Alternative to ``pool_numbers``: a Twilio Messaging
            Service that picks the pool sender.
        default_agent_number: Used when a call has no agent number of its own.
        status_callback_url: URL the provider posts delivery status to, or ``None``.
        validity_period: Seconds the provider may queue a message (in-call texts
            are useless hours later).
        ambiguity_checks: How many times to ask the provider after an ambiguous error; a message found at
            any check is the one sent, a resend needs every check used and "none" at the last.
        ambiguity_delay: Seconds to wait before each such check (the last comes checks x delay after the
            attempt: 6 s by default).
        max_resends: Resends allowed after the provider confirmed it has no message.
        rate_limiter: Spreads sends per sender number (segments per second); ``None``: no limit.
        lookup_skew: Clock difference (seconds) tolerated between this host and the provider
            when matching a lookup's candidates to an attempt (see the module docs).
        recovery_window: Rows older than this (seconds) are closed as ``expired`` by recovery,
            never sent: an in-call text is useless (or confusing) much later.
        recovery_interval: Seconds between recovery passes while :meth:`recovery` runs.
        start_spacing: Least wall-clock time between two sends' starts, or two sends' handling
            of their provider's answer, in this dispatcher (shared by every call of the
            process). Each start costs about a millisecond of event-loop time (rendering,
            number checks, the HTTP request), and each answer's handling (outbox writes, the
            events, the call's confirmation line) a fraction of one; a burst (one utterance
            firing many actions, or their answers coming back together) would hold the loop,
            and every call's audio, for that many milliseconds at once; spaced, the audio keeps
            its 20 ms cadence (the 50th of 50 answers is handled ~0.1 s later). 0 disables it.
        recovery_min_age: A periodic pass leaves rows alone that changed less than this many
            seconds ago (a send of another task may still be working on them).
        recovery_concurrency: Rows a recovery pass works on at once (a dead worker's sends
            are finished side by side, each waiting on its own provider lookups).
        whatsapp_sessions: WhatsApp's 24-hour windows, opened by inbound WhatsApp messages (the
            inbound router's store). ``None``: no window is known to be open, so WhatsApp actions
            send only their Content template (``content_sid``) and refuse free-form bodies.
        held_statuses: Where status callbacks that come before the create's answer wait for the send
            that records their SID (:meth:`handle_status`); default: the outbox (shared when it is the
            fleet's PostgreSQL); ``RedisHeldStatuses`` for workers with their own SQLite outboxes.
    """

    def __init__(
        self,
        *,
        actions: ActionSet,
        provider: SmsProvider,
        outbox: OutboxStore,
        optouts: OptOutStore,
        clock: Clock | None = None,
        retry_policy: RetryPolicy | None = None,
        pool_numbers: tuple[str, ...] = (),
        messaging_service_sid: str | None = None,
        default_agent_number: str | None = None,
        status_callback_url: str | None = None,
        validity_period: int | None = 600,
        ambiguity_checks: int = 3,
        ambiguity_delay: float = 2.0,
        max_resends: int = 1,
        rate_limiter: RateLimiter | None = None,
        lookup_skew: float = LOOKUP_SKEW,
        recovery_window: float = RECOVERY_WINDOW,
        recovery_interval: float = 60.0,
        recovery_min_age: float = 30.0,
        start_spacing: float = 0.002,
        recovery_concurrency: int = 8,
        whatsapp_sessions: WhatsAppSessions | None = None,
        held_statuses: HeldStatusStore | None = None,
    ) -> None:
        self.actions = actions
        self.provider = provider
        self.outbox = outbox
        self.optouts = optouts
        self.clock = clock or SystemClock()
        self.retry_policy = retry_policy or RetryPolicy()
        self._start_spacing = start_spacing
        self._next_turn = 0.0
        self._pool = tuple(normalize_e164(n, default_region=None, field="pool_numbers") for n in pool_numbers)
        self._messaging_service_sid = messaging_service_sid
        self._default_agent = (
            normalize_e164(default_agent_number, default_region=None, field="default_agent_number")
            if default_agent_number
            else None
        )
        self._status_callback_url = status_callback_url
        self._validity_period = validity_period
        self._ambiguity_checks = ambiguity_checks
        self._ambiguity_delay = ambiguity_delay
        self._max_resends = max_resends
        self._rate_limiter = rate_limiter
        self._lookup_skew = lookup_skew
        self.recovery_window = recovery_window
        self._recovery_interval = recovery_interval
        self._recovery_min_age = recovery_min_age
        self._recovery_concurrency = max(1, recovery_concurrency)
        self.whatsapp_sessions = whatsapp_sessions
        self.held_statuses: HeldStatusStore = held_statuses or outbox
        self._held_later: set[str] = set()  # recorded SIDs whose held status callback the store failed to give
        self._handlers: list[EventHandler] = []
        self._call_handlers: dict[str, list[EventHandler]] = {}
        # keys a task of this process is sending or resolving -> their (destination, body)
        self._in_flight: dict[str, tuple[str | None, str | None]] = {}
        self._lease_keeper: asyncio.Task[None] | None = None
        self.leases_lost = 0
        request_timeout = getattr(provider, "request_timeout", None)
        if request_timeout is not None and outbox.lease_seconds < request_timeout + _LEASE_HEADROOM:
            raise ValueError(
                f"the outbox lease ({outbox.lease_seconds:g} s, SMS_OUTBOX_LEASE) must be at least the provider's "
                f"request timeout ({request_timeout:g} s) + {_LEASE_HEADROOM:g} s: a request on the wire must end "
                "before another worker may take its row over, with room for the write that starts it")

    # -- events ---------------------------------------------------------------

    def subscribe(self, handler: EventHandler, *, call_id: str | None = None) -> Callable[[], None]:
        """Call ``handler(event)`` (sync or async) for every :class:`SmsEvent` (or those of one call).

        Args:
            handler: The subscriber.
            call_id: Only events of this call (a call's processor subscribes like this and
                unsubscribes when the call ends; events reach it without scanning other calls).

        Returns:
            A function that ends the subscription (idempotent).
        """
        handlers = self._handlers if call_id is None else self._call_handlers.setdefault(call_id, [])
        handlers.append(handler)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                handlers.remove(handler)
            if call_id is not None and not handlers and self._call_handlers.get(call_id) is handlers:
                del self._call_handlers[call_id]

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        """Subscriptions currently held (global and per call)."""
        return len(self._handlers) + sum(len(h) for h in self._call_handlers.values())

    async def publish(self, event: SmsEvent) -> None:
        """Hand ``event`` to this dispatcher's subscribers as if it had raised it.

        For events raised by another worker about a call this worker owns (a status callback
        applied to the shared outbox elsewhere, routed here).
        """
        await self._emit(event)

    async def _emit(self, event: SmsEvent) -> None:
        for handler in [*self._handlers, *self._call_handlers.get(event.call_id, ())]:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a broken subscriber must not break sending
                _log.exception("SMS event handler failed for %s", event.kind.value)

    def _event(self, kind: SmsEventKind, record: OutboxRecord, **extra: object) -> SmsEvent:
        return SmsEvent(
            kind=kind,
            key=record.key,
            call_id=record.call_id,
            action=record.action,
            to_masked=mask(record.to_number),
            sid=record.sid,
            segments=record.segments,
            encoding=record.encoding,
            reason=record.reason,
            error_code=record.error_code,
            at=self.clock.now(),
            **extra,  # type: ignore[arg-type]
        )

    # -- preparation ----------------------------------------------------------

    def variables_for(
        self, action: SmsAction, call: CallContext, variables: Mapping[str, object], to: str | None = None
    ) -> dict[str, object]:
        """Built-in plus call variables available to ``action``'s texts."""
        values: dict[str, object] = dict(variables)
        values.update(
            caller_number=call.caller_number or "",
            agent_number=call.agent_number or self._default_agent or "",
            call_id=call.call_id,
            action_name=action.name,
        )
        if to:
            values.update(to_last2=last_digits(to, 2), to_last4=last_digits(to, 4))
        return values

    def resolve_destination(self, action: SmsAction, call: CallContext, variables: Mapping[str, object]) -> str:
        """The E.164 destination of ``action`` in ``call``.

        Raises:
            InvalidPhoneNumberError: No caller number, or the number is invalid.
        """
        dest = self.actions.destination(action)
        if dest.kind == "static":
            assert dest.number is not None
            return dest.number
        if dest.kind == "variable":
            raw = variables.get(dest.variable or "")
            if raw is None or raw == "":
                raise InvalidPhoneNumberError("destination variable has no value", field=dest.variable)
            return normalize_e164(str(raw), default_region=self.actions.default_region, field=dest.variable)
        if not call.caller_number:
            raise InvalidPhoneNumberError("the caller's number is unknown", field="caller")
        return normalize_e164(call.caller_number, default_region=self.actions.default_region, field="caller")

    def _sender(self, action: SmsAction, call: CallContext, to: str) -> tuple[str | None, str | None]:
        if action.sender is SenderKind.POOL:
            if self._pool:
                digest = hashlib.sha256(to.encode()).digest()
                return self._pool[digest[0] % len(self._pool)], None  # sticky sender per destination
            if self._messaging_service_sid:
                return None, self._messaging_service_sid
            raise _Refused(SendOutcome.FAILED, "no_pool_sender")
        sender = call.agent_number or self._default_agent
        if not sender:
            raise _Refused(SendOutcome.FAILED, "no_agent_number")
        return normalize_e164(sender, default_region=None, field="agent_number"), None

    def render_body(self, action: SmsAction, values: Mapping[str, object]) -> str:
        """Render ``action``'s static (or preset) body with ``values``.

        Raises:
            MissingVariableError: A variable has no value (and, with the ``default``
                policy, no declared default either).
        """
        defaults = action.defaults() if action.on_missing_variable == "default" else None
        return self.actions.body_template(action).render(values, defaults=defaults)

    def render_content_variables(self, action: SmsAction, values: Mapping[str, object]) -> dict[str, str]:
        """Render ``action``'s Content template variables (each value is a template) with ``values``.

        Raises:
            MissingVariableError: Variables without a value (and, with the ``default`` policy, without
                a declared default), all of them named.
        """
        defaults = action.defaults() if action.on_missing_variable == "default" else None
        rendered: dict[str, str] = {}
        missing: dict[str, None] = {}
        for name, source in action.content.content_variables.items():
            try:
                rendered[name] = Template(source).render(values, defaults=defaults)
            except MissingVariableError as exc:
                missing.update(dict.fromkeys(exc.names))
        if missing:
            raise MissingVariableError(list(missing))
        return rendered

    def _text(self, action: SmsAction, values: Mapping[str, object], body: str | None) -> str:
        """The free-form text: the LLM's (cleaned) for a prompt action that has one, else the rendered template."""
        if body is None or action.content.mode != "prompt":
            try:
                text = self.render_body(action, values)
            except MissingVariableError as exc:
                raise _Refused(SendOutcome.SKIPPED, "missing_variable", missing=tuple(exc.names)) from None
        else:
            text = " ".join(_BODY_CONTROL.sub("", body).split())
        if not text.strip():
            raise _Refused(SendOutcome.FAILED, "empty_body")
        return text

    async def _window_open(
        self, action: SmsAction, call: CallContext, variables: Mapping[str, object]
    ) -> bool | None:
        """Whether the caller's WhatsApp session with the sender is open (``None``: the store did not answer)."""
        if action.channel != "whatsapp" or self.whatsapp_sessions is None:
            return False
        try:
            to = self.resolve_destination(action, call, variables)
            from_, _ = self._sender(action, call, to)
        except (InvalidPhoneNumberError, _Refused):
            return False  # preparing refuses the send with the right reason
        if from_ is None:
            return False
        try:
            return await self.whatsapp_sessions.is_open(to, from_, now=self.clock.now())
        except Exception as exc:  # unknown: a Content template still goes; a free-form body waits (retryable)
            _log.warning("WhatsApp session store unavailable (%s)", exc.__class__.__name__)
            return None

    def _prepare_whatsapp(
        self,
        action: SmsAction,
        values: Mapping[str, object],
        body: str | None,
        *,
        key: str,
        to: str,
        from_: str,
        window_open: bool | None,
    ) -> _Prepared:
        """A WhatsApp message: the free-form body inside the session, else the Content template, else refused."""
        content = action.content
        common = dict(to=to, from_=from_, key=key, channel="whatsapp", status_callback=self._status_callback_url,
                      validity_period=self._validity_period)
        if content.mode != "content" and (window_open or content.content_sid is None):
            if window_open is None:  # the session store did not answer: not "closed", try again later
                raise _Refused(SendOutcome.FAILED, "whatsapp_session_unknown", retryable=True)
            if not window_open:
                raise _Refused(SendOutcome.FAILED, "whatsapp_window_closed")
            text = self._text(action, values, body)
            if len(text) > MAX_BODY_CHARS:
                raise _Refused(SendOutcome.FAILED, "too_long", segments=1, encoding=WHATSAPP_ENCODING)
            sms = OutboundSms(body=text, media_urls=action.media_urls, **common)  # type: ignore[arg-type]
            return _Prepared(sms=sms, segments=1, encoding=WHATSAPP_ENCODING)
        try:
            rendered = self.render_content_variables(action, values)
        except MissingVariableError as exc:
            raise _Refused(SendOutcome.SKIPPED, "missing_variable", missing=tuple(exc.names)) from None
        sms = OutboundSms(body="", content_sid=content.content_sid,  # type: ignore[arg-type]
                          content_variables=content_variables_json(rendered) if rendered else None, **common)
        return _Prepared(sms=sms, segments=1, encoding=WHATSAPP_ENCODING)

    def _prepare(
        self,
        action: SmsAction,
        call: CallContext,
        variables: Mapping[str, object],
        key: str,
        body: str | None,
        *,
        window_open: bool | None = False,
    ) -> _Prepared:
        try:
            to = self.resolve_destination(action, call, variables)
        except InvalidPhoneNumberError as exc:
            raise _Refused(SendOutcome.FAILED, "invalid_number", detail=exc.reason) from None
        from_, service = self._sender(action, call, to)
        values = self.variables_for(action, call, variables, to)
        if action.channel == "whatsapp":
            assert from_ is not None  # WhatsApp actions send from the agent's own number (validated at load)
            return self._prepare_whatsapp(action, values, body, key=key, to=to, from_=from_,
                                          window_open=window_open)
        text = self._text(action, values, body)
        info = count_segments(text, smart_encoding=action.smart_encoding)
        cap = action.max_segments or (PROMPT_MAX_SEGMENTS if action.content.mode == "prompt" and body else None)
        if len(info.body) > MAX_BODY_CHARS or (cap is not None and info.segments > cap):
            raise _Refused(SendOutcome.FAILED, "too_long", segments=info.segments, encoding=info.encoding)
        sms = OutboundSms(
            to=to,
            from_=from_,
            messaging_service_sid=service,
            body=info.body,
            key=key,
            media_urls=action.media_urls,
            status_callback=self._status_callback_url,
            validity_period=self._validity_period,
        )
        return _Prepared(sms=sms, segments=info.segments, encoding=info.encoding)

    # -- sending ----------------------------------------------------------------

    async def _take_turn(self) -> None:
        """Wait for this send's turn on the event loop, to start or to handle its answer (see ``start_spacing``).

        Real time: it is about the event loop, not the dispatcher's clock.
        """
        if self._start_spacing <= 0:
            return
        now = time.monotonic()
        turn = max(now, self._next_turn)
        self._next_turn = turn + self._start_spacing
        if turn > now:
            try:
                await asyncio.sleep(turn - now)
            except asyncio.CancelledError:
                if self._next_turn == turn + self._start_spacing:  # give the slot back when it was the last
                    self._next_turn = turn
                raise

    async def send(
        self,
        action: SmsAction | str,
        *,
        call: CallContext,
        turn: int,
        variables: Mapping[str, object] | None = None,
        body: str | None = None,
    ) -> SendResult:
        """Send ``action``'s SMS for ``call`` at ``turn`` (at most once per key).

        Never raises for send failures: the outcome says what happened. Safe to run
        as a background task; cancelling it after the request was written leaves the
        row ``sending`` for :meth:`recover` (it is never silently lost).

        Args:
            action: The action or its name.
            call: The live call.
            turn: Index of the conversation turn that triggered the send.
            variables: Variable values extracted so far.
            body: LLM-written body for ``prompt`` actions (``None``: use the template).

        Returns:
            A :class:`SendResult`.
        """
        if isinstance(action, str):
            action = self.actions.get(action)
        await self._take_turn()
        variables = variables or {}
        key = idempotency_key(call.call_id, action.name, turn)
        now = self.clock.now()
        base = OutboxRecord(key=key, call_id=call.call_id, action=action.name, turn=turn, status="pending",
                            created_at=now, updated_at=now, channel=action.channel)
        try:
            window_open = await self._window_open(action, call, variables)
            prepared = self._prepare(action, call, variables, key, body, window_open=window_open)
        except _Refused as refused:
            return await self._refuse(base, refused)
        sms = prepared.sms
        record = dataclasses.replace(
            base,
            to_number=sms.to,
            from_number=sms.from_,
            messaging_service_sid=sms.messaging_service_sid,
            body=sms.body,
            media_urls=sms.media_urls,
            segments=prepared.segments,
            encoding=prepared.encoding,
            channel=sms.channel,
            content_sid=sms.content_sid,
            content_variables=sms.content_variables,
        )
        if await self.optouts.is_opted_out(sms.to):
            return await self._refuse(record, _Refused(SendOutcome.FAILED, "opted_out"))
        try:
            outcome, stored = await self.outbox.claim(
                record, once_per_call=action.once_per_call, max_per_call=self.actions.max_sends_per_call,
                max_per_destination=self.actions.max_sends_per_destination,
            )
        except OutboxUnavailableError as exc:  # nothing recorded, nothing sent: an honest, retryable failure
            _log.warning("SMS %s for action %s not sent: %s", key, action.name, exc)
            event = dataclasses.replace(self._event(SmsEventKind.FAILED, record), reason="outbox_unavailable",
                                        retryable=True)
            await self._emit(event)
            return self._result(record, SendOutcome.FAILED, reason="outbox_unavailable", retryable=True)
        if outcome is ClaimOutcome.LIMIT_REACHED:
            return await self._refuse(record, _Refused(SendOutcome.SKIPPED, "limit_reached"))
        if outcome is ClaimOutcome.DUPLICATE:
            _log.info("SMS %s for action %s: duplicate of %s (%s)", key, action.name, stored.key, stored.status)
            return self._result(stored, SendOutcome.DUPLICATE, reason=f"already_{stored.status}")
        self._hold(key, text=(stored.to_number, stored.body))
        try:
            await self._emit(self._event(SmsEventKind.QUEUED, stored))
            return await self._deliver(stored, sms, resends_left=self._max_resends, final="unconfirmed")
        except LeaseLostError as lost:
            return await self._lease_lost(stored, lost)
        except OutboxUnavailableError as exc:  # mid-send: a request may be out; recovery settles the row later
            _log.warning("SMS %s: outbox unreachable mid-send (%s); recovery will settle it", key, exc)
            event = dataclasses.replace(self._event(SmsEventKind.FAILED, stored), reason="unconfirmed")
            await self._emit(event)
            return self._result(stored, SendOutcome.FAILED, reason="unconfirmed", retryable=False)
        finally:
            self._drop(key)

    # -- leases -------------------------------------------------------------------

    def _hold(self, key: str, *, text: tuple[str | None, str | None]) -> None:
        """Mark ``key`` as worked on here; its lease is renewed until :meth:`_drop`.

        ``text`` (its destination and body) lets a lookup tell a twin in flight (see :meth:`_candidate`).
        """
        self._in_flight[key] = text
        if self._lease_keeper is None or self._lease_keeper.done():
            self._lease_keeper = asyncio.get_running_loop().create_task(self._keep_leases(), name="outbox-leases")

    def _drop(self, key: str) -> None:
        self._in_flight.pop(key, None)
        self.outbox.forget(key)  # a send that ended unfinished (cancelled): recovery may take it (no-op otherwise)
        if not self._in_flight and self._lease_keeper is not None:
            self._lease_keeper.cancel()  # nothing in flight: nothing to renew
            self._lease_keeper = None

    async def aclose(self) -> None:
        """Stop renewing leases (call after the sends of this worker ended or were cancelled)."""
        keeper, self._lease_keeper = self._lease_keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_leases(self) -> None:
        """Renew the leases of the sends in flight every third of a lease, in real time."""
        interval = self.outbox.lease_seconds / 3
        while self._in_flight:
            await asyncio.sleep(interval)
            try:
                lost = await self.outbox.renew_leases(list(self._in_flight), now=self.clock.now())
            except Exception as exc:  # the next renewal may get through; the lease has two more thirds
                _log.warning("outbox lease renewal failed (%s)", exc.__class__.__name__)
                continue
            for key in lost:
                _log.warning("SMS %s: lease taken over by another worker", key)

    async def _lease_lost(self, record: OutboxRecord, lost: LeaseLostError) -> SendResult:
        """Another worker took the row over: write nothing more; the caller hears "couldn't confirm"."""
        self.leases_lost += 1
        _log.warning("SMS %s: lease lost to %s; that worker finishes the send", record.key, lost.owner)
        event = dataclasses.replace(self._event(SmsEventKind.FAILED, record), reason="unconfirmed", retryable=True)
        await self._emit(event)
        return self._result(record, SendOutcome.FAILED, reason="unconfirmed", retryable=True)

    async def _refuse(self, record: OutboxRecord, refused: _Refused) -> SendResult:
        status = "skipped" if refused.outcome is SendOutcome.SKIPPED else "failed"
        record = dataclasses.replace(record, status=status, reason=refused.reason)
        segments = refused.extra.get("segments")
        encoding = refused.extra.get("encoding")
        if isinstance(segments, int):
            record = dataclasses.replace(record, segments=segments, encoding=str(encoding))
        _log.info("SMS %s for action %s not sent: %s", record.key, record.action, refused.reason)
        try:
            outcome, stored = await self.outbox.claim(record, once_per_call=False, max_per_call=1 << 30)
        except OutboxUnavailableError:  # the refusal stands (nothing was sent); only its record is missing
            _log.warning("SMS %s: refusal not recorded (outbox unreachable)", record.key)
            outcome = ClaimOutcome.CREATED
        if outcome is ClaimOutcome.DUPLICATE:  # the key stands for a real send: report that, change nothing
            return self._result(stored, SendOutcome.DUPLICATE, reason=f"already_{stored.status}")
        retryable = refused.outcome is SendOutcome.SKIPPED or bool(refused.extra.get("retryable"))
        await self._emit(self._event(SmsEventKind.FAILED, record, retryable=retryable))
        missing = refused.extra.get("missing", ())
        return self._result(record, refused.outcome, reason=refused.reason, missing=tuple(missing),  # type: ignore[arg-type]
                            retryable=retryable)

    def _result(self, record: OutboxRecord, outcome: SendOutcome, **extra: object) -> SendResult:
        fields: dict[str, object] = dict(
            outcome=outcome,
            key=record.key,
            action=record.action,
            reason=record.reason,
            sid=record.sid,
            to_masked=mask(record.to_number) if record.to_number else None,
            to_last2=last_digits(record.to_number, 2) if record.to_number else None,
            to_last4=last_digits(record.to_number, 4) if record.to_number else None,
            segments=record.segments,
            encoding=record.encoding,
            error_code=record.error_code,
        )
        fields.update(extra)
        return SendResult(**fields)  # type: ignore[arg-type]

    async def _attempt(self, record: OutboxRecord, sms: OutboundSms) -> ProviderReceipt:
        async def once() -> ProviderReceipt:
            if self._rate_limiter is not None:
                try:
                    # one bucket per sender address: a number's WhatsApp sender is not its SMS sender
                    await self._rate_limiter.acquire(sms.from_address or sms.messaging_service_sid or "",
                                                     record.segments or 1)
                except TimeoutError:
                    raise SendError("sender_busy", kind=SendErrorKind.RETRYABLE) from None
            started = time.monotonic()
            try:
                await self.outbox.update(record.key, now=self.clock.now(), status="sending", attempts="+1")
            except OutboxUnavailableError:  # not marked sending, so not sent: safe to try again
                raise SendError("outbox_unavailable", kind=SendErrorKind.RETRYABLE) from None
            # The write set a lease of lease_seconds, at the latest when it returned. A request must end
            # before that lease can run out (another worker may then take the row, find no message and
            # send it): refuse to start one the lease cannot cover, and cut off one that outlives it.
            left = self.outbox.lease_seconds - (time.monotonic() - started) - _LEASE_MARGIN
            if left <= (getattr(self.provider, "request_timeout", None) or 0):
                _log.warning("SMS %s: marking it sending took %.1f s; not sending on a short lease", record.key,
                             time.monotonic() - started)
                raise SendError("lease_short", kind=SendErrorKind.RETRYABLE)
            try:
                async with asyncio.timeout(left):
                    return await self.provider.send(sms)
            except TimeoutError:
                raise SendError("timeout", kind=SendErrorKind.AMBIGUOUS) from None
            except SendError:
                raise
            except Exception as exc:  # the provider's bug must not become the caller's silence
                raise _unclassified(record.key, "send", exc, reason="provider_error") from exc

        def log_retry(attempt: int, exc: SendError, delay: float) -> None:
            _log.warning("SMS %s attempt %d: %s; retrying in %.2fs", record.key, attempt, exc.reason, delay)

        return await retry(once, policy=self.retry_policy, clock=self.clock, on_retry=log_retry)

    async def _deliver(self, record: OutboxRecord, sms: OutboundSms, *, resends_left: int, final: str) -> SendResult:
        try:
            receipt = await self._attempt(record, sms)
        except SendError as exc:
            if exc.ambiguous:
                return await self._resolve_ambiguous(record, sms, exc, resends_left=resends_left, final=final)
            await self._take_turn()
            return await self._fail(record, exc)
        await self._take_turn()  # answers come back in bursts (a send's start was spaced; its answer may not be)
        return await self._accept(record, receipt)

    async def _found(self, record: OutboxRecord, receipt: ProviderReceipt) -> SendResult:
        """Settle a row with the message a lookup found (and claimed) for it.

        A message the provider already failed (a filter, an unregistered sender settle within a second) is
        a failure with its delivery reason, never "sent"; it keeps its SID, so it is never sent again.
        """
        if receipt.status in FAILED_STATUSES:
            code = receipt.error_code
            with contextlib.suppress(Exception):  # a callback that came first says why, when the lookup does not
                held = await self.held_statuses.take_held_status(receipt.sid)
                code = code or (held[1] if held else None)
            _log.info("SMS %s: the message found (%s) already %s at %s", record.key, receipt.sid, receipt.status,
                      self.provider.name)
            return await self._fail(record, SendError(delivery_reason(code), kind=SendErrorKind.PERMANENT, code=code))
        return await self._accept(record, receipt)

    async def _accept(self, record: OutboxRecord, receipt: ProviderReceipt) -> SendResult:
        # the delivery column is left to record_delivery (forward only): a lookup claims the SID before this
        # write, and a status callback may have failed the message in between
        fields = dict(status="accepted", sid=receipt.sid, reason=None, error_code=None,
                      segments=receipt.segments or record.segments)
        recorded = False
        try:
            stored = await self.outbox.update(record.key, now=self.clock.now(), release=True, **fields)
            recorded = True
        except SidTakenError:
            # a lookup of another row already took this SID for itself: which text it is cannot be told
            _log.warning("SMS %s: SID %s already recorded for another row; unconfirmed", record.key, receipt.sid)
            return await self._fail(record, SendError("sid_taken", kind=SendErrorKind.AMBIGUOUS),
                                    status="unconfirmed")
        except (OutboxUnavailableError, LeaseLostError) as exc:
            # the provider accepted it: that is the truth the caller hears. The row is left as it stands;
            # recovery (this worker's once the outbox answers, or the one that took the lease) finds this
            # message by lookup before any resend, and records it
            _log.warning("SMS %s accepted as %s but not recorded here (%s)", record.key, receipt.sid,
                         exc.__class__.__name__)
            stored = dataclasses.replace(record, **fields)  # type: ignore[arg-type]
        if recorded and receipt.status not in ("queued", "accepted"):  # a lookup found it further along (sent...)
            with contextlib.suppress(Exception):  # only the delivery column: the next callback moves it anyway
                stored = (await self.outbox.record_delivery(receipt.sid, receipt.status, None,
                                                            now=self.clock.now()))[0] or stored
        _log.info("SMS %s accepted by %s as %s (%s segment(s))", record.key, self.provider.name, receipt.sid,
                  stored.segments)
        await self._emit(self._event(SmsEventKind.SENT, stored))
        if recorded:  # a status callback that came before this answer applies now (after SENT: it follows it)
            await self._apply_held_or_later(receipt.sid, key=record.key)
        return self._result(stored, SendOutcome.ACCEPTED)

    async def _apply_held_or_later(self, sid: str, *, key: str) -> None:
        """Apply ``sid``'s held status callback; when the store fails twice, recovery's next pass tries again."""
        for attempt in (1, 2):
            try:
                await self._apply_held(sid)
                return
            except Exception as exc:  # the held status stays held (see _apply_held)
                _log.warning("SMS %s: held status callback not applied (%s)", key, exc.__class__.__name__)
                if attempt == 1:
                    await self.clock.sleep(_HELD_RETRY_DELAY)
        self._held_later.add(sid)

    async def _fail(self, record: OutboxRecord, exc: SendError, *, status: str | None = None) -> SendResult:
        status = status or ("ambiguous" if exc.ambiguous else "failed")
        try:
            stored = await self.outbox.update(
                record.key, now=self.clock.now(), release=True, status=status, reason=exc.reason, error_code=exc.code
            )
        except OutboxUnavailableError:
            # the row could not be closed: recovery settles it later (it looks the message up before any
            # resend), so the caller cannot be told "not sent": only that it could not be confirmed
            _log.warning("SMS %s: outbox unreachable while recording a failure; recovery will settle it",
                         record.key)
            stored = dataclasses.replace(record, status=status, reason="unconfirmed", error_code=exc.code)
            told = SendError("unconfirmed", kind=SendErrorKind.AMBIGUOUS, code=exc.code)
        else:
            told = exc
        if exc.reason == "opted_out" and stored.to_number:
            await self.optouts.opt_out(stored.to_number, now=self.clock.now())
        _log.warning("SMS %s failed: %s", record.key, told)
        reason = "unconfirmed" if told.ambiguous else told.reason
        event = dataclasses.replace(self._event(SmsEventKind.FAILED, stored), reason=reason,
                                    retryable=told.kind is not SendErrorKind.PERMANENT)
        await self._emit(event)
        return self._result(stored, SendOutcome.FAILED, reason=reason, retryable=event.retryable)

    async def _candidate(self, record: OutboxRecord, sms: OutboundSms) -> ProviderReceipt | None:
        """This row's message among the provider's candidates, claimed for it; ``None`` when none can be.

        Raises:
            SendError: The provider could not answer, or a candidate may be this text or another one
                (``maybe``) and no other row owns it: the answer is unknown.
        """
        if sms.content_sid:
            # Twilio's Message resource does not say which Content template made it: between the same two
            # addresses, our template cannot be told from another message (a bot's answer, a sibling send).
            # No lookup can confirm it, so none may resend it either: the row stays unconfirmed.
            raise SendError("lookup_impossible", kind=SendErrorKind.RETRYABLE)
        current = await self.outbox.get(record.key) or record
        started = current.first_attempt_at if current.first_attempt_at is not None else current.created_at
        try:
            candidates = await self.provider.find_sent(sms, since=started - self._lookup_skew)
        except SendError:
            raise
        except Exception as exc:  # an unreadable answer is an unknown one, never a crash
            raise _unclassified(record.key, "lookup", exc, reason="lookup_failed") from exc
        maybe = False
        # another send of this process with the same text to the same number, still in flight: an unrecorded
        # message may be its own (its answer not back yet), so none is claimed for this row meanwhile
        twin = any(key != record.key and text == (record.to_number, record.body)
                   for key, text in self._in_flight.items())
        for receipt in candidates:
            if receipt.match == "maybe" or twin:
                # this text as the provider may have changed it, or another one (or a twin's): unless another row
                # owns that message, neither "this one" nor "none" (a resend could be a second text)
                owner = await self.outbox.by_sid(receipt.sid)
                maybe = maybe or owner is None or owner.key == record.key
                continue
            claimed = await self.outbox.claim_sid(record.key, receipt.sid, now=self.clock.now())
            if claimed is not None:
                return receipt
            _log.info("SMS %s: candidate %s belongs to another row; not this attempt's", record.key, receipt.sid)
        if maybe:
            raise SendError("lookup_inconclusive", kind=SendErrorKind.AMBIGUOUS)
        return None

    async def _resolve_ambiguous(
        self, record: OutboxRecord, sms: OutboundSms, exc: SendError, *, resends_left: int, final: str,
        checks: int | None = None,
    ) -> SendResult:
        """Ask the provider whether the ambiguous attempt created the message; resend only if it did not.

        Args:
            record: The row.
            sms: The message as sent.
            exc: The ambiguous error.
            resends_left: Resends allowed when the provider positively has no such message.
            final: Status of the row when the answer stays unknown: ``unconfirmed`` when the
                caller is told (never resent later), ``ambiguous`` during recovery (asked again
                by the next pass, until the recovery window closes it).
            checks: Lookups to make (default ``ambiguity_checks``; recovery asks once about an attempt
                long over, whose message had all the time to be created and listed).
        """
        if sms.content_sid:  # no lookup can tell a template message apart: its truth cannot be known (never resent)
            _log.warning("SMS %s ambiguous (%s): a Content-template message cannot be looked up; unconfirmed",
                         record.key, exc.reason)
            return await self._fail(record, exc, status="unconfirmed")
        await self.outbox.update(record.key, now=self.clock.now(), status="ambiguous", reason=exc.reason,
                                 error_code=exc.code)
        _log.warning("SMS %s ambiguous (%s): checking with %s before any resend", record.key, exc.reason,
                     self.provider.name)
        # Every check is used before a resend: a message created late (the request outlived its deadline) or
        # listed late (a replica, a cache in front of lookups) shows up at a later check. Only a "none" at the
        # last one, checks x delay after the attempt, lets the text go again.
        none_at_last = False
        checks = self._ambiguity_checks if checks is None else checks
        for _ in range(checks):
            await self.clock.sleep(self._ambiguity_delay)
            try:
                found = await self._candidate(record, sms)
            except SendError:
                none_at_last = False  # the provider could not answer: ask again, never guess
                continue
            if found is not None:
                return await self._found(record, found)
            none_at_last = True
        if none_at_last and resends_left > 0:
            _log.info("SMS %s: provider has no such message after %d check(s); resending", record.key, checks)
            return await self._deliver(record, sms, resends_left=resends_left - 1, final=final)
        return await self._fail(record, exc, status=final)

    # -- recovery and status ----------------------------------------------------

    def _outbound(self, record: OutboxRecord) -> OutboundSms:
        assert record.to_number is not None and record.body is not None
        return OutboundSms(
            to=record.to_number,
            from_=record.from_number,
            messaging_service_sid=record.messaging_service_sid,
            body=record.body,
            key=record.key,
            media_urls=record.media_urls,
            status_callback=self._status_callback_url,
            validity_period=self._validity_period,
            channel="whatsapp" if record.channel == "whatsapp" else "sms",
            content_sid=record.content_sid,
            content_variables=record.content_variables,
        )

    async def recover(self, *, min_age: float = 0.0) -> list[SendResult]:
        """Finish sends a crashed process or an ended call left unfinished.

        * Rows a task of this process is still working on are left alone, and so are rows
          that changed less than ``min_age`` seconds ago and rows another worker holds the
          lease of (a worker that died is known by its expired lease).
        * Rows older than :attr:`recovery_window` are closed as ``expired`` and never sent
          (a ``sending``/``ambiguous`` one is looked up once first, so a text that did go out
          is recorded as ``accepted``, never as expired).
        * ``pending`` rows (no request made) are sent; ``sending`` and ``ambiguous`` rows are
          looked up at the provider first and resent only if it positively has none.

        Rows the caller was told about (``unconfirmed``, ``failed``) are terminal and never
        looked at here.

        Args:
            min_age: Seconds since a row's last change before this pass touches it.

        Returns:
            One result per row handled.
        """
        await self._apply_held_later()
        results: list[SendResult] = []
        seen: set[str] = set()  # rows handled in this pass are not taken again by it (a released "ambiguous")
        while True:
            now = self.clock.now()
            taken = await self.outbox.take_unfinished(now=now, min_age=min_age, limit=_RECOVERY_BATCH,
                                                      exclude=set(self._in_flight) | seen)
            seen.update(r.key for r in taken)
            results += await self._recover_batch(taken, now)
            if len(taken) < _RECOVERY_BATCH:
                return results

    async def _recover_batch(self, taken: list[OutboxRecord], now: float) -> list[SendResult]:
        for record in taken:  # held (their leases renewed) from now on, not only while their turn comes
            self._hold(record.key, text=(record.to_number, record.body))
        slots = asyncio.Semaphore(self._recovery_concurrency)

        async def one(record: OutboxRecord) -> SendResult | None:
            async with slots:
                try:
                    return await self._recover_one(record, now)
                except LeaseLostError as lost:
                    self.leases_lost += 1
                    _log.warning("recovery of SMS %s: lease lost to %s", record.key, lost.owner)
                    return None
                finally:
                    self._drop(record.key)

        try:
            outcomes = await asyncio.gather(*(one(r) for r in taken), return_exceptions=True)
        finally:
            for record in taken:
                self._drop(record.key)
        results = []
        for record, outcome in zip(taken, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                _log.error("recovery of SMS %s failed (%s); the next pass tries again", record.key,
                           outcome.__class__.__name__)
            elif outcome is not None:
                results.append(outcome)
        return results

    async def _recover_one(self, record: OutboxRecord, now: float) -> SendResult:
        if record.to_number is None or record.body is None:  # nothing to send it with: close it, never retake it
            return await self._fail(record, SendError("incomplete_row", kind=SendErrorKind.PERMANENT), status="failed")
        sms = self._outbound(record)
        _log.info("recovering SMS %s left %s", record.key, record.status)
        if now - record.created_at > self.recovery_window:
            found = None
            if record.status != "pending" or record.attempts:
                with contextlib.suppress(SendError):
                    found = await self._candidate(record, sms)
            if found is not None:
                return await self._found(record, found)
            _log.info("SMS %s expired unsent (older than %.0f s)", record.key, self.recovery_window)
            return await self._fail(record, SendError("expired", kind=SendErrorKind.PERMANENT), status="expired")
        if record.status == "pending" and record.attempts == 0:
            return await self._deliver(record, sms, resends_left=self._max_resends, final="ambiguous")
        crash = SendError("interrupted", kind=SendErrorKind.AMBIGUOUS)
        # the last write (marking it sending, or the last pass) plus the longest request: when the checks' span
        # has passed since, the message had its time to appear: one lookup answers (start-up stays quick)
        over = record.updated_at + (getattr(self.provider, "request_timeout", None) or 0)
        long_over = now - over >= self._ambiguity_checks * self._ambiguity_delay
        return await self._resolve_ambiguous(record, sms, crash, resends_left=self._max_resends, final="ambiguous",
                                             checks=1 if long_over else None)

    @contextlib.asynccontextmanager
    async def recovery(self) -> AsyncIterator[None]:
        """Recover now, then every ``recovery_interval`` seconds while the block runs.

        Use around the life of a worker (the live agent's start-up and shut-down)::

            async with dispatcher.recovery():
                await serve()
        """
        results = await self.recover()
        if results:
            _log.info("recovered %d unfinished send(s) from the outbox", len(results))

        async def periodically() -> None:
            while True:
                await self.clock.sleep(self._recovery_interval)
                try:
                    await self.recover(min_age=self._recovery_min_age)
                except Exception:  # a broken pass must not end recovery for the worker's life
                    _log.exception("periodic outbox recovery failed")

        task = asyncio.get_running_loop().create_task(periodically(), name="outbox-recovery")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def handle_status(self, sid: str, status: str, error_code: int | None = None) -> SmsEvent | None:
        """Apply a provider status callback.

        Duplicate and out-of-order callbacks change nothing and raise no event.

        Returns:
            The ``DELIVERED`` or ``FAILED`` event raised, or ``None``.
        """
        return await self._apply_status(sid, status, error_code, hold=True)

    async def _apply_status(self, sid: str, status: str, error_code: int | None, *, hold: bool) -> SmsEvent | None:
        record, changed = await self.outbox.record_delivery(sid, status, error_code, now=self.clock.now())
        if record is None and not hold:  # taken from the held ones for a recorded SID, whose row is gone
            _log.warning("held status callback for %s dropped: its row is gone", sid)
            return None
        if record is None:
            # No row has this SID yet: Twilio can post a status (a filter fails a message within a second)
            # before the create's answer reaches the sender. Held for the send that records the SID
            # (:meth:`_accept`); if it was recorded meanwhile, the sender may have looked before this was
            # held: apply it here (whoever takes it applies it, once).
            await self.held_statuses.hold_status(sid, status, error_code, now=self.clock.now())
            if await self.outbox.by_sid(sid) is None:
                _log.info("status callback for %s held: no message has that SID yet", sid)
                return None
            return await self._apply_held(sid)
        if not changed:
            return None
        if status in ("delivered", "read"):
            event = self._event(SmsEventKind.DELIVERED, record, delivery_report=True)
        elif status in FAILED_STATUSES:
            reason = delivery_reason(error_code)
            if reason == "opted_out" and record.to_number:
                await self.optouts.opt_out(record.to_number, now=self.clock.now())
            event = dataclasses.replace(self._event(SmsEventKind.FAILED, record, delivery_report=True), reason=reason,
                                        error_code=error_code)
        else:
            return None
        await self._emit(event)
        return event

    async def _apply_held(self, sid: str) -> SmsEvent | None:
        """Apply the status callback held for ``sid`` (now recorded), if nobody else took it.

        Raises:
            Exception: The store failed; a status already taken is held again (best effort) first.
        """
        held = await self.held_statuses.take_held_status(sid)
        if held is None:
            return None
        try:
            return await self._apply_status(sid, *held, hold=False)
        except Exception:
            with contextlib.suppress(Exception):
                await self.held_statuses.hold_status(sid, *held, now=self.clock.now())
            raise

    async def _apply_held_later(self) -> None:
        """Recovery's part: the held status callbacks a send could not apply when it recorded their SIDs."""
        for sid in list(self._held_later):
            try:
                await self._apply_held(sid)
            except Exception as exc:
                _log.warning("held status callback for %s still not applied (%s)", sid, exc.__class__.__name__)
            else:
                self._held_later.discard(sid)
