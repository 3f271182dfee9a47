"""The embedded condition judge: deterministic, no key, no network.

It reads a condition the way a person would skim it and the conversation the way
a careful listener would:

* The condition is parsed once into a :class:`ParsedCondition`: does it refer to
  the end of the call; is it about the caller *asking* for something (a request)
  or about something that *happened* (a state, e.g. "a meeting was booked"); what
  is asked for (head noun, its modifiers), and whether the thing is just "a text".
* A caller turn is split into clauses. Each clause is classified: a request to
  send/text something, a question asking for information, a refusal or
  negation ("no need", "don't text me"), a report of having received it
  ("I already got the text"), or a question about the text itself ("what does
  the text say?"). Short answers ("yes please", "no thanks") are read against the
  agent's previous offer ("Would you like me to text you the link?").
* Topics are compared through small synonym groups (link/url/site/page,
  address/location/directions, booking/appointment/reservation ...) with light
  stemming; "that" / "it" / "the details" resolve to what the agent just said.

It is fast (tens of microseconds per condition) and has no I/O, so a processor
may call :meth:`EmbeddedJudge.judge_now` inline.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

from incall_sms.judges.base import ConditionSpec, JudgeRequest, Match, Turn
from incall_sms.judges.receipt import received_reason
from incall_sms.judges.recipients import veto_reason
from incall_sms.lexicon import PEOPLE_EN

__all__ = ["MAX_TURN_CHARS", "EmbeddedJudge", "ParsedCondition", "TurnSenders", "normalize", "parse_condition",
           "read_senders"]

#: Characters of the latest caller turn (and the agent turn before it) the judge reads.
MAX_TURN_CHARS = 400

# -- lexicon -------------------------------------------------------------------

_CONTRACTIONS = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"'d\b", " would"),
    (r"'m\b", " am"),
    (r"\b(it|that|what|there|here|where|who|how|he|she)'s\b", r"\1 is"),
]

#: Words that mean "the SMS channel" (the thing sent, not its topic).
_CHANNEL = {"text", "texts", "sms", "message", "messages", "msg", "txt", "texting", "messaging"}
_SEND_VERBS = {"text", "send", "sms", "message", "shoot", "drop", "forward", "ping", "msg", "txt", "resend"}
_OTHER_CHANNELS = {"email", "e-mail", "mail", "post", "fax", "letter"}
_PHONE_WORDS = {"phone", "cell", "mobile", "cellphone", "number"}
_WH = {"what", "where", "when", "which", "how", "who", "whats", "wheres"}
_DEICTIC = {"that", "it", "this", "them", "those", "these", "everything", "details", "info", "information",
            "all", "same"}
_AFFIRM = {"yes", "yeah", "yep", "yup", "sure", "ok", "okay", "please", "absolutely", "definitely", "certainly",
           "correct", "right", "perfect", "great", "go", "do"}
_NEGATORS = {"not", "no", "never", "nothing", "without", "nope", "nah", "neither", "nor"}
_DISLIKE = {"hate", "dislike", "rather not", "prefer not"}
_RECEIVED = re.compile(
    r"\b(already|just) (got|get|have|received|saw|seen)\b|\b(got|received|have) (it|that|the \w+|your \w+) already\b"
    r"|\bi (got|received) (it|the text|your text|the message|your message)\b"
)
_CONTENT_QUESTION = re.compile(
    r"\b(what|how)\b[^.?!]*\b(text|message|sms)\b[^.?!]*\b(say|says|said|contain|contains|include|includes|be|look)\b"
)
_REQUEST_MARKERS = re.compile(
    r"\b(can|could|would|will) you\b|\bplease\b|\bi (would like|want|need|would love|would prefer|would rather)\b"
    r"|\b(can|could|may) i (get|have|receive)\b|\bi would rather you\b|\bgo ahead\b|\bmind (sending|texting)\b"
    r"|\bhow about\b|\bwhy not\b|\b(let|lets) me have\b|\bi am going to need\b|\bget me\b|\bmake sure i get\b"
)
_OFFER_MARKERS = re.compile(
    r"\b(would|do) you (like|want) me to\b|\bshall i\b|\bshould i\b|\bwant me to\b|\bi can\b|\bi could\b"
    r"|\bwould you like\b|\bdo you want\b|\bhow about i\b|\blet me\b"
)
_END_CONDITION = re.compile(
    r"\b(call|conversation|chat) (ends|ended|is over|finishes|finished|is finished|completes|hangs up)\b"
    r"|\b(end|close) of the (call|conversation)\b|\bafter the (call|conversation)\b|\bhangs? up\b"
    r"|\bwhen (we|they|the caller|the user|the customer) (hang up|hangs up|say goodbye|says goodbye)\b"
    r"|\bon hang ?up\b|\bcall (end|ending)\b"
)
_REQUEST_CONDITION = re.compile(
    r"\b(ask|asks|asked|asking|request|requests|requested|requesting|want|wants|wanted|would like|needs?|"
    r"says? to|tells? (us|you|the agent|the assistant) to|agrees? to|accepts?|prefers?|wishes|wish|"
    r"is interested in|interested in|inquires?|enquires?)\b"
)
_STOP = {
    "if", "when", "whenever", "the", "a", "an", "user", "caller", "customer", "client", "patient", "person",
    "they", "he", "she", "asks", "ask", "asked", "asking", "requests", "request", "requested", "for", "to",
    "receive", "get", "be", "sent", "send", "wants", "want", "would", "like", "says", "say", "and", "or", "of",
    "their", "his", "her", "our", "my", "your", "me", "them", "it", "is", "was", "were", "has", "have", "had",
    "been", "about", "in", "on", "at", "by", "with", "via", "over", "some", "any", "call", "ends", "end",
    "ended", "conversation", "copy", "needs", "need", "agent", "assistant", "we", "us", "that", "this", "one",
    "so", "then", "once", "after", "during", "while", "can", "could", "please", "again", "also", "too",
    "texted", "messaged", "link", "through", "phone", "given", "provided", "tells", "told", "agrees", "agreed",
    "accepts", "accepted", "inquires", "interested", "there",
}
# "link" is in _STOP only for the stop-word pass; it is re-added as a topic below when present.

_GROUPS: list[set[str]] = [
    {"book", "booking", "booked", "reservation", "reserve", "reserved", "appointment", "meeting", "slot",
     "table", "schedule", "scheduled", "visit", "session", "consultation"},
    {"confirmation", "confirm", "confirmed", "receipt", "proof", "writing", "itinerary"},
    {"summary", "recap", "overview", "rundown"},
    {"link", "url", "website", "site", "page", "web", "webpage", "online", "internet", "homepage", "portal",
     "form", "signup", "download"},
    {"address", "location", "located", "directions", "direction", "where", "map", "route", "street",
     "postcode", "zip"},
    {"menu", "dishes", "food"},
    {"hours", "open", "opening", "close", "closing", "schedule", "time", "times"},
    {"price", "prices", "pricing", "cost", "costs", "quote", "estimate", "fee", "fees", "rate", "rates",
     "charge", "charges", "much"},
    {"code", "password", "pin", "otp", "verification", "passcode"},
    {"invoice", "bill", "billing", "receipt", "statement", "payment"},
    {"order", "orders", "purchase", "delivery", "tracking", "shipment", "package", "parcel"},
    {"number", "contact", "phone", "line", "extension"},
    {"email", "e-mail"},
    {"brochure", "catalog", "catalogue", "leaflet", "flyer", "pdf", "document", "documents", "form", "forms"},
    {"instructions", "instruction", "steps", "guide", "howto", "reset", "prep", "preparation"},
    {"coupon", "discount", "voucher", "promo", "offer", "deal"},
    {"reminder", "reminders", "remind"},
    {"callback", "call back", "follow-up", "followup"},
    {"cancellation", "cancel", "cancelled", "canceled"},
    {"parking", "park", "garage"},
    {"wifi", "wi-fi", "network"},
    {"photo", "photos", "picture", "pictures", "pic", "pics", "image", "images", "snapshot", "screenshot"},
]
#: Completed-event words used for state conditions ("a meeting was booked").
_EVENT_WORDS = {
    "book": {"booked", "scheduled", "reserved", "confirmed", "set", "locked", "pencilled", "penciled", "down",
             "all set", "see you"},
    "order": {"placed", "ordered", "confirmed", "processed", "submitted", "on its way"},
    "pay": {"paid", "charged", "processed", "received"},
    "cancel": {"cancelled", "canceled", "removed"},
    "register": {"registered", "signed up", "enrolled", "subscribed"},
}
_EVENT_ALIASES = {
    "booked": "book", "book": "book", "booking": "book", "scheduled": "book", "schedule": "book",
    "reserved": "book", "reservation": "book", "made": "book", "set": "book", "confirmed": "book",
    "placed": "order", "ordered": "order", "order": "order", "purchased": "order", "bought": "order",
    "paid": "pay", "payment": "pay", "cancelled": "cancel", "canceled": "cancel", "cancel": "cancel",
    "registered": "register", "signed": "register", "enrolled": "register", "subscribed": "register",
}


@functools.lru_cache(maxsize=4096)
def _normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    text = re.sub(r"\be-?mail\b", "email", text)
    text = re.sub(r"\bsms\b|\bs\.m\.s\.?", "sms", text)
    for pattern, repl in _COMPOUNDS:
        text = pattern.sub(repl, text)
    return text


def normalize(text: str) -> str:
    """The text as the judge's patterns read it: lower case, contractions expanded, "e-mail" -> "email".

    Args:
        text: A condition or a turn.

    Returns:
        The normalized text.
    """
    return _normalize(text)


#: The agent asking the caller to text something ("you can text it to me", "just reply to my text").
_AGENT_ASKS_CALLER = re.compile(
    r"\b(?:you|feel free to|just)(?: (?:can|could|may|want to|would like to|like to|are welcome to))?"
    r" (?:text|send|message|reply|sms)\b(?! stop\b)(?: [a-z']+){0,4}? (?:to )?(?:me|us|this number)\b"
    r"|\b(?:you can|please|just) reply (?:to (?:this|that|my|the) (?:text|message) )?with your\b")

#: A request for a text to the caller anywhere in a clause ("before i send you a photo, can you text me the map").
TO_ME = re.compile(r"\b(?:text|send|message|sms|shoot|forward|ping|email|drop)\w* (?:me|it to me|that to me|"
                   r"them to me|this to me|over to me)\b|\bto my (?:phone|cell|mobile|number)\b"
                   r"|\b(?:can|could|may) i (?:get|have|receive)\b")

#: Compound nouns whose last word names another thing ("an email address" is no street address).
_COMPOUNDS = ((re.compile(r"\bemail address(?:es)?\b"), "email"),
              (re.compile(r"\b(?:web ?site|web|internet) address(?:es)?\b"), "website"))

#: The caller as the sender ("can i text you my email", "i will send it to you"): no request to be texted.
_CALLER_SENDS = re.compile(
    r"\b(?:i|let me|can i|could i|may i|shall i)"
    r"(?: (?!you\b|me\b|never\b|not\b|do not\b|cannot\b|will not\b|would not\b|did not\b)[a-z']+){0,3}?"
    r" (?<!by )(?<!via )(?<!a )(?<!the )(?<!over )(?<!as )(?<!in )(?<!your )(?<!that )"  # a noun: "get that by text"
    r"(?:text|send|message|sms|forward|reply)\b(?! (?:me|it to me|that to me|them to me|this to me)\b)"
    r"(?!(?: [a-z']+){0,5} to (?:me|my (?:phone|cell|mobile|number))\b)")
#: A condition about the caller sending something ("the caller wants to send their email address by text").
_INBOUND_CONDITION = re.compile(
    r"\b(?:caller|customer|client|patient|user|guest|they|he|she)"
    r"(?: (?!us\b|you\b|me\b|the\b|agent\b|for\b|says?\b|said\b|tells?\b|told\b)[a-z']+){0,3}?"
    r" to (?:send|text|message|sms|email|reply|upload|forward)(?: (?:us|you|the agent|the business|in|back))?"
    r" (?:their|his|her|(?:(?:a|an|some) )?(?:photos?|pictures?|images?|screenshots?|videos?))\b"
    r"|\b(?:caller|customer|client|patient|user|guest)(?: [a-z']+){0,3}? to (?:send|text|message) (?:us|you)\b"
    r"|\b(?:caller|customer|client|patient|user|guest)(?: [a-z']+){0,3}? to reply\b"
    r"|\b(?:caller|customer|client|patient|user) (?:texts?|replies|sends?) (?:us|back|in|their)\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)?", text)


@functools.lru_cache(maxsize=4096)
def _stem(word: str) -> str:
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + repl
    return word


_GROUP_FORMS: list[frozenset[str]] = [frozenset(group | {_stem(g) for g in group}) for group in _GROUPS]


@functools.lru_cache(maxsize=8192)
def _expand_word(word: str) -> frozenset[str]:
    stem = _stem(word)
    out = {word, stem}
    for forms in _GROUP_FORMS:
        if word in forms or stem in forms:
            out |= forms
    return frozenset(out)


def _expand(words: Iterable[str]) -> set[str]:
    """Words, their stems, and their synonym groups' members (stemmed)."""
    out: set[str] = set()
    for word in words:
        out |= _expand_word(word)
    return out


