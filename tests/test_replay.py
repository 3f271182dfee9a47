"""Recorded-call replays: every call in tests/calls meets its expectations."""

import json
import logging
import subprocess
import sys

import pytest
import yaml

from incall_sms.actions import load_actions
from incall_sms.pipeline import DEFAULT_ACTIONS
from incall_sms.pipeline.recording import Expectations, RecordingMeta, ReplayReport
from incall_sms.pipeline.replay import replay
from tests.conftest import ROOT

CALLS = sorted(p for p in (ROOT / "tests" / "calls").glob("*.jsonl"))
CORPUS_ACTIONS = ROOT / "tests" / "calls" / "actions.yaml"


def test_corpus_present():
    assert len(CALLS) >= 12


@pytest.mark.parametrize("recording", CALLS, ids=[p.stem for p in CALLS])
async def test_replay_meets_expectations(recording):
    expect = Expectations.model_validate(yaml.safe_load(recording.with_suffix(".expect.yaml").read_text()))
    own = recording.with_suffix(".actions.yaml")  # a call may carry its own action set
    actions = load_actions(own if own.exists() else CORPUS_ACTIONS)
    report = await replay(recording, actions=actions, speed=8.0, expectations=expect)
    if not report.expectations.passed or report.audio.max_delay_ms >= 100:
        # 8x puts a call second into 125 ms of wall time: on a loaded host a few tens of ms of scheduling
        # reorder events a second apart in the call (seen once in a full run: a photo's reply line). A case
        # that fails is replayed once at 2x, where the same load weighs four times less in call time; a real
        # regression fails there too. The 8x failure stays visible in the log (not as a warning: the
        # suite turns warnings into errors, which made this retry an error of its own on a busy host).
        logging.getLogger(__name__).warning("%s at 8x: %s, max audio delay %.1f ms; replayed at 2x",
                                            recording.stem, report.expectations.failures,
                                            report.audio.max_delay_ms)
        report = await replay(recording, actions=actions, speed=2.0, expectations=expect)
    assert report.expectations.passed, report.expectations.failures
    assert report.audio.input_frames > 50  # the 8->16 kHz resampler emits in batches
    assert report.audio.max_delay_ms < 100  # generous: the audio path is never blocked by SMS work
    for sms in report.sms:
        assert sms.to_masked is None or "*" in sms.to_masked


def _shape(path):
    """A recording's messages with the audio payloads reduced to their length (synthesis may differ in
    the last bit across CPUs; the structure and timing must not)."""
    out = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        media = item["message"].get("media")
        if media:
            media["payload"] = len(media["payload"])
        out.append(item)
    return out


