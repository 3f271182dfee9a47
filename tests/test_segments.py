import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from incall_sms.segments import MAX_BODY_CHARS, count_segments, graphemes, smart_encode
from tests.conftest import SHARED

CASES = json.loads((SHARED / "reference" / "sms_segment_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_twilio_calculator(case):
    plain = count_segments(case["text"])
    assert (plain.encoding, plain.segments) == (case["encoding"], case["segments"])
    smart = count_segments(case["text"], smart_encoding=True)
    assert (smart.encoding, smart.segments) == (case["smart_encoding"], case["smart_segments"])


def test_all_vectors_present():
    assert len(CASES) == 31


def test_extension_chars_cost_two_septets():
    info = count_segments("a{b")
    assert info.encoding == "GSM-7"
    assert info.units == 4


def test_ucs2_reports_offending_characters():
    info = count_segments("Café ☕ ok")
    assert info.encoding == "UCS-2"
    assert "☕" in info.non_gsm
    assert info.units == 9


def test_smart_encoding_rewrites_body():
    assert smart_encode("“Hi” — it’s…") == '"Hi" - it\'s...'
    info = count_segments("Don’t forget", smart_encoding=True)
    assert info.body == "Don't forget"
    assert info.encoding == "GSM-7"


def test_empty_body_has_no_segment():
    assert count_segments("").segments == 0


def test_graphemes_keep_flags_and_zwj_together():
    assert graphemes("🇺🇸🇬🇧") == ["🇺🇸", "🇬🇧"]
    assert len(graphemes("👩‍💻x")) == 2
    assert graphemes("e\u0301") == ["e\u0301"]


@given(st.text(alphabet="abc{€", max_size=MAX_BODY_CHARS))
def test_gsm_segments_bound(text):
    info = count_segments(text)
    assert info.encoding == "GSM-7"
    if info.units <= 160:
        assert info.segments == (1 if text else 0)
    else:
        # never fewer than the naive count, at most one more per split escape
        naive = -(-info.units // 153)
        assert naive <= info.segments <= naive + info.units // 153 + 1


@given(st.text(max_size=400))
def test_counting_never_fails(text):
    info = count_segments(text, smart_encoding=True)
    assert info.segments >= 0
    assert info.encoding in ("GSM-7", "UCS-2")
