"""Transcribers for recorded audio (voice notes sent by MMS)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp

from incall_sms.media.fetch import MediaError

__all__ = ["DeepgramPrerecordedTranscriber"]


class DeepgramPrerecordedTranscriber:
    """Deepgram's pre-recorded API (``POST /v1/listen``).

    Args:
        api_key: Deepgram key (never logged).
        base_url: API base (``https://api.deepgram.com``; a loopback peer in tests).
        model: Model name.
        timeout: Deadline per request, seconds.
    """

    def __init__(self, *, api_key: str, base_url: str = "https://api.deepgram.com", model: str = "nova-3",
                 timeout: float = 15.0) -> None:
        self._headers = {"Authorization": f"Token {api_key}", "Content-Type": "audio/wav"}
        self._url = base_url.rstrip("/") + "/v1/listen"
        self._params = {"model": model, "smart_format": "true", "punctuate": "true"}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def transcribe(self, wav_16k_mono: bytes) -> str:
        """Return the transcript.

        Raises:
            MediaError: ``timeout``, ``http_error`` or ``network``.
        """
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(self._url, params=self._params, data=io.BytesIO(wav_16k_mono),  # streamed
                                              headers=self._headers) as response:
                    if response.status != 200:
                        raise MediaError("http_error")
                    payload: dict[str, Any] = await response.json()
        except TimeoutError:
            raise MediaError("timeout") from None
        except (aiohttp.ClientError, ValueError):
            raise MediaError("network") from None
        try:
            return str(payload["results"]["channels"][0]["alternatives"][0]["transcript"])
        except (KeyError, IndexError, TypeError):
            raise MediaError("http_error") from None

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