def test_corpus_is_reproducible(tmp_path):
    """Regenerating the corpus (into a temporary folder: the repository is never written) gives the same calls."""

    def shapes(folder):
        return {p.name: (_shape(p) if p.suffix == ".jsonl" else p.read_text()) for p in folder.glob("*.*")
                if p.suffix in (".jsonl", ".yaml") and p.name != "actions.yaml"}

    subprocess.run([sys.executable, "tests/calls/make_calls.py", "--out", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    assert shapes(tmp_path) == shapes(ROOT / "tests" / "calls")


@pytest.mark.parametrize("name", ["two_actions", "e2e_link"])
async def test_replay_through_offline_stt(name):
    """The caller's recorded audio through pipecat's Silero VAD and WhisperSTTService, not the recorded text."""
    recording = ROOT / "tests" / "calls" / f"{name}.jsonl"
    expect = Expectations.model_validate(yaml.safe_load(recording.with_suffix(".expect.yaml").read_text()))
    report = await replay(recording, actions=load_actions(CORPUS_ACTIONS), speed=2.0, expectations=expect,
                          stt="whisper")
    assert report.expectations.passed, report.expectations.failures


def test_schemas_up_to_date():
    for model, name in ((ReplayReport, "replay_report"), (RecordingMeta, "recording_meta"),
                        (Expectations, "replay_expect")):
        stored = json.loads((ROOT / "pipeline" / f"{name}.schema.json").read_text())
        assert stored == model.model_json_schema(), f"regenerate pipeline/{name}.schema.json"


def _run(*args):
    return subprocess.run([sys.executable, "run_agent.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_replay_cli_contract(tmp_path):
    recording = ROOT / "tests" / "calls" / "booking_confirmation.jsonl"
    report_path = tmp_path / "report.json"
    out = _run("replay", str(recording), "--actions", str(CORPUS_ACTIONS), "--report", str(report_path),
               "--expect", str(recording.with_suffix(".expect.yaml")))
    assert out.returncode == 0, out.stderr[-2000:]
    report = ReplayReport.model_validate_json(report_path.read_text())
    assert next(s.action for s in report.sms if s.outcome == "accepted") == "booking_confirmation"
    # a failing expectation: exit 1
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("no_sms: [booking_confirmation]\n")
    out = _run("replay", str(recording), "--actions", str(CORPUS_ACTIONS), "--report",
               str(tmp_path / "r2.json"), "--expect", str(wrong))
    assert out.returncode == 1 and "FAILED: SMS booking_confirmation was sent" in out.stdout
    # bad input: exit 2
    out = _run("replay", str(tmp_path / "missing.jsonl"), "--actions", str(DEFAULT_ACTIONS),
               "--report", str(tmp_path / "r3.json"))
    assert out.returncode == 2


async def test_report_says_which_judge_fired_each_text():
    recording = ROOT / "tests" / "calls" / "booking_confirmation.jsonl"
    report = await replay(recording, actions=load_actions(CORPUS_ACTIONS))
    assert report.judge == "embedded" and report.sms
    assert all(row.judged and row.score is not None for row in report.sms)
    assert report.near_misses == []  # rules carry no scores to miss by


# -- one clock, the whole conversation, turn-taking ------------------------------------------------------------

def _calls(name):
    return ROOT / "tests" / "calls" / f"{name}.jsonl"


async def test_report_times_share_one_clock():
    """Lines, inbound texts and SMS are stamped on the recording's clock: an inbound text is reported when the
    recording has it, the confirmation right after the send it confirms, the filler while that send was in
    flight. (Before, lines and inbound came 1.5-4 s late on another clock.) The replay runs in real time (at
    ``speed``): the bounds leave 0.2 s of call time for a loaded machine, an order of magnitude below the bug."""
    report = await replay(_calls("inbound_text"), actions=load_actions(CORPUS_ACTIONS), speed=2.0)
    (inbound,) = report.inbound
    assert 4.0 <= inbound.t <= 4.0 + 0.2, inbound.t
    report = await replay(_calls("booking_confirmation"), actions=load_actions(CORPUS_ACTIONS), speed=2.0)
    (sms,) = [s for s in report.sms if s.action == "booking_confirmation"]
    filler, confirmation = report.lines
    asked = next(t for t in report.conversation if t.who == "caller" and t.turn == sms.trigger_turn)
    assert asked.t >= 8.0  # recorded at 8.0
    assert asked.t + 0.4 <= sms.t  # the provider takes 0.4 s of call time
    assert asked.t <= filler.t <= sms.t  # the filler was queued while the send was in flight
    assert sms.t <= confirmation.t <= sms.t + 0.2, (sms.t, confirmation.t)
    times = [t.t for t in report.conversation]
    assert times == sorted(times)


async def test_conversation_lists_everything_in_order():
    report = await replay(_calls("booking_confirmation"), actions=load_actions(CORPUS_ACTIONS))
    kinds = [(t.who, t.kind) for t in report.conversation]
    assert kinds[:3] == [("caller", "transcript"), ("agent", "reply"), ("caller", "transcript")]
    # the filler starts playing and the provider accepts the text within a few ms of each other (the local
    # provider answers at once): either may be listed first on a loaded machine
    assert sorted(kinds[3:5]) == [("agent", "filler"), ("sms", "accepted")]
    assert kinds.index(("agent", "confirmation")) > 4
    sms = next(t for t in report.conversation if t.who == "sms" and t.action == "booking_confirmation")
    assert sms.detail and sms.score and sms.text.startswith("Hi there") and sms.turn == 2
    row = next(s for s in report.sms if s.action == "booking_confirmation")
    assert row.trigger_text == "Great, can you text me the confirmation?"
    for turn in report.conversation:
        if turn.who == "agent" and turn.heard:
            assert turn.queued is not None and turn.queued <= turn.t < turn.end


async def test_agent_finishes_its_sentence_before_acknowledging_a_photo():
    """The stand-in LLM answers only once the agent has stopped talking (the replay plays the agent's audio out
    on the call clock and says when it speaks, as an output transport does)."""
    report = await replay(_calls("photo_while_talking"), actions=load_actions(CORPUS_ACTIONS))
    (photo,) = report.inbound
    replies = [t for t in report.conversation if t.who == "agent" and t.kind == "reply"]
    talking, ack = replies[0], replies[1]
    assert talking.t < photo.t < talking.end  # the photo arrived while the agent was answering
    assert "photo" in ack.text
    assert ack.queued >= talking.end  # it was not even generated before the agent stopped talking
    assert not talking.interrupted


async def test_barge_in_cuts_the_filler_not_the_send():
    report = await replay(_calls("barge_in_filler"), actions=load_actions(CORPUS_ACTIONS))
    filler = next(t for t in report.conversation if t.kind == "filler")
    barge = [t for t in report.conversation if t.who == "caller"][1]
    # cut at the barge-in (within half a call-second: the replay runs 8x faster than the call, so 0.1 call-s
    # was 12 ms of wall time and failed on a loaded machine), not played out (the line lasts ~2 s)
    assert filler.interrupted and filler.end is not None and abs(filler.end - barge.t) <= 0.5
    assert [s.outcome for s in report.sms] == ["accepted"]
    confirmation = next(t for t in report.conversation if t.kind == "confirmation")
    assert confirmation.heard and not confirmation.interrupted


async def test_lines_after_the_hang_up_are_not_heard():
    report = await replay(_calls("opt_out_listed"), actions=load_actions(CORPUS_ACTIONS))
    failure = next(t for t in report.conversation if t.kind == "failure")
    assert failure.interrupted and failure.end == 8.05  # the recording's "stop": the caller hung up


# -- expectations: the new fields can fail, old files stay valid ------------------------------------------------

async def test_expectation_fields_fail_when_the_call_differs():
    report = await replay(_calls("booking_confirmation"), actions=load_actions(CORPUS_ACTIONS))
    caller = "+1******0123"

    def failures(spec):
        return Expectations.model_validate(spec).check(report, caller_masked=caller)

    ok = {"action": "booking_confirmation", "to": "caller", "count": 1, "at": "turn", "after_turn": 2,
          "trigger_contains": "TEXT ME"}
    assert failures({"sms": [ok]}) == []
    assert failures({"sms": [{**ok, "to": "+14155550199"}]})
    assert failures({"sms": [{**ok, "to": "***9999"}]})
    assert failures({"sms": [{"action": "booking_confirmation", "to": "0123"}]}) == []
    (wrong_count,) = failures({"sms": [{**ok, "count": 2}]})
    assert wrong_count.startswith("expected 2 SMS booking_confirmation (accepted, to='caller', count=2") and \
        wrong_count.endswith("found 1")
    assert failures({"sms": [{**ok, "after_turn": 1}]})
    assert failures({"sms": [{**ok, "at": "call_end"}]})
    assert failures({"sms": [{**ok, "trigger_contains": "address"}]})
    assert failures({"sms": [{"action": "meeting_followup", "at": "call_end", "count": 1}]}) == []
    assert failures({"sms": [{"action": "website_link", "count": 0}]}) == []
    assert failures({"lines": [{"kind": "filler"}, {"kind": "confirmation", "contains": "ENDING IN 23"}],
                     "lines_in_order": True}) == []
    assert failures({"lines": [{"kind": "confirmation"}, {"kind": "filler"}], "lines_in_order": True})
    assert failures({"lines": [{"kind": "confirmation"}, {"kind": "filler"}]}) == []  # order not asked
    assert failures({"lines": [{"kind": "reply", "contains": "booked for Friday"}]}) == []
    assert failures({"lines": [{"kind": "filler", "interrupted": True}]})
    (banned,) = failures({"not_spoken": [{"contains": "texted it"}]})
    assert "must not be spoken" in banned and "ending in 23" in banned
    assert failures({"not_spoken": [{"kind": "failure"}]}) == []


def test_old_expectation_files_stay_valid():
    old = yaml.safe_load("sms:\n- action: booking_confirmation\n  body_contains: Friday at 7 pm\n"
                         "- action: meeting_followup\nmax_sms: 2\nno_sms: [website_link]\n"
                         "lines:\n- kind: confirmation\n  action: booking_confirmation\n")
    expect = Expectations.model_validate(old)
    assert expect.lines[0].kind == "confirmation" and expect.sms[0].count is None


async def test_write_expect_snapshot_round_trips():
    actions = load_actions(CORPUS_ACTIONS)
    report = await replay(_calls("known_name_colleague_timeout"), actions=actions)
    snap = Expectations.snapshot(report, actions=[a.name for a in actions.actions], caller_masked="+1******0123")
    dumped = yaml.safe_dump(snap.model_dump(exclude_defaults=True))
    again = Expectations.model_validate(yaml.safe_load(dumped))
    assert again.check(report, caller_masked="+1******0123") == []
    assert {(s.action, s.outcome, s.to, s.count) for s in again.sms} == {
        ("booking_confirmation", "accepted", "caller", 1), ("colleague_copy", "failed", "***0199", 1),
        ("meeting_followup", "accepted", "caller", 1)}
    assert again.lines_in_order == "per_action"  # two actions' lines may interleave differently on a busy host
    per_action = {}
    for line in again.lines:
        per_action.setdefault(line.action, []).append(line.kind)
    assert per_action["booking_confirmation"] == ["filler", "confirmation"]
    # its provider times out: checked for 6 s before a resend that times out too, so the caller hears it is still going
    assert per_action["colleague_copy"] == ["filler", "still_sending", "failure"]

    def failures(lines, in_order):
        return Expectations.model_validate({"lines": lines, "lines_in_order": in_order}).check(report)

    booking = [{"kind": "filler", "action": "booking_confirmation"},
               {"kind": "confirmation", "action": "booking_confirmation"}]
    colleague = [{"kind": "filler", "action": "colleague_copy"}, {"kind": "failure", "action": "colleague_copy"}]
    assert failures(colleague + booking, "per_action") == []  # the other action's lines first: still in order
    assert failures(colleague + booking, True)  # one order over all lines
    (reversed_line,) = failures(colleague + booking[::-1], "per_action")
    assert "filler" in reversed_line and "after the previous expected line of booking_confirmation" in reversed_line
    unnamed_first = [{"kind": "confirmation", "contains": "ending in 23"}, booking[0]]  # names no action
    assert failures(unnamed_first, "per_action")  # still ordered against the booking's filler
    assert failures([booking[0], {"kind": "confirmation", "contains": "ending in 23"}], "per_action") == []
    assert failures([{"kind": "filler"}, {"kind": "failure"}], "per_action") == []  # no names: one order
    assert failures([{"kind": "failure"}, {"kind": "filler"}], "per_action")


# -- what a recording can set up ---------------------------------------------------------------------------------

async def test_recording_sets_up_opt_outs_variables_and_provider_behaviour():
    listed = await replay(_calls("opt_out_listed"), actions=load_actions(CORPUS_ACTIONS))
    assert [(s.outcome, s.reason) for s in listed.sms] == [("failed", "opted_out")]
    timed_out = await replay(_calls("known_name_colleague_timeout"), actions=load_actions(CORPUS_ACTIONS))
    rows = {s.action: s for s in timed_out.sms}
    assert rows["booking_confirmation"].body.startswith("Hi Maria,")  # a variable known at call start
    assert (rows["colleague_copy"].outcome, rows["colleague_copy"].reason) == ("failed", "unconfirmed")


def test_example_in_the_readme_passes():
    example = ROOT / "examples" / "replay"
    out = _run("replay", str(example / "call.jsonl"), "--actions", str(example / "actions.yaml"), "--report",
               "/dev/null", "--expect", str(example / "call.expect.yaml"))
    assert out.returncode == 0 and "expectations: passed" in out.stdout, out.stdout + out.stderr[-2000:]
    readme = (ROOT / "README.md").read_text()
    assert "examples/replay/call.jsonl" in readme and "recording mask" in readme
    help_text = _run("replay", "--help").stdout
    for field in ("after_turn", "trigger_contains", "not_spoken", "lines_in_order", "destinations", "opt_outs"):
        assert field in help_text


def _block(readme, marker, lang):
    start = readme.index(f"```{lang}\n", readme.index(marker)) + len(lang) + 4
    return readme[start:readme.index("```", start)]


def test_readme_example_is_the_example_on_disk():
    readme = (ROOT / "README.md").read_text()
    example = ROOT / "examples" / "replay"
    assert _block(readme, "`call.jsonl` (the Media", "json") == (example / "call.jsonl").read_text()
    assert json.loads(_block(readme, "`call.meta.json` (what", "json")) == \
        json.loads((example / "call.meta.json").read_text())
    assert yaml.safe_load(_block(readme, "`call.expect.yaml`:", "yaml")) == \
        yaml.safe_load((example / "call.expect.yaml").read_text())
