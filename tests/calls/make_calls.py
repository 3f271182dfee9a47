#!/usr/bin/env python3
"""Generate the recorded-call corpus of tests/calls reproducibly (no network, no binaries in git).

Each call: a Twilio Media Streams capture (connected, start, 20 ms mu-law media frames, stop)
where the caller's utterances are spoken by the offline Piper voice (a voiced tone where Piper
is not installed), with light background noise on some calls, a sidecar with the recorded STT
results and agent turns (and inbound texts/MMS with embedded attachments), and an expectations
file. Replays use the recorded STT results by default; `--stt whisper` recognises the audio.

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


def _speech_8k(text: str) -> list[float] | None:
    """The utterance in the Piper voice at 8 kHz (samples in PCM16 units), or None without Piper."""
    try:
        import numpy as np

        from incall_sms.media.offline_speech import OfflineSpeech, available
    except ImportError:
        return None
    if available() is not None:
        return None
    speech = OfflineSpeech()
    speech._load_voice()
    pcm = b"".join(c.audio_int16_bytes for c in speech._voice.synthesize(text))
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    rate = speech._voice.config.sample_rate
    count = int(len(samples) * 8000 / rate)
    return list(np.interp(np.linspace(0, len(samples) - 1, count), np.arange(len(samples)), samples))


def _frames(duration: float, utterances: list[tuple[float, str]], noise: float, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    total = int(duration / 0.02) * 160
    signal = [0.0] * total
    for end, text in utterances:  # each utterance ends where its final transcript was recorded
        voice = _speech_8k(text)
        if voice is None:  # a voiced tone of about the utterance's length
            length = int(min(len(text) / 14, 4.0) * 8000)
            voice = [6000 * math.sin(2 * math.pi * 180 * n / 8000) * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * n / 8000))
                     for n in range(length)]
        start = max(0, int(end * 8000) - len(voice))
        for i, value in enumerate(voice[: total - start]):
            signal[start + i] += value
    frames = []
    for index in range(0, total, 160):
        chunk = bytearray()
        for value in signal[index:index + 160]:
            chunk.append(_ulaw(int(value + (rng.gauss(0, noise) if noise else 0.0))))
        frames.append(bytes(chunk))
    return frames


def _attachment(kind: str) -> dict:
    """An embedded attachment: a drawn PNG photo, or a voice note (Piper speech as AMR-NB via ffmpeg)."""
    import io
    import subprocess

    if kind == "image":
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (240, 180), (200, 200, 210))
        ImageDraw.Draw(image).line((20, 20, 220, 160), fill=(40, 40, 40), width=4)
        out = io.BytesIO()
        image.save(out, format="PNG")
        return {"content_type": "image/png", "data_b64": base64.b64encode(out.getvalue()).decode()}
    text = kind.split(":", 1)[1]
    voice = _speech_8k(text)
    if voice is None:
        raise SystemExit("voice notes need the offline Piper voice (pip install -e .)")
    pcm = b"".join(int(max(-32768, min(32767, v))).to_bytes(2, "little", signed=True) for v in voice)
    from incall_sms.media.content import ffmpeg_exe

    amr = subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "s16le", "-ar", "8000", "-ac", "1",
                          "-i", "pipe:0", "-c:a", "libopencore_amrnb", "-b:a", "12.2k", "-f", "amr", "pipe:1"],
                         input=pcm, capture_output=True, check=True).stdout
    return {"content_type": "audio/amr", "data_b64": base64.b64encode(amr).decode()}


def write_call(name: str, spec: dict, folder: pathlib.Path = HERE) -> None:
    duration = spec["duration"]
    utterances = [(u["t"] - 0.6, u["text"]) for u in spec["stt"]]  # the final transcript closes each utterance
    stream_sid = "MZ" + f"{sum(ord(c) * 31 ** i for i, c in enumerate(name)) % 16**32:032x}"
    call_sid = "CA" + f"{sum(map(ord, name)):032x}"
    lines = [
        {"t": 0.0, "message": {"event": "connected", "protocol": "Call", "version": "1.0.0"}},
        {"t": 0.01, "message": {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
            "accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"from_number": CALLER, "to_number": AGENT},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}},
    ]
    for index, chunk in enumerate(_frames(duration, utterances, spec.get("noise", 0.0), seed=len(name))):
        lines.append({"t": round(0.02 + index * 0.02, 3), "message": {
            "event": "media", "sequenceNumber": str(index + 2), "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                      "payload": base64.b64encode(chunk).decode()}}})
    lines.append({"t": round(duration + 0.05, 3), "message": {"event": "stop", "streamSid": stream_sid,
                                                              "stop": {"accountSid": ACCOUNT, "callSid": call_sid}}})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    inbound = [{"t": item["t"], "body": item["body"], "media": [_attachment(m) for m in item.get("media", [])]}
               for item in spec.get("inbound", [])]
    meta = {"format": "incall-sms-recording/1", "call_sid": call_sid, "caller": CALLER, "agent_number": AGENT,
            "description": spec["description"], "variables": spec.get("variables", {}),
            "opt_outs": spec.get("opt_outs", []), "stt": spec["stt"],
            "agent": spec.get("agent", []), "inbound": inbound,
            "provider": spec.get("provider", {"latency": 0.4})}
    (folder / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (folder / f"{name}.expect.yaml").write_text(yaml.safe_dump(spec["expect"], sort_keys=False), encoding="utf-8")
    if "actions" in spec:  # the call's own action set (else the corpus' actions.yaml)
        (folder / f"{name}.actions.yaml").write_text(yaml.safe_dump(spec["actions"], sort_keys=False),
                                                     encoding="utf-8")


CALLS = {
    "booking_confirmation": {
        "description": "Caller books, then asks for the confirmation by text.",
        "duration": 14.0,
        "stt": [{"t": 3.0, "text": "Hi, I'd like a table for four on Friday evening."},
                {"t": 8.0, "text": "Great, can you text me the confirmation?"}],
        "agent": [{"t": 4.5, "text": "Your table for four is booked for Friday at 7 pm."},
                  {"t": 9.5, "text": "Anything else I can help with?"}],
        "expect": {"sms": [{"action": "booking_confirmation", "body_contains": "Friday at 7 pm", "to": "caller",
                            "count": 1, "at": "turn", "after_turn": 2, "trigger_contains": "text me the confirmation"},
                           {"action": "meeting_followup", "count": 1, "at": "call_end"}], "max_sms": 2,
                   "no_sms": ["website_link", "clinic_address", "colleague_copy", "visit_summary"],
                   "lines": [{"kind": "filler", "action": "booking_confirmation"},
                             {"kind": "confirmation", "action": "booking_confirmation", "contains": "ending in 23"}],
                   "lines_in_order": True,
                   "not_spoken": [{"kind": "failure"}, {"contains": "couldn't"}]},
    },
    "declines_text": {
        "description": "Hard negatives: the caller declines a text and asks what it would say.",
        "duration": 12.0, "noise": 300.0,
        "stt": [{"t": 3.0, "text": "What does the text say usually?"},
                {"t": 7.0, "text": "No thanks, don't text me, I'll remember."}],
        "agent": [{"t": 1.0, "text": "You're booked for Tuesday at 3. Would you like me to text you the details?"},
                  {"t": 4.5, "text": "It has your booking time and our address."}],
        # the agent confirmed a booking, so only the call-end follow-up (pool preset) is sent
        "expect": {"sms": [{"action": "meeting_followup", "body_contains": "Tuesday at 3", "at": "call_end",
                            "count": 1}], "max_sms": 1,
                   "no_sms": ["booking_confirmation", "website_link", "clinic_address"],
                   "not_spoken": [{"kind": "filler"}, {"kind": "confirmation"}, {"kind": "failure"}]},
    },
    "landline_failure": {
        "description": "The caller asks for the menu link but calls from a landline: honest failure line.",
        "duration": 9.0,
        "stt": [{"t": 3.0, "text": "Could you send me the link to your menu?"}],
        "agent": [{"t": 1.0, "text": "Our menu is on our website."}],
        "provider": {"landlines": [CALLER], "latency": 0.4},
        "expect": {"sms": [{"action": "website_link", "outcome": "failed", "reason": "not_mobile", "to": "caller",
                            "count": 1}],
                   "lines": [{"kind": "failure", "action": "website_link"}], "max_sms": 0,
                   "not_spoken": [{"kind": "confirmation"}]},
    },
    "e2e_link": {
        "description": "Short call for the end-to-end test: the caller asks for the menu link (agent by LLM).",
        "duration": 6.0,
        "stt": [{"t": 2.5, "text": "Could you text me the link to your menu?"}],
        "expect": {"sms": [{"action": "website_link"}], "max_sms": 1},
    },
    "link_paraphrase": {
        "description": "A paraphrased request for the website link.",
        "duration": 9.0,
        "stt": [{"t": 4.0, "text": "Could you shoot the site over to my phone?"}],
        "agent": [{"t": 1.0, "text": "You can find the whole menu and the booking form online."}],
        "expect": {"sms": [{"action": "website_link", "body_contains": "example.com/menu"}], "max_sms": 1},
    },
    "already_got_it": {
        "description": "Hard negative: the caller already has the text.",
        "duration": 8.0,
        "stt": [{"t": 4.0, "text": "Yep, I already got the text, thanks."}],
        "agent": [{"t": 1.0, "text": "I've texted you the confirmation a minute ago."}],
        "expect": {"max_sms": 0,
                   "not_spoken": [{"kind": "filler"}, {"kind": "confirmation"}, {"kind": "failure"}]},
    },
    "two_actions": {
        "description": "Two actions in one call: the confirmation and the address.",
        "duration": 16.0, "noise": 250.0,
        "stt": [{"t": 3.0, "text": "Can you text me the booking confirmation?"},
                {"t": 10.0, "text": "And where exactly are you located? Text me the address too."}],
        "agent": [{"t": 1.0, "text": "You're booked for Thursday at 2 pm."},
                  {"t": 6.0, "text": "Anything else?"}],
        "expect": {"sms": [{"action": "booking_confirmation", "body_contains": "Thursday at 2 pm", "count": 1,
                            "after_turn": 1},
                           {"action": "clinic_address", "body_contains": "500 Market St", "count": 1, "after_turn": 2,
                            "trigger_contains": "address"}], "max_sms": 3,
                   "no_sms": ["colleague_copy", "visit_summary"],
                   "lines": [{"kind": "confirmation", "action": "clinic_address"}]},
    },
    "call_end_booking": {
        "description": "An action on call end: a meeting was booked, the pool number sends the preset.",
        "duration": 8.0,
        "stt": [{"t": 5.0, "text": "Perfect, thank you, goodbye."}],
        "agent": [{"t": 2.0, "text": "Your meeting with Dana is booked for Monday at 10 am."}],
        "expect": {"sms": [{"action": "meeting_followup", "body_contains": "Monday at 10 am", "at": "call_end",
                            "count": 1, "to": "caller"}], "max_sms": 1,
                   "not_spoken": [{"kind": "filler"}, {"kind": "confirmation"}]},
    },
    "dynamic_destination": {
        "description": "The caller asks to text a colleague; the number comes from a variable (explicitly allowed).",
        "duration": 10.0,
        "stt": [{"t": 5.0, "text": "Please send the details to my colleague, her number is 415 555 0199."}],
        "agent": [{"t": 1.0, "text": "Your visit is booked for Wednesday at 4 pm."}],
        "expect": {"sms": [{"action": "colleague_copy", "body_contains": "Wednesday at 4 pm", "to": "+14155550199",
                            "count": 1}], "max_sms": 2,
                   "no_sms": ["booking_confirmation", "visit_summary"],
                   "lines": [{"kind": "confirmation", "action": "colleague_copy"}]},
    },
    "opted_out": {
        "description": "Provider failure: the number replied STOP earlier (21610); honest failure line.",
        "duration": 8.0,
        "stt": [{"t": 4.0, "text": "Could you text me the link to your website?"}],
        "agent": [{"t": 1.0, "text": "Everything is on our website."}],
        "provider": {"opted_out": [CALLER], "latency": 0.4},
        "expect": {"sms": [{"action": "website_link", "outcome": "failed", "reason": "opted_out", "count": 1}],
                   "lines": [{"kind": "failure", "action": "website_link"}], "max_sms": 0,
                   "not_spoken": [{"kind": "confirmation"}]},
    },
    "barge_in_filler": {
        "description": "The caller barges in during the filler: the send is not cancelled.",
        "duration": 10.0,
        "stt": [{"t": 3.0, "text": "Send me the link to the menu please."},
                {"t": 4.0, "text": "Oh and what time do you close?", "barge_in": True}],
        "agent": [{"t": 1.0, "text": "Our menu is online."}],
        "provider": {"latency": 1.5},
        "expect": {"sms": [{"action": "website_link", "count": 1, "after_turn": 1}], "max_sms": 1,
                   "lines": [{"kind": "filler", "action": "website_link", "interrupted": True},
                             {"kind": "confirmation", "action": "website_link", "interrupted": False}],
                   "lines_in_order": True},
    },
    "prompt_summary": {
        "description": "Prompt-mode content (no LLM in the replay: the declared template fallback is sent).",
        "duration": 9.0,
        "stt": [{"t": 5.0, "text": "Can you text me a summary of the call?"}],
        "agent": [{"t": 2.0, "text": "So that's Friday at 9 am for the cleaning."}],
        "expect": {"sms": [{"action": "visit_summary", "body_contains": "Friday at 9 am"}], "max_sms": 2,
                   "no_sms": ["booking_confirmation", "colleague_copy"]},
    },
    "inbound_image": {
        "description": "The caller texts a photo during the call; it reaches the context as an image part.",
        "duration": 8.0,
        "stt": [{"t": 2.0, "text": "I'm sending you a photo of the damage."}],
        "agent": [{"t": 3.5, "text": "Thanks, I'll take a look."}],
        "inbound": [{"t": 4.0, "body": "Here's the crack in the window", "media": ["image"]}],
        "expect": {"inbound_injected": 1, "inbound_images": 1, "inbound_contains": ["crack in the window"],
                   "max_sms": 0},
    },
    "inbound_voice_note": {
        "description": "The caller sends a voice note (AMR); it is transcribed offline into the context.",
        "duration": 8.0,
        "stt": [{"t": 2.0, "text": "I just sent you a voice message."}],
        "agent": [{"t": 3.5, "text": "Got it, one moment."}],
        "inbound": [{"t": 4.0, "body": "", "media": ["voice:My order number is four four one one."]}],
        "expect": {"inbound_injected": 1, "inbound_contains": ["voice note", "order number"], "max_sms": 0},
    },
    "photo_while_talking": {
        "description": "Turn-taking: a photo arrives while the agent (the stand-in LLM) is still answering; the "
                       "agent finishes its sentence before it acknowledges the photo.",
        "duration": 12.0,
        "stt": [{"t": 2.0, "text": "Hi, I'd like to book a table for Friday evening."}],
        "inbound": [{"t": 3.0, "body": "My voucher", "media": ["image"]}],
        "expect": {"inbound_injected": 1, "inbound_images": 1, "max_sms": 1,
                   "sms": [{"action": "meeting_followup", "at": "call_end", "count": 1}],
                   "lines": [{"kind": "reply", "contains": "booked"},
                             {"kind": "reply", "contains": "photo", "interrupted": False}],
                   "lines_in_order": True},
    },
    "opt_out_listed": {
        "description": "Set-up: the caller is on the opt-out list before the call; no text is sent and the "
                       "agent says why.",
        "duration": 8.0,
        "opt_outs": ["caller"],
        "stt": [{"t": 4.0, "text": "Can you text me the link to your website?"}],
        "agent": [{"t": 1.0, "text": "Everything is on our website."}],
        "expect": {"sms": [{"action": "website_link", "outcome": "failed", "reason": "opted_out", "count": 1}],
                   "max_sms": 0,
                   "lines": [{"kind": "failure", "action": "website_link"}],
                   "not_spoken": [{"kind": "confirmation"}, {"kind": "filler"}]},
    },
    "known_name_colleague_timeout": {
        "description": "Set-up: the caller's name is known at call start; the caller's own text goes out, the "
                       "colleague's number times out at the provider (told honestly, never resent).",
        "duration": 14.0,
        "variables": {"caller_name": "Maria"},
        "provider": {"latency": 0.4, "destinations": {"+14155550199": "timeout"}},
        "stt": [{"t": 3.0, "text": "Please text me the booking confirmation."},
                {"t": 8.0, "text": "And send the details to my colleague, her number is 415 555 0199."}],
        "agent": [{"t": 1.0, "text": "Your visit is booked for Wednesday at 4 pm."}],
        "expect": {"sms": [{"action": "booking_confirmation", "body_contains": "Hi Maria", "to": "caller",
                            "count": 1, "after_turn": 1},
                           {"action": "colleague_copy", "outcome": "failed", "reason": "unconfirmed", "to": "0199",
                            "count": 1,
                            "after_turn": 2}],
                   "max_sms": 2,
                   "lines": [{"kind": "confirmation", "action": "booking_confirmation"},
                             {"kind": "filler", "action": "colleague_copy"},
                             {"kind": "failure", "action": "colleague_copy"}],
                   # the two actions' lines may interleave either way on a busy host
                   "lines_in_order": "per_action",
                   "not_spoken": [{"kind": "confirmation", "action": "colleague_copy"}]},
    },
    "email_by_text": {
        "description": "The caller cannot spell their email address: the agent texts, the caller replies "
                       "(first with no address: asked again once), and the address feeds a second text.",
        "duration": 22.0,
        "stt": [{"t": 3.0, "text": "I'd like my receipts by email, please."},
                {"t": 8.0, "text": "It's Siobhan, S I O B H, oh, it's hard to spell. Can I just text it to you?"}],
        "agent": [{"t": 4.5, "text": "Sure, what's your email address?"}],
        "inbound": [{"t": 12.0, "body": "siobhan at example dot ie"},
                    {"t": 16.0, "body": "Sorry! It's Siobhan.OConnor@Example.ie"}],
        "actions": {"actions": [
            {"name": "ask_email", "condition": "if the caller wants to send their email address by text",
             "content": {"template": "Example Clinic here. Reply to this text with your email address and we'll "
                                     "use it for your receipts."},
             "await_reply": {"variable": "email", "kind": "email", "timeout": 60, "mode": "blocking"},
             "filler": None},
            {"name": "email_receipt", "after_reply": "ask_email",
             "content": {"template": "Thanks! Your receipts will go to {email}."}, "filler": None,
             "confirmation": "Got it, thanks. I've texted you a confirmation as well."},
        ]},
        "expect": {"sms": [{"action": "ask_email", "count": 1, "to": "caller"},
                           {"action": "ask_email-reask", "body_contains": "email address", "count": 1},
                           {"action": "email_receipt", "body_contains": "Siobhan.OConnor@example.ie", "count": 1}],
                   "max_sms": 3, "inbound_injected": 2,
                   "lines": [{"kind": "waiting", "action": "ask_email"},
                             {"kind": "confirmation", "action": "email_receipt"}],
                   "lines_in_order": True,
                   "not_spoken": [{"kind": "reply_timeout"}, {"kind": "failure"}]},
    },
    "declined_consent": {
        "description": "The agent asks before texting; the caller says no, and a later request is not asked again.",
        "duration": 21.0,
        "stt": [{"t": 3.0, "text": "Is there parking near you? Could you text me the parking information?"},
                {"t": 11.5, "text": "No, that's okay, I'll take the bus."},
                {"t": 16.0, "text": "Hmm, actually, text me the parking information."}],
        "agent": [{"t": 1.0, "text": "Welcome to Example Clinic, how can I help?"},
                  {"t": 4.0, "text": "Yes, there's a garage next door."}],
        "actions": {"actions": [
            {"name": "parking_info", "condition": "if the caller asks for parking information by text",
             "ask_consent": True,
             "content": {"template": "Parking: garage at 5th & Mission, validated for 2 hours at the front desk."},
             "filler": None, "confirmation": "Sent, the parking details are on your phone."},
        ]},
        "expect": {"max_sms": 0, "no_sms": ["parking_info"],
                   "lines": [{"kind": "consent", "action": "parking_info", "contains": "ending in 23"},
                             {"kind": "consent_declined", "action": "parking_info"}],
                   "lines_in_order": True,
                   "not_spoken": [{"kind": "confirmation"}, {"kind": "filler"}]},
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
    sys.path.insert(0, str(HERE.parent.parent))
    args = sys.argv[1:]
    out = HERE
    if "--out" in args:  # write elsewhere (the reproducibility test compares a fresh copy with this folder)
        at = args.index("--out")
        out = pathlib.Path(args[at + 1])
        out.mkdir(parents=True, exist_ok=True)
        del args[at:at + 2]
    for call_name in args or list(CALLS):
        write_call(call_name, CALLS[call_name], out)
        print("wrote", call_name)