@functools.lru_cache(maxsize=1024)
def _agent_words(agent_text: str) -> tuple[str, ...]:
    return tuple(_words(_normalize(agent_text)))


@functools.lru_cache(maxsize=1024)
def _expanded(terms: frozenset[str]) -> frozenset[str]:
    return frozenset(_expand(terms))


def _clauses(text: str) -> list[str]:
    parts = re.split(r"[.!?;]+|,\s*(?:but|though|although|however)\b|\bbut\b|\bthough\b", text)
    return [p.strip(" ,") for p in parts if p and p.strip(" ,")]


# -- condition parsing ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedCondition:
    """What the embedded judge understood of a condition.

    Attributes:
        at_end: The condition refers to the end of the call.
        kind: ``request`` (the caller asks for something) or ``state``.
        head: Head words of the thing asked for (``address`` in "the clinic's address").
        modifiers: Other topic words (``clinic``, ``booking``).
        generic: The thing asked for is just "a text / a message".
        event: For state conditions, the event family (``book``, ``order`` ...), if known.
        info: The condition is about asking for information (may be answered by voice:
            "what's your address?" counts as asking for the address).
        recipients: Who the text is for, when the condition names someone other than the caller.
        inbound: The caller sends the text ("wants to send their email address by text"): only the
            caller offering to text it counts, never a request to be texted.
    """

    at_end: bool
    kind: str
    head: frozenset[str]
    modifiers: frozenset[str]
    generic: bool
    event: str | None
    info: bool
    recipients: frozenset[str] = frozenset()
    inbound: bool = False


