r"""SMS encoding and segment counting (GSM-7 / UCS-2), as Twilio counts them.

Rules implemented (checked against Twilio's own calculator vectors in
``shared/reference/sms_segment_cases.json``):

* A body is GSM-7 when every character is in the GSM 03.38 basic table or its
  extension table; extension characters (``^{}\\[~]|€`` and form feed) cost two
  septets (escape + char) and are never split across segments.
* Any other character makes the whole body UCS-2. UCS-2 counts UTF-16 code units:
  characters outside the BMP (most emoji) cost two; a user-perceived character
  (a grapheme: ZWJ sequences, combining marks, variation selectors, skin tones,
  flags) is never split across segments.
* One segment holds 160 septets / 70 units; a multi-part message 153 / 67 per part.
* Smart encoding (Twilio Messaging Services) first replaces look-alike Unicode
  punctuation (curly quotes, dashes, ellipsis, odd spaces ...) with GSM characters.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Literal

__all__ = [
    "MAX_BODY_CHARS",
    "SegmentInfo",
    "count_segments",
    "graphemes",
    "smart_encode",
]

#: Twilio rejects bodies longer than this many characters.
MAX_BODY_CHARS = 1600

Encoding = Literal["GSM-7", "UCS-2"]

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

_LIMITS: dict[str, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}

# Twilio smart encoding: Unicode look-alikes replaced by GSM-7 text.
_SMART: dict[str, str] = {}


def _smart(chars: str, replacement: str) -> None:
    for ch in chars:
        _SMART[ch] = replacement


_smart("\u00ab\u00bb\u201c\u201d\u02ba\u02ee\u201f\u275d\u275e\u301d\u301e\uff02\u201e", '"')
_smart(
    "\u2018\u2019\u02bb\u02c8\u02bc\u02bd\u02b9\u201b\uff07\u00b4\u02ca\u0060\u02cb"
    "\u275b\u275c\u0313\u0314\ufe10\ufe11\u2017",
    "'",
)
_smart("\u00f7\u29f8\u0337\u0338\u2044\u2215\uff0f", "/")
_smart("\u29f9\u29f5\u20e5\ufe68\uff3c", "\\")
_smart("\u0332\uff3f", "_")
_smart("\u20d2\u20d3\u2223\uff5c\u23b8\u23b9\u23d0\u239c\u239f", "|")
_smart("\u23bc\u23bd\u2015\ufe63\uff0d\u2010\u2043\u2014\u2013\u2022\u2011\u2012", "-")
_smart("\ufe6b\uff20", "@")
_smart("\ufe69\uff04", "$")
_smart("\u01c3\ufe15\ufe57\uff01", "!")
_smart("\ufe5f\uff03", "#")
_smart("\ufe6a\uff05", "%")
_smart("\ufe60\uff06", "&")
_smart("\u201a\u0326\ufe50\ufe51\uff0c\uff64\u3001", ",")
_smart("\u2768\u276a\ufe59\uff08\u27ee\u2985", "(")
_smart("\u2769\u276b\ufe5a\uff09\u27ef\u2986", ")")
_smart(
    "\u204e\u2217\u229b\u2722\u2723\u2724\u2725\u2731\u2732\u2733\u273a\u273b\u273c"
    "\u273d\u2743\u2749\u274a\u274b\u29c6\ufe61\uff0a",
    "*",
)
_smart("\u02d6\ufe62\uff0b", "+")
_smart("\u3002\ufe52\uff0e\uff61", ".")
_smart("\u02d0\u02f8\u2982\ua789\ufe13\uff1a", ":")
_smart("\u204f\ufe14\ufe54\uff1b", ";")
_smart("\ufe64\uff1c\u203a", "<")
_smart("\u0347\ua78a\ufe66\uff1d", "=")
_smart("\ufe65\uff1e\u2039", ">")
_smart("\ufe16\ufe56\uff1f", "?")
_smart("\u02c6\u0302\uff3e\u1dcd", "^")
_smart("\u2774\ufe5b\uff5b", "{")
_smart("\u2775\ufe5c\uff5d", "}")
_smart("\uff3b", "[")
_smart("\uff3d", "]")
_smart("\u02dc\u02f7\u0303\u0330\u0334\u223c\uff5e", "~")
_smart(
    "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f"
    "\u205f\u3000\u2028\u2029\u0080\u008d\u0090\u009b\u009f",
    " ",
)
_smart("\u0000\u0003\u0004\u0010\u0011\u0012\u0013\u0014\u0017\u0019\u2060\u200b\ufeff", "")
_smart("\t", " ")
_SMART["\u2026"] = "..."
_SMART["\u203c"] = "!!"
_SMART["\u00bc"] = "1/4"
_SMART["\u00bd"] = "1/2"
_SMART["\u00be"] = "3/4"
for _i, _letter in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
    _SMART[chr(0xFF21 + _i)] = _letter  # fullwidth capitals
for _i in range(10):
    _SMART[chr(0xFF10 + _i)] = str(_i)  # fullwidth digits


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentInfo:
    """How a body will be encoded and billed.

    Attributes:
        encoding: ``"GSM-7"`` or ``"UCS-2"``.
        segments: Number of SMS segments (0 for an empty body).
        units: Septets (GSM-7) or UTF-16 code units (UCS-2) in the body.
        chars: User-perceived characters (graphemes).
        per_segment: Capacity of each segment in units (160/153 or 70/67).
        non_gsm: The distinct characters that forced UCS-2, in order of appearance.
        body: The body as it will be sent (after smart encoding, if enabled).
    """

    encoding: Encoding
    segments: int
    units: int
    chars: int
    per_segment: int
    non_gsm: tuple[str, ...]
    body: str


def smart_encode(body: str) -> str:
    """Apply Twilio's smart-encoding substitutions to ``body``."""
    return "".join(_SMART.get(ch, ch) for ch in body)


