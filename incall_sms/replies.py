"""Reading a caller's answer: a text reply by kind (email, phone, yes/no, number, text) and a spoken yes/no.

Used by ``await_reply`` (the value of a texted reply) and by ``ask_consent`` (the spoken answer to
"can I text that to your number ending in 42?"). Both are deliberately strict: a reply that does not
clearly parse is not guessed at (the caller is asked again once), and consent needs a clear yes.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Literal

from incall_sms.errors import InvalidPhoneNumberError
from incall_sms.lexicon import PEOPLE
from incall_sms.phone import normalize_e164

__all__ = ["ParsedReply", "YesNo", "classify_yes_no", "parse_reply"]

YesNo = Literal["yes", "no"]

# local part: RFC 5322 "atext" characters and dots; domain: labels of letters/digits/hyphens, a TLD of 2+ letters
_EMAIL = re.compile(
    r"(?<![\w.+-])([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})(?![\w@-])"
)
_PHONE = re.compile(r"\+?\(?\d[\d\s().\-]{5,20}\d")
_NUMBER = re.compile(r"(?<![\w.,])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w,])|(?<![\w.])-?\d+(?:[.,]\d+)?(?![\w])")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8,
    "nueve": 9, "diez": 10, "doce": 12,  # not "once" (11): an English word too
    "null": 0, "eins": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6, "sieben": 7, "acht": 8,
    "neun": 9, "zehn": 10, "elf": 11, "zwölf": 12,
}

# yes / no, English, Spanish, German; phrases are matched on whole words at the start of the answer
#: A yes that may carry more words after it ("yes, and what time do you close?").
_YES = (
    "yes", "yeah", "yep", "yup", "yea", "sure", "of course", "certainly", "definitely", "absolutely",
    "no problem", "no worries", "not a problem", "please do", "go ahead", "go for it", "do it", "send it",
    "shoot it over", "text it", "by all means", "you bet", "for sure", "i'd like that", "i'd appreciate",
    "i would appreciate", "i'd love", "i would love", "works for me", "fine by me", "don't see why not",
    "i don't see why not", "don't mind", "i don't mind",
    *(f"{lead} {good}" for lead in ("that would be", "that'd be", "that would be really", "that'd be really")
      for good in ("great", "lovely", "helpful", "nice", "perfect", "brilliant", "handy", "amazing", "useful",
                   "wonderful", "fantastic")),
    "that would help", "that'd help",
    "sí", "claro", "claro que sí", "por supuesto", "de acuerdo", "adelante", "cómo no", "como no",
    "no hay problema", "sin problema", "mándelo", "mándemelo", "mándamelo", "mándalo", "envíelo", "envíemelo",
    "ja", "jawohl", "na klar", "klar", "gerne", "gern", "natürlich", "naturlich", "selbstverständlich",
    "einverstanden", "kein problem", "mach das", "machen sie das", "schicken sie", "schick",
)
#: A yes only on its own (or with thanks): "okay" is agreement, "okay, so how much is it" is not.
_ACK = (
    "ok", "okay", "k", "alright", "all right", "right", "great", "perfect", "correct", "fine", "please",
    "sounds good", "that works", "why not", "i do", "mm-hmm", "mm hmm", "mhm", "uh-huh", "uh huh",
    "si", "bueno", "vale", "va", "sale", "dale", "órale", "orale", "ándale", "andale", "está bien", "esta bien",
    "perfecto", "ya", "por favor", "ajá", "aja",
    "bitte", "genau", "in ordnung", "jo", "jap", "jep", "sicher", "okay gerne",
)
#: Words that may follow a yes-on-its-own without changing it.
_CLOSERS = frozenset({"thanks", "thank", "you", "thx", "ty", "cheers", "mate", "then", "please", "gracias",
                      "muchas", "danke", "schön", "schon", "vielen", "dank", "bitte", "por", "favor", "lovely",
                      "great", "perfect", "sure", "yes", "yeah", "ok", "okay", "sí", "ja", "gerne", "claro"})
_NO = (
    "no", "nope", "nah", "nay", "no thanks", "no thank you", "not now", "not right now", "not really",
    "not necessary", "not needed", "don't text", "don't send", "don't bother", "do not text", "do not send",
    "please don't", "i'd rather not", "i would rather not",
    "rather not", "i'd prefer not", "i would prefer not", "i'd rather you didn't", "better not", "never mind",
    "nevermind", "no need", "i don't want", "i do not want", "i don't need", "i do not need", "i don't think so",
    "i do not think so", "i'm good", "im good", "i am good", "i'm all set", "i'm fine", "i'll pass", "pass",
    "negative", "absolutely not", "definitely not", "certainly not", "of course not", "stop", "cancel",
    "no gracias", "mejor no", "para nada", "no hace falta", "no quiero", "no es necesario", "prefiero que no",
    "no creo", "nel", "ni modo",
    "nein", "nee", "nö", "ne", "lieber nicht", "eher nicht", "nicht nötig", "nicht notig", "nein danke",
    "bitte nicht", "auf keinen fall", "ich glaube nicht", "brauch ich nicht", "das brauch ich nicht",
    "das brauche ich nicht", "danke nicht", "nicht nötig",
)
_HEDGES = ("maybe", "perhaps", "not sure", "i'm not sure", "i don't know", "i dont know", "let me think", "hmm",
           "hm", "dunno", "i guess", "quizás", "quizas", "tal vez", "no sé", "no se", "a lo mejor", "vielleicht",
           "weiß nicht", "weiss nicht", "ich weiß nicht", "ich weiss nicht", "mal sehen")
#: Sounds that carry no answer, dropped before reading.
_FILLERS = frozenset({"um", "umm", "uh", "uhh", "er", "erm", "eh", "ehm", "ah", "oh", "well", "pues", "este",
                      "äh", "ähm", "öhm"})
#: Starts like a no, means yes or nothing ("no problem").
_NOT_NO = ("no problem", "no worries", "not a problem", "no doubt", "sin problema", "no hay problema",
           "no hay bronca", "kein problem", "kein thema", "nicht schlecht", "i'm good with", "i'm fine with",
           "im good with", "im fine with", "i am good with", "i am fine with")
#: After a yes, these take it back or turn it into something else: no clear yes.
_TAKE_BACK = frozenset({"no", "not", "nope", "nah", "don't", "dont", "didn't", "never", "wait", "hang", "hold",
                        "nevermind", "repeat", "again", "what", "which", "nein", "nicht", "nö", "nee", "warte",
                        "moment", "espera", "espere", "nunca", "qué", "que", "was", "wie"})
#: Person words that a plain yes often carries ("that's very kind", "thanks team", "my doctor asked me to"):
#: German "Kind" reads as English "kind"; a team or a doctor is rarely where a yes redirects a text.
_SAID_IN_A_PLAIN_YES = frozenset({"kind", "team", "doctor"})
#: After a yes, these send it somewhere else ("yes, but to my other number", "... to my daughter"): consent to
#: *that* was not asked.
_REDIRECT = (PEOPLE - _SAID_IN_A_PLAIN_YES) | frozenset({
    "different", "other", "another", "instead", "else", "email", "e-mail", "mail", "whatsapp",
    "work", "office", "home", "landline", "trabajo", "oficina", "casa", "fijo", "arbeit", "büro", "festnetz",
    "otro", "otra", "correo", "andere", "anderen", "anderer", "anders", "stattdessen", "statt",
})
#: Texted answers that are no words (a reply to "reply Y or N").
_TEXTED_YES_NO: dict[str, YesNo] = {"y": "yes", "n": "no", "confirm": "yes", "confirmed": "yes", "👍": "yes",
                                    "👎": "no"}
#: After a yes, a "but" qualifies it: the answer is for the judge.
_BUT = frozenset({"but", "though", "although", "except", "pero", "aunque", "aber", "allerdings", "nur"})
#: After a no, these turn it into a yes ("no wait, yes please", "no no, go ahead and send it"): no clear no either.
_CORRECTED = frozenset({"yes", "yeah", "yep", "sí", "si", "ja", "doch", "go", "send", "mándelo", "mándemelo",
                        "mándamelo", "envíelo", "schicken", "schick", "schick's", "schicks"})


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedReply:
    """A reply read as its kind.

    Attributes:
        ok: Whether the reply holds a valid value of the kind.
        value: The normalised value (an email in lower case after the ``@``, an E.164 number, ``yes``/``no``,
            a number as written with ``.`` decimals, or the whole text), ``""`` when not ``ok``.
        problem: Why it did not parse (no personal data), ``""`` when ``ok``.
    """

    ok: bool
    value: str = ""
    problem: str = ""


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return " ".join(re.sub(r"[^\w'@+.\-\s]", " ", text).split())


def _starts_with(clause: str, phrases: tuple[str, ...]) -> bool:
    return any(clause == p or clause.startswith(p + " ") for p in phrases)


def classify_yes_no(text: str) -> YesNo | None:
    """A clear yes or no to a question, else ``None``.

    The answer's first words decide (after sounds like "um"). A yes is not clear when the rest of the
    answer takes it back ("yeah, actually no"), hesitates ("sure, wait...") or points elsewhere ("yes, but
    to my other number", "yes, send it to 555 0123 instead"); a no followed by a yes ("no wait, yes
    please") is not a clear no; a hedge ("maybe", "I guess") is never an answer. Phrases known to start
    like a no but mean yes ("no problem") count as yes. English, Spanish and German.

    Args:
        text: What the caller said or texted.

    Returns:
        ``yes``, ``no`` or ``None`` (unclear: ask again, wait, or let a judge decide).
    """
    text = re.sub(r"\b(uh|mm)[\s-]+(huh|hmm)\b", r"\1-\2", text, flags=re.IGNORECASE)  # one sound, not a filler
    words = _fold(re.sub(r"[,.;:!?¿¡…—–]+|\s-\s", " ", text)).split()
    while words and words[0] in _FILLERS:
        words.pop(0)
    answer = " ".join(words)
    if not answer or _starts_with(answer, _HEDGES):
        return None
    if _starts_with(answer, _NOT_NO):
        rest = words[len(_match(answer, _NOT_NO).split()):]
        return None if _TAKE_BACK & set(rest) else "yes"
    if _starts_with(answer, _NO):
        rest = words[len(_match(answer, _NO).split()):]
        return None if _CORRECTED & set(rest) else "no"
    if "?" in text or "¿" in text:
        return None  # a question back ("okay, so how much is it?", "bitte?") is no answer
    if not _starts_with(answer, _YES):
        if not _starts_with(answer, _ACK):
            return None
        rest = words[len(_match(answer, _ACK).split()):]
        while _starts_with(" ".join(rest), _ACK) and not _starts_with(" ".join(rest), _YES):  # "ok, sounds good"
            rest = rest[len(_match(" ".join(rest), _ACK).split()):]
        if not rest or set(rest) <= _CLOSERS:
            return "yes"
        if not _starts_with(" ".join(rest), _YES):
            return None  # "okay" followed by something else ("okay, so how much is it"): for the judge
        words, answer = rest, " ".join(rest)
    rest = words[len(_match(answer, _YES).split()):]
    rest_text = " ".join(rest)
    if _BUT & set(rest):
        return None  # "yes, but ..." qualifies the yes (another number, can't get texts, call me instead)
    if _TAKE_BACK & set(rest) and not any(p in rest_text for p in (*_NOT_NO, "why not")):
        return None
    if _REDIRECT & set(rest) or any(ch.isdigit() for ch in rest_text) or _starts_with(rest_text, _HEDGES):
        return None
    return "yes"


def _match(answer: str, phrases: tuple[str, ...]) -> str:
    """The longest of ``phrases`` that ``answer`` starts with (whole words)."""
    return max((p for p in phrases if answer == p or answer.startswith(p + " ")), key=len)


def _number(text: str) -> str:
    """Digits as written, with a decimal point: "1,000" and "2,500.5" lose their thousands commas, "3,5" is 3.5."""
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        return text.replace(",", "")
    return text.replace(",", ".")


def parse_reply(kind: str, text: str, *, default_region: str = "US") -> ParsedReply:
    """Read a texted reply as ``kind``.

    Args:
        kind: ``text``, ``email``, ``phone``, ``yes_no`` or ``number``.
        text: The reply's body.
        default_region: Region for phone numbers written without ``+country``.

    Returns:
        The parsed reply; ``ok`` is false when the body holds no (or more than one different) value.
    """
    body = " ".join(text.split())
    if kind == "text":
        return ParsedReply(True, body) if body else ParsedReply(False, problem="empty reply")
    if kind == "email":
        found = {m.group(1) for m in _EMAIL.finditer(body)}
        normalised = {f"{e.rsplit('@', 1)[0]}@{e.rsplit('@', 1)[1].lower()}" for e in found}
        if len(normalised) == 1:
            return ParsedReply(True, normalised.pop())
        return ParsedReply(False, problem="no email address" if not normalised else "several email addresses")
    if kind == "phone":
        numbers = set()
        for match in _PHONE.finditer(body):
            try:
                numbers.add(normalize_e164(match.group(0), default_region=default_region, field="reply"))
            except InvalidPhoneNumberError:
                continue
        if len(numbers) == 1:
            return ParsedReply(True, numbers.pop())
        return ParsedReply(False, problem="no valid phone number" if not numbers else "several phone numbers")
    if kind == "yes_no":
        answer = _TEXTED_YES_NO.get(body.strip(" .!").lower()) or classify_yes_no(body)
        return ParsedReply(True, answer) if answer else ParsedReply(False, problem="neither yes nor no")
    if kind == "number":
        values = {_number(m.group(0)) for m in _NUMBER.finditer(body)}
        if not values:
            values = {str(_NUMBER_WORDS[w]) for w in _fold(body).split() if w in _NUMBER_WORDS}
        if len(values) == 1:
            return ParsedReply(True, values.pop())
        return ParsedReply(False, problem="no number" if not values else "several numbers")
    raise ValueError(f"unknown reply kind {kind!r}")