@functools.lru_cache(maxsize=1024)
def parse_condition(condition: str) -> ParsedCondition:
    """Parse a plain-language condition (cached)."""
    text = _normalize(condition)
    at_end = bool(_END_CONDITION.search(text))
    # the part after "and"/"if" that carries the substance, for end conditions
    body = text
    if at_end:
        body = _END_CONDITION.sub(" ", text)
    request = bool(_REQUEST_CONDITION.search(body))
    words = _words(body)
    event = None
    if not request:
        for word in words:
            if word in _EVENT_ALIASES and (word.endswith("ed") or word in ("made", "set", "paid", "bought")):
                event = _EVENT_ALIASES[word]
                break
        if event is None:
            for word in words:
                if word in _EVENT_ALIASES:
                    event = _EVENT_ALIASES[word]
                    break
    # topic: content words after the request verb ("asks for the clinic's address")
    topic_text = body
    match = _REQUEST_CONDITION.search(body)
    if match:
        topic_text = body[match.end():]
    topic_words = [w for w in _words(topic_text.replace("'s ", " ")) if w not in _STOP or w == "link"]
    topic_words = [w for w in topic_words if w not in ("s",)]
    channel_only = [w for w in topic_words if w not in _CHANNEL and w not in _PHONE_WORDS]
    generic = request and not channel_only
    # head = last noun-ish word before a preposition phrase: "link to the website" -> link
    head_words: list[str] = []
    modifiers: list[str] = []
    if channel_only:
        topic_text = re.sub(r"^\s*((to|for|of|about|with|on|at|by|get|receive|have|be|sent|send|text|the|a|an|"
                            r"some|any|their|them|us|me)\s+)+", "", topic_text)
        prep = re.search(r"\b(to|for|of|from|about|with|on|at|by)\b", topic_text)
        first_phrase = [w for w in _words(topic_text[: prep.start()] if prep else topic_text) if w in channel_only]
        head_words = [first_phrase[-1]] if first_phrase else [channel_only[-1]]
        modifiers = [w for w in channel_only if w not in head_words]
    verbs_info = re.search(r"\b(asks? (for|about|where|what|when|how)|wants to know|inquires?|enquires?)\b", text)
    sending = re.search(r"\b(receive|sent|send|text|texted|sms|message|copy|in writing|link)\b", body)
    info = bool(verbs_info) and not sending
    recipients = frozenset(_recipients(body, pronouns=False))
    inbound = (bool(_INBOUND_CONDITION.search(body)) and not re.search(r"\b(?:sent|texted) to (?:them|him|her)\b", body)
               and bool(re.search(r"\b(?:text|texts|texting|sms|message|photos?|pictures?|images?|screenshots?|"
                                  r"videos?|repl(?:y|ies)|by phone)\b", body))
               and not re.search(r"\b(?:not|never|no|refuses?|declines?|without)\b", body))
    return ParsedCondition(
        at_end=at_end,
        kind="request" if request else "state",
        head=frozenset(w for w in head_words if w not in recipients),
        modifiers=frozenset(w for w in modifiers if w not in recipients),
        generic=generic,
        event=event,
        info=info,
        recipients=recipients,
        inbound=inbound,
    )


