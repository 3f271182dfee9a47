"""Binding a media stream to the signed voice webhook that announced its call.

Twilio signs the media-stream websocket handshake, but the signature covers only the
URL: it is the same for every stream and proves nothing about *which* call a stream
claims to be. So the signed ``/voice`` request mints a short-lived, single-use token that
carries the call's identity as Twilio gave it (call SID, caller, called number); the
TwiML hands it to Twilio as a ``<Parameter>``, Twilio returns it in the stream's ``start``
message, and the stream is accepted only if the token

* was minted by us (HMAC-SHA256 with a key derived from the account's auth token, so
  every worker of the account can check it),
* is for the call SID the ``start`` message names,
* has not expired (default 120 s: Twilio opens the stream right after the TwiML),
* has not been used before (the dedupe store: in-process, or Redis across workers),
* and no stream was accepted for that call before.

A call is announced once: a second ``/voice`` for a call SID (a replayed request, even hours later,
even with its valid signature) mints nothing, and a second stream for a call is refused whatever its
token, so nobody can open another stream for a live call and take over its texts.

The caller and called numbers of the call are then taken from the token, never from
unsigned stream parameters.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable

from incall_sms.errors import SmsError
from incall_sms.inbound import InProcessSeenKeys, SeenKeys

__all__ = ["CALL_MEMORY", "CALL_SID", "STREAM_SID", "CallBinder", "CallBinding", "StreamAuthError"]

#: Twilio call and stream SIDs (``CA`` / ``MZ`` + 32 hex digits).
CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
STREAM_SID = re.compile(r"^MZ[0-9a-fA-F]{32}$")

_VERSION = 1

#: Seconds an announced call and its stream are remembered (longer than any call).
CALL_MEMORY = 24 * 3600.0


class StreamAuthError(SmsError):
    """A media stream failed a check. ``reason`` is short, fixed text with no personal data."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallBinding:
    """The identity of a call, as Twilio's signed voice webhook gave it.

    Attributes:
        call_sid: The call (``CA...``).
        caller: The caller's number (E.164), or ``""`` when Twilio gave none (anonymous).
        agent_number: The called number (E.164), or ``""``.
        expires_at: Epoch seconds after which the token is refused.
        caller_untrusted: The caller ID is not trusted (Twilio's STIR/SHAKEN verdict: failed, or not attested
            enough for the service's ``caller_id_trust``): ``caller`` is ``""`` and must not be looked up again
            (the number may be someone else's).
    """

    call_sid: str
    caller: str
    agent_number: str
    expires_at: float
    caller_untrusted: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CallBinder:
    """Mints and redeems stream tokens.

    Args:
        auth_token: The Twilio auth token (the signing key is derived from it; the token
            itself never leaves this object).
        ttl: Seconds a token stays valid.
        seen: Dedupe store that makes tokens single-use (share it across workers).
        calls: Dedupe store of announced calls and accepted streams, kept ``CALL_MEMORY`` seconds
            (default: in-process; share it across workers, e.g. Redis).
        clock: ``time.time``-like callable.
    """

    def __init__(
        self,
        *,
        auth_token: str,
        ttl: float = 120.0,
        seen: SeenKeys | None = None,
        calls: SeenKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not auth_token:
            raise ValueError("auth_token is required")
        self._key = hmac.new(auth_token.encode(), b"incall-sms/stream-binding/v1", hashlib.sha256).digest()
        self._ttl = ttl
        self._seen = seen or InProcessSeenKeys(ttl=max(ttl, 1.0) * 2)
        self._calls = calls or InProcessSeenKeys(ttl=CALL_MEMORY)
        self._clock = clock

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    async def mint(self, *, call_sid: str, caller: str, agent_number: str, caller_untrusted: bool = False) -> str:
        """A token for the call a signed voice webhook announced (once per call).

        ``caller_untrusted``: the caller ID is not trusted (see :class:`CallBinding`).

        Raises:
            StreamAuthError: ``call_sid`` is not a Twilio call SID, or this call was announced before.
        """
        if not CALL_SID.match(call_sid):
            raise StreamAuthError("malformed call SID")
        if await self._calls.check_and_add([f"voice:{call_sid}"], self._clock()):
            raise StreamAuthError("call already announced")
        fields = {"v": _VERSION, "c": call_sid, "f": "" if caller_untrusted else caller, "t": agent_number,
                  "e": round(self._clock() + self._ttl, 3), "n": secrets.token_hex(12)}
        if caller_untrusted:
            fields["u"] = 1
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    async def redeem(self, token: str, *, call_sid: str) -> CallBinding:
        """Check ``token`` for the stream of ``call_sid`` and use it up.

        Raises:
            StreamAuthError: Missing, forged, malformed, expired, for another call, or reused.
        """
        if not token or len(token) > 1024 or token.count(".") != 1:
            raise StreamAuthError("missing or malformed stream token")
        body, mac = token.split(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except ValueError:
            raise StreamAuthError("malformed stream token") from None
        if not hmac.compare_digest(signature, self._mac(payload)):
            raise StreamAuthError("stream token not minted here")
        try:
            data = json.loads(payload)
            binding = CallBinding(call_sid=str(data["c"]), caller=str(data["f"]), agent_number=str(data["t"]),
                                  expires_at=float(data["e"]), caller_untrusted=data.get("u") == 1)
            nonce = str(data["n"])
            if data.get("v") != _VERSION:
                raise ValueError("version")
        except (ValueError, KeyError, TypeError):
            raise StreamAuthError("malformed stream token") from None
        if not hmac.compare_digest(binding.call_sid, call_sid):
            raise StreamAuthError("stream token is for another call")
        now = self._clock()
        if now > binding.expires_at:
            raise StreamAuthError("stream token expired")
        if await self._seen.check_and_add([f"stream-token:{nonce}"], now):
            raise StreamAuthError("stream token already used")
        if await self._calls.check_and_add([f"stream:{binding.call_sid}"], now):
            raise StreamAuthError("call already has a stream")
        return binding
