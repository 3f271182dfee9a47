"""The no-key variable extractor: values are read where they are stated, never from unrelated words.

A wrong value is worse than none (a missing variable waits, falls back to its default or skips the
text; a wrong one texts the caller a wrong time), so each kind of value has a place it may come from:

- **Times** (``booking_time``, ``meeting_date`` ...): where something was *settled*: the agent's
  newest statement that books, confirms or moves something ("booked for Friday at 7 pm", "Friday at
  7 is all yours"); a confirmation without a time confirms the time just agreed: the caller's choice
  ("Saturday at 8 please" - "you're booked"), or the agent's own proposal the caller accepted ("I can
  do 6:15 on Wednesday" - "perfect" - "great, you're booked in"). A cancellation since, an offer, a
  question, a waitlist, or a time the caller mentions for anything else ("text me the parking info
  for tomorrow") never fill it. Without any agent turn (a bot that does not feed its words back), the
  caller's own request to book ("book me for Friday at 7") counts; for variables about something
  else than a booking, a caller clause naming its subject ("call me back tomorrow at 3").
- **Names**: the caller introducing themselves ("this is Dana Smith", "I'm Carlos", "it's Megan
  here", "my name is john"); a lower-case word from speech-to-text counts only with a strong cue
  ("my name is", "... here", an answer to the agent asking for the name) or when the agent's next
  turn says it back ("Hi Carlos"). Never the agent's own name, never "I'm sorry" / "it's Friday".
- **E-mails and numbers**: the caller's words; the agent's only when it reads back what the caller
  just spelled ("kate w at fastmail dot com" - "Got it: katew@fastmail.com"), never the business's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from incall_sms.judges.base import Turn

__all__ = ["PatternExtractor"]

_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|today|tonight)"
_MONTH = r"(?:january|february|march|april|may|june|july|august|september|october|november|december)"
_ORDINAL = r"\d{1,2}(?:st|nd|rd|th)"
#: A day: "Friday", "Friday the 8th", "Thursday, May 9th", "March 14th", "the 10th of June".
_DATE = (rf"(?:{_WEEKDAY}(?:,?\s+(?:the\s+{_ORDINAL}|{_MONTH}\s+{_ORDINAL}|{_ORDINAL}))?|{_MONTH}\s+{_ORDINAL}"
         rf"|(?:the\s+)?{_ORDINAL}\s+of\s+{_MONTH})")
_NUMBER_WORDS = r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_TIME = (rf"(?:(?:half past|quarter past|quarter to)\s+(?:{_NUMBER_WORDS}|\d{{1,2}})"
         r"|\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)?|noon|midnight)")
#: A clock time that cannot be a count ("7 pm", "7:30"; not the "4" of "a table for 4").
_CLOCK = r"(?:\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)|\d{1,2}:\d{2}|noon|midnight)"
_TIME_VALUE = re.compile(
    rf"\b({_DATE}(?:,?\s+(?:at|from)\s+{_TIME})?|(?:at\s+{_TIME}|{_CLOCK})\s+(?:on\s+)?{_DATE}|{_CLOCK})",
    re.IGNORECASE)
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_PHONE = re.compile(r"(\+?\d[\d\s().-]{8,}\d)")

#: An agent's clause that settles something (a booking's time is read there, not from other words).
_SETTLED = re.compile(
    r"\b(?:booked|confirmed|reserved|scheduled|rescheduled|moved|changed|switched|set for|all set|see you|"
    r"put you (?:down|in)|you're in|you are in|signed (?:you )?up|registered|penciled|pencilled|locked in|"
    r"booked you|all yours|is yours|(?:got|have) you (?:down|in)|you're down|you are down|all done|that's done)\b"
    r"|\byour (?:booking|reservation|appointment|table|visit|meeting|session|class|lesson|slot|"
    r"delivery|pickup|pick-up|installation|viewing|tour|consultation)\b", re.IGNORECASE)
#: Weaker: a time the agent states the thing is ready or now is ("ready Thursday at noon", "is now Thursday at 11").
_WEAK_SETTLED = re.compile(r"\b(?:is now|are now|now on|now at)\b", re.IGNORECASE)
#: Only for variables about an order or a pickup, not a booking: "your order will be ready at 6:30".
_READY = re.compile(r"\b(?:(?:will|'ll) be ready|is ready|are ready)\b", re.IGNORECASE)
#: An agent turn proposing a time the caller may take ("we can do Thursday at 10", "would you like a spot?").
_PROPOSAL = re.compile(r"\b(?:can|could|i have|we have|there's|there is|available|how about|what about|would|shall|"
                       r"do you want|is that|works?|suits?)\b|,\s*(?:correct|right|okay|ok)\s*\?", re.IGNORECASE)
#: A caller taking it ("that works for us", "monday's fine", "yes sign me up"); not with a no or another wish.
_AGREE = re.compile(r"\b(?:yes|yeah|yep|yup|sure|ok|okay|perfect|great|lovely|fine|works|sounds good|sign me up|"
                    r"see you then|that's right|correct|book it|go ahead|let's do)\b", re.IGNORECASE)
_DISAGREE = re.compile(r"\b(?:no|not|nope|nah|can't|cannot|doesn't|don't|won't|rather|instead|other|else|"
                       r"neither|later|earlier)\b|n't\b", re.IGNORECASE)
#: No booking: "fully booked", a waitlist, a cancellation.
_NOT_SETTLED = re.compile(r"\b(?:fully|all|completely) booked\b|\bbooked (?:up|solid|out)\b|\bwait(?:ing)? ?list\b",
                          re.IGNORECASE)
_CANCELLED = re.compile(r"\bcancel(?:l?ed|ling)?\b|\bcalled off\b", re.IGNORECASE)
#: A caller's clause asking for something to be booked or changed ("book me for Friday at 7").
_BOOK_REQUEST = re.compile(
    r"\b(?:book|reserve|schedule|reschedule|move|change|switch|make it|put me (?:down|in)|sign me up|"
    r"can you do|could you do|do you have|is there|i'd like|i would like|i want)\b", re.IGNORECASE)
#: A caller's clause asking for a text or an e-mail: its time is about that, not a booking.
_SEND_REQUEST = re.compile(r"\b(?:text|send|message|sms|e-?mail|remind)\b", re.IGNORECASE)
#: The agent summing up what was agreed: "So that's Friday at 9 am for the cleaning."
_RECAP = re.compile(r"\W*(?:(?:so|okay|ok|great|perfect|alright|right),?\s+)?that(?:'s| is)\b", re.IGNORECASE)
#: Opening hours and the like: times the agent states that nobody books.
_HOURS = re.compile(r"\b(?:open|opens|close|closes|closed|closing|opening|hours?|happy hour|special|"
                    r"deal|offer|promotion|discount|sale)\b", re.IGNORECASE)
_ACCEPT = re.compile(
    r"^\W*(?:yes|yeah|yep|yup|sure|ok|okay|perfect|great|lovely|fine|sounds good|that works|works for me|"
    r"go (?:on|ahead)|please|correct|absolutely|definitely|do it|book it|let's do (?:it|that))\b", re.IGNORECASE)
_BOOKING_WORDS = ("booki", "reser", "appoi", "meeti", "visit", "table", "sessi", "lesso", "class", "consu")

#: Clause ends: ".", "!", "?", ";" before a space and a capital, except after "Dr." and the like.
_CLAUSE = re.compile(r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bSt\.)(?<!\bMrs\.)(?<![ap]\.m\.)(?<=[.!?;])\s+")
_STOP = frozenset({
    "a", "an", "and", "the", "of", "for", "to", "in", "on", "at", "by", "with", "or", "is", "are", "was",
    "be", "when", "what", "which", "time", "date", "day", "hour", "slot", "caller", "customer", "client",
    "agent", "their", "they", "it", "its", "that", "this", "wants", "want",
})

_INTRO = re.compile(r"\b(my name is|name's|this is|i am|i'm|it's)\s+([a-z][a-z'-]*)(?:\s+([a-z][a-z'-]*))?",
                    re.IGNORECASE)
#: Words after "it's" / "I'm" / "this is" that are no name.
_NOT_NAMES = frozenset({
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow",
    "tonight", "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "sorry", "fine", "good", "great", "okay", "ok", "here", "there",
    "just", "not", "still", "really", "so", "very", "calling", "looking", "trying", "wondering", "interested",
    "happy", "glad", "ready", "done", "back", "home", "new", "sure", "also", "actually", "only", "about",
    "all", "one", "the", "that", "this", "what", "who", "your", "yes", "no", "hello", "hi", "thanks", "thank",
    "me", "my", "for", "from", "with", "at", "on", "in", "a", "an", "to", "going", "having", "getting",
    "booking", "phoning", "ringing", "hoping", "after", "afraid", "busy", "late", "early", "free",
    "available", "open", "closed", "right", "wrong", "well", "urgent", "important", "correct", "it", "is",
    "was", "be", "been", "his", "her", "our", "their", "texting", "asking", "checking",
})
#: What follows a name at the start of a call ("this is greg i'm booking", "this is mark o'brien from flat 4").
_INTRO_END = re.compile(r"(?:[a-z'-]+\s+)?(?:i'm|i am|i|calling|from|speaking|here|and i|with)\b|$|[,.!]")
_ASKS_NAME = re.compile(r"\b(?:your name|who am i speaking|who's calling|who is calling|name for the)\b", re.IGNORECASE)


def _clauses(text: str) -> list[str]:
    return [c for c in _CLAUSE.split(text) if c.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", _PICKUP.sub("pickup", text.lower().replace("_", " ")))


_PICKUP = re.compile(r"\bpick(?:ed|ing)?[\s-]?up\b")


def _topic(name: str, description: str) -> tuple[str, ...]:
    """Content words of a variable ("booki" of "date and time of the booking"), as 5-letter stems."""
    words = _words(f"{name} {description}")
    return tuple(dict.fromkeys(w[:5] for w in words if w not in _STOP and len(w) > 2))


def _mentions(clause: str, topic: tuple[str, ...]) -> bool:
    return any(w[:5] in topic for w in _words(clause) if len(w) > 2)


def _times(text: str) -> list[str]:
    return [m.group(1).strip() for m in _TIME_VALUE.finditer(text)]


def _one_time(text: str) -> str | None:
    """The time ``text`` proposes, when it proposes exactly one (an offer of two is no choice)."""
    found = [] if _HOURS.search(text) else _times(text)
    return found[0] if len({t.lower() for t in found}) == 1 else None


def _agreed_time(transcript: Sequence[Turn], index: int) -> str | None:
    """The time just agreed before the agent's confirmation at ``index`` (which states none).

    Walking back at most four turns: the caller's own choice ("saturday at 8 please", not a time in a
    request for a text), or, when the caller only accepted ("perfect", "go on then"), the single time
    the agent proposed.
    """
    accepted = False
    for back in range(index - 1, max(-1, index - 5), -1):
        turn = transcript[back]
        if turn.role == "user":
            clauses = [c for c in re.split(r"[,.;!?]|\bbut\b|\band\b", turn.text) if _TIME_VALUE.search(c)]
            chosen = next((c for c in clauses if not _SEND_REQUEST.search(c)), None)
            if chosen is not None:
                return _times(chosen)[0]
            accepted = accepted or bool(_ACCEPT.search(turn.text))
        elif accepted:
            return _one_time(turn.text)
        elif _times(turn.text):
            return None  # the agent proposed something the caller did not take up
    return None


def _taken_proposal(transcript: Sequence[Turn], index: int) -> str | None:
    """The time of the agent's proposal the caller at ``index`` took ("we can do Thursday at 10" - "perfect").

    The caller either agrees without naming another time, or picks one of the offered times by its
    day or hour ("the wednesday one please"); a no, or a wish for another time, takes nothing.
    """
    if index < 1 or transcript[index - 1].role != "agent":
        return None
    caller, agent = transcript[index].text, transcript[index - 1].text
    if _HOURS.search(agent) or _NOT_SETTLED.search(agent) or _CANCELLED.search(agent) or not _PROPOSAL.search(agent):
        return None
    offered = list(dict.fromkeys(_times(agent)))
    if not offered or _DISAGREE.search(caller) or _SEND_REQUEST.search(caller):
        return None
    own = _times(caller)
    if own:  # the caller names it: one of the offers ("the 9:15 one"), else their own time is no acceptance
        picked = [t for t in offered if any(o.lower() in t.lower() or t.lower() in o.lower() for o in own)]
        return picked[0] if len(picked) == 1 else None
    named = [t for t in offered if set(_words(t)) & set(_words(caller)) - {"at", "on", "the", "am", "pm"}]
    if len(named) == 1:
        return named[0]
    if _AGREE.search(caller) and len({t.lower() for t in offered}) == 1:
        return offered[0]
    return None


def _settled_time(transcript: Sequence[Turn], topic: tuple[str, ...], *, booking: bool) -> str | None:
    """The time of the newest thing the agent settled; ``None`` when none was, or it was cancelled since."""
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role != "agent":
            taken = _taken_proposal(transcript, index)
            if taken:
                return taken
            continue
        for clause in reversed(_clauses(turn.text)):
            if clause.rstrip().endswith("?") or _NOT_SETTLED.search(clause):
                continue
            if _CANCELLED.search(clause):
                return None
            settles = _SETTLED.search(clause)
            if settles is None and not _HOURS.search(clause):
                # "So that's Friday at 9 am for the cleaning.", "It'll be ready Thursday at noon."
                settles = _RECAP.match(clause) or _WEAK_SETTLED.search(clause) or \
                    (None if booking else _READY.search(clause))
            if not settles and not _mentions(clause, topic):
                continue
            match = _TIME_VALUE.search(clause, settles.start() if settles else 0)
            if match is None and settles and not settles.group().lower().startswith("your"):
                match = _TIME_VALUE.search(clause)  # "Friday at 7 is all yours"
            if match:
                return match.group(1).strip()
            if settles and not settles.group().lower().startswith("your"):
                agreed = _agreed_time(transcript, index)
                if agreed:
                    return agreed
    return None


def _stated_time(transcript: Sequence[Turn], topic: tuple[str, ...], *, booking: bool) -> str | None:
    """The newest caller clause that asks for it ("book me for Friday at 7", "call me back tomorrow at 3")."""
    for turn in reversed(transcript):
        if turn.role != "user":
            continue
        for clause in reversed(_clauses(turn.text)):
            if _SEND_REQUEST.search(clause) and not _mentions(clause, topic):
                continue
            if _BOOK_REQUEST.search(clause) or (not booking and _mentions(clause, topic)):
                found = _times(clause)
                if found:
                    return found[-1]  # "thursday at 2, actually no make it friday at 2"
    return None


def _name(transcript: Sequence[Turn]) -> str | None:
    """The caller's name from their newest introduction (see the module docstring for the cues)."""
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role != "user":
            continue
        after = transcript[index + 1].text if index + 1 < len(transcript) else ""
        asked = index > 0 and transcript[index - 1].role == "agent" and bool(_ASKS_NAME.search(
            transcript[index - 1].text))
        words = turn.text.split()
        if asked and len(words) == 1 and words[0].strip(".,!").isalpha():  # "And your name?" - "helen"
            bare = words[0].strip(".,!")
            if bare.lower() not in _NOT_NAMES:
                return bare
        for match in _INTRO.finditer(turn.text):
            cue, first, second = match.group(1).lower(), match.group(2), match.group(3)
            if first.lower() in _NOT_NAMES:
                continue
            capitalised = first[0].isupper()
            rest = turn.text[match.end(2):].lstrip().lower()
            opening = len(turn.text[:match.start()].split()) <= 3  # "hi sam this is lucy i'm calling about ..."
            strong = cue in ("my name is", "name's") or asked or rest.startswith("here") or \
                (opening and _INTRO_END.match(rest) is not None) or \
                (re.search(rf"\b{re.escape(first)}\b", after, re.IGNORECASE) is not None and \
                re.search(rf"\b{re.escape(first.capitalize())}\b", after) is not None)
            if not (capitalised or strong):
                continue
            if capitalised and second and second[0].isupper() and second.lower() not in _NOT_NAMES:
                return f"{first} {second}"
            return first
    return None


