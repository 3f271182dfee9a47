import json
import subprocess
import sys

from incall_sms.pipeline import DEFAULT_ACTIONS

from tests.conftest import ROOT


def run(*args):
    return subprocess.run(
        [sys.executable, "run_agent.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_lint_example_ok():
    out = run("actions", "lint", str(DEFAULT_ACTIONS), "--width", "200")
    assert out.returncode == 0, out.stderr
    assert "booking_confirmation" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "4 action(s), 0 error(s), 1 warning(s)"


def test_lint_reports_every_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "actions:\n"
        "  - {name: a, condition: if asked for it, content: {template: 'Hi {who}'}}\n"
        "  - {name: b, condition: if asked for pool, sender: pool, content: {template: custom}}\n"
        "  - {name: c, condition: if asked for more, to: '+1 900', content: {template: 'Café ☕'}}\n",
        encoding="utf-8",
    )
    out = run("actions", "lint", str(bad), "--json")
    assert out.returncode == 1
    rows = json.loads(out.stdout[: out.stdout.rindex("]") + 1])
    assert [r["action"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["unknown_variables"] == ["who"]
    assert "pool senders may only send a fixed preset" in rows[1]["errors"][0]
    assert "actions[2].to" in rows[2]["errors"][0]
    assert rows[2]["encoding"] == "UCS-2"


def test_lint_unreadable_file(tmp_path):
    out = run("actions", "lint", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert "cannot read" in out.stdout


def test_judge_eval_contract(shared):
    out = run("judge", "eval", str(shared / "conditions" / "dev.jsonl"))
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"precision", "recall", "f1", "n"}
    assert last["n"] == 30 and 0.0 <= last["f1"] <= 1.0


def test_judge_eval_bad_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"condition": "x"}\n', encoding="utf-8")
    out = run("judge", "eval", str(bad))
    assert out.returncode == 2 and "line 1" in out.stderr


def test_main_job_simulation_runs_to_completion(tmp_path):
    out = run("simulate", "--pace", "1.0", "--width", "160", "--state", str(tmp_path / "state"))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("simulated call SIM") and "3 SMS sent, 0 failed" in lines[-1]
    assert "agent (filler): One moment, I'm texting the confirmation to you now." in out.stdout
    assert "agent (SMS confirmed): Done, I've just texted it to your number ending in 23." in out.stdout
    assert "Here is our menu and booking page: https://example.com/menu" in out.stdout
    assert "the photo reached the agent's context as 1 image part(s)" in out.stdout
    # the declined address text was not sent
    assert "500 Market St" not in out.stdout


def test_simulation_bad_script(tmp_path):
    script = tmp_path / "call.txt"
    script.write_text("caller: hi\nshouting: what\n", encoding="utf-8")
    out = run("simulate", "--script", str(script))
    assert out.returncode == 2 and "line 2" in out.stdout


def test_mic_says_why_it_cannot_run():
    out = run("simulate", "--mic")
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        assert out.returncode == 2 and "PyAudio is not installed" in out.stdout
    else:  # pragma: no cover - only on machines with PyAudio
        assert out.returncode in (0, 2)
