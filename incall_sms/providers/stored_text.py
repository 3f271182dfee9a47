"""Whether a message body the provider stored is the text that was sent.

A lookup after an ambiguous send recognises its message by the body. Twilio may store a body it
changed: Smart Encoding replaces typographic characters (curly quotes, dashes, ellipses, odd spaces)
with GSM-7 ones, a compliance feature may append an opt-out line, and Link Shortening replaces each
URL with a short link. An exact comparison would read those as "no such message" and send the text
again. :func:`stored_form` compares the texts as those features leave them:

* ``"same"``: equal once typographic characters stand for their plain forms and whitespace and case
  are ignored: this text;
* ``"maybe"``: this text with more appended after it (an opt-out line, or another action's longer
  text that starts with this one), or equal only once every URL stands for "a link" (this text with
  its links shortened, or another text that differs only by its link). Which one cannot be told from
  the body: never taken for this text, and no proof it is missing either (the dispatcher leaves it
  unconfirmed unless another outbox row owns that message);
* ``None``: another text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

__all__ = ["stored_form"]

_URL = re.compile(r"https?://\S+", re.IGNORECASE)
_PLAIN = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
})
_SPACE = re.compile(r"\s+")


def _plain(text: str, *, links: bool) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_PLAIN)
    if links:
        text = _URL.sub(" <link> ", text)
    return _SPACE.sub(" ", text).strip().casefold()


def _starts(stored: str, sent: str) -> bool:
    return bool(sent) and (stored == sent or stored.startswith(sent + " "))


def stored_form(stored: str | None, sent: str) -> Literal["same", "maybe"] | None:
    """How ``stored`` (a body the provider lists) relates to ``sent`` (the body this attempt sent).

    Returns:
        ``"same"``, ``"maybe"`` or ``None`` (see the module's docstring).
    """
    if stored is None:
        return None
    plain = _plain(sent, links=False)
    if stored == sent or (plain and _plain(stored, links=False) == plain):
        return "same"
    if _starts(_plain(stored, links=False), plain) or (
            _URL.search(sent) and _starts(_plain(stored, links=True), _plain(sent, links=True))):
        return "maybe"
    return None