# -- utterance analysis ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Clause:
    text: str
    words: tuple[str, ...]
    send: bool  # asks for something to be sent / texted
    question: bool
    wh: bool
    negated: bool
    received: bool
    content_question: bool
    other_channel: bool
    want: bool  # "I need / I want / can I get" without a send verb
    caller_sends: bool = False  # "can i text you my email": the caller as the sender


@functools.lru_cache(maxsize=4096)
def _analyse(clause: str) -> _Clause:
    words = tuple(_words(clause))
    wordset = set(words)
    first = words[0] if words else ""
    send_verb_positions = [i for i, w in enumerate(words) if w in _SEND_VERBS]
    send = False
    for i in send_verb_positions:
        verb = words[i]
        after = words[i + 1 : i + 4]
        before = words[max(0, i - 4) : i]
        if verb in ("text", "message", "sms", "msg", "txt") and i > 0 and words[i - 1] in ("a", "the", "any", "your",
                                                                                         "this", "that", "weird"):
            # noun use: "drop me a text", "send me a message"; counts only with a directive verb around it
            send = send or any(w in ("drop", "send", "shoot", "get", "receive", "want", "like") for w in before)
            continue
        if verb == "drop" and not any(w in _CHANNEL or w == "line" for w in words[i + 1 : i + 5]):
            continue
        if verb == "shoot" and not any(w in _CHANNEL or w in ("me", "over") for w in after):
            continue
        # verb use: "text me", "send me the link", "can you send that", "message me the page"
        prev = words[i - 1] if i > 0 else ""
        object_follows = bool(after) and after[0] in ("me", "us", "it", "that", "this", "them", "over", "my")
        noun_before = prev in ("a", "the", "your", "my", "this", "that", "any", "confirmation", "weird")
        if i == 0 or prev in _VERB_CONTEXT or (object_follows and not noun_before):
            send = True
    phrase = " ".join(words)
    if re.search(r"\b(in writing|to my (phone|cell|mobile)|on my (phone|cell|mobile)|by (text|sms|message)"
                 r"|via (text|sms|message)|over text|as a text|text message)\b", phrase):
        send = send or bool(_REQUEST_MARKERS.search(phrase)) or any(w in _SEND_VERBS for w in words) or (
            "sent" in wordset or "get" in wordset or "have" in wordset)
    if re.search(r"\b(get|have) (that|it|this|them|the \w+) (sent|texted|messaged)\b", phrase):
        send = True
    if _PAST_QUESTION.match(phrase) and not re.search(r"\b(please|can you|could you|would you)\b", phrase):
        send = False
    negated = bool(
        re.search(r"\b(no need|do not|does not|not necessary|no thanks|no thank you|never mind|nevermind|rather not|"
                  r"prefer not|not want|not need|without|stop sending|hate|dislike|not interested|not texting|"
                  r"not send|not text|not bother|no,|nope|nah|skip)\b", phrase + ("," if first == "no" else ""))
        or first in ("no", "nope", "nah")
    )
    question = clause.rstrip().endswith("?") or first in _WH or first in ("do", "does", "is", "are", "can",
                                                                            "could", "would", "will", "did")
    wh = first in _WH or bool(re.match(r"^(and|so|um|uh|hmm|sorry|ok|okay|also)?\s*(what|where|when|how|which)\b",
                                       phrase))
    received = bool(_RECEIVED.search(phrase))
    content_question = bool(_CONTENT_QUESTION.search(phrase))
    other_channel = bool(wordset & _OTHER_CHANNELS) and not (wordset & {"text", "sms"})
    want = bool(re.search(r"\b(i (would like|want|need|would love)|(can|could|may) i (get|have|see)|give me|"
                          r"tell me|let me know|send over|i am looking for|looking for)\b", phrase))
    caller_sends = bool(_CALLER_SENDS.search(phrase))
    return _Clause(clause, words, send, question, wh, negated, received, content_question, other_channel, want,
                   caller_sends)


