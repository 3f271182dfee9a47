"""Twilio adapter: the real async ``twilio`` client, errors classified once here.

* The HTTP client is created lazily inside the event loop that uses it
  (``AsyncTwilioHttpClient`` opens an aiohttp session) and never retries by itself
  (its ``max_retries`` would resend POSTs on 5xx and create duplicates).
* By default that loop is a private one on its own thread (:class:`LoopThread`): the client's
  per-request CPU (about a millisecond) never runs between the pipeline's audio frames, and
  every call the process handles shares one connection pool.
* Every request has an explicit deadline (``asyncio.timeout``): the client's own
  ``timeout`` argument is ignored by the SDK.
* ``base_url`` points the client at a loopback peer in tests.
* WhatsApp goes through the same Messages API: ``whatsapp:+E164`` addresses, and a Content
  template (``ContentSid`` + ``ContentVariables``, no ``Body``/``MediaUrl``) where the message
  has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import email.utils
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.rest.api.v2010.account.message import MessageInstance

from incall_sms.errors import SendError, SendErrorKind
from incall_sms.providers.base import FAILED_STATUSES, OutboundSms, ProviderReceipt, delivery_reason
from incall_sms.providers.http_log import mask_twilio_logs
from incall_sms.providers.loop_thread import LoopThread
from incall_sms.providers.server_clock import ServerClock
from incall_sms.providers.stored_text import stored_form

__all__ = ["TwilioProvider", "classify_twilio_error"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

_PERMANENT_CODES: dict[int, str] = {
    21211: "invalid_number",
    21214: "invalid_number",
    21217: "invalid_number",
    21401: "invalid_number",
    21407: "region_not_allowed",
    21408: "region_not_allowed",
    21610: "opted_out",
    21612: "unreachable",
    21614: "not_mobile",
    21606: "sender_not_capable",
    21659: "sender_not_capable",
    21212: "sender_invalid",
    21660: "sender_invalid",
    21602: "empty_body",
    21617: "too_long",
    21620: "invalid_media",
    21623: "invalid_media",
    20003: "auth_failed",
    20404: "not_found",
    30034: "sender_unregistered",
    # WhatsApp (https://www.twilio.com/docs/whatsapp/api/error-code-mapping)
    63016: "whatsapp_window_closed",  # free-form message outside the 24-hour session: a template is needed
    63007: "sender_not_capable",  # the From address has no WhatsApp sender (channel) on the account
    63002: "sender_not_capable",  # the channel could not find the From address
    63003: "not_on_whatsapp",  # the To address is not an active WhatsApp user
    63024: "not_on_whatsapp",  # invalid message recipient
    63014: "blocked",  # the recipient blocked the sender
    63005: "rejected",  # the channel did not accept the content
    63021: "rejected",  # invalid content for the channel
}
_RETRYABLE_CODES = {20429: "rate_limited", 14107: "rate_limited", 63018: "rate_limited"}

#: A lookup that has to read more messages (or pages) than this without reaching the send time gives up
#: (answer unknown, so no resend) instead of paging forever.
_MAX_LOOKUP_MESSAGES = 2000
_MAX_LOOKUP_PAGES = 25
#: A Message resource's SID: SM (text) or MM (media) and 32 hex digits.
_MESSAGE_SID = re.compile(r"(?:SM|MM)[0-9a-fA-F]{32}")
#: Seconds past a request's own deadline after which the awaiting side gives up on the HTTP thread.
_BACKSTOP_S = 2.0


def _date_headers_to(clock: ServerClock) -> aiohttp.TraceConfig:
    """An aiohttp trace config handing the ``Date`` header of Twilio's own fresh answers to ``clock``.

    Successful JSON answers only, none from a cache (``Age``): a gateway's error page or a stored answer
    carries another clock.
    """
    config = aiohttp.TraceConfig()

    async def on_request_end(_session: object, _context: object, params: aiohttp.TraceRequestEndParams) -> None:
        response = params.response
        if 200 <= response.status < 300 and "Age" not in response.headers \
                and response.content_type == "application/json":
            clock.observe(response.headers.get("Date"))

    config.on_request_end.append(on_request_end)
    return config


#: The ``Retry-After`` seconds of 429 answers to the request running in this context (:meth:`TwilioProvider._create`
#: sets a list; the trace config below fills it: the twilio exception carries no headers).
_RETRY_AFTER: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("twilio_retry_after", default=None)


def retry_after_seconds(value: str | None, *, date: str | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds, or an HTTP date.

    An HTTP date is read against the answer's own ``Date`` (``date``) when it has a readable one (the
    two come from one clock), else against this host's clock.

    Returns:
        The seconds (>= 0), or ``None`` when the header is missing or unreadable.
    """
    value = (value or "").strip()
    if value.isascii() and value.isdigit():  # (str.isdigit also takes "²" and other scripts' digits)
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    now = dt.datetime.now(dt.UTC)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        answered = email.utils.parsedate_to_datetime(date or "")
        if answered.tzinfo is not None:
            now = answered
    return max(0.0, (when - now).total_seconds())