def _letters(text: str) -> str:
    spoken = re.sub(r"\b(?:at|dot|underscore|dash|hyphen)\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]", "", spoken)


def _contact(transcript: Sequence[Turn], pattern: re.Pattern[str]) -> str | None:
    """The caller's e-mail or number: their own words, or the agent reading back what they just spelled."""
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role == "user":
            match = pattern.search(turn.text)
            if match:
                return match.group(1).strip()
            continue
        spelled = _letters(" ".join(t.text for t in transcript[max(0, index - 4):index] if t.role == "user"))
        for match in pattern.finditer(turn.text):
            value = match.group(1).strip()
            key = _letters(value.split("@")[0]) if "@" in value else re.sub(r"\D", "", value)
            if key and key in spelled:
                return value
    return None


class PatternExtractor:
    """A deterministic extractor for the no-key service, the simulation and replays.

    Maps each wanted variable to a kind by its name or description: names (``caller_name``),
    dates and times (``booking_time``), e-mails and phone numbers; other variables are left to
    their defaults (or an LLM extractor). Where each kind is read: the module docstring.
    """

    async def extract(self, transcript: Sequence[Turn], wanted: Mapping[str, str]) -> dict[str, str]:
        """Values found for the ``wanted`` names (name -> description)."""
        return self.extract_now(transcript, wanted)

    def extract_now(self, transcript: Sequence[Turn], wanted: Mapping[str, str]) -> dict[str, str]:
        """Synchronous version of :meth:`extract`."""
        found: dict[str, str] = {}
        for name, description in wanted.items():
            kind = self._kind(name, description)
            value: str | None = None
            if kind == "name":
                value = _name(transcript)
            elif kind == "email":
                value = _contact(transcript, _EMAIL)
            elif kind == "phone":
                value = _contact(transcript, _PHONE)
            elif kind == "time":
                topic = _topic(name, description)
                booking = any(w in topic for w in _BOOKING_WORDS)
                value = _settled_time(transcript, topic, booking=booking)
                if value is None and (not booking or not any(t.role == "agent" for t in transcript)):
                    value = _stated_time(transcript, topic, booking=booking)
            if value:
                found[name] = value
        return found

    @staticmethod
    def _kind(name: str, description: str) -> str | None:
        text = f"{name} {description}".lower()
        if "name" in text:
            return "name"
        if "email" in text or "e-mail" in text:
            return "email"
        if "phone" in text or ("number" in text and "mobile" in text):
            return "phone"
        if any(w in text for w in ("time", "date", "when", "day", "slot")):
            return "time"
        return None
