"""Whether a text is in sight at all: a rule the local judge applies before asking the model.

Most of what a caller says in a call has nothing to do with a text ("we're four people", "is there
parking?"): in the longer calls of the labelled sets, 108 of the 157 caller turns before the moment
that was labelled have no word about sending, texting, a phone or a link in them or in the turns the
model would see with them. For a condition about a text being sent (see
:func:`incall_sms.judges.recipients.is_delivery_condition`), such a turn is a no without the model: the
model could only guess, and the guess costs a second or more of CPU per condition. The sign words are
many and wide (any of them means the model is asked: a wrong no loses a text the caller asked for); they
are read in the caller's turn and in the earlier turns the model would be shown with it, in English,
Spanish and German.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from incall_sms.judges.recipients import is_delivery_condition

__all__ = ["no_text_in_sight"]

#: Any word about a text, a channel, a device, a link, writing down or a reminder; a short "to me" or
#: "over" too ("get that over to me"). Wide on purpose: a sign only means the model decides.
_SIGN = re.compile(
    r"(?<!\w)(?:text\w*|txt\w*|sms\w*|messag\w*|mesag\w*|whats ?app|wa|send\w*|sent|shoot|drop|forward\w*|ping|"
    r"e-?mail\w*|mail\w*|phone\w*|mobile|cell\w*|number|link\w*|copy|write|written|writing|note|down|"
    r"reminder\w*|remind\w*|to me|over|pop|fire|dm|"
    r"mensaje\w*|manda\w*|mánd\w*|envi\w*|enví\w*|pasa\w*|pása\w*|correo|móvil|movil|celular|teléfono|telefono|"
    r"número|numero|enlace|escri\w*|recordatorio|recuérd\w*|recuerd\w*|apunt\w*|"
    r"nachricht\w*|schick\w*|geschickt|gesendet|zugeschickt|verschick\w*|handy|telefon\w*|nummer|"
    r"schreib\w*|erinner\w*)(?!\w)",
    re.IGNORECASE)


def no_text_in_sight(condition: str, turns: Sequence[tuple[str, str]], *, window: int = 5) -> str | None:
    """Why the caller's last turn cannot meet a condition about a text, or ``None`` (the model decides).

    Args:
        condition: The condition (any language).
        turns: The conversation so far as ``(role, text)``, the caller's turn last.
        window: Turns read for a sign, the caller's included (the local judge: those it shows the model).
    """
    if not turns or turns[-1][0] != "user" or not is_delivery_condition(condition):
        return None
    if any(_SIGN.search(text) for _, text in turns[-window:]):
        return None
    return "nothing about a text in the caller's turn or the turns before it"
