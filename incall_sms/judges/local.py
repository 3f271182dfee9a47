"""The no-key judge: a small local instruct model (see :mod:`incall_sms.local_model`) reads the call.

How one condition is decided, and which part decides (each is reported in a :class:`Decision`):

1. **Kind of the condition** (once per condition, cached): ``end`` (about the end of the call:
   "when the call ends and ..."), ``agent`` (met by what the agent does: "once the agent
   confirms ..."), or ``caller`` (met by what the caller says: asks for, agrees to, reports).
   ``when: call_end`` in the action file, or an explicit phrase ("when the call ends", "al
   final de la llamada", "am Ende des Anrufs"), makes it ``end``; otherwise the model classifies it. A
   condition not written in English is translated once by the model, so the judging prompts
   are in one language (the conversation stays in the caller's).
2. **Structural rules** (exact, no language involved): an ``end`` condition is never met during
   the call, and a ``caller``/``agent`` condition only right after a turn of that side and
   never at call end. Call-end conditions are therefore never judged during turns. And whom the
   text is for (:mod:`incall_sms.judges.recipients`): a caller turn that directs the text only at
   someone the condition is not about ("text it to my sister" for a text to the caller) is a no;
   so is a caller turn that only confirms a text the agent just said it sent ("yep it came
   through, thanks": :mod:`incall_sms.judges.receipt`), and, for a condition about a text, a
   caller turn that is a statement or a question about something else, with no sign of a text in
   it or in the turns shown with it (:mod:`incall_sms.judges.relevance`).
3. **The model**: P(yes) / (P(yes) + P(no)) of its first answer token for a prompt of that
   kind: instructions, invented examples from other businesses (contrastive pairs: the
   caller vs someone else, this item vs another, asked vs declined vs already received, the
   agent's own failure line vs an offer to retry), then the condition, then the
   conversation with the turn being judged set apart. The decision is ``score >= threshold``;
   the threshold was chosen on the train and dev splits of ``tests/data/judge/`` (never on
   the test split), favouring precision: a wrong text is worse than a missed one.

Everything runs on the model's worker threads; the instructions and examples of each kind
stay in the model's prompt cache (:meth:`LocalModelJudge.warm` evaluates them at start-up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from incall_sms.judges.base import ConditionJudge, ConditionSpec, Decision, JudgeRequest, Match, decide
from incall_sms.judges.direction import veto_reason as direction_reason
from incall_sms.judges.embedded import EmbeddedJudge
from incall_sms.judges.receipt import received_reason
from incall_sms.judges.recipients import veto_reason
from incall_sms.judges.relevance import no_text_in_sight
from incall_sms.local_model import QWEN_CODER_1_5B, LocalModel

__all__ = ["DEFAULT_THRESHOLD", "LocalModelJudge"]

_log = logging.getLogger(__name__)

Kind = Literal["caller", "agent", "end"]

#: The 1.5B model's decision threshold on P(yes) (each model's is in its :class:`ModelSpec`; override per judge).
DEFAULT_THRESHOLD = QWEN_CODER_1_5B.threshold

#: Earlier turns shown before the turn being judged (the whole call for ``end`` conditions, capped).
EARLIER_TURNS = 4
END_TURNS = 16
MAX_TURN_CHARS = 400

_KIND_SYSTEM = (
    "Classify conditions of automatic actions in a phone call. Answer END if the condition is about the end "
    "of the call (\"when the call ends\", \"at the end of the call\", in any language); AGENT if it is met by "
    "something the phone agent does or says (confirms, books); otherwise CALLER.")
_KIND_SHOTS = (
    ("if the caller wants the menu texted to them", "CALLER"),
    ("when the call ends and a repair was booked", "END"),
    ("once the agent confirms the delivery slot", "AGENT"),
    ("if the customer reports a broken window", "CALLER"),
    ("al final de la llamada, si se reservó una clase", "END"),
    ("wenn der Mitarbeiter den Termin bestätigt", "AGENT"),
    ("when the patient agrees to a reminder text", "CALLER"),
    ("at the end of the call, if the customer accepted the upgrade", "END"),
)

_TRANSLATE_SYSTEM = "Translate the condition into English. Keep its meaning exactly. Answer with the translation only."
_TRANSLATE_SHOTS = (
    ("si el cliente quiere el horario por mensaje", "if the customer wants the schedule by text message"),
    ("wenn der Anrufer die Rechnung per SMS möchte", "if the caller wants the invoice by SMS"),
)

_PROMPTS: dict[Kind, tuple[str, tuple[tuple[tuple[tuple[str, str], ...], str, str], ...]]] = {
    "caller": (
        "You listen to a phone call between a business's agent and a caller. After the caller's latest turn, "
        "decide if that turn meets the condition.\n"
        "Yes: the caller asks for it (any wording, any language), or says yes to the agent's offer of exactly "
        "that.\n"
        "No: the caller declines or changes their mind; only books, moves or cancels something; asks a question "
        "about it; already has it; wants it by email or another way; wants it for a different person than the "
        "condition says; asks for a different thing; or the latest turn is about something else.\n"
        "Answer Yes or No.",
        (
            ((("agent", "Your bike will be ready Thursday."),
              ("user", "ok can you text me when it's ready so i don't forget")),
             "if the customer wants a pickup reminder by text", "Yes"),
            ((("agent", "Want me to text you the ticket link?"), ("user", "nah i'm good")),
             "if the caller wants the ticket link texted to them", "No"),
            ((("user", "hi i need to move my lesson from monday to wednesday"),),
             "if the caller wants their lesson details sent to them by text", "No"),
            ((("agent", "I've just texted you the form."), ("user", "yep got it thanks")),
             "if the caller asks for the form to be texted", "No"),
            ((("agent", "The studio is at 12 Pine Road."), ("user", "will the text come from this number")),
             "if the caller asks for the studio address by text", "No"),
            ((("agent", "I can send you the order summary."), ("user", "could you email it instead")),
             "if the caller wants the order summary texted to them", "No"),
            ((("agent", "Your cake order is confirmed."), ("user", "great send the confirmation to my wife's phone")),
             "if the caller wants the order confirmation texted to them", "No"),
            ((("agent", "Your cake order is confirmed."), ("user", "great send the confirmation to my wife's phone")),
             "if the caller wants the confirmation sent to another person", "Yes"),
            ((("agent", "Sorry, that text didn't go through. Shall I try again?"), ("user", "yes please")),
             "if the caller wants the ski pass link texted to them", "Yes"),
            ((("user", "can you send me something"), ("agent", "Sure, the price list or the opening hours?"),
              ("user", "the opening hours")),
             "if the caller wants the price list texted to them", "No"),
            ((("user", "can you send me something"), ("agent", "Sure, the price list or the opening hours?"),
              ("user", "the opening hours")),
             "if the caller wants the opening hours texted to them", "Yes"),
            ((("user", "¿me puedes mandar el enlace de la tienda por mensaje?"),),
             "if the caller wants the shop link texted to them", "Yes"),
            ((("agent", "Soll ich Ihnen die Adresse per SMS schicken?"), ("user", "nein danke, ich kenne den weg")),
             "if the caller wants the address by SMS", "No"),
            ((("user", "text me the parking info"), ("agent", "Done, it's on its way."),
              ("user", "what time do you close")),
             "if the caller wants the parking info texted to them", "No"),
            ((("user", "i don't need a receipt but text me the warranty card please"),),
             "if the caller wants the warranty card texted to them", "Yes"),
            ((("user", "my basement is flooding, water everywhere"),), "if the caller reports a water leak", "Yes"),
            ((("user", "hi can i book a massage for saturday morning"),),
             "if the caller wants the booking details texted to them", "No"),
            ((("agent", "You're booked for Saturday at 10."), ("user", "perfect could you shoot that over to my cell")),
             "if the caller wants the booking details texted to them", "Yes"),
            ((("user", "please don't text my husband about the surprise party"),),
             "if the caller wants the party details texted to someone else", "No"),
            ((("user", "text the gate code to my son he's arriving first"),),
             "if the caller wants the gate code texted to them", "No"),
            ((("user", "text the gate code to my son he's arriving first"),),
             "if the caller wants the gate code sent to another person", "Yes"),
            ((("user", "text it to me and my sister please"),), "if the caller wants the schedule texted to them",
             "Yes"),
            ((("agent", "I'll transfer you to a colleague."), ("user", "okay thanks")),
             "if the caller asks to speak to a person", "No"),
            ((("user", "i just got home can you text me the recipe"),), "if the caller wants the recipe texted to them",
             "Yes"),
            ((("user", "no need to send the invoice, i only need the tracking number"),),
             "if the caller wants the invoice texted to them", "No"),
            ((("user", "no need to send the invoice, i only need the tracking number"),),
             "if the caller wants the tracking number texted to them", "Yes"),
            ((("agent", "The Oak Street unit is available."), ("user", "is the text going to have photos")),
             "if the caller wants the unit listing texted to them", "No"),
            ((("agent", "Do you want the recall reminder by text?"), ("user", "sure why not")),
             "when the client agrees to a recall reminder by text", "Yes"),
        ),
    ),
    "agent": (
        "You listen to a phone call between a business's agent and a caller. After the agent's latest turn, "
        "decide if that turn meets the condition: the agent states that the thing is now confirmed or done. "
        "Offering options, asking, failing, or confirming something else is No.\nAnswer Yes or No.",
        (
            ((("user", "two tickets for friday please"), ("agent", "Done: two tickets for Friday at 8 are booked.")),
             "once the agent confirms the ticket booking", "Yes"),
            ((("user", "anything on friday"), ("agent", "I have Friday at 6 or at 8. Which one?")),
             "once the agent confirms the ticket booking", "No"),
            ((("user", "please cancel my tickets"), ("agent", "I've cancelled your tickets.")),
             "once the agent confirms the ticket booking", "No"),
            ((("user", "the 8 pm one"), ("agent", "Sorry, that show just sold out.")),
             "once the agent confirms the ticket booking", "No"),
            ((("user", "can you move me to the 10 am slot"), ("agent", "Done, you're now on the 10 am slot.")),
             "once the agent confirms the new slot", "Yes"),
            ((("user", "i want a window seat"), ("agent", "Your seat is now 14A.")),
             "once the agent confirms the new flight", "No"),
        ),
    ),
    "end": (
        "The phone call has just ended. Decide from the whole conversation if the condition was true at the end: "
        "something booked, agreed or ordered during the call counts only if it was really confirmed and not "
        "cancelled or refused later.\nAnswer Yes or No.",
        (
            ((("user", "a table for two tomorrow at 7 please"), ("agent", "Booked, see you tomorrow at 7."),
              ("user", "thanks bye")),
             "when the call ends and a table was booked", "Yes"),
            ((("agent", "Shall I book the trial lesson for Tuesday?"), ("user", "let me think about it first, bye")),
             "at the end of the call, if a trial lesson was booked", "No"),
            ((("agent", "Your repair is booked for Monday."), ("user", "actually cancel it, i found another shop"),
              ("agent", "Cancelled.")),
             "when the call ends and a repair was booked", "No"),
            ((("user", "how much is a trial lesson"), ("agent", "It's 20 dollars."), ("user", "ok thanks bye")),
             "at the end of the call, if a trial lesson was booked", "No"),
            ((("user", "book the trial lesson for my daughter please"),
              ("agent", "Done, Tuesday at 5 for your daughter."), ("user", "great bye")),
             "at the end of the call, if a trial lesson was booked", "Yes"),
            ((("agent", "I've reserved a parking spot for Friday."), ("user", "thanks bye")),
             "when the call ends and a room was booked", "No"),
        ),
    ),
}

#: Explicit references to the end of the call (a reliable rule: the model is only asked when none matches).
_CALL_END = re.compile(
    r"\b(?:(?:when|once|after|as soon as|if) (?:the |this )?(?:phone )?(?:call|conversation) (?:ends|has ended|is over|"
    r"finishes|is finished|hangs up)|(?:at|by) the end of the (?:phone )?(?:call|conversation)|"
    r"after (?:the caller )?hang(?:s|ing)? up|(?:after|once|when) (?:the caller|they|he|she|we) hangs? up|"
    r"al (?:final|terminar) (?:de )?la llamada|cuando (?:termine|acabe|finalice) la llamada|"
    r"(?:am|zum) ende des (?:anrufs|gesprächs|telefonats)|"
    r"wenn (?:der anruf|das gespräch|das telefonat) (?:endet|beendet ist|vorbei ist)|nach dem (?:anruf|gespräch))\b"
    # leading the condition, after at most an "if"/"when" (elsewhere "after the call" may be when a caller wants the
    # text: "if they want the receipt texted after the call")
    r"|^\W*(?:(?:if|when|only|and|but|si|solo|wenn|nur|und)\W+)?(?:(?:right |just )?after (?:the |this )?"
    r"(?:phone )?(?:call|conversation)|at (?:the )?call end|on hang ?-?up|post-call|"
    r"al colgar|(?:cuando|tras|después de|despues de|luego de) (?:se )?colgar|cuando (?:se )?cuelguen?|"
    r"(?:después|despues|tras|al acabar|al terminar|al finalizar) (?:de )?la (?:llamada|conversación|conversacion)|"
    r"una vez (?:terminada|finalizada|acabada) la llamada|"
    r"nach (?:dem telefonat|gesprächsende|ende des (?:anrufs|gesprächs|telefonats))|beim auflegen|"
    r"nach dem auflegen|(?:sobald|nachdem|wenn) (?:der anrufer )?aufgelegt (?:wird|ist|wurde|hat)|"
    r"wenn der anrufer auflegt|am schluss des (?:anrufs|gesprächs))\b",
    re.IGNORECASE)

#: Common function words of English: a condition without enough of them is translated first.
_ENGLISH = frozenset([
    "a", "an", "the", "if", "when", "once", "and", "or", "to", "of", "for", "by", "at", "in", "on", "is", "was",
    "were", "be", "been", "has", "have", "had", "their", "them", "they", "his", "her", "caller", "customer",
    "client", "agent", "call", "wants", "asks", "agrees",
])


def looks_english(text: str) -> bool:
    """Whether ``text`` reads as English (a cheap check deciding whether to ask for a translation)."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    return bool(words) and sum(w in _ENGLISH for w in words) / len(words) >= 0.25