def _retry_after_headers() -> aiohttp.TraceConfig:
    """An aiohttp trace config handing the ``Retry-After`` of a 429 to the request's :data:`_RETRY_AFTER`."""
    config = aiohttp.TraceConfig()

    async def on_request_end(_session: object, _context: object, params: aiohttp.TraceRequestEndParams) -> None:
        asked = _RETRY_AFTER.get()
        if asked is not None and params.response.status == 429:
            headers = params.response.headers
            try:  # a hook that raised would turn the answer into an unreadable one (ambiguous)
                seconds = retry_after_seconds(headers.get("Retry-After"), date=headers.get("Date"))
            except Exception:
                seconds = None
            if seconds is not None:
                asked.append(seconds)

    config.on_request_end.append(on_request_end)
    return config


def _error_code(message: MessageInstance) -> int | None:
    """A message resource's error code, when it has a readable one."""
    return int(message.error_code) if str(message.error_code or "").isdigit() else None


def _number_of(address: str) -> str:
    """The number of an address, without its channel (``whatsapp:+1415...`` -> ``+1415...``)."""
    return address.rpartition(":")[2].strip()


def classify_twilio_error(status: int | None, code: int | None) -> SendError:
    """Translate a Twilio REST error into a classified :class:`SendError`.

    Args:
        status: HTTP status of the response.
        code: Twilio error code from the body, if any.

    Returns:
        The error to raise (the caller raises it ``from None``).
    """
    if code in _RETRYABLE_CODES or status == 429:
        return SendError(
            _RETRYABLE_CODES.get(code or 0, "rate_limited"), kind=SendErrorKind.RETRYABLE, code=code, status=status
        )
    if code in _PERMANENT_CODES:
        return SendError(_PERMANENT_CODES[code], kind=SendErrorKind.PERMANENT, code=code, status=status)
    if (code is None or code == status) and status is not None and status < 500:
        # Twilio's errors carry a Twilio code (the client puts the status there when the body has none): this
        # answer came from something in front of the API (a gateway that gave up, a redirect), which may have
        # forwarded the request: the message may exist
        return SendError("bad_response", kind=SendErrorKind.AMBIGUOUS, status=status)
    if status is not None and status >= 500:
        return SendError("server_error", kind=SendErrorKind.AMBIGUOUS, code=code, status=status)
    return SendError("rejected", kind=SendErrorKind.PERMANENT, code=code, status=status)