@functools.lru_cache(maxsize=1024)
def _turn_clauses(normalized_turn: str) -> tuple[_Clause, ...]:
    """A caller turn's clauses, analysed once per turn (every condition of a request reads the same turn)."""
    return tuple(_analyse(c) for c in _clauses(normalized_turn))


def _topic_hit(words: Iterable[str], terms: frozenset[str]) -> bool:
    if not terms:
        return False
    expanded_terms = _expanded(terms)
    stems = {_stem(w) for w in words} | set(words)
    return bool(stems & expanded_terms)


def _exact_hit(words: Iterable[str], terms: frozenset[str]) -> bool:
    """Topic hit without synonym expansion of the utterance side beyond stems."""
    stems = {_stem(w) for w in words}
    groups = _expand(terms)
    return bool(stems & groups)


_VERB_CONTEXT = frozenset({
    "you", "please", "to", "can", "could", "would", "will", "just", "then", "and", "i", "we", "so", "also",
    "ok", "okay", "yes", "yeah", "sure", "ooh", "oh", "great", "fine", "maybe", "pls", "plz", "kindly", "go",
    "rather", "must", "should", "now", "again", "quickly", "quick", "simply", "not",
})
#: Nouns that say little on their own ("the price list", "the tracking number").
_LIGHT_HEADS = frozenset({"list", "number", "code", "details", "detail", "info", "information", "copy", "sheet",
                          "document", "summary", "link", "page"})
