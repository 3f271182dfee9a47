"""A text already received: the caller confirming a text the agent just said it sent asks for nothing.

After "I've just sent the reservation details to your phone" a caller says "yep it came through,
thanks", "sí, ya me llegó", "ja, ist angekommen". A 1.5B model reads such a turn as the request it
echoes (most of its wrong texts on "already got it" turns), so a rule reads it: the agent's turn just
before states a text was sent and asks or offers nothing (not even as a statement: "I can also send
you the menu"); the caller's turn confirms it arrived ("came through", "popped up", "llegó",
"angekommen") and holds nothing else but assent, thanks and fillers ("yep got it, cheers", "sí, ya me
llegó, gracias"). Any other word keeps the rule out: it is an allow-list, since the ways of asking for
more ("shoot me the map too", "pásame la dirección", "die Rechnung hätte ich gern") or of reporting a
problem ("it came through blank", "got it on my work phone") cannot be listed. Only then, and only for
a condition about the caller asking for, wanting or agreeing to a text (not one about its arrival),
is the answer a no without the model. Everything else is left to the judge: a wrong veto would lose a
text the caller asked for, so the rule errs towards staying out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from incall_sms.judges.recipients import is_delivery_condition

__all__ = ["received_reason"]

#: A condition about the caller asking for, wanting or agreeing to a text (the only ones the rule judges).
_REQUEST_CONDITION = re.compile(
    r"\b(?:asks?|asking|request\w*|wants?|wanting|would like|agrees?|accepts?|says yes|opts? in|"
    r"pide|pida|quiere|solicita\w*|acepta\w*|bittet|möchte|will|wünscht|zustimm\w*|einverstanden)\b",
    re.IGNORECASE)
#: A condition about the text's arrival or a problem with it (the rule stays out; "agrees to receive" is no arrival).
_RECEIPT_CONDITION = re.compile(
    r"\b(?:arriv\w*|came|come|comes|reach\w*|received|already|again|resend|re-send|didn't|did not|not|never|"
    r"problem|wrong|lleg\w*|recibi[óo]|recibid[oa]s?|recibí|ya|otra vez|de nuevo|angekommen|erhalten|schon|nochmal|"
    r"erneut|nicht)\b",
    re.IGNORECASE)
#: The agent stating that a text went out ("I've just sent ...", "on its way", "acabo de enviar", "habe ... geschickt").
_SENT = re.compile(
    r"\b(?:i've|i have|i|we've|we have|we)\s+(?:just\s+|already\s+|now\s+)?(?:sent|texted|messaged|forwarded)\b"
    r"|\b(?:it's|it has|it is|that's|that has|they've|they have)\s+(?:just\s+)?(?:been\s+)?(?:sent|texted)\b"
    r"|\bon (?:its|their) way\b"
    r"|\b(?:acabo de|acabamos de|he|hemos|ya (?:le|te) he)\s+(?:le |te )?(?:enviad|mandad|enviar|mandar)\w*"
    r"|\b(?:le|te|se lo|se la)\s+(?:envié|mandé|enviamos|mandamos)\b"
    r"|\b\w+'s (?:just )?been (?:sent|texted)\b|\b(?:has|have) (?:just )?been (?:sent|texted)\b"
    r"|\b(?:i'm |i am |we're |we are )?sending (?:it|that|them|the [\w-]+(?: [\w-]+)?)\b[^.!?]*\bnow\b"
    r"|\bse (?:le |lo |la )?(?:ha |han )?(?:envió|enviaron|mandó|mandaron|enviado|mandado)\b"
    r"|\b(?:habe|hab|haben)\b[^.!?]*\b(?:geschickt|gesendet|geschrieben|verschickt|zugeschickt)\b"
    r"|\b(?:ist|wurde|wurden)\b[^.!?]*\b(?:unterwegs|raus|verschickt|geschickt|gesendet|zugeschickt)\b",
    re.IGNORECASE)
#: Words that make a send clause about something still to come, or conditional ("and I'll text the menu next").
_LATER = re.compile(
    r"\b(?:i'll|i will|we'll|we will|will|if|unless|once|when|whenever|can|could|would|shall|should|or|also|too|"
    r"as well|next|later|then|tomorrow|"
    r"si|cuando|puedo|podemos|podría|también|luego|después|mañana|"
    r"wenn|falls|sobald|dann|kann|können|könnte|würde|auch|später|morgen|gerne?)\b",
    re.IGNORECASE)
#: A send somewhere else than the caller's phone ("to your email", "to the manager").
_ELSEWHERE = re.compile(
    r"\b(?:to|into|in|a|al|an|por|per|by)\s+(?:your |the |su |tu |el |la |ihre |ihr |die |den |der )?"
    r"(?:e-?mail|inbox|mail|correo|manager|team|colleague|office|kollegin|kollegen|kollege|büro)\b",
    re.IGNORECASE)
#: All an agent's turn may hold besides the send ("Done.", "There you go.", "Listo.", "Erledigt.").
_AGENT_COURTESY = frozenset((
    "done", "ok", "okay", "sure", "of", "course", "certainly", "absolutely", "perfect", "great", "there", "you", "go",
    "all", "set", "right", "alright", "no", "problem", "so", "now", "just", "thanks", "thank", "listo", "claro",
    "perfecto", "vale", "por", "supuesto", "hecho", "ya", "está", "erledigt", "klar", "natürlich", "alles", "super",
    "fertig",
))
#: The caller confirming it arrived: removed from the turn before the words left are checked.
_RECEIVED = re.compile(
    r"\b(?:it |that |they |it's |that's |it has |that has )?(?:came|come|went|gone) through\b"
    r"|\b(?:it |that )?(?:just )?popped up\b"
    r"|\b(?:i've |i have |i )?(?:just )?(?:got|received|have) (?:it|them|that|the (?:text|message|link|details|sms))\b"
    r"|\b(?:i )?(?:can )?see it\b|\b(?:it's|it is) (?:here|on my phone)\b|\bthere it is\b"
    r"|\b(?:it |that )?(?:just )?(?:arrived|came in)\b|\b(?:all )?received\b"
    r"|\b(?:ya )?(?:me )?(?:llegó|ha llegado|han llegado|llegaron)(?: el (?:mensaje|link|enlace|sms))?\b"
    r"|\bya (?:lo|la|los|las) (?:tengo|veo|vi|recibí)\b|\b(?:lo|la) recibí\b|\brecibid[oa]\b|\bahí está\b"
    r"|\b(?:ist )?angekommen\b|\bkam an\b"
    r"|\b(?:ich )?(?:habe|hab|hab's)(?: (?:ihn|sie|es|ich|die (?:sms|nachricht)))?(?: schon)?(?: bekommen| erhalten)\b"
    r"|\b(?:ich )?(?:habe|hab) (?:ihn|sie|es|ich)(?: schon)?\b|\bsehe ich\b"
    r"|\b(?:die (?:sms|nachricht) )?(?:ist )?(?:schon )?da\b",
    re.IGNORECASE)
#: Assent: in a confirming turn only before the confirmation ("yep, got it"; "got it. yes" may answer an offer).
_ASSENT = frozenset((
    "yes", "yeah", "yep", "yup", "ok", "okay", "sure", "fine", "right", "alright", "sí", "si", "vale", "claro",
    "bueno", "ja", "jo", "jup", "genau", "gut", "klar", "alles",
))
#: All a confirming turn may hold besides the confirmation and assent: thanks, fillers (anything else: stay out).
_COURTESY = frozenset((
    "oh", "ah", "uh", "um", "great", "perfect", "lovely", "brilliant", "cool", "nice", "awesome", "thanks", "thank",
    "you", "cheers", "ta", "much", "so", "just", "already", "excellent", "wonderful", "super", "perfecto",
    "perfecta", "genial", "gracias", "muchas", "ya", "listo", "muy", "bien", "danke", "schön", "prima", "perfekt",
    "toll", "vielen", "dank",
))
#: Closings and thanks said with the confirmation ("that's all I needed", "have a good one", "und tschüss").
_CLOSING = re.compile(
    r"\b(?:and )?(?:have a (?:good|nice|great|lovely) (?:one|day|evening|night|weekend)|that's (?:all|everything)"
    r"(?: i needed)?|looks good|thank you (?:very|so) much|mm-hmm|no se preocupe|muy amable|mil gracias|"
    r"(?:und )?tschüss|bye|goodbye|adiós|hasta luego)\b",
    re.IGNORECASE)
#: The caller's own phone, said with the confirmation ("it popped up on my phone").
_OWN_PHONE = re.compile(r"\b(?:on|to) my (?:phone|cell|cellphone|mobile)\b|\b(?:a|en) mi (?:celular|móvil|teléfono)\b"
                        r"|\b(?:auf|an) mein(?:em)? handy\b", re.IGNORECASE)


def received_reason(condition: str, turns: Sequence[tuple[str, str]]) -> str | None:
    """Why the caller's last turn asks for nothing, when it only confirms a text just sent; else ``None``.

    Args:
        condition: The condition (in English or as written); only one about the caller asking
            for, wanting or agreeing to a text is judged ("if the caller asks to get X by text"),
            never one about the text's arrival ("when the caller says the text came through").
        turns: The conversation as ``(role, text)`` pairs, ``user`` for the caller, the turn judged last.

    Returns:
        A reason for the decision log, or ``None`` when the rule stays out.
    """
    if len(turns) < 2 or turns[-1][0] != "user" or turns[-2][0] != "agent":
        return None
    if not (is_delivery_condition(condition) and _REQUEST_CONDITION.search(condition)) \
            or _RECEIPT_CONDITION.search(condition):
        return None
    agent, caller = turns[-2][1], turns[-1][1]
    if not _only_a_send(agent):
        return None
    caller = _OWN_PHONE.sub(" ", _CLOSING.sub(" ", caller))
    confirmation = _RECEIVED.search(caller)
    if confirmation is None:
        return None
    before, after = _words(caller[:confirmation.start()]), _words(_RECEIVED.sub(" ", caller[confirmation.end():]))
    if any(w not in _COURTESY and w not in _ASSENT for w in before) or any(w not in _COURTESY for w in after):
        return None
    if any(w in _ASSENT for w in before) and _offered_earlier(turns[:-2]):
        return None  # "Shall I also text you a reminder?" ... "I've sent the confirmation" - "yeah sure, got it"
    return "the caller confirms a text the agent just said it sent, and asks for nothing"


#: Reminders, besides the words of sending :func:`is_delivery_condition` knows ("Would you like a reminder?").
_REMINDER = re.compile(r"\b(?:remind\w*|recordatorio\w*|erinner\w*)\b", re.IGNORECASE)


def _offered_earlier(turns: Sequence[tuple[str, str]]) -> bool:
    """Whether one of the agent's three turns before asked about sending something: a "yes" may still answer it."""
    asked = [text for role, text in turns if role == "agent"][-3:]
    return any(("?" in text or "¿" in text) and (is_delivery_condition(text) or _REMINDER.search(text))
               for text in asked)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())


def _only_a_send(agent: str) -> bool:
    """Whether the agent's turn states a text sent to the caller and holds nothing else but courtesy.

    Every clause (sentences cut at commas too) is a send with nothing still to come ("I've sent the
    confirmation to your phone", not "... and I'll text the menu next") or courtesy ("Done.", "Of
    course."): an offer made as a statement ("Say the word and I'll text you the map", "si gusta, le
    mando el menú", "wenn Sie mögen, schicke ich ...") cannot be listed, so anything else stays out.
    """
    if "?" in agent or "¿" in agent:
        return False
    sent = False
    for clause in re.split(r"[.!;:,]+", agent):
        words = _words(clause)
        if not words:
            continue
        if _SENT.search(clause) and not _LATER.search(clause) and not _ELSEWHERE.search(clause):
            sent = True
        elif not all(w in _AGENT_COURTESY for w in words):
            return False
    return sent