def _chat(system: str, shots: Iterable[tuple[str, str]], final: str) -> str:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for user, answer in shots:
        parts.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    parts.append(f"<|im_start|>user\n{final}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


#: Chat-template markers (``<|im_start|>``...): untrusted text must not open or close a message.
_SPECIAL = re.compile(r"<\|[^<>|]*\|>|<\||\|>")


def clean(text: str, *, keep: Literal["head", "tail"] = "head") -> str:
    """Untrusted text for a prompt: one line, no chat-template markers, at most ``MAX_TURN_CHARS``.

    Earlier turns keep their start; the turn being judged keeps its end (where a request usually is).
    """
    flat = " ".join(_SPECIAL.sub(" ", text).split())
    return flat[-MAX_TURN_CHARS:] if keep == "tail" else flat[:MAX_TURN_CHARS]


def _line(role: str, text: str) -> str:
    return f"{'Agent' if role == 'agent' else 'Caller'}: {clean(text)}"


def _split_turns(
    turns: Sequence[tuple[str, str]],
) -> tuple[Sequence[tuple[str, str]], tuple[str, str] | None, tuple[str, str]]:
    """What a turn prompt shows, in three parts.

    Returns:
        The earlier turns (at most :data:`EARLIER_TURNS`), the other side's last turn (``None`` when the
        same side spoke twice), and the turn being judged.
    """
    last = turns[-1]
    previous = turns[-2] if len(turns) > 1 and turns[-2][0] != last[0] else None
    earlier = turns[:-2] if previous else turns[:-1]
    return earlier[-EARLIER_TURNS:], previous, last


def shown_turns(turns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The turns a caller or agent prompt shows the model, in order (the rules read no more than these)."""
    earlier, previous, last = _split_turns(turns)
    return [*earlier, *([previous] if previous else []), last]


def render_question(turns: Sequence[tuple[str, str]], condition: str, kind: Kind) -> str:
    """The condition first, then the conversation with the turn being judged set apart, then the question."""
    if kind == "end":
        conversation = "Conversation:\n" + "\n".join(_line(r, t) for r, t in turns[-END_TURNS:])
        return f"Condition: {clean(condition)}\n\n{conversation}\n\nWas the condition true when the call ended?"
    earlier, previous, last = _split_turns(turns)
    lines = []
    if earlier:
        lines.append("Earlier:\n" + "\n".join(_line(r, t) for r, t in earlier))
    if kind == "caller":
        if previous:
            lines.append(f"Agent said: {clean(previous[1], keep='tail')}")
        lines.append(f"Caller now says: {clean(last[1], keep='tail')}")
    else:
        if previous:
            lines.append(f"Caller said: {clean(previous[1], keep='tail')}")
        lines.append(f"Agent now says: {clean(last[1], keep='tail')}")
    who = "caller" if kind == "caller" else "agent"
    question = f"Does what the {who} now says meet the condition?"
    return f"Condition: {clean(condition)}\n\n" + "\n".join(lines) + f"\n\n{question}"


def build_prompt(kind: Kind, turns: Sequence[tuple[str, str]], condition: str) -> str:
    """The whole prompt for one decision (instructions and examples first: they stay cached)."""
    system, shots = _PROMPTS[kind]
    return _chat(system, [(render_question(t, c, kind), a) for t, c, a in shots],
                 render_question(turns, condition, kind))


class LocalModelJudge:
    """Judge conditions with a local model; no key, no network. Share one instance across calls.

    Args:
        model: The loaded (or lazily loaded) local model.
        threshold: Minimum P(yes) to fire (default: the model's, chosen on the train and dev splits).
        agree_threshold: Minimum P(yes) to fire when the embedded rules fire on the turn too (default:
            the model's, ``None`` for a model whose rules are not asked; never above ``threshold``; equal to
            it: the rules are not asked).
        fallback: Decides when the model fails or is late (default: the embedded rules); the
            decision's part then reads ``fallback: ...`` with the reason.
        call_end_deadline: Seconds the model may take for a call-end condition before the
            fallback decides (it must fit the pipeline's end grace, or the text would be lost);
            ``None``: no deadline.
        turn_deadline: Seconds a decision during the call may take, queue included, before the fallback
            decides: a model that is wedged or far behind (many calls on one model) must not leave the
            caller's request unanswered; ``None``: no deadline.
        recipients: Say no without the model when the caller's turn directs the text only at someone
            the condition is not about ("text it to my wife" for a text to the caller, or the reverse;
            :mod:`incall_sms.judges.recipients`).
        receipts: Say no without the model when the caller only confirms a text the agent just said
            it sent ("yep it came through", "ya me llegó": :mod:`incall_sms.judges.receipt`).
        direction: Say no without the model when the caller's turn clearly has the other sender than the
            condition ("can I text you my email?" for a text to the caller, "text me the form" for the
            caller texting something: :mod:`incall_sms.judges.direction`).
        relevance: Say no without the model to a condition about a text when the caller's turn is a statement
            or a question about something else and neither it nor the earlier turns shown with it have any
            sign of a text (:mod:`incall_sms.judges.relevance`).

    Attributes:
        decisions: Model decisions made (for benchmarks).
        failures: Decisions the fallback made instead.
    """

    name = "local"
    instant = False

    def __init__(
        self,
        *,
        model: LocalModel,
        threshold: float | None = None,
        agree_threshold: float | None = None,
        fallback: ConditionJudge | None = None,
        call_end_deadline: float | None = 8.0,
        turn_deadline: float | None = 60.0,
        recipients: bool = True,
        receipts: bool = True,
        direction: bool = True,
        relevance: bool = True,
    ) -> None:
        self.model = model
        self.threshold = model.spec.threshold if threshold is None else threshold
        agree = model.spec.agree_threshold if agree_threshold is None else agree_threshold
        self.agree_threshold = self.threshold if agree is None else min(self.threshold, agree)
        self._rules = EmbeddedJudge()  # instant and stateless: also the default fallback
        self._fallback: ConditionJudge = fallback or self._rules
        self.call_end_deadline = call_end_deadline
        self.turn_deadline = turn_deadline
        self.recipients = recipients
        self.receipts = receipts
        self.direction = direction
        self.relevance = relevance
        self.failures = 0
        self._kinds: dict[str, Kind] = {}
        self._english: dict[str, str] = {}
        self.decisions = 0

    # -- condition analysis (once per condition) ------------------------------------------------

    async def _english_of(self, condition: str) -> str:
        if condition not in self._english:
            if looks_english(condition):
                self._english[condition] = condition
            else:
                answer = await self.model.chat(
                    [{"role": "system", "content": _TRANSLATE_SYSTEM},
                     *[m for user, text in _TRANSLATE_SHOTS for m in (
                         {"role": "user", "content": user}, {"role": "assistant", "content": text})],
                     {"role": "user", "content": clean(condition)}], max_tokens=48)
                translated = " ".join(answer.split()).strip().strip('"')
                self._english[condition] = translated if 3 <= len(translated) <= 300 else condition
        return self._english[condition]

    async def kind_of(self, spec: ConditionSpec) -> Kind:
        """The condition's kind (cached); ``when: call_end`` in the action file makes it ``end``."""
        if spec.when == "call_end":
            return "end"
        if spec.condition not in self._kinds and _CALL_END.search(spec.condition):
            self._kinds[spec.condition] = "end"
        if spec.condition not in self._kinds:
            english = await self._english_of(spec.condition)
            prompt = _chat(_KIND_SYSTEM, _KIND_SHOTS, english)
            answer = await self.model.choose(prompt, ("END", "AGENT", "CALLER"))
            # no signal: a caller condition (judged after caller turns), never silently a call-end one
            self._kinds[spec.condition] = {"END": "end", "AGENT": "agent"}.get(answer or "", "caller")  # type: ignore[assignment]
        kind = self._kinds[spec.condition]
        if spec.when == "turn" and kind == "end":
            return "caller"
        return kind

    async def warm(self, conditions: Iterable[ConditionSpec] = ()) -> None:
        """Load the model, analyse ``conditions``, and put every kind's instructions in the prompt cache."""
        await self.model.start()
        for spec in conditions:
            await self.kind_of(spec)
        for kind in _PROMPTS:  # the examples end each prompt's cached prefix
            await self.model.yes_probability(build_prompt(kind, [("user", "hello")], "if the caller says hello"))

    # -- deciding -------------------------------------------------------------------------------

    async def decide(self, request: JudgeRequest) -> list[Decision]:
        """Every condition's decision, with the part that decided and its score."""
        if not request.conditions or not request.transcript:
            return [Decision(id=c.id, fires=False, score=None, part="rule: empty conversation")
                    for c in request.conditions]
        turns = [(t.role, t.text) for t in request.transcript]
        # Rules first (instant), then the model, one prompt at a time (see LocalModel: each kind keeps its
        # cached prefix in its own slot).
        return list(await asyncio.gather(*(self._decide_safely(spec, turns, request)
                                           for spec in request.conditions)))

    async def _decide_safely(
        self, spec: ConditionSpec, turns: list[tuple[str, str]], request: JudgeRequest
    ) -> Decision:
        """The model's decision; the fallback judge's when the model fails or misses its deadline."""
        at_end = request.at == "call_end"
        deadline = self.call_end_deadline if at_end else self.turn_deadline  # the end grace is short
        try:
            if deadline is not None:
                async with asyncio.timeout(deadline):
                    return await self._decide_one(spec, turns, request)
            return await self._decide_one(spec, turns, request)
        except Exception as exc:  # timeout, model unavailable or failed: decide without it
            self.failures += 1
            why = f"model slower than the {'call-end' if at_end else 'turn'} deadline" \
                if isinstance(exc, TimeoutError) else f"model failed: {exc.__class__.__name__}"
            _log.warning("local judge: %s; using the %s judge", why, self._fallback.name)
            [decision] = await decide(self._fallback, dataclasses.replace(request, conditions=[spec]))
            return dataclasses.replace(decision, part=f"fallback: {decision.part}", reason=why)

    async def _decide_one(self, spec: ConditionSpec, turns: list[tuple[str, str]], request: JudgeRequest) -> Decision:
        at = request.at
        kind = await self.kind_of(spec)
        if kind == "end" and at != "call_end":
            return Decision(id=spec.id, fires=False, score=None, part="rule: call-end condition during the call")
        if kind != "end" and at == "call_end":
            return Decision(id=spec.id, fires=False, score=None, part="rule: turn condition at call end")
        side = "user" if kind == "caller" else "agent"
        if kind != "end" and turns[-1][0] != side:
            return Decision(id=spec.id, fires=False, score=None,
                            part=f"rule: {kind} condition after a turn of the other side")
        condition = await self._english_of(spec.condition)
        vetoed = None
        if kind == "caller":
            vetoed = ((no_text_in_sight(condition, shown_turns(turns)) if self.relevance else None)
                      or (veto_reason(condition, turns[-1][1]) if self.recipients else None)
                      or (received_reason(condition, turns) if self.receipts else None)
                      or (direction_reason(condition, turns) if self.direction else None))
        if vetoed:
            return Decision(id=spec.id, fires=False, score=None, part=f"rule: {vetoed}")
        score = await self.model.yes_probability(build_prompt(kind, turns, condition),
                                                 priority=0 if kind == "end" else 1)
        self.decisions += 1
        rules = None
        if self.agree_threshold < self.threshold:  # the embedded rules' yes lowers the bar (instant, no I/O)
            rules = bool(self._rules.judge_now(dataclasses.replace(request, conditions=[spec])))
        bar = self.agree_threshold if rules else self.threshold
        fires = score >= bar
        return Decision(id=spec.id, fires=fires, score=round(score, 4), part="model", rules=rules,
                        reason=f"{kind} prompt, P(yes)={score:.2f} {'>=' if fires else '<'} {bar:.2f}"
                               + (" (the embedded rules fire too)" if rules else ""))

    async def judge(self, request: JudgeRequest) -> list[Match]:
        """The conditions that hold now."""
        return [d.as_match() for d in await self.decide(request) if d.fires]

    def judge_now(self, request: JudgeRequest) -> list[Match]:
        """Not available: the model runs on worker threads."""
        raise NotImplementedError("LocalModelJudge is not instant; await judge()")

    async def aclose(self) -> None:
        """Release the model."""
        await self.model.aclose()