class TwilioProvider:
    """Sends through Twilio's Messages API with the official async client.

    Args:
        account_sid: Account SID (``AC...``).
        auth_token: Auth token (never logged).
        base_url: API base, e.g. ``http://127.0.0.1:8099`` for a loopback peer;
            ``None`` keeps Twilio's.
        timeout: Deadline for one request, seconds.
        http_thread: Run the client's HTTP work on a private event loop on its own thread
            (default); ``False`` runs it on the caller's loop.

    Attributes:
        request_timeout: ``timeout``: the longest a send request stays on the wire (the
            dispatcher checks that an outbox lease outlasts it).
    """

    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        base_url: str | None = None,
        timeout: float = 10.0,
        http_thread: bool = True,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("account_sid and auth_token are required")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._base_url = base_url
        self._timeout = timeout
        self.request_timeout = timeout
        self.server_clock = ServerClock(name="Twilio")  # this host's clock against Twilio's (Date headers)
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None
        self._use_thread = http_thread
        self._thread: LoopThread | None = None

    def _get_client(self) -> Client:
        if self._client is None:
            mask_twilio_logs()  # the client logs its requests' URLs at INFO: a lookup's carry both numbers
            self._http = AsyncTwilioHttpClient(trace_configs=[_date_headers_to(self.server_clock),
                                                              _retry_after_headers()])
            self._client = Client(self._account_sid, self._auth_token, http_client=self._http)
            if self._base_url:
                self._client.api.base_url = self._base_url.rstrip("/")
        return self._client

    async def run_with_client(self, work: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``work(client)`` where this provider's HTTP work runs (its own thread unless ``http_thread=False``).

        For other Twilio API calls sharing the client and its connection pool, e.g.
        ``await provider.run_with_client(lambda c: c.calls(sid).fetch_async())``; put deadlines
        inside ``work``.
        """
        if not self._use_thread:
            return await work(self._get_client())
        if self._thread is None:
            self._thread = LoopThread(name="twilio-http")
        return await self._thread.run(lambda: work(self._get_client()))

    async def warm_up(self) -> None:
        """Build the client and import its lazily loaded modules now (at start-up, not mid-call).

        The first construction of the twilio client costs tens of milliseconds of CPU; doing it
        before calls start keeps it off the audio path (and starts the HTTP thread).
        """
        async def build(client: Client) -> None:
            _ = client.messages  # imports the v2010 account/message modules
            from twilio.rest.api.v2010.account.message import MessageInstance, MessageList  # noqa: F401

        await self.run_with_client(build)

    async def _create(self, client: Client, kwargs: dict[str, object]) -> ProviderReceipt:
        asked: list[float] = []  # Retry-After of a 429 (see _retry_after_headers)
        token = _RETRY_AFTER.set(asked)
        try:
            async with asyncio.timeout(self._timeout):
                message = await client.messages.create_async(**kwargs)  # type: ignore[arg-type]
        except (TwilioRestException, TwilioServiceException) as exc:  # the legacy and the RFC 9457 error format
            error = classify_twilio_error(exc.status, exc.code)
            if error.retryable and asked:
                error.retry_after = asked[-1]  # the retry helper waits that long (capped by its policy)
            raise error from None
        finally:
            _RETRY_AFTER.reset(token)
        if not isinstance(message.sid, str) or not _MESSAGE_SID.fullmatch(message.sid):
            # a 2xx answer without a message SID is no proof of a message (a proxy, a broken gateway)
            raise SendError("bad_response", kind=SendErrorKind.AMBIGUOUS)
        if message.to is not None and _number_of(message.to) != _number_of(str(kwargs["to"])):
            # another message's answer (a proxy mixing answers up): proves nothing about this one
            raise SendError("bad_response", kind=SendErrorKind.AMBIGUOUS)
        if message.status in FAILED_STATUSES:
            # created, and already final: it will not arrive (a filter, an unregistered sender ...)
            code = _error_code(message)
            raise SendError(delivery_reason(code), kind=SendErrorKind.PERMANENT, code=code)
        segments = int(message.num_segments) if message.num_segments else None
        return ProviderReceipt(sid=message.sid, status=str(message.status or "queued"), segments=segments)

    async def send(self, sms: OutboundSms) -> ProviderReceipt:
        """Create the message at Twilio.

        Raises:
            SendError: Classified per :func:`classify_twilio_error`; ``timeout`` and
                dropped connections after the request was written are ambiguous,
                a refused connection is retryable.
        """
        kwargs: dict[str, object] = {"to": sms.to_address}
        if sms.content_sid:  # a Content template carries the text: Twilio wants no Body/MediaUrl with it
            kwargs["content_sid"] = sms.content_sid
            if sms.content_variables:
                kwargs["content_variables"] = sms.content_variables
        else:
            kwargs["body"] = sms.body
            if sms.media_urls:
                kwargs["media_url"] = list(sms.media_urls)
        if sms.messaging_service_sid:
            kwargs["messaging_service_sid"] = sms.messaging_service_sid
        if sms.from_address:
            kwargs["from_"] = sms.from_address
        if sms.status_callback:
            kwargs["status_callback"] = sms.status_callback
        if sms.validity_period:
            kwargs["validity_period"] = sms.validity_period
        try:
            # the deadline runs where the request runs; this outer one only backs it up (a stuck HTTP thread)
            async with asyncio.timeout(self._timeout + _BACKSTOP_S):
                return await self.run_with_client(lambda client: self._create(client, kwargs))
        except (TwilioException, ValueError):
            # an answer that is no Twilio resource (a proxy's page with a 200, JSON without the message):
            # the request arrived, so the message may exist
            raise SendError("bad_response", kind=SendErrorKind.AMBIGUOUS) from None
        except TimeoutError:
            raise SendError("timeout", kind=SendErrorKind.AMBIGUOUS) from None
        except aiohttp.ClientConnectorError:
            # Nothing was written: the TCP connection itself failed.
            raise SendError("connection_refused", kind=SendErrorKind.RETRYABLE) from None
        except (aiohttp.ClientError, OSError):
            raise SendError("connection_lost", kind=SendErrorKind.AMBIGUOUS) from None

    async def find_sent(self, sms: OutboundSms, *, since: float) -> list[ProviderReceipt]:
        """Messages to the same number, from the same sender, with the same body, created at or after ``since``.

        Pages through the newest messages (to this number, from this sender) until they are
        older than ``since``, so a busy number cannot push the message out of a first page.
        WhatsApp messages are looked up by their ``whatsapp:`` addresses. A Content template
        message's body is the template's text, which only Twilio knows: every message to and
        from those addresses since ``since`` is a candidate (the dispatcher takes only one no
        other outbox row has claimed).

        Returns:
            The candidates, oldest first.

        Raises:
            SendError: The lookup failed (ambiguous: the answer is unknown).
        """
        try:
            async with asyncio.timeout(self._timeout * 3 + _BACKSTOP_S):
                found = await self.run_with_client(lambda client: self._lookup(client, sms, since))
        except SendError:
            raise
        except (TwilioRestException, TwilioServiceException) as exc:
            raise SendError("lookup_failed", kind=SendErrorKind.AMBIGUOUS, code=exc.code, status=exc.status) from None
        except (TwilioException, ValueError, TimeoutError, aiohttp.ClientError, OSError):
            raise SendError("lookup_failed", kind=SendErrorKind.AMBIGUOUS) from None
        found.reverse()
        return found

    async def _lookup(self, client: Client, sms: OutboundSms, since: float) -> list[ProviderReceipt]:
        kwargs: dict[str, object] = {"to": sms.to_address, "page_size": 100}
        if sms.from_address:
            kwargs["from_"] = sms.from_address
        # Twilio dates messages by its clock: a host running ahead of it allows for the difference
        cutoff = dt.datetime.fromtimestamp(since - self.server_clock.ahead(), tz=dt.UTC)
        found: list[ProviderReceipt] = []
        newest = self._newest_first(client, kwargs)
        async with asyncio.timeout(self._timeout * 3), contextlib.aclosing(newest):
            async for message in newest:
                created = message.date_created
                if created is not None and created.tzinfo is None:
                    created = created.replace(tzinfo=dt.UTC)
                if created is not None and created < cutoff:
                    break  # newest first: everything after this is older still
                if not isinstance(message.sid, str) or not _MESSAGE_SID.fullmatch(message.sid):
                    continue  # nothing to claim it by
                match = "same" if sms.content_sid else stored_form(message.body, sms.body)
                if match is not None:
                    segments = int(message.num_segments) if message.num_segments else None
                    found.append(ProviderReceipt(
                        sid=message.sid, status=str(message.status), segments=segments,
                        created_at=created.timestamp() if created is not None else None, match=match,
                        error_code=_error_code(message)))
        return found

    @staticmethod
    async def _newest_first(client: Client, kwargs: dict[str, object]) -> AsyncIterator[MessageInstance]:
        """The messages matching ``kwargs``, newest first, page by page (bounded).

        Raises:
            SendError: ``lookup_too_long`` past :data:`_MAX_LOOKUP_MESSAGES` messages or
                :data:`_MAX_LOOKUP_PAGES` pages, or when a page's next page is one already read (a
                cursor that loops): the answer is unknown, never "none".
        """
        page = await client.messages.page_async(**kwargs)  # type: ignore[arg-type]
        pages, seen, read = 1, 0, set()
        while True:
            for message in page:
                seen += 1
                if seen > _MAX_LOOKUP_MESSAGES:
                    raise SendError("lookup_too_long", kind=SendErrorKind.AMBIGUOUS)
                yield message
            url = page.next_page_url
            if not url:
                return
            if url in read or pages >= _MAX_LOOKUP_PAGES:
                raise SendError("lookup_too_long", kind=SendErrorKind.AMBIGUOUS)
            read.add(url)
            pages += 1
            page = await page.next_page_async()

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._client = None

    async def aclose(self) -> None:
        """Close the HTTP session and stop the HTTP thread (a later request starts both again)."""
        thread, self._thread = self._thread, None
        if thread is None:
            await self._close_http()
        else:
            await thread.aclose(self._close_http)