#: Phrases that stand for a topic word.
_PHRASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(get|getting|come|coming|drive|find) (to you|there|to your|to the)\b|\bbest way\b"
                r"|\bhow (do|can|would) (i|we) (find|reach|get)\b|\bwhere (are|is) (you|it)\b"), "directions"),
    (re.compile(r"\bhow much\b|\bwhat do you charge\b"), "price"),
    (re.compile(r"\bwhat time\b|\bwhen do you (open|close)\b"), "hours"),
]
_PAST_QUESTION = re.compile(
    r"^(did|have|has|do|does|is|was|were|are) (you|i|it|they|we|there)\b(?!.*\b(please|can you|could you)\b)"
)
_DESTINATION = re.compile(r"\b(to|at) (my|our|your|his|her|their|the) (\w+)")
#: A person a text can be sent to besides the caller (and the office, a client: not the caller either).
_PERSONS = PEOPLE_EN | {"office", "client", "customer"}
_THIRD_PARTY = re.compile(r"\b(to|for) (my|our|his|her|their|the) ([a-z-]+)\b|\b(to|for) (him|her|them)\b")


@functools.lru_cache(maxsize=1024)
def _recipients(phrase: str, *, pronouns: bool = True) -> frozenset[str]:
    """Third parties a phrase directs a text to ("to my colleague" -> {"colleague"}).

    In a condition "to them" means the caller, so conditions pass ``pronouns=False``.
    """
    found = set()
    for match in _THIRD_PARTY.finditer(phrase):
        if match.group(3) and match.group(3) in _PERSONS:
            found.add(match.group(3))
        elif match.group(5) and pronouns:
            found.add("them")
    return frozenset(found)


_GENERIC_HEADS = frozenset({"details", "detail", "info", "information", "summary", "recap", "everything"})
_TIME = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|tonight|today|noon|midnight"
    r"|january|february|march|april|may|june|july|august|september|october|november|december"
    r"|\d{1,2}(:\d{2})? ?(am|pm|a\.m\.|p\.m\.)|at \d{1,2}\b|\d{1,2}(st|nd|rd|th)\b)"
)


def _mentions_time(text: str) -> bool:
    return bool(_TIME.search(_normalize(text)))


def _describes_something(agent_text: str) -> bool:
    """The agent made a statement with content (not just a question or a greeting)."""
    text = _normalize(agent_text).strip()
    return len(_words(text)) >= 4 and not text.endswith("?")


@functools.lru_cache(maxsize=1024)
def _agent_offer(agent_text: str) -> tuple[bool, tuple[str, ...]]:
    text = _normalize(agent_text)
    for clause in _clauses(text):
        words = _words(clause)
        if _OFFER_MARKERS.search(clause) and any(w in _SEND_VERBS or w in _CHANNEL for w in words):
            return True, tuple(words)
    return False, ()


@functools.lru_cache(maxsize=4096)
def _topic_words(clause: _Clause) -> tuple[str, ...]:
    """Words that can name what is asked for: phrase synonyms added, destinations ("to my address") removed."""
    phrase = " ".join(clause.words)
    destination = {m.group(3) for m in _DESTINATION.finditer(phrase) if m.group(3) not in _CHANNEL}
    words = [w for w in clause.words if w not in destination]
    words += [token for pattern, token in _PHRASES if pattern.search(phrase)]
    return tuple(words)


def _affirmative(clause: _Clause) -> bool:
    if not clause.words or clause.negated:
        return False
    first = clause.words[0]
    phrase = " ".join(clause.words)
    return first in _AFFIRM or bool(re.match(r"^(that would be|that is|sounds|go ahead|please do|why not|"
                                             r"i would like that|i would love that|that works)", phrase))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TurnSenders:
    """Who the caller's latest turn has sending a text (the embedded reading, for other judges' rules).

    Attributes:
        answers_agent: The turn opens with a yes to the agent's offer or to its request of the caller.
        caller_sends: A clause, not negated, has the caller as the sender ("can i text you my email").
        asks_to_be_texted: A clause asks for a text to be sent to the caller ("text me", "can you send me").
        wants: A clause says the caller wants something ("i need", "can i get") without a send verb.
    """

    answers_agent: bool
    caller_sends: bool
    asks_to_be_texted: bool
    wants: bool


def read_senders(turns: Sequence[tuple[str, str]]) -> TurnSenders | None:
    """The embedded judge's reading of who sends what in the caller's last turn.

    Args:
        turns: The conversation so far as ``(role, text)`` (roles ``user`` and ``agent``).

    Returns:
        The reading, or ``None`` when the last turn is not the caller's or has no words.
    """
    if not turns or turns[-1][0] != "user":
        return None
    clauses = _turn_clauses(_normalize(turns[-1][1][-MAX_TURN_CHARS:]))
    if not clauses:
        return None
    agent = next((text for role, text in reversed(turns[:-1]) if role == "agent"), "")
    agent_asks_caller = bool(_AGENT_ASKS_CALLER.search(_normalize(agent)))
    return TurnSenders(
        answers_agent=_affirmative(clauses[0]) and (agent_asks_caller or _agent_offer(agent)[0]),
        caller_sends=any(c.caller_sends and not c.negated for c in clauses),
        asks_to_be_texted=any(c.send and not c.caller_sends for c in clauses) or any(TO_ME.search(c.text)
                                                                                     for c in clauses),
        wants=any(c.want for c in clauses),
    )


