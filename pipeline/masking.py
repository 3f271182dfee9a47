"""Masking a recorded live call before it becomes a test fixture (``run_agent.py recording mask``).

A recording made by ``run_agent.py serve`` with ``SMS_RECORD_DIR`` keeps the caller's voice
and what was said. Before it goes into a repository, :func:`mask_recording` writes a copy
where:

* phone numbers in transcripts, agent turns, inbound texts and variables keep their country
  code (after a ``+``), their last four digits and their layout; the rest becomes 415-555
  (fictional); numbers in the metadata, the provider set-up, the opt-out list and the
  stream's custom parameters are masked (``+1******0123``; replays use a fake number with
  the same last digits, so a set-up entry still applies to the same caller or colleague);
* e-mail addresses become ``someone@example.com``;
* call and stream SIDs are replaced by stable fakes, the account SID by zeros;
* the caller's audio is replaced by mu-law silence of the same length (timing kept), unless
  ``keep_audio`` (then a replay can run the audio through the offline STT); DTMF digits become 0.

Not masked (review the copy before committing it): names and other personal details in what
was said, numbers or addresses spelled out in words ("two one two ...", "jane at gmail dot
com"), any digit run of seven or more digits is treated as a number (a date ``2024-01-05``
too), and attachments embedded in inbound texts by hand.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Any

from incall_sms.phone import mask
from incall_sms.pipeline.recording import RecordingMeta, load_recording, sidecar_of

__all__ = ["mask_recording", "mask_text"]

_PHONE = re.compile(r"\+?\d[\d\s()./_\u2010-\u2015\u2212-]{5,}\d")  # en/em dashes, minus, underscores too
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_FAKE_PREFIX = "415555"
_SILENCE = 0xFF  # mu-law zero


def _fake_number(match: re.Match[str]) -> str:
    text = match.group(0)
    if sum(ch.isdigit() for ch in text) < 7:
        return text
    head = ""
    if text.startswith("+"):  # keep the country code: "+44 20 7946 0958" -> "+44 41 5555 0958"
        head = "+" + _country_code(text)
        text = text[len(head):]
    digits = [ch for ch in text if ch.isdigit()]
    keep = max(0, len(digits) - 4)
    fake = list(_FAKE_PREFIX[-keep:].rjust(keep, "5") if keep else "") + digits[keep:]
    out, index = [], 0
    for ch in text:
        if ch.isdigit():
            out.append(fake[index])
            index += 1
        else:
            out.append(ch)
    return head + "".join(out)


def _country_code(number: str) -> str:
    import phonenumbers

    try:
        code = str(phonenumbers.parse(number, None).country_code or "")
    except phonenumbers.NumberParseException:
        code = ""
    return code if number[1:1 + len(code)] == code else number[1:2]


def mask_text(text: str) -> str:
    """``text`` with phone numbers faked (last four digits kept) and e-mail addresses replaced."""
    return _PHONE.sub(_fake_number, _EMAIL.sub("someone@example.com", text))


def _mask_number(number: str) -> str:
    return number if number == "caller" or "*" in number else mask(number)


def _fake_sid(prefix: str, sid: str) -> str:
    return prefix + hashlib.sha256(sid.encode()).hexdigest()[:32]


def _mask_message(message: dict[str, Any], *, keep_audio: bool) -> dict[str, Any]:
    message = json.loads(json.dumps(message))  # a copy
    if "streamSid" in message:
        message["streamSid"] = _fake_sid("MZ", str(message["streamSid"]))
    start = message.get("start")
    if isinstance(start, dict):
        for key, prefix in (("streamSid", "MZ"), ("callSid", "CA")):
            if key in start:
                start[key] = _fake_sid(prefix, str(start[key]))
        start["accountSid"] = "AC" + "0" * 32
        params = start.get("customParameters")
        if isinstance(params, dict):
            params.pop("token", None)
            for key, value in list(params.items()):
                params[key] = mask(str(value)) if key in ("from_number", "to_number") else mask_text(str(value))
    stop = message.get("stop")
    if isinstance(stop, dict):
        stop["accountSid"] = "AC" + "0" * 32
        if "callSid" in stop:
            stop["callSid"] = _fake_sid("CA", str(stop["callSid"]))
    dtmf = message.get("dtmf")
    if isinstance(dtmf, dict) and "digit" in dtmf:
        dtmf["digit"] = "0"  # keypresses may be a PIN or an account number: the timing stays
    media = message.get("media")
    if isinstance(media, dict) and "payload" in media and not keep_audio:
        import base64

        length = len(base64.b64decode(media["payload"]))
        media["payload"] = base64.b64encode(bytes([_SILENCE]) * length).decode()
    return message


def mask_recording(source: str | pathlib.Path, out: str | pathlib.Path, *,
                   keep_audio: bool = False) -> tuple[pathlib.Path, pathlib.Path]:
    """Write a masked copy of the recording ``source`` as ``OUT.jsonl`` and ``OUT.meta.json``.

    Args:
        source: ``NAME.jsonl`` of the recording (its ``NAME.meta.json`` next to it).
        out: Destination path without extension (``tests/calls/refund_request``).
        keep_audio: Keep the caller's audio (default: silence of the same length).

    Returns:
        The two files written.

    Raises:
        ValueError: The recording is invalid, or ``out`` would overwrite it.
    """
    events, meta = load_recording(source)
    stem = pathlib.Path(out)
    if stem.name.endswith(".jsonl"):
        stem = stem.with_name(stem.name[: -len(".jsonl")])
    events_path = stem.with_name(stem.name + ".jsonl")
    meta_path = sidecar_of(events_path)
    source_path = pathlib.Path(source)
    if {events_path.resolve(), meta_path.resolve()} & {source_path.resolve(), sidecar_of(source_path).resolve()}:
        raise ValueError("the masked copy must not overwrite the recording")
    masked = meta.model_copy(update={
        "call_sid": _fake_sid("CA", meta.call_sid),
        "caller": mask(meta.caller),
        "agent_number": mask(meta.agent_number),
        "variables": {k: mask_text(v) for k, v in meta.variables.items()},
        "opt_outs": [_mask_number(n) for n in meta.opt_outs],
        "provider": meta.provider.model_copy(update={
            "landlines": [_mask_number(n) for n in meta.provider.landlines],
            "opted_out": [_mask_number(n) for n in meta.provider.opted_out],
            "destinations": {_mask_number(n): what for n, what in meta.provider.destinations.items()}}),
        "stt": [u.model_copy(update={"text": mask_text(u.text)}) for u in meta.stt],
        "agent": [u.model_copy(update={"text": mask_text(u.text)}) for u in meta.agent],
        "inbound": [m.model_copy(update={"body": mask_text(m.body)}) for m in meta.inbound],
        "description": mask_text(meta.description) or "recorded from a live call (masked)",
    })
    RecordingMeta.model_validate(masked.model_dump())
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with events_path.open("w", encoding="utf-8") as handle:
        for t, message in events:
            handle.write(json.dumps({"t": t, "message": _mask_message(message, keep_audio=keep_audio)}) + "\n")
    meta_path.write_text(masked.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return events_path, meta_path
