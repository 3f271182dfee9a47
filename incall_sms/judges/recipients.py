"""Who a text is for: the caller, or someone else. A rule both judges apply before deciding.

A 1.5B model often misses the difference between "text me the details" and "text the details to
my sister" when the condition names the other one (most of its wrong texts on third parties). The
words that direct a text are few and explicit, so a rule reads them: in the caller's turn (``to
me``, ``to my cell``, ``mándamelo``, ``an mich`` vs ``to my sister``, ``send her the link``, ``a mi
hijo``, ``an meine Frau``) and in the condition (``to someone else, like a parent`` vs ``texted to
them`` or no recipient at all). It only vetoes, and only when both are clear: the turn directs the
text at one side only and the condition is about the other. Everything else is left to the judge:
a turn naming both or nobody (a bare "yes please"), "too", a negation, the caller passing it on
themselves, a condition naming a recipient the rule cannot place. A wrong veto would lose a text the
caller asked for, so the rule errs towards staying out (``tests/test_judge_rules.py`` holds the real
requests two outside reviews wrote to trip it; ``scripts/score_recipients.py`` runs it on the
labelled sets).
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from incall_sms.lexicon import PEOPLE, alternation

__all__ = ["Recipient", "condition_recipient", "is_delivery_condition", "turn_recipients", "veto_reason", "vetoes"]

Recipient = Literal["caller", "other"]

#: Verbs that direct a text somewhere (a person counts as the recipient only next to one of them).
_SEND = r"(?:text|send|sms|messag\w*|shoot|forward|ping|email|e-mail|whatsapp)"
#: What is sent, between the verb and the recipient ("text *the gate code* to my son").
_OBJECT = (r"(?:(?:(?!(?:to|for|me|my|our|and|but|so|then|i|i'll|i'm|i'd|we|we're|we'll|you|he|she|they|"
           r"that|which|who|cause|because|since|while)\b)[\w'-]+ ){1,4})")  # a new clause ends it ("text it i'll ...")
_DEVICE = r"(?:phone|cell|cellphone|mobile|number|whatsapp|email|e-mail|inbox|handy|celular|móvil|movil|teléfono)"

#: The text directed at the caller, said outright ("text it to me", "mándamelo", "an mich").
_SURELY_CALLER_WORDS = (
    rf"\b{_SEND}\w* {_OBJECT}?(?:over |across |back )?(?:to )?me\b|\bto me\b"
    rf"|\b(?:on|to) (?:my|this) (?:own |work |personal |other )?{_DEVICE}\b|\bthis (?:number|phone)\b"
    r"|\b(?:mánd|mand|envi|enví|pás|pas)[ae](?:me|mel[oa]s?)\b|\b(?:mandar|enviar|pasar)me\b|\ba mí\b"
    r"|\b(?:schick|send|schreib)\w* (?:sie |du )?(?:es |das |die \w+ |den \w+ )?mir\b|\ban mich\b"
    r"|\b(?:auf|an) (?:mein|meine) (?:handy|telefon|nummer)\b"
)
_SURELY_CALLER = re.compile(_SURELY_CALLER_WORDS, re.IGNORECASE)
#: Any sign of the caller as the recipient (wide: finding the caller too only means the rule stays out).
_TO_CALLER = re.compile(
    rf"{_SURELY_CALLER_WORDS}|\bme too\b"
    r"|\b(?:can|could|may) i (?:get|have|receive)\b|\bi(?:'d| would) like (?:to get|to have|to receive)\b"
    r"|\bme (?:lo |la |los |las )?(?:mand|envi|enví|pas|pod|pued)\w*|\ba mi(?=\s*[.,!?]|\s*$)"
    r"|\bmi (?:celular|celu|móvil|movil|teléfono|telefono|número|numero)\b|\beste (?:número|numero|teléfono)\b"
    r"|\bmir\b|\bdiese nummer\b",
    re.IGNORECASE)

#: People a text can be for besides the caller (a veto needs a person: "to my mortgage appointment" is none).
_PEOPLE = alternation(PEOPLE)
#: After a person: "my son's school", "my wife's phone", "our family group chat" are no clear person.
_NOT_THEIR_THING = (r"(?!'s\b|-|\s+(?:group|chat|account|plan|line|email|e-mail|address|number|phone|cell|inbox|"
                    r"business|office)\b)")
#: The text directed at someone other than the caller: a person next to a verb of sending, in that clause.
_TO_OTHER = re.compile(
    rf"\b{_SEND}\w* {_OBJECT}?(?:over |across )?to (?:my|our|his|her|their) (?:\w+ )?{_PEOPLE}\b{_NOT_THEIR_THING}"
    rf"|\b{_SEND}\w* (?:my|our) {_PEOPLE}\b(?= (?:the|a|an|it|that|this|those|these|them)\b)"
    rf"|\b{_SEND}\w* (?:him|her)(?= (?:the|a|an|it|that|this|those|these|them|a copy)\b|\s*[.,!?]|\s*$)"
    rf"|\b{_SEND}\w* {_OBJECT}?(?:over |across )?to (?:him|her)\b"
    rf"|\b(?:mánd|mand|envi|enví|pas|pás)\w*(?: \w+){{0,3}} a (?:mi|mis|su|sus) {_PEOPLE}\b"
    rf"|\b(?:schick|send|sms)\w*(?: \w+){{0,4}} an (?:meine[nmr]?|unsere[nmr]?|seine[nmr]?|ihre[nmr]?) {_PEOPLE}\b",
    re.IGNORECASE)
#: A text directed at anyone but "me": a name, a relative the lists miss ("send it to my bookkeeper").
_DIRECTED = re.compile(
    rf"\b(?:{_SEND}|sent)\w* {_OBJECT}?(?:over |across )?to "
    rf"(?!me\b|my (?:own |work |personal |other )?{_DEVICE}\b|this\b)\w+"
    r"|\b(?:mand|mánd|envi|enví|pas|pás)\w*(?: \w+){0,3} a (?!mí\b)\w+"
    r"|\b(?:schick|send)\w*(?: \w+){0,4} an (?!mich\b|mein (?:handy|telefon)\b)\w+"
    r"|\ban (?:meine[nmr]?|unsere[nmr]?) \w+ (?:schick|send)\w*",
    re.IGNORECASE)
#: Right before a verb of sending: the caller does the sending ("I'm sending flowers to my mom").
_CALLER_SENDS = re.compile(
    r"\b(?:i|i'm|im|i'll|i've|i'd|we|we're|we'll|we've|yo|ich|wir)(?: [\w']+){0,2}\s+$",
    re.IGNORECASE)
#: Words that make the recipient a matter for the model: more than one ("too", "and me"), or a negation.
_UNCLEAR_TURN = re.compile(
    r"\b(?:too|also|as well|both|and me|me and|and i|forward\w*|pass (?:it|that|them) on|calling (?:for|about)|"
    r"on behalf|it's for my|it is for my|llamo (?:por|de parte)|de parte de|es para mi|im namen|für meine[nmr]?|"
    r"not|don't|dont|never|no|instead|rather|either|"
    r"también|tambien|y a m[ií]|ni|auch|und mir|und mich|nicht|kein\w*|statt|anstatt)\b|n't\b",
    re.IGNORECASE)

#: Words for people in a condition besides those of :data:`_PEOPLE` (roles a text may be meant for).
_ROLES = (r"(?:person(?:en)?|people|guardian|grandparent|adult|contact|recipient|individual|member|helper|"
          r"representative|persona|familiar|contacto|angehörige[nmr]?|kontakt)")
#: Someone other than the caller as the recipient, anywhere in the condition (German puts it before the verb).
_SOMEONE_ELSE = re.compile(
    r"\b(?:to|like|such as|e\.g\.) (?:someone|somebody|anyone|anybody)\b|\bsomeone else\b|\bsomebody else\b"
    r"|\b(?:to|a) (?:alguien|otra persona)\b|\ban (?:jemand\w*|eine andere person)\b|\bthird part(?:y|ies)\b",
    re.IGNORECASE)
#: Someone other than the caller as the recipient, after the condition's verb of sending.
_OTHER_CONDITION = re.compile(
    rf"\bto (?:another|other|a different|a second) (?:\w+ )?(?:{_ROLES}|{_PEOPLE})\b"
    rf"|\b(?:to|like|such as|e\.g\.) (?:a|an|the|their|his|her) (?:\w+ )?(?:{_ROLES}|{_PEOPLE})\b(?!'s)",
    re.IGNORECASE)
#: A person of the caller's, or whoever: a condition naming one may be about them (the rule stays out).
_THEIR_PERSON = re.compile(
    rf"\b(?:their|his|her|su|sus|seine[nmr]?|ihre[nmr]?) (?:\w+ )?{_PEOPLE}\b|\bwhoever\b|\bquien\b|\bwer\b",
    re.IGNORECASE)
#: The caller as the recipient, said outright.
_CALLER_CONDITION = re.compile(
    r"\bto (?:them|themselves|him|her|the caller|the customer|the client|the patient|the user)\b"
    r"|\b(?:to|on) (?:their|his|her) (?:own )?(?:phone|cell|cellphone|mobile|number)\b",
    re.IGNORECASE)
#: After the verb of sending: a recipient, or a choice between recipients, the rule cannot place.
_UNCLEAR_CONDITION = re.compile(
    r"\b(?:to|for) (?:a|an|the|their|his|her|its)\b|\bor\b|\brather than\b|\binstead\b|\bforward\b|\bpara\b|\bfür\b"
    r"|\b(?:different|other|second|another|work) (?:number|phone|cell)\b",
    re.IGNORECASE)


#: A condition about someone being sent something: the channel or a verb of sending (en/es/de).
_DELIVERY = re.compile(
    r"(?<!\w)(?:text\w*|sms|messag\w*|whats ?app|send|sent|phone|mobile|cell\w*|"
    r"mensaje\w*|envi\w*|enví\w*|mand\w*|móvil|celular|nachricht\w*|schick\w*|zugeschickt|geschickt|verschick\w*|gesendet|handy)(?!\w)",
    re.IGNORECASE)


def is_delivery_condition(condition: str) -> bool:
    """Whether ``condition`` is about someone being sent something (the rule applies to no other)."""
    return _DELIVERY.search(condition) is not None


@functools.lru_cache(maxsize=1024)
def condition_recipient(condition: str) -> Recipient | None:
    """Whom a condition's text is for (``None``: unclear, the rule then stays out).

    Read after the condition's verb of sending (before it is who asks: "if someone asks for ..."):
    ``other`` when it names someone else as the recipient ("sent to another caregiver", "to someone
    else, like a parent"); ``caller`` when it names the caller ("texted to them", "to their phone")
    or no recipient at all ("by text"); ``None`` for anything else ("for their son's appointment",
    "to them or a family member", a person it cannot place).
    """
    sending = _DELIVERY.search(condition)
    if sending is None:
        return None
    tail = condition[sending.start():]
    other = _SOMEONE_ELSE.search(condition) is not None or _OTHER_CONDITION.search(tail) is not None
    caller = _CALLER_CONDITION.search(tail) is not None
    if other and not caller:
        return "other"
    if _THEIR_PERSON.search(condition):  # "text their husband the pickup time", "to whoever picks it up"
        return None
    unclear = _UNCLEAR_CONDITION.search(_CALLER_CONDITION.sub(" ", tail)) is not None
    if other or unclear:
        return None
    return "caller"


@functools.lru_cache(maxsize=1024)
def turn_recipients(text: str) -> frozenset[Recipient] | None:
    """Whom a caller's turn directs a text at (an empty set when it does not say).

    ``None`` when the turn is not clear about it: several recipients ("too", "and me"), a
    negation ("not to my husband"), or the caller passing it on themselves: the model decides.
    """
    if _UNCLEAR_TURN.search(text):
        return None
    found: set[Recipient] = set()
    if _TO_CALLER.search(text):
        found.add("caller")
    if any(not _CALLER_SENDS.search(text, 0, match.start()) for match in _TO_OTHER.finditer(text)):
        found.add("other")
    return frozenset(found)


@functools.lru_cache(maxsize=4096)
def veto_reason(condition: str, turn: str) -> str | None:
    """Why :func:`vetoes` says no ("the caller wants it sent to someone else" / "... to themselves"), else ``None``."""
    if not vetoes(condition, turn):
        return None
    whom = "someone else" if condition_recipient(condition) == "caller" else "themselves"
    return f"the caller wants it sent to {whom}"


def vetoes(condition: str, turn: str) -> bool:
    """Whether the turn directs the text only at someone a delivery condition is not about."""
    if not is_delivery_condition(condition):
        return False
    meant = condition_recipient(condition)
    said = turn_recipients(turn)
    if meant is None or said is None or len(said) != 1 or meant in said:
        return False
    # for a text meant for someone else, only the caller said outright, and nobody else named, counts
    return meant == "caller" or (_SURELY_CALLER.search(turn) is not None and not _DIRECTED.search(turn))
