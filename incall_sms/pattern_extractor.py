"""The no-key variable extractor: values are read where they are stated, never from unrelated words.

A wrong value is worse than none (a missing variable waits, falls back to its default or skips the
text; a wrong one texts the caller a wrong time), so each kind of value has a place it may come from,
and anything unclear leaves it unset:

- **Times** (``booking_time``, ``pickup_time`` ...; not ``wait_time`` or ``date_of_birth``): where
  something was *settled*: the agent's newest statement that books, confirms or moves something
  ("booked for Friday at 7 pm", "I've moved it to Saturday at 8 instead of Friday", "Friday at 7 is
  all yours", "So that's Friday at 9 am", "Saturday at 7 pm it is"); a confirmation without a time
  confirms the time just agreed: the agent's proposal the caller took ("I can do 6:15 on Wednesday"
  - "perfect"), the caller's own choice ("Saturday at 8 please" - "you're booked"), or the caller's
  time the agent took up before asking a name ("friday at 4" - "Friday at 4 pm works. Name?" - "leo" -
  "You're booked"), unless the caller moved it since or a time in words we cannot read came up ("Nine it
  is": a bare hour word may be a count). Clock times said in words are read as digits first ("half six",
  "a quarter to five", "three o'clock", "seven pm": :mod:`incall_sms.spoken_times`; not "eleven fifteen",
  which is as often a price). A booking the
  caller makes for someone else ("book my son in", "get my daughter a lesson") is the caller's booking.
  A bare "Done." confirms nothing (it may be a note or a receipt). Nothing is
  settled by offers ("I can get you booked for ..."), questions, opening hours, policies, deadlines
  ("held until 7:15", "arrive by 2:45"), waitlists, someone else's or past bookings (nothing at all in a
  call where the caller only asked about a booking that exists: "can you check when my son's appointment
  is?"), several booked at once ("Ada at 2 and Lev at 3"), a refusal or a
  self-correction of the agent's, a caller who withdraws or disputes it, a time it cannot read fully
  ("for 9 instead", "the Friday after"), or a time the caller mentions for anything else ("text me
  the parking info for tomorrow"). Without any agent turn (a bot that does not feed its words back),
  the caller's own request to book ("book me for Friday at 7") counts; for variables about something
  else than a booking, a caller clause naming its subject ("call me back tomorrow at 3").
- **Names** (``caller_name``; not ``stylist_name`` or ``student_name``): the caller introducing
  themselves with a cue ("my name is john", "this is Dana Smith", "this is lucy i'm calling ...",
  "it's Omar here", an answer to the agent asking for their name, a name the agent then greets them
  by: "Hi Carlos"); never the agent's name, someone else's ("her name's linda", "it's mia's lesson",
  an answer to "what's your dog's name?"), or a word that is no name ("I'm vegan", "it's Christmas
  Eve", "this is Glow Salon?").
- **E-mails and numbers**: the last one the caller gave, not one taken back, an old one, someone
  else's, the business's repeated back, or an order, card, reference or birth-date number; the
  agent's only as a read-back of exactly what the caller spelled ("kate w at fastmail dot com" -
  "Got it: katew@fastmail.com").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from incall_sms.judges.base import Turn
from incall_sms.lexicon import PEOPLE_EN, alternation
from incall_sms.spoken_times import digits_for_spoken_times

__all__ = ["PatternExtractor"]

_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|today|tonight)"
_MONTH = r"(?:january|february|march|april|may|june|july|august|september|october|november|december)"
_ORDINAL = r"\d{1,2}(?:st|nd|rd|th)"
#: A weekday as said: "Friday", "next Monday", "this Saturday", "Tuesday morning"; not "the Friday after" (which one?).
_DAY_NAME = (rf"(?<!the )(?:(?:next|this|coming)\s+)?{_WEEKDAY}(?!\s+after\b(?!\s+\d))"
             r"(?:\s+(?:morning|afternoon|evening|night))?")
#: A day: "Friday", "Friday the 8th", "Thursday, May 9th", "March 14th", "the 10th of June", "the 10th".
_DATE = (rf"(?:{_DAY_NAME}(?:,?\s+(?:the\s+{_ORDINAL}|{_MONTH}\s+{_ORDINAL}|{_ORDINAL}))?|{_MONTH}\s+{_ORDINAL}"
         rf"|(?:the\s+)?{_ORDINAL}\s+of\s+{_MONTH}"
         rf"|the\s+{_ORDINAL}(?!\s+(?:floor|time|street|st|avenue|ave|row|grade|person|one|place|birthday|anniversary|"
         rf"session|sitting|lesson|class|course|week|visit|appointment|round|seat|table|item|stop|level)\b))")
_NUMBER_WORDS = r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_TIME = (rf"(?:(?:half past|quarter past|quarter to)\s+(?:{_NUMBER_WORDS}|\d{{1,2}})"
         r"|\d{1,2}(?:[:.]\d{2}|\s+[0-5]\d)?\s*(?:am|pm|a\.m\.|p\.m\.)|\d{1,2}(?::\d{2}|\s+[0-5]\d)?\b"
         r"(?!\s*(?:past|to)\b)|noon|midnight)")
#: A clock time that cannot be a count ("7 pm", "7:30", "7.30pm"; not the "4" of "a table for 4").
_CLOCK = r"(?:\d{1,2}(?:[:.]\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)|\d{1,2}:\d{2}|noon|midnight)"
#: A window after a day: "between 8 and 12", "from 10 to 12", "9 to 11", "after 5 pm".
_WINDOW = rf"(?:between\s+{_TIME}\s+and\s+{_TIME}|from\s+{_TIME}\s+(?:to|until|till)\s+{_TIME}|{_TIME}\s+to\s+{_TIME})"
_TIME_VALUE = re.compile(
    rf"\b({_DATE}(?:,?\s+(?:at\s+{_TIME}|{_WINDOW}|after\s+{_CLOCK}))?|(?:at\s+{_TIME}|{_CLOCK})\s+(?:on\s+)?{_DATE}"
    rf"|{_CLOCK})",
    re.IGNORECASE)
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_PHONE = re.compile(r"(\+?\d[\d\s().-]{8,}\d)")

#: An agent's clause that settles something (a booking's time is read there, not from other words).
_SETTLED = re.compile(
    r"\b(?:booked|confirmed|reserved|scheduled|rescheduled|moved|changed|switched|pushed|bumped|shifted|"
    r"brought (?:it |that )?forward|set for|all set|"
    r"put you (?:down|in)|you're in(?! luck)|you are in(?! luck)|signed (?:you )?up|registered|penciled|pencilled|"
    r"locked in|booked you|all yours|is yours|(?:got|have) you (?:down|in)|you're down|you are down|all done|"
    r"that's done|see you then)\b"
    r"|\byour (?:booking|reservation|appointment|table|visit|meeting|session|class|lesson|slot|"
    r"delivery|pickup|pick-up|installation|viewing|tour|consultation)\b", re.IGNORECASE)
#: A person of the caller's (:mod:`incall_sms.lexicon`): "your sister", "my colleague".
_PERSON = alternation(PEOPLE_EN)
#: It did not happen, or not for the caller, or not now: "I couldn't get you booked", "is already booked",
#: "Friday at 7 is now taken", "the Jones party is booked", "your sister's booked", "you were last booked".
_FAILED = re.compile(
    r"\b(?:not|never|couldn't|could not|can't|cannot|unable|isn't|aren't|wasn't|weren't|won't|didn't|don't|"
    r"doesn't|hasn't|haven't|wouldn't|rebook|rearrange|have to (?:move|change)|off sick|someone else|by another|"
    r"nothing left|none left|"
    r"no (?:tables?|rooms?|spots?|spaces?) left|came in|you came|were here|"
    r"last (?:cleaning|check-?up|service|was)|mentioned|"
    r"unfortunately|already|taken|(?:we're|we are|is|are) full|sold out|unavailable|no longer|"
    r"no (?:space|room|slots?|availability)|"
    r"let me (?:check|see|look)|i'll (?:check|see|look)|if (?:it's|that's|we|i|there)|"
    r"(?:was|were) (?:last )?(?:booked|in|seen)|last (?:time|visit|booked|appointment)|previous(?:ly)?|"
    rf"your {_PERSON}|the \w+ (?:party|family|group)|we've booked a|"
    r"choice is yours|in luck)\b|[A-Z][a-z]+'s (?:appointment|booking|reservation|table|class|lesson|session)\b",
    re.IGNORECASE)
#: A bare hour after a settling verb ("for 9"), not a count ("for 4 people").
_BARE_TIME = re.compile(r"\b(?:for|at)\s+\d{1,2}\b(?!\s*(?:people|persons|guests|of us|adults|kids|children|"
                        r"minutes|mins|hours|days|nights|weeks|months|dollars|pounds|euros|%|percent))", re.IGNORECASE)
#: A day or a number after a settling verb that no time pattern read: the value would be a guess.
_UNREAD = re.compile(rf"\b(?:{_WEEKDAY}|{_MONTH})\b|\b\d{{1,2}}(?:[:.]\d{{2}})?\s*(?:am|pm)\b", re.IGNORECASE)
#: An offer, not a booking yet: "I can get you booked in for Friday", "you'd be booked", "is yours if you want it".
_OFFERED = re.compile(r"\b(?:can (?:get|have|put|book|pencil|fit|do)|could|would|you'd|i'd|if you (?:want|like|wish)|"
                      r"happy to|want me to|shall i|should i)\b", re.IGNORECASE)
#: The agent correcting itself: the turn says two things.
_SELF_CORRECTION = re.compile(r"\b(?:i mean|i meant|i misspoke|correction|let me correct|sorry,? (?:no|i mean))\b",
                              re.IGNORECASE)
#: What a refusal is about when it names no time ("that table is already reserved").
_BOOKED_THING = re.compile(r"\b(?:table|booking|reservation|appointment|slot|time|spot|room|session|class|seat)s?\b"
                           r"|\bleft\b|\bavailab", re.IGNORECASE)
#: Words before a time that make it something else than the booking's: "held until 7:15", "due by 5 pm".
_NOT_THE_TIME = re.compile(r"\b(?:until|till|til|by|after|before|expires?(?: on)?|due|from|between|"
                           r"arriv\w*(?:\s+\w+)?(?:\s+(?:at|around|by))?|"
                           r"closes?(?: at)?|opens?(?: at)?|shuts?(?: at)?|last orders(?: are)?(?: at)?|"
                           r"left (?:\w+ )*at|placed at|\d{1,2}(?::\d\d)?\s*(?:am|pm)?\s*(?:to|-|and)|"
                           r"(?:got|have|'ve got|has) (?:the |a |an |my )?\w+ (?:\w+ )?at|"
                           r"last (?:one|time|visit|appointment|session|booking)(?: was| were)?(?: at| for)?|"
                           # the caller's own day: "my meeting is at", "school finishes at", "he's fed at"
                           r"(?:my|his|her|their|school|work) \w+(?: \w+)? (?:is|are|was|ends?|starts?|"
                           r"finish(?:es)?|gets? in|leaves?|goes|go|opens?) (?:at|around|about)|"
                           r"(?:i'm|i am|he's|she's|we're|they're|he is|she is) (?!free|available|around|in|there|here)"
                           r"\w+ (?:at|around))\s*$",
                           re.IGNORECASE)
#: Weaker: a time the agent states the thing is ready or now is ("ready Thursday at noon", "is now Thursday at 11").
_WEAK_SETTLED = re.compile(r"\b(?:is now|are now|now on|now at)\b", re.IGNORECASE)
#: Only for variables about an order or a pickup, not a booking: "your order will be ready at 6:30".
_READY = re.compile(r"\b(?:(?:will|'ll) be ready|is ready|are ready)\b", re.IGNORECASE)
#: An agent turn proposing a time the caller may take ("we can do Thursday at 10", "would you like a spot?").
_PROPOSAL = re.compile(r"\b(?:can|could|i have|we have|there's|there is|available|how about|what about|would|shall|"
                       r"do you want|is that|works?|suits?)\b|,\s*(?:correct|right|okay|ok)\s*\?", re.IGNORECASE)
#: A caller taking it ("that works for us", "monday's fine", "yes sign me up"); not with a no or another wish.
_AGREE = re.compile(r"\b(?:yes|yeah|yep|yup|sure|ok|okay|perfect|great|lovely|fine|works|sounds good|sign me up|"
                    r"see you then|that's right|correct|book it|go ahead|go on|let's do)\b", re.IGNORECASE)
_DISAGREE = re.compile(r"\b(?:no|not|nope|nah|can't|cannot|doesn't|don't|won't|rather|instead|other|else|"
                       r"neither|later|earlier|except|check|think|ask|maybe|perhaps|hold off|get back|call you back|"
                       r"let you know|i said|wrong)\b|n't\b", re.IGNORECASE)
#: A question of the agent's that a "yes" can take a time by ("does that work?", "shall I book it?").
_TIME_QUESTION = re.compile(r"\b(?:work|works|suit|suits|book|would you like|shall i|do you want|okay|ok|right|which|"
                            r"correct|sound good|sounds good|good for you|that one|fine|want it|take it|spot)\b",
                            re.IGNORECASE)
#: Confirmations that name a booking (a caller's time just before them is the booked one).
_BOOKING_VERB = re.compile(r"booked|reserved|scheduled|put you|got you|have you|signed|registered|pencil",
                           re.IGNORECASE)
#: A caller correcting themselves: the part with it holds the time they want.
_CORRECTION = re.compile(r"\b(?:actually|make it|instead|change (?:it|that) to|i mean)\b", re.IGNORECASE)
#: Someone else's time in a caller's words ("my husband has an appointment monday").
_THIRD = re.compile(rf"\b(?:my|his|her|our) {_PERSON}\b|\b(?:him|her|them)\b", re.IGNORECASE)
#: ...unless the caller is booking for them ("book my son in", "get my daughter a lesson", "a slot for my mum").
_FOR_THIRD = re.compile(rf"\b(?:book|get|put|squeeze|fit|sign|bring|pencil|schedule) (?:my|our) {_PERSON}\b|"
                        rf"\bfor (?:my|our) {_PERSON}\b", re.IGNORECASE)
_FIRST = re.compile(r"\bthe (?:first|earlier|earliest|morning) one\b", re.IGNORECASE)
_SECOND = re.compile(r"\bthe (?:second|later|latest|last|afternoon|evening) one\b", re.IGNORECASE)
#: No booking: "fully booked", a waitlist, a cancellation.
_NOT_SETTLED = re.compile(r"\b(?:fully|all|completely|pretty|quite|very|really|heavily) booked\b|"
                          r"\bbooked (?:up|solid|out|until|till|all)\b|\bwait(?:ing)? ?list\b|"
                          r"\bstill (?:booked|scheduled|confirmed|down|on|in)\b", re.IGNORECASE)  # one that existed
#: Several bookings settled at once ("Both booked: Ella at 3:30, Sam at 4"): which one a text means is unclear.
_SEVERAL = re.compile(r"\b(?:both|each of them|all three|the two of them)\b[^.!?]*\b(?:booked|in|down|set)\b|"
                      r"\b(?:booked|put) (?:them|you) both\b|"
                      r"(?-i:[A-Z][a-z]+) (?:at|for|on) [^.!?]*\band (?-i:[A-Z][a-z]+) (?:at|for|on)\b", re.IGNORECASE)
#: A time in words ("half three", "eleven that morning", "the four o'clock").
_HOUR_WORDS = re.compile(rf"\b(?:half|quarter|o'clock|noon|midday|(?!one\b){_NUMBER_WORDS})\b", re.IGNORECASE)
#: Numbers in words that count something ("a table for two", "two people"): no time.
_COUNTED = re.compile(rf"\b(?:for|of|party of|table for|just|all) {_NUMBER_WORDS}\b|\b{_NUMBER_WORDS} "
                      r"(?:people|persons|guests|adults|kids|children|of (?:us|you|them)|minutes|hours|days|weeks|"
                      r"sessions|lessons|dogs|cats|cars)\b", re.IGNORECASE)
#: A turn moving or dropping a time just agreed ("half an hour later", "make it earlier", "forget friday").
_SHIFT = re.compile(r"\b(?:later|earlier|half|quarter|instead|actually|rather|move|change|forget|cancel|list|"
                    r"push|bring)\b", re.IGNORECASE)
#: A caller asking about a booking that exists ("is it still on?", "can you check when it is?", "what time's
#: my appointment?", "do you have my son down for thursday?").
_CHECKING = re.compile(r"\b(?:still|(?:can|could|would) you (?:check|confirm|tell me)|(?:like|want) to check|"
                       r"check (?:if|when|whether|what|on|the time)|make sure|remind me|remember|forgot|"
                       r"(?:what time|when)(?:'s| is| are)|lost|can't find|is (?:that|it|this) (?:all )?booked|"
                       r"do you have (?:me|us|him|her|them|my|our) (?:\w+ )?down)\b", re.IGNORECASE)
#: A booking that exists: named by its owner ("my son's appointment", "bella's jab", "my next session", "the
#: appointment for my mum"), had or made by someone ("my wife has an appointment", "my friend booked a table"),
#: or someone the business has down ("do you have my son down").
_BOOKED_NOUN = (r"(?:appointment|booking|reservation|lesson|session|class|jab|mot|visit|check-?up|cleaning|table|"
                r"slot|consultation|treatment|groom|service|scan|test|exam|x-ray|operation|procedure|fitting|"
                r"viewing|repair|delivery|pickup|installation)")
_EXISTING = re.compile(rf"\b(?:my|our|his|her|their|[a-z]+'s) (?:next |existing |current |usual )?{_BOOKED_NOUN}\b|"
                       rf"\b(?:has|have|had|got|booked|made) (?:an?|the|one) (?:\w+ )?{_BOOKED_NOUN}\b|"
                       r"\b(?:have|got) (?:me|us|him|her|them|my \w+|our \w+) (?:down|in|booked)\b|"
                       rf"\bthe {_BOOKED_NOUN} for (?:my|our|his|her|their)\b", re.IGNORECASE)
#: A caller asking for a booking to be made or changed (narrower than :data:`_BOOK_REQUEST`).
_MAKE = re.compile(r"\b(?:book|reserve|schedule|reschedule|move|change|squeeze|fit|"
                   r"sign (?:me|us|him|her|them) up|put (?:me|us|him|her|them) (?:down|in)|"
                   r"get (?:me|us|him|her|them|my|our) (?:in|a|an)|make (?:an|a) (?:appointment|booking|reservation)|"
                   r"needs? (?:a|an) (?:\w+ )?(?:appointment|booking|slot|table|lesson|session))\b", re.IGNORECASE)
_CANCELLED = re.compile(r"\bcancel(?:l?ed|ling)?\b|\bcalled off\b|\bremoved\b|\b(?:taken|took) you off\b|"
                        r"\bdeleted\b|\breleased\b|\blet (?:it|the \w+) go\b|\bscratch that\b|\bnot book it\b|"
                        r"\bcome another time\b", re.IGNORECASE)
#: A caller's clause asking for something to be booked or changed ("book me for Friday at 7").
_BOOK_REQUEST = re.compile(
    r"\b(?:book|reserve|schedule|reschedule|move|change|switch|make it|put me (?:down|in)|sign me up|"
    r"can you do|could you do|do you have|is there|i'd like|i would like|i want|"
    r"(?:get|squeeze|fit) (?:me|us|him|her|them|my|our))\b",
    re.IGNORECASE)
#: A caller's clause asking for a text or an e-mail: its time is about that, not a booking.
_SEND_REQUEST = re.compile(r"\b(?:text|send|message|sms|e-?mail|remind)\b", re.IGNORECASE)
#: The agent summing up what was agreed: "So that's Friday at 9 am for the cleaning."
_RECAP = re.compile(r"\W*(?:(?:so|okay|ok|great|perfect|alright|right),?\s+)?that(?:'s| is)\b|.*\bit is\W*$",
                    re.IGNORECASE)
#: Opening hours and the like: times the agent states that nobody books.
_HOURS = re.compile(r"\b(?:open|opens|close|closes|closed|closing|opening|hours?|happy hour|special|"
                    r"deal|offer|promotion|discount|sale|run|runs|every|event|policy|deposit|parking|expires?|"
                    r"reminder|\w+days? to \w+days?)\b", re.IGNORECASE)
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

_INTRO = re.compile(
    r"\b(my name is|my name's|the name's|this is|i am|i'm|it's)\s+([a-z][a-z'-]*)(?:\s+([a-z][a-z'-]*))?",
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
    "was", "be", "been", "his", "her", "our", "their", "texting", "asking", "checking", "alright", "under",
    "pardon", "dr", "mr", "mrs", "ms", "miss", "doctor", "prof", "mother", "father", "mothers", "fathers",
    "ridiculous", "crazy", "insane", "terrible", "awful", "annoying", "frustrating", "unacceptable", "weird",
    "strange", "amazing", "perfect", "serious", "silly", "helpful", "quick", "easy", "hard", "difficult",
    "impossible", "vegan", "outside", "inside", "pregnant", "running", "booked", "curious", "allergic",
    "stuck", "lost", "confused", "waiting", "driving", "moving", "travelling", "traveling", "staying", "coming",
    "leaving", "almost", "nearly", "probably", "definitely", "worried", "concerned", "upset", "tired", "sick",
    "ill", "fed", "through", "out", "off", "up", "down", "over", "again", "even", "quite", "awkward",
    "spelled", "spelt", "sitting", "standing", "vegetarian", "delivery", "pickup", "um", "uh", "er", "erm",
    "hmm", "mm", "yep", "yeah", "ya", "yup", "nope", "mister", "missus", "sir", "madam", "ten", "two", "three",
    "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve", "twenty", "christmas", "easter",
    "thanksgiving", "halloween", "muslim", "christian", "jewish", "hindu", "catholic", "american", "british",
    "english", "french", "german", "spanish", "italian", "indian", "chinese", "mexican", "canadian",
    "australian", "irish", "scottish", "diabetic", "gluten", "celiac", "coeliac",
})
#: After a name: "this is lucy i'm calling about ...", "this is mark o'brien from flat 4", "... this is rachel".
_INTRO_END = {  # what may follow the name, per cue
    "this is": re.compile(r",?\s*(?:i'm|i am|i|calling|speaking|here)\b|(?:[a-z'-]+\s+)?from\b|(?:[a-z'-]+)?\W*$"),
    "it's": re.compile(r",?\s*(?:i'm|i am|i|calling|speaking|here)\b"),
    "i'm": re.compile(r",?\s*(?:calling|speaking|here|from)\b"),
}
#: The agent asking for someone else's name ("What's your dog's name?", "the name of the student").
_ASKS_OTHER_NAME = re.compile(r"\b(?:your|the|their|his|her) \w+'s name\b|\bname of (?:the|your)\b|"
                              r"\b(?:who|the person) (?:is|are|you're) (?:it |the booking )?for\b|"
                              r"\bbooking for\?", re.IGNORECASE)
_ASKS_NAME = re.compile(r"\b(?:your name|who am i speaking|who's calling|who is calling|name for the|"
                        r"what name|name should i|name is (?:it|the booking) under)\b", re.IGNORECASE)
#: Someone else the caller speaks for: a name after it is theirs ("for my mother ... it's linda").
_SOMEONE_ELSE = re.compile(rf"\b(?:behalf of|for my|my {_PERSON})\b", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _clauses(text: str) -> tuple[str, ...]:
    return tuple(c for c in _CLAUSE.split(text) if c.strip())


def _words(text: str) -> list[str]:
    text = _CALLBACK.sub(" callback ", _PICKUP.sub(" pickup ", text.lower().replace("_", " ")))
    return re.findall(r"[a-z]+", text)


_PICKUP = re.compile(r"\bpick(?:ed|ing)?[\s-]?up\b")
_CALLBACK = re.compile(r"\bcall(?:ed|ing)?[\s-]?(?:(?:you|me|him|her|them)\s+)?back\b|\b(?:will|'ll|to) call you\b")


def _topic(name: str, description: str) -> tuple[str, ...]:
    """Content words of a variable ("booki" of "date and time of the booking"), as 5-letter stems."""
    words = _words(f"{name} {description}")
    return tuple(dict.fromkeys(w[:5] for w in words if w not in _STOP and len(w) > 2))


def _mentions(clause: str, topic: tuple[str, ...]) -> bool:
    return any(w[:5] in topic for w in _words(clause) if len(w) > 2)


@functools.lru_cache(maxsize=4096)
def _times(text: str) -> tuple[str, ...]:
    """Times in ``text`` that can be a thing's own: not "until 7:15", "by 5 pm", "after 2", a range's end."""
    return tuple(m.group(1).strip() for m in _TIME_VALUE.finditer(text)
                 if not _NOT_THE_TIME.search(text[max(0, m.start() - 30):m.start()]))


def _one_time(text: str) -> str | None:
    """The time ``text`` proposes, when it proposes exactly one (an offer of two is no choice)."""
    found: tuple[str, ...] = () if _HOURS.search(text) else _times(text)
    return found[0] if len({t.lower() for t in found}) == 1 else None


_PART = re.compile(r",|;|\band\b(?!\s+\d)|\bbut\b|\bso\b")


@functools.lru_cache(maxsize=4096)
def _parts(clause: str) -> tuple[str, ...]:
    """A clause cut at commas and "and"/"but" (negations and asides are read per part)."""
    return tuple(p for p in _PART.split(clause) if p.strip())


def _time_in(clause: str, marker: re.Match[str] | None) -> str | None:
    """The booking's time in a settling clause: after the marker, not "until 7:15" or "by 5 pm"; a move's new time."""
    def usable(start: int, end: int) -> list[str]:
        return [m.group(1).strip() for m in _TIME_VALUE.finditer(clause, start, end)
                if not _NOT_THE_TIME.search(clause[max(0, m.start() - 30):m.start()])]

    begin = marker.start() if marker else 0
    after = usable(begin, len(clause))
    if after:
        moving = marker is not None and re.match(
            r"(?:re)?(?:moved|changed|switched|scheduled)|pushed|bumped|shifted", marker.group(), re.IGNORECASE)
        target = re.search(r"\bto\b", clause[marker.end():]) if moving and marker is not None else None
        if target is not None and marker is not None:  # "from Tuesday at 3 to Thursday at 10", "to X instead of Y"
            moved = usable(marker.end() + target.end(), len(clause))
            return moved[0] if moved else None
        return after[0]
    if marker is not None and not marker.group().lower().startswith("your"):
        before = usable(0, begin)  # "Friday at 7 is all yours"
        return before[-1] if before else None
    return None


def _taken_proposal(transcript: Sequence[Turn], index: int) -> str | None:
    """The time of the agent's proposal the caller at ``index`` took ("we can do Thursday at 10" - "perfect").

    The caller agrees without naming another time, or picks one of the offered times by its day or
    hour ("the wednesday one please", "the later one"). Nothing is taken by a no, a deferral ("i'll
    check with my boss"), a question, a "yes" to another question of the agent's, or an offer the
    agent has not made yet ("let me check if Friday at 7 is available").
    """
    if index < 1 or transcript[index - 1].role != "agent":
        return None
    caller, agent = transcript[index].text, transcript[index - 1].text
    pick = _FIRST.search(caller) or _SECOND.search(caller)
    rest = caller.replace(pick.group(), " ") if pick else caller
    proposing = " ".join(c for c in _clauses(agent) if not (
        _HOURS.search(c) or _NOT_SETTLED.search(c) or _CANCELLED.search(c) or _FAILED.search(c)))
    if not _PROPOSAL.search(proposing) or caller.rstrip().endswith("?") or _DISAGREE.search(rest) \
            or _SEND_REQUEST.search(caller):
        return None
    asked = [c for c in _clauses(agent) if c.rstrip().endswith("?")]
    if asked and not (_times(asked[-1]) or _TIME_QUESTION.search(asked[-1])):
        return None  # "Is it for a birthday?" - "yes it's our anniversary"
    if asked and asked[-1] not in proposing:
        return None  # "Would you like me to put you on the waitlist for Thursday?" - "yes please"
    offered = list(dict.fromkeys(_times(proposing)))
    if not offered:
        return None
    if len(offered) == 2 and _FIRST.search(caller):  # "the earlier one"
        return offered[0]
    if len(offered) == 2 and _SECOND.search(caller):  # "the later one"
        return offered[1]
    own = _times(caller)
    if own:  # the caller names it: one of the offers ("the 9:15 one"), else their own time is no acceptance
        picked = [t for t in offered if any(o.lower() in t.lower() or t.lower() in o.lower() for o in own)]
        if len(picked) != 1:
            return None
        # one time named ("the 9:15 one"), or its day and hour in passing ("monday 8:30's good")
        return picked[0] if len(own) == 1 or all(o.lower() in picked[0].lower() for o in own) else None
    named = [t for t in offered if set(_words(t)) & set(_words(caller)) - {"at", "on", "the", "am", "pm"}]
    if len(named) == 1:
        return named[0]
    if _AGREE.search(caller) and len({t.lower() for t in offered}) == 1:
        return offered[0]
    return None


#: Words around a time that make a clause a mere echo of it ("Sunday at 10 then.", "Great, Friday at 4 it is.").
_ASSENT = frozenset({"then", "it", "is", "great", "perfect", "ok", "okay", "lovely", "so", "that's", "right", "sure",
                     "yes", "fine", "brilliant", "excellent", "wonderful"})


def _echo(clause: str) -> bool:
    """A statement that only names a time, with words of assent at most ("Sunday at 10 then.")."""
    if clause.rstrip().endswith("?") or len(_times(clause)) != 1:
        return False
    rest = clause.replace(_times(clause)[0], " ")
    return set(re.findall(r"[^\W\d_]+(?:'[a-z]+)?", rest.lower())) <= _ASSENT


def _unread_hours(text: str) -> bool:
    """Whether ``text`` names a time in words besides the times read ("Nine it is", "right after at five")."""
    for found in _times(text):
        text = text.replace(found, " ")
    text = _COUNTED.sub(" ", text)  # "a table for two", "two people", "the two of you"
    return _HOUR_WORDS.search(text) is not None


def _same_time(a: str, b: str) -> bool:
    """The same time said twice ("friday at 4" / "Friday at 4 pm"): one holds the other as whole words."""
    x, y = (" " + " ".join(re.sub(r"\b(?:at|on)\b", " ", t.lower()).split()) + " " for t in (a, b))
    return x in y or y in x


def _echoed_time(transcript: Sequence[Turn], index: int) -> str | None:
    """The agent's single time at ``index`` when it takes up the time the caller just asked for, else ``None``.

    Only the agent's statements count (not its questions), none of them may refuse, cancel or offer,
    and the turn may name no other time in words; the caller's turn before must hold that same time,
    with an hour, as its only one, in no refusal.
    """
    if _unread_hours(transcript[index].text):
        return None  # "Friday at 4 is Maria's, and Tom is free right after at five": another time, unread
    statements = [c for c in _clauses(transcript[index].text) if not c.rstrip().endswith("?")]
    timed = [c for c in statements if _times(c)]
    if not timed or any(_FAILED.search(c) or _CANCELLED.search(c) or _OFFERED.search(c) or _HOURS.search(c)
                        or _NOT_SETTLED.search(c) for c in timed):
        return None
    agent = _one_time(" ".join(timed))
    caller = next((t for t in reversed(transcript[:index]) if t.role != "agent"), None)
    if agent is None or caller is None or _SEND_REQUEST.search(caller.text) or any(
            _DISAGREE.search(p) for p in _parts(caller.text) if _times(p)):
        return None
    said = _one_time(caller.text)  # a day alone is no time the agent could take up ("thursday" - "9 am is first")
    return agent if said and re.search(r"\d", said) and _same_time(said, agent) else None


def _agreed_time(transcript: Sequence[Turn], index: int, *, booked: bool) -> str | None:
    """The time just agreed before the agent's confirmation at ``index`` (which states none).

    Walking back at most four turns: a proposal of the agent's the caller took (after "you're
    booked" an "ok that works" takes the agent's single time); or the caller's own choice ("table for
    2 saturday at 8 please") when it is no request for a text, refuses nothing and says no other time
    in the same breath, and either a booking verb confirms it or it asked to book or answered the
    agent's question (a bare "you're all set" confirms no time the caller mentioned in passing).
    """
    shifted = False  # a caller turn since then moved or dropped a time ("half an hour later", "forget friday")
    for back in range(index - 1, max(-1, index - 5), -1):
        turn = transcript[back]
        if turn.role == "agent":
            if _times(turn.text):
                # "Friday at 4 pm works. Name?" after the caller asked for Friday at 4: the agent took it
                # (else it proposed something the caller did not take up)
                return None if shifted else _echoed_time(transcript, back)
            if _HOUR_WORDS.search(turn.text) and (_PROPOSAL.search(turn.text) or _SHIFT.search(turn.text)):
                return None  # "I can do half past four instead": a time we cannot read was offered since
            shifted = shifted or bool(_SHIFT.search(turn.text))
            continue
        shifted = shifted or bool(_SHIFT.search(turn.text) or _DISAGREE.search(turn.text) or _unread_hours(turn.text))
        taken = _taken_proposal(transcript, back)
        if taken:
            return taken
        if booked and back > 0 and transcript[back - 1].role == "agent" and _AGREE.search(turn.text) \
                and not _DISAGREE.search(turn.text) and not _times(turn.text):
            single = _one_time(transcript[back - 1].text)  # "We'll have your car in Tuesday at 8." - "ok that works"
            if single and not _FAILED.search(transcript[back - 1].text):
                return single
        asked = back > 0 and transcript[back - 1].role == "agent" and (
            "?" in transcript[back - 1].text or _PROPOSAL.search(transcript[back - 1].text) is not None)
        parts = [p for p in _parts(turn.text) if _times(p)]
        chosen = [p for p in parts if not _SEND_REQUEST.search(p) and not _DISAGREE.search(p)
                  and (not _THIRD.search(p) or _FOR_THIRD.search(p))]
        if len(chosen) == 1 and (booked or asked or _BOOK_REQUEST.search(turn.text)) and not (
                back > 0 and _ACCEPT.search(turn.text) and _times(transcript[back - 1].text)):
            return _times(chosen[0])[0]
        if parts:
            return None  # several times, or one the caller refused: unclear
    return None


def _settled_time(transcript: Sequence[Turn], topic: tuple[str, ...], *, booking: bool) -> str | None:
    """The time of the newest thing settled; ``None`` when none was, or it was cancelled or disputed since.

    Per agent turn (newest first), the first part that settles it with the strongest cue: a verb
    ("booked", "moved", "all yours"), then a recap ("so that's ..."), then "your booking ...", "is
    now", "ready" (pickups) or the variable's own words (not for bookings); parts that failed, are
    someone else's, past, or about hours, policies and reminders settle nothing.
    """
    refused = False  # the agent said no after what comes before ("sorry, there's nothing left at 1")
    callers = [t.text for t in transcript if t.role != "agent"]
    if any(_CHECKING.search(c) and _EXISTING.search(c) for c in callers) and not any(_MAKE.search(c) for c in callers):
        return None  # the caller only asked about a booking that exists: nothing was booked in this call
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role != "agent":
            if (_DISAGREE.search(turn.text) and _times(turn.text) and index > 0) or _CANCELLED.search(turn.text):
                return None  # "no no i said saturday, not friday", "scratch that": disputed or withdrawn
            taken = _taken_proposal(transcript, index)
            if taken:
                return None if refused else taken
            continue
        if _SELF_CORRECTION.search(turn.text):
            return None  # "I've booked you for Friday at 7 pm. Sorry, I mean Saturday": which one?
        asks = "?" in turn.text
        best: tuple[int, str, re.Match[str] | None] | None = None
        for clause in _clauses(turn.text):
            if clause.rstrip().endswith("?"):
                continue
            parts = _parts(clause) if _FAILED.search(clause) or not _SETTLED.search(clause) else [clause]
            for position, part in enumerate(parts):
                found = _strength(part, topic, booking=booking)
                if found is None or (found[0] == 3 and asks):
                    continue  # "That's Friday at 7 pm for four. Shall I book it?" is a question, not a booking
                if any(_FAILED.search(later) or _CANCELLED.search(later) for later in parts[position + 1:]):
                    continue  # "... is scheduled for Monday, but the part hasn't arrived, so we'll rebook it"
                if best is None or found[0] > best[0]:
                    best = found
        cancelled = [c for c in _clauses(turn.text) if _CANCELLED.search(c)]
        if best is None:
            if cancelled:
                return None
            refused = refused or any(_FAILED.search(p) and (_times(p) or _BOOKED_THING.search(p))
                                     for c in _clauses(turn.text) for p in _parts(c))
            continue
        if refused:
            return None  # "You're booked for Friday at 7 pm." ... "Sorry, that table is already reserved."
        strength, part, marker = best
        if _SEVERAL.search(turn.text):
            return None  # several booked at once: which one a text means is unclear
        value = _time_in(part, marker)
        if value:
            return value
        if marker is not None and (_BARE_TIME.search(part, marker.end()) or _UNREAD.search(part, marker.end())):
            return None  # "put you down for 9 instead", "for the Friday after": a time we cannot read fully
        if strength == 4 and _unread_hours(turn.text):
            return None  # "Nine it is. You're booked in.": the time it confirms is one we cannot read
        if strength == 4:  # "Yes, I can do Thursday at 6:30 pm for two. I've reserved that for you."
            echoes = _one_time(turn.text) is not None  # "Sunday at 10 then. That's booked."
            same_turn = " ".join(c for c in _clauses(turn.text) if (_PROPOSAL.search(c) or (echoes and _echo(c)))
                                 and not (_FAILED.search(c) or _HOURS.search(c) or _NOT_SETTLED.search(c)))
            single = _one_time(same_turn)
            if single:
                return single  # also "Sunday at 10 then. That's booked."
        if strength == 4 and marker is not None and not marker.group().lower().startswith("your"):
            return _agreed_time(transcript, index, booked=_BOOKING_VERB.search(marker.group()) is not None)
        if cancelled:
            return None
    return None


def _strength(part: str, topic: tuple[str, ...], *, booking: bool) -> tuple[int, str, re.Match[str] | None] | None:
    """How strongly ``part`` settles something (4 verb, 3 recap, 2 "your booking"/"is now"/"ready", 1 topic)."""
    if _NOT_SETTLED.search(part) or _FAILED.search(part) or _OFFERED.search(part):
        return None
    if _CANCELLED.search(part):
        after = _SETTLED.search(part, _CANCELLED.search(part).end())  # "cancelled Friday and booked you for ..."
        return (4, part[after.start():], None) if after and not after.group().lower().startswith("your") else None
    verb = _SETTLED.search(part)
    if verb and re.match(r"\s+(?:Dr|Mr|Mrs|Ms|[A-Z][a-z]+ (?:is|are|will|has))\b", part[verb.end():]) and \
            not re.match(rf"\s+{_WEEKDAY}|\s+{_MONTH}", part[verb.end():], re.IGNORECASE):
        return None
    if verb and not verb.group().lower().startswith("your"):
        own = next((p for p in _parts(part) if _SETTLED.search(p)), part)
        return (4, part, verb) if not _HOURS.search(own) else None
    if _HOURS.search(part):
        return None
    if _RECAP.match(part):
        return (3, part, _RECAP.match(part))
    weak = verb or _WEAK_SETTLED.search(part) or (None if booking else _READY.search(part))
    if weak:
        return (2, part, weak)
    if not booking and _mentions(part, topic):
        return (1, part, None)
    return None


def _stated_time(transcript: Sequence[Turn], topic: tuple[str, ...], *, booking: bool) -> str | None:
    """The newest caller clause that asks for it ("book me for Friday at 7", "call me back tomorrow at 3").

    A self-correction counts ("thursday at 2, actually no make it friday at 2"); a wish the agent then
    turned down ("we don't deliver on Sundays") does not.
    """
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role != "user":
            continue
        if any(t.role == "agent" and _FAILED.search(t.text) for t in transcript[index + 1:]):
            return None
        parts = [p for c in _clauses(turn.text) for p in _parts(c)]
        for clause in reversed([p for p in parts if not _DISAGREE.search(p) or _CORRECTION.search(p)]):
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
        after = transcript[index + 1].text if index + 1 < len(transcript) and \
            transcript[index + 1].role == "agent" else ""
        before = transcript[index - 1].text if index > 0 and transcript[index - 1].role == "agent" else ""
        if _ASKS_OTHER_NAME.search(before):
            continue  # "What's your dog's name?" - "it's bella"
        asked = bool(_ASKS_NAME.search(before)) and before.count("?") <= 1 and " and " not in before.split("?")[0][-40:]
        words = re.sub(r"^\W*(?:(?:it's|its|it is|under|the name's|name's|put it under)\s+)+", "", turn.text,
                       flags=re.IGNORECASE).split()
        if asked and 1 <= len(words) <= 2 and all(w.strip(".,!").isalpha() for w in words):  # "sarah mitchell"
            bare = words[0].strip(".,!")
            greeted = re.search(rf"\b(?:thanks|thank you|got it|great|lovely|perfect|hi|ok|okay),?\s+"
                                rf"{re.escape(bare.capitalize())}\b", after, re.IGNORECASE) is not None
            if bare.lower() not in _NOT_NAMES and (len(words) == 1 or greeted):
                return bare
        letters = re.search(r"(?<![\w'])((?:[a-z]\s+){2,}[a-z])\b\W*$", turn.text, re.IGNORECASE)
        if asked and letters:  # "it's k a t j a" - "Thank you, Katja."
            spelled = letters.group(1).replace(" ", "")
            back = re.search(rf"\b({re.escape(spelled)})\b", after, re.IGNORECASE)
            if back:
                return back.group(1)
        question = turn.text.rstrip().endswith("?")
        for match in _INTRO.finditer(turn.text):
            cue, first, second = match.group(1).lower(), match.group(2), match.group(3)
            following = turn.text[match.end(2):].lstrip().lower()
            if first.lower() in _NOT_NAMES or first.lower().endswith("'s") or following.startswith(("'s", "who ",
                                                                                                    "that ")):
                continue  # "it's mia's lesson", "this is Emma's dad", "it's sarah who usually does my colour"
            if cue in ("it's", "this is") and (question or _SOMEONE_ELSE.search(turn.text[:match.start()])):
                continue  # "this is Glow Salon?", "calling on behalf of my mum, it's linda"
            # the agent greets them by it ("Hi Carlos", "Thanks, Tom"), not just says the word ("Vegetarian options...")
            said_back = re.search(rf"\b(?:hi|hello|hey|thanks|thank you|sure|great|sorry|welcome|nice to meet you|"
                                  rf"okay|ok|lovely|perfect|got it),?\s+{re.escape(first.capitalize())}\b", after,
                                  re.IGNORECASE) is not None and re.search(rf"\b{re.escape(first.capitalize())}\b",
                                                                            after) is not None
            end = _INTRO_END.get({"my name is": "this is", "i am": "i'm"}.get(cue, cue))
            full = bool(second) and first[0].isupper() and second[0].isupper() and \
                re.fullmatch(r"\W*", following[len(second or ""):]) is not None  # "I am Priya Patel."
            introduced = (end is not None and end.match(following) is not None) or (cue in ("i'm", "i am") and full)
            strong = cue in ("my name is", "my name's", "the name's") or said_back or introduced \
                or (cue in ("it's", "this is") and re.match(r"here\b", following) is not None) \
                or (asked and re.match(r"(?:[a-z'-]+)?\s*(?:[,.!]|$)", following) is not None)
            if not strong:
                continue
            if first[0].isupper() and second and second[0].isupper() and second.lower() not in _NOT_NAMES:
                return f"{first} {second}"
            return first
    return None


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


#: A spoken e-mail: "kate w at fastmail dot com" (the words before "at" are the local part).
_SPOKEN_EMAIL = re.compile(r"((?:[a-z0-9._-]+\s+){0,14}?[a-z0-9._-]+)\s+at\s+([a-z0-9-]+)(?:\s+dot\s+[a-z]{2,})*",
                           re.IGNORECASE)
#: A caller's part that gives an old or wrong value, or another kind of number.
_NOT_MINE = re.compile(r"\b(?:old|don't use|do not use|not|wrong|no longer|used to|instead of|order|card|account|"
                       r"reference|confirmation|booking|policy|invoice|tracking|member(?:ship)?|case|ticket|your|"
                       r"office|clinic|fax|calling|called|tried|dialed|dialled|rang|from|missed|this number|"
                       r"got (?:an?|this)|google|"
                       r"website|wife|husband|partner|assistant|colleague|boss|son|daughter|mum|mom|dad|cc|copy|"
                       r"birth|dob|born|nhs|ref|id|licen[cs]e|passport|postcode|zip)\b", re.IGNORECASE)
#: Said after a value: it was the wrong one ("dana@gmail.com. oh wait no that's my old one").
_RETRACTED = re.compile(r"\b(?:old one|wrong one|not that one|no wait|oh wait|scratch that|that's my old|actually no|"
                        r"sorry no|no it's|no that's|"
                        r"that's my work|not my (?:mobile|cell|number|email)|"
                        r"not (?:that|this) (?:one|number|email|address))\b", re.IGNORECASE)
_OTHER_NUMBER = re.compile(r"\b(?:order|account|reference|confirmation|booking|policy|invoice|tracking|"
                           r"member(?:ship)?|case|ticket|card) (?:number|no)\b|\bdate of birth\b|\bbirthday\b|"
                           r"\bdob\b|\bpost ?code\b|\bzip\b", re.IGNORECASE)


def _spoken_keys(text: str) -> set[str]:
    """Letters of the e-mails a caller spelled ("kate w at fastmail dot com" -> "katewfastmailcom")."""
    keys = set()
    for match in _SPOKEN_EMAIL.finditer(text):
        local = re.sub(r"\b(?:underscore|dash|hyphen|dot)\b", "", match.group(1).lower())
        for start in range(len(local.split())):  # "it's kate w": the local part is a tail of the words
            keys.add((_letters(" ".join(local.split()[start:])), match.group(2).lower()))
    return keys


def _contact(transcript: Sequence[Turn], pattern: re.Pattern[str]) -> str | None:
    """The caller's e-mail or number, from their own words or the agent's read-back.

    The caller's: the last one they gave, not an old or wrong one, nor an order or card number.
    The agent's: only a read-back of exactly what the caller just spelled.
    """
    for index in range(len(transcript) - 1, -1, -1):
        turn = transcript[index]
        if turn.role == "user":
            parts = _parts(turn.text)
            if not any(pattern.search(part) for part in parts):
                continue  # most turns hold no address or number: nothing more to read in them
            if pattern is _PHONE and index > 0 and _OTHER_NUMBER.search(transcript[index - 1].text):
                continue  # "Do you have your order number?" - "yeah it's 100 245 7783"
            later = " ".join(t.text for t in transcript[index + 1:] if t.role == "user")
            told = transcript[index - 1].text if index > 0 and transcript[index - 1].role == "agent" else ""
            for part in reversed(parts):
                for match in reversed(list(pattern.finditer(part))):
                    value = match.group(1).strip()
                    if _NOT_MINE.search(part[:match.start()]) or (pattern is _PHONE and not _is_phone(value)):
                        continue
                    if _RETRACTED.search(turn.text[turn.text.find(value) + len(value):]) or _RETRACTED.search(later):
                        continue  # taken back in the same breath or later
                    if re.sub(r"\W", "", value.lower()) in re.sub(r"\W", "", told.lower()):
                        continue  # the caller repeating what the agent just said ("quotes@roofing.com, got it")
                    return value
            continue
        if not pattern.search(turn.text):
            continue
        recent = " ".join(t.text for t in transcript[max(0, index - 4):index] if t.role == "user")
        denied = index + 1 < len(transcript) and transcript[index + 1].role == "user" and \
            _DISAGREE.search(transcript[index + 1].text) is not None
        if denied:
            continue  # "Was that 07700 900 123?" - "sorry no, 900 132 at the end"
        for match in pattern.finditer(turn.text):
            value = match.group(1).strip()
            local, _, domain = value.lower().partition("@")
            mentioned = re.findall(r"[a-z0-9-]+", recent.lower())
            if "@" in value and any(_letters(local) == key and (label == domain.split(".")[0] or
                                                                 domain.split(".")[0] in mentioned)
                                    for key, label in _spoken_keys(recent)):
                return value  # read back: "kate w at fastmail dot com" - "Got it: katew@fastmail.com"
            if "@" not in value and _read_back_number(value, transcript[max(0, index - 4):index]):
                return value
    return None


def _read_back_number(value: str, before: Sequence[Turn]) -> bool:
    """Whether the agent's number is one the caller just gave as theirs, or its correction ("... 132 at the end")."""
    digits = re.sub(r"\D", "", value)
    said = [t.text for t in before if t.role == "user"]
    if len(digits) < 7 or not said:
        return False
    own = [re.sub(r"\D", "", m.group(1)) for text in said for part in _parts(_spoken_digits(text))
           for m in _PHONE.finditer(part) if not _NOT_MINE.search(part[:m.start()])]
    if digits in own:
        return True
    tail = re.sub(r"\D", "", _spoken_digits(said[-1]))  # a correction of the end: "no, 900 132 at the end"
    return 3 <= len(tail) < len(digits) and digits.endswith(tail) and any(o[:5] == digits[:5] for o in own)


_DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9"}


def _spoken_digits(text: str) -> str:
    return " ".join(_DIGIT_WORDS.get(w, w) for w in text.lower().split())


def _is_phone(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    return 7 <= len(digits) <= 15 and not re.fullmatch(r"(\d)\1+", digits)


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
        said: list[Turn] | None = None  # the turns with times in words as digits ("half eight": 8:30), made once
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
                if said is None:
                    said = [Turn(t.role, digits_for_spoken_times(t.text)) for t in transcript]
                topic = _topic(name, description)
                booking = any(w in topic for w in _BOOKING_WORDS)
                value = _settled_time(said, topic, booking=booking)
                if value is None and (not booking or not any(t.role == "agent" for t in said)):
                    value = _stated_time(said, topic, booking=booking)
            if value:
                found[name] = value
        return found

    @staticmethod
    def _kind(name: str, description: str) -> str | None:
        """``name``, ``email``, ``phone`` or ``time`` by whole words of the variable (``birthday`` is no day)."""
        words = set(re.findall(r"[a-z]+", f"{name} {description}".lower().replace("_", " ")))
        if "name" in words and not words & _OTHER_NAMES and (words & _CALLER_WORDS or name.lower() == "name"):
            return "name"
        if words & {"email", "mail"} or "e-mail" in description.lower():
            return "email"
        if words & {"phone", "mobile", "cell"} or ("number" in words and words & {"contact", "callback", "call"}):
            return "phone"
        if words & {"time", "date", "when", "day", "slot", "datetime", "hour"} and not words & _NOT_TIMES:
            return "time"
        return None


_CALLER_WORDS = frozenset({"caller", "customer", "client", "guest", "first", "full", "last", "your", "their",
                           "contact"})
#: Variables with "time" or "date" in them that are no moment of a booking ("wait_time", "date_of_birth").
_NOT_TIMES = frozenset({"wait", "waiting", "birth", "born", "zone", "timezone", "duration", "length", "long", "age",
                        "expiry", "expiration", "expires", "travel", "delay", "minutes", "hours"})
_OTHER_NAMES = frozenset({"service", "stylist", "staff", "doctor", "agent", "pet", "dog", "cat", "product",
                          "company", "business", "event", "street", "item", "plan", "package", "venue", "store",
                          "brand", "model", "file", "team", "therapist", "trainer", "tutor", "teacher", "room",
                          "student", "patient", "child", "kid", "son", "daughter", "member", "owner", "guardian"})