# -- the judge -------------------------------------------------------------------


class EmbeddedJudge:
    """Deterministic rule-based judge for the simulation, tests and key-less use.

    Args:
        threshold: Minimum confidence for a match (0..1).
    """

    name = "embedded"
    instant = True

    def __init__(self, *, threshold: float = 0.5) -> None:
        self.threshold = threshold

    async def judge(self, request: JudgeRequest) -> list[Match]:
        """Same as :meth:`judge_now` (no I/O)."""
        return self.judge_now(request)

    def judge_now(self, request: JudgeRequest) -> list[Match]:
        """Judge every condition of ``request`` synchronously."""
        matches = []
        for spec in request.conditions:
            confidence, reason = self.score(spec, request)
            if confidence >= self.threshold:
                matches.append(Match(id=spec.id, confidence=round(confidence, 3), reason=reason))
        return matches

    # scoring ------------------------------------------------------------------

    def score(self, spec: ConditionSpec, request: JudgeRequest) -> tuple[float, str]:
        """Confidence (0..1) that ``spec`` holds now, with a short reason."""
        parsed = parse_condition(spec.condition)
        at_end = parsed.at_end if spec.when == "auto" else spec.when == "call_end"
        if at_end and request.at != "call_end":
            return 0.0, "waits for the end of the call"
        transcript = list(request.transcript)
        if not transcript:
            return 0.0, "no conversation yet"
        if parsed.kind == "state":
            return self._score_state(parsed, transcript, request)
        if at_end:
            # "when the call ends, if the caller asked for X": any turn of the call counts
            best = (0.0, "no matching request in the call")
            for index, turn in enumerate(transcript):
                if turn.role == "user":
                    best = max(best, self._score_request(parsed, transcript[: index + 1]))
            return best
        vetoed = (veto_reason(spec.condition, transcript[-1].text)
                  or received_reason(spec.condition, [(t.role, t.text) for t in transcript[-2:]])
                  ) if transcript[-1].role == "user" else None
        if vetoed:
            return 0.0, vetoed
        return self._score_request(parsed, transcript)

    def _score_request(self, parsed: ParsedCondition, transcript: Sequence[Turn]) -> tuple[float, str]:
        last_user_index = max((i for i, t in enumerate(transcript) if t.role == "user"), default=None)
        if last_user_index is None or last_user_index != len(transcript) - 1:
            return 0.0, "the caller has not just spoken"
        # a turn is judged on its latest words: a long monologue costs no more than a sentence or two
        user = _normalize(transcript[last_user_index].text[-MAX_TURN_CHARS:])
        agent = next((t.text for t in reversed(transcript[:last_user_index]) if t.role == "agent"), "")
        agent = agent[-MAX_TURN_CHARS:]
        agent_words = _agent_words(agent)
        terms = parsed.head | parsed.modifiers
        clauses = _turn_clauses(user)
        if not clauses:
            return 0.0, "empty turn"

        if parsed.inbound:
            return self._score_inbound(parsed, clauses, agent)

        # 1. yes / no to the agent's offer to text something
        offered, offer_words = _agent_offer(agent)
        if offered and not _AGENT_ASKS_CALLER.search(" ".join(offer_words)):
            first = clauses[0]
            topic_ok = parsed.generic or _topic_hit(offer_words, terms)
            if _affirmative(first) and topic_ok and not any(c.negated for c in clauses):
                return 0.9, "caller accepted the agent's offer to text it"
            if first.negated or (first.words and first.words[0] in ("no", "nope", "nah")):
                return 0.0, "caller declined the offer"

        best = (0.0, "no request for it")
        for clause in clauses:
            if clause.content_question:
                continue  # "what does the text say?" is not a request
            if clause.received:
                return 0.0, "caller says they already have it"
            if clause.other_channel and not clause.send:
                continue
            if clause.caller_sends and not TO_ME.search(clause.text):
                continue  # "can i text you my email" asks for nothing to be texted to the caller
            topic_words = _topic_words(clause)
            explicit = _topic_hit(topic_words, terms)
            head = parsed.head
            if head and head <= _LIGHT_HEADS and parsed.modifiers:
                head = head | parsed.modifiers
            head_hit = _topic_hit(topic_words, head) if head else False
            deictic = bool(set(clause.words) & _DEICTIC) or not any(
                w not in _STOP and w not in _CHANNEL and w not in _SEND_VERBS and w not in _DEICTIC
                and w not in ("you", "i", "quick", "please", "sms", "text") for w in clause.words
            )
            via_agent = deictic and (
                _topic_hit(agent_words, terms)
                or (bool(parsed.head & _GENERIC_HEADS) and _describes_something(agent))
                or (_topic_hit(("appointment",), terms) and _mentions_time(agent))
            )
            if clause.negated:
                if clause.send or explicit or head_hit:
                    return 0.0, "caller declined"
                continue
            # who the text is for: the caller, or a third party the condition names
            wanted_for = _recipients(" ".join(clause.words))
            if wanted_for and not (wanted_for & parsed.recipients or (parsed.recipients and "them" in wanted_for)):
                continue  # "send it to my colleague" is not a request for the caller's own text
            if parsed.recipients and not wanted_for:
                continue  # the condition is about texting someone else
            if clause.send and not clause.other_channel:
                if parsed.generic:
                    best = max(best, (0.9, "caller asked to be texted"))
                elif explicit:
                    best = max(best, (0.9, "caller asked for it to be texted"))
                elif via_agent:
                    best = max(best, (0.8, "caller asked to be texted what the agent just described"))
                continue
            if clause.other_channel:
                continue
            # information requests: "what's your address?", "I need the link"
            if parsed.info and head_hit and (clause.wh or clause.want or clause.question):
                best = max(best, (0.75, "caller asked for it"))
            elif not parsed.info and head_hit and clause.want and not clause.question:
                best = max(best, (0.6, "caller said they want it"))
        return best

    def _score_inbound(self, parsed: ParsedCondition, clauses: Sequence[_Clause], agent: str) -> tuple[float, str]:
        """A condition about the caller texting something: the caller offering to send it (or agreeing to)."""
        terms = parsed.head | parsed.modifiers
        agent_asks = bool(_AGENT_ASKS_CALLER.search(_normalize(agent)))
        agent_words = _agent_words(agent)
        if (agent_asks and clauses and _affirmative(clauses[0]) and not any(c.negated for c in clauses)
                and (parsed.generic or _topic_hit(agent_words, terms))):
            return 0.9, "caller agreed to text it"
        for clause in clauses:
            if not clause.caller_sends or clause.negated:
                continue
            words = _topic_words(clause)
            deictic = bool(set(clause.words) & _DEICTIC) and _topic_hit(agent_words, terms)
            if parsed.generic or _topic_hit(words, terms) or deictic:
                return 0.9, "caller offered to text it"
        return 0.0, "the caller offered to text nothing of the kind"

    def _score_state(
        self, parsed: ParsedCondition, transcript: Sequence[Turn], request: JudgeRequest
    ) -> tuple[float, str]:
        event = parsed.event
        terms = parsed.head | parsed.modifiers
        evidence = 0.0
        reason = "no sign that it happened"
        event_words = _EVENT_WORDS.get(event or "", set()) | ({event} if event else set())
        for turn in transcript[-40:]:
            text = _normalize(turn.text[-MAX_TURN_CHARS:])
            for clause in _clauses(text):
                analysed = _analyse(clause)
                words = set(analysed.words)
                phrase = " ".join(analysed.words)
                stated = any((" " in e and e in phrase) or e in words for e in event_words)
                stated = stated or (event == "book" and bool(re.search(r"\b(is|are|am|was|got you) (booked|"
                                                                        r"scheduled|confirmed|reserved)\b", phrase)))
                if not stated:
                    continue
                if analysed.question or _OFFER_MARKERS.search(clause):
                    continue  # "shall I book Thursday?" is an offer, not a booking
                if analysed.negated or re.search(r"\b(could not|can not|unable|no (free|available))\b", phrase):
                    evidence = 0.0
                    reason = "it did not happen"
                    continue
                if terms and not (_topic_hit(analysed.words, terms) or event in ("book",)):
                    continue
                if turn.role == "agent" or re.search(r"\b(i|we) (booked|ordered|paid|registered)\b", phrase):
                    evidence = 0.85
                    reason = "the agent confirmed it happened"
            # a later cancellation undoes it
            if evidence and re.search(r"\b(cancel|never mind|nevermind|call it off|scrap that)\b", text):
                evidence = 0.0
                reason = "it was cancelled later"
        if evidence == 0.0 and event is not None and reason == "no sign that it happened":
            stems = {_stem(w) for w in _words(" ".join(request.variables))}
            family = {k for k, v in _EVENT_ALIASES.items() if v == event} | {event}
            if any(request.variables.get(k) for k in request.variables) and stems & {_stem(f) for f in family}:
                evidence = 0.6
                reason = "a value for it was extracted during the call"
        return evidence, reason
