"""Recorded-call replays: every call in tests/calls meets its expectations."""

import json
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
    report = await replay(recording, actions=load_actions(CORPUS_ACTIONS), speed=8.0, expectations=expect)
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