def _extends_grapheme(ch: str, previous: str) -> bool:
    code = ord(ch)
    if previous == "\u200d" or ch == "\u200d":  # zero-width joiner sequences
        return True
    if unicodedata.combining(ch) or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
        return True  # combining marks, variation selectors
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:
        return True  # skin-tone modifiers, tag sequences (subdivision flags)
    return unicodedata.category(ch) in ("Mn", "Me")


def graphemes(text: str) -> list[str]:
    """Split ``text`` into user-perceived characters (a pragmatic grapheme splitter).

    Handles CR LF, combining marks, variation selectors, ZWJ emoji sequences,
    skin-tone modifiers, tag sequences and regional-indicator flag pairs.
    """
    out: list[str] = []
    for ch in text:
        if out:
            last = out[-1]
            prev = last[-1]
            if _extends_grapheme(ch, prev) or (prev == "\r" and ch == "\n" and last == "\r"):
                out[-1] = last + ch
                continue
            if _is_regional(ch) and _is_regional(prev) and len(last) == 1:
                out[-1] = last + ch
                continue
        out.append(ch)
    return out


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _utf16_units(text: str) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def _septets(cluster: str) -> int:
    return sum(2 if ch in _GSM_EXTENSION else 1 for ch in cluster)


def _pack(sizes: list[int], single: int, multi: int) -> int:
    """Count segments when no unit (of the given sizes) may be split."""
    total = sum(sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > multi:
            segments += 1
            used = 0
        used += size
    return segments


def count_segments(body: str, *, smart_encoding: bool = False) -> SegmentInfo:
    """Work out the encoding and segment count of an SMS body.

    Args:
        body: The message text.
        smart_encoding: Emulate Twilio smart encoding (Messaging Services with the
            feature on) before counting.

    Returns:
        A :class:`SegmentInfo`; ``body`` in it is the text that will actually be sent.
    """
    text = smart_encode(body) if smart_encoding else body
    clusters = graphemes(text)
    non_gsm = tuple(
        dict.fromkeys(ch for ch in text if ch not in _GSM_BASIC and ch not in _GSM_EXTENSION)
    )
    if non_gsm:
        encoding: Encoding = "UCS-2"
        sizes = [_utf16_units(c) for c in clusters]
    else:
        encoding = "GSM-7"
        sizes = [_septets(c) for c in clusters]
    single, multi = _LIMITS[encoding]
    segments = _pack(sizes, single, multi)
    return SegmentInfo(
        encoding=encoding,
        segments=segments,
        units=sum(sizes),
        chars=len(clusters),
        per_segment=single if segments <= 1 else multi,
        non_gsm=non_gsm,
        body=text,
    )
