"""Fetching inbound MMS media safely.

* Basic auth on the first hop only: Twilio answers with a redirect to a short-lived
  signed URL on another host, which must not receive the account credentials.
* Only the provider's media hosts are fetched (SSRF protection); every hop's host
  is checked against the allow-list and its resolved addresses must be public
  (loopback, private, link-local, multicast and reserved ranges are refused
  unless the policy allows them, which only tests do).
* Size caps per item and in total (Twilio's MMS limit is 5 MB), a content-type
  allow-list, a deadline per item, a bounded number of redirects.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit

import aiohttp

from incall_sms.errors import SmsError
from incall_sms.inbound import InboundMedia

__all__ = ["FetchedMedia", "MediaError", "MediaFetcher", "MediaPolicy"]

_log = logging.getLogger(__name__)

DEFAULT_TYPES = frozenset({
    "image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp", "image/bmp", "image/heic",
    "audio/amr", "audio/ogg", "audio/mpeg", "audio/mp3", "audio/mp4", "audio/aac", "audio/wav", "audio/x-wav",
    "audio/3gpp", "audio/webm", "audio/opus",
    "video/mp4", "video/3gpp", "video/quicktime", "video/webm", "video/mpeg", "video/h264",
    "text/plain", "text/vcard", "text/x-vcard", "text/calendar", "application/pdf",
})


class MediaError(SmsError):
    """A media item could not be fetched safely.

    Attributes:
        reason: ``host_not_allowed``, ``private_address``, ``too_large``, ``bad_type``,
            ``timeout``, ``http_error``, ``too_many_redirects``, ``network``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"media not fetched: {reason}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MediaPolicy:
    """Limits for fetching media.

    Attributes:
        allowed_hosts: Exact hosts, or suffixes starting with a dot (``.twiliocdn.com``).
        auth_hosts: Hosts that receive the account's Basic auth (the first hop).
        allow_private: Allow loopback/private addresses (tests only).
        max_item_bytes: Cap per attachment.
        max_total_bytes: Cap for all attachments of one message.
        allowed_types: Accepted content types.
        timeout: Deadline per attachment, seconds (all hops).
        max_redirects: Redirect hops allowed.
    """

    allowed_hosts: tuple[str, ...] = ("api.twilio.com", ".twiliocdn.com", ".twilio.com")
    auth_hosts: tuple[str, ...] = ("api.twilio.com",)
    allow_private: bool = False
    max_item_bytes: int = 5 * 1024 * 1024
    max_total_bytes: int = 5 * 1024 * 1024
    allowed_types: frozenset[str] = DEFAULT_TYPES
    timeout: float = 10.0
    max_redirects: int = 3

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is on the allow-list."""
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.allowed_hosts)


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedMedia:
    """A fetched attachment."""

    content_type: str
    data: bytes


class MediaFetcher:
    """Fetches media with the account's credentials and the policy's limits.

    Args:
        account_sid: Account SID (Basic auth user on the first hop).
        auth_token: Auth token (never logged).
        policy: Limits and allow-lists.
    """

    def __init__(self, *, account_sid: str, auth_token: str, policy: MediaPolicy | None = None) -> None:
        token = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._auth_header = {"Authorization": f"Basic {token}"}
        self.policy = policy or MediaPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    async def _check_host(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host:
            raise MediaError("host_not_allowed")
        if parts.scheme == "http" and not self.policy.allow_private:
            raise MediaError("host_not_allowed")
        if not self.policy.host_allowed(host):
            raise MediaError("host_not_allowed")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError:
            raise MediaError("network") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global and not self.policy.allow_private:
                raise MediaError("private_address")
        return host

    async def fetch(self, media: InboundMedia, *, budget: int | None = None) -> FetchedMedia:
        """Fetch one attachment.

        Args:
            media: The attachment from the webhook.
            budget: Bytes still allowed for this message (``None``: the item cap).

        Raises:
            MediaError: Refused or failed (see reasons).
        """
        limit = min(self.policy.max_item_bytes, budget if budget is not None else self.policy.max_item_bytes)
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._fetch(media, limit)
        except TimeoutError:
            raise MediaError("timeout") from None
        except aiohttp.ClientError:
            raise MediaError("network") from None

    async def _fetch(self, media: InboundMedia, limit: int) -> FetchedMedia:
        session = await self._get_session()
        url = media.url
        for hop in range(self.policy.max_redirects + 1):
            host = await self._check_host(url)
            headers = self._auth_header if hop == 0 and host in self.policy.auth_hosts else None
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise MediaError("http_error")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise MediaError("http_error")
                content_type = (response.headers.get("Content-Type") or media.content_type).split(";")[0]
                content_type = content_type.strip().lower()
                if content_type not in self.policy.allowed_types:
                    raise MediaError("bad_type")
                declared = response.content_length
                if declared is not None and declared > limit:
                    raise MediaError("too_large")
                data = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        raise MediaError("too_large")
                return FetchedMedia(content_type=content_type, data=bytes(data))
        raise MediaError("too_many_redirects")

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
