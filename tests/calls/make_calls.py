#!/usr/bin/env python3
"""Generate the recorded-call corpus of tests/calls reproducibly (no network, no binaries in git).

Each call: a Twilio Media Streams capture (connected, start, 20 ms mu-law media frames, stop)
where the caller's speech is a voiced tone at the recorded times (with light noise on some
calls), a sidecar with the recorded STT results and agent turns, and an expectations file.

    python tests/calls/make_calls.py          # (re)writes tests/calls/*.jsonl|.meta.json|.expect.yaml
"""

from __future__ import annotations

import base64
import json
import math
import pathlib
import random
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ACCOUNT = "AC" + "0" * 32
CALLER = "+14155550123"
AGENT = "+14155550100"


def _ulaw(sample: int) -> int:
    """Linear 16-bit PCM to G.711 mu-law (the standard algorithm)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _frames(duration: float, speech: list[tuple[float, float]], noise: float, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    frames = []
    total = int(duration / 0.02)
    for index in range(total):
        t0 = index * 0.02
        speaking = any(a <= t0 < b for a, b in speech)
        chunk = bytearray()
        for n in range(160):  # 8 kHz, 20 ms
            t = t0 + n / 8000
            value = rng.gauss(0, noise) if noise else 0.0
            if speaking:
                value += 6000 * math.sin(2 * math.pi * 180 * t) * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * t))
            chunk.append(_ulaw(int(value)))
        frames.append(bytes(chunk))
    return frames


def write_call(name: str, spec: dict) -> None:
    duration = spec["duration"]
    speech = [(u["t"] - 1.2, u["t"]) for u in spec["stt"]]  # the final transcript closes each utterance
    stream_sid = "MZ" + f"{sum(ord(c) * 31 ** i for i, c in enumerate(name)) % 16**32:032x}"
    call_sid = "CA" + f"{sum(map(ord, name)):032x}"
    lines = [
        {"t": 0.0, "message": {"event": "connected", "protocol": "Call", "version": "1.0.0"}},
        {"t": 0.01, "message": {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
            "accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"from_number": CALLER, "to_number": AGENT},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}},
    ]
    for index, chunk in enumerate(_frames(duration, speech, spec.get("noise", 0.0), seed=len(name))):
        lines.append({"t": round(0.02 + index * 0.02, 3), "message": {
            "event": "media", "sequenceNumber": str(index + 2), "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                      "payload": base64.b64encode(chunk).decode()}}})
    lines.append({"t": round(duration + 0.05, 3), "message": {"event": "stop", "streamSid": stream_sid,
                                                              "stop": {"accountSid": ACCOUNT, "callSid": call_sid}}})
    (HERE / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    meta = {"format": "incall-sms-recording/1", "call_sid": call_sid, "caller": CALLER, "agent_number": AGENT,
            "description": spec["description"], "variables": spec.get("variables", {}), "stt": spec["stt"],
            "agent": spec.get("agent", []), "inbound": spec.get("inbound", []),
            "provider": spec.get("provider", {"latency": 0.4})}
    (HERE / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (HERE / f"{name}.expect.yaml").write_text(yaml.safe_dump(spec["expect"], sort_keys=False), encoding="utf-8")


CALLS = {
    "booking_confirmation": {
        "description": "Caller books, then asks for the confirmation by text.",
        "duration": 14.0,
        "stt": [{"t": 3.0, "text": "Hi, I'd like a table for four on Friday evening."},
                {"t": 8.0, "text": "Great, can you text me the confirmation?"}],
        "agent": [{"t": 4.5, "text": "Your table for four is booked for Friday at 7 pm."},
                  {"t": 9.5, "text": "Anything else I can help with?"}],
        "expect": {"sms": [{"action": "booking_confirmation", "body_contains": "Friday at 7 pm"}],
                   "no_sms": ["website_link", "clinic_address"],
                   "lines": [{"kind": "confirmation", "action": "booking_confirmation"}],
                   "max_audio_delay_ms": 100},
    },
    "declines_text": {
        "description": "Hard negatives: the caller declines a text and asks what it would say.",
        "duration": 12.0, "noise": 300.0,
        "stt": [{"t": 3.0, "text": "What does the text say usually?"},
                {"t": 7.0, "text": "No thanks, don't text me, I'll remember."}],
        "agent": [{"t": 1.0, "text": "You're booked for Tuesday at 3. Would you like me to text you the details?"},
                  {"t": 4.5, "text": "It has your booking time and our address."}],
        # the agent confirmed a booking, so only the call-end follow-up (pool preset) is sent
        "expect": {"sms": [{"action": "meeting_followup", "body_contains": "Tuesday at 3"}], "max_sms": 1,
                   "no_sms": ["booking_confirmation", "website_link", "clinic_address"],
                   "max_audio_delay_ms": 100},
    },
    "landline_failure": {
        "description": "The caller asks for the menu link but calls from a landline: honest failure line.",
        "duration": 9.0,
        "stt": [{"t": 3.0, "text": "Could you send me the link to your menu?"}],
        "agent": [{"t": 1.0, "text": "Our menu is on our website."}],
        "provider": {"landlines": [CALLER], "latency": 0.4},
        "expect": {"sms": [{"action": "website_link", "outcome": "failed", "reason": "not_mobile"}],
                   "lines": [{"kind": "failure", "action": "website_link"}], "max_sms": 0},
    },
    "e2e_link": {
        "description": "Short call for the end-to-end test: the caller asks for the menu link (agent by LLM).",
        "duration": 6.0,
        "stt": [{"t": 2.5, "text": "Could you text me the link to your menu?"}],
        "expect": {"sms": [{"action": "website_link"}], "max_sms": 1},
    },
    "inbound_text": {
        "description": "The caller texts the agent during the call; the text reaches the conversation.",
        "duration": 8.0,
        "stt": [{"t": 2.0, "text": "I'm texting you my order number now."}],
        "agent": [{"t": 3.5, "text": "Sure, go ahead."}],
        "inbound": [{"t": 4.0, "body": "Order 4411, the blue sofa"}],
        "expect": {"inbound_injected": 1, "max_sms": 0},
    },
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CALLS)
    for call_name in names:
        write_call(call_name, CALLS[call_name])
        print("wrote", call_name)
