import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from incall_sms.pipeline import DEFAULT_ACTIONS
from tests.conftest import ROOT


def run(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "run_agent.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
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
    rows = json.loads(out.stdout)
    assert [r["action"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["unknown_variables"] == ["who"]
    assert "pool senders may only send a fixed preset" in rows[1]["errors"][0]
    assert "actions[2].to" in rows[2]["errors"][0]
    assert rows[2]["encoding"] == "UCS-2"


def test_lint_unreadable_file(tmp_path):
    out = run("actions", "lint", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = out.stderr.strip().splitlines()  # one unwrapped line, whatever the path length
    assert line.startswith("error: ") and "cannot read nope.yaml" in line


def test_lint_yaml_syntax_error_cites_the_lines(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("actions:\n  - name: a\n    condition: if asked\n    content: {template: 'hi'\n"
                   "  - name: b\n", encoding="utf-8")
    out = run("actions", "lint", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert "line 5" in out.stderr and "opened at line 4" in out.stderr  # where it broke, and where it was opened


def test_lint_json_prints_json_only(tmp_path):
    out = run("actions", "lint", str(DEFAULT_ACTIONS), "--json")
    assert out.returncode == 0
    rows = json.loads(out.stdout)  # the whole of stdout is one JSON document
    assert rows[0]["action"] == "booking_confirmation"
    missing = run("actions", "lint", str(tmp_path / "nope.yaml"), "--json")
    assert missing.returncode == 2 and missing.stdout == "" and "cannot read" in missing.stderr


def test_judge_eval_contract(shared):
    out = run("judge", "eval", str(shared / "conditions" / "dev.jsonl"), "--judge", "embedded")
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"precision", "recall", "f1", "n"}
    assert last["n"] == 30 and 0.0 <= last["f1"] <= 1.0


@pytest.mark.cpu_heavy
def test_judge_eval_reads_a_file_saved_with_a_byte_order_mark_and_crlf(shared, tmp_path):
    # what Notepad and Excel save as "UTF-8": the same cases, the same scores
    lines = (shared / "conditions" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    cases = tmp_path / "windows.jsonl"
    cases.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n")
    plain = run("judge", "eval", str(shared / "conditions" / "dev.jsonl"), "--judge", "embedded")
    out = run("judge", "eval", str(cases), "--judge", "embedded")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == json.loads(plain.stdout.strip().splitlines()[-1])


def test_judge_eval_default_runs_the_local_model_when_installed(tmp_path):
    # auto = the local model when its extra is installed (here the small one, from the [dev] extras)
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in [
        {"id": "a", "condition": "if the caller wants the menu texted to them", "fires": True,
         "transcript": [{"role": "agent", "text": "Shall I text you the menu?"},
                        {"role": "user", "text": "yes please"}]},
        {"id": "b", "condition": "when the call ends and a table was booked", "fires": False,
         "transcript": [{"role": "user", "text": "text me the menu"}]},
        {"id": "c", "condition": "when the call ends and a table was booked", "fires": False, "at": "call_end",
         "transcript": [{"role": "user", "text": "how late are you open"}, {"role": "agent", "text": "Until 11."}]},
    ]), encoding="utf-8")
    decisions = tmp_path / "decisions.jsonl"
    out = run("judge", "eval", str(cases), "-v", "--decisions", str(decisions), "--width", "200",
              env={"SMS_LOCAL_MODEL": "qwen2.5-coder-0.5b"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "local judge" in out.stdout and "decision latency p50" in out.stdout
    rows = {r["id"]: r for r in map(json.loads, decisions.read_text(encoding="utf-8").splitlines())}
    assert rows["a"]["part"] == "model" and 0 <= rows["a"]["score"] <= 1
    assert rows["b"]["part"].startswith("rule:") and rows["b"]["fired"] is False  # call-end condition mid-call
    assert rows["c"]["part"] == "model"
    assert set(json.loads(out.stdout.strip().splitlines()[-1])) == {"precision", "recall", "f1", "n"}


def test_judge_eval_unknown_local_model_is_an_error(shared):
    out = run("judge", "eval", str(shared / "conditions" / "dev.jsonl"), env={"SMS_LOCAL_MODEL": "gpt-5"})
    assert out.returncode == 2 and "unknown SMS_LOCAL_MODEL" in out.stderr


def test_judge_eval_bad_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"condition": "x"}\n', encoding="utf-8")
    out = run("judge", "eval", str(bad))
    assert out.returncode == 2 and "line 1" in out.stderr


def test_judge_eval_refuses_rows_it_would_misread(tmp_path):
    # found by a new user: a role the judge does not know, an unknown "at" or a "fires" string used to be read
    # silently (the turn never counted as the caller's, "yes" as true)
    from incall_sms.judges.evaluate import load_cases

    turn = {"role": "user", "text": "text me the menu"}
    for field, value, words in (("transcript", [{"role": "speaker", "text": "hi"}], "role 'speaker'"),
                                ("at", "end", "at 'end'"), ("fires", "yes", "fires 'yes'")):
        bad = tmp_path / f"bad_{field}.jsonl"
        row = {"condition": "if the caller wants the menu", "transcript": [turn], "fires": True, field: value}
        bad.write_text(json.dumps(row) + "\n", encoding="utf-8")
        out = run("judge", "eval", str(bad))
        assert out.returncode == 2 and "line 1" in out.stderr and words in out.stderr, out.stderr
    aliases = tmp_path / "aliases.jsonl"
    aliases.write_text(json.dumps({"condition": "c", "fires": 1, "transcript": [
        {"role": "caller", "text": "a"}, {"role": "assistant", "text": "b"}]}) + "\n", encoding="utf-8")
    [case] = load_cases(aliases)
    assert [t.role for t in case.transcript] == ["user", "agent"] and case.fires is True


def test_main_job_simulation_runs_to_completion(tmp_path):
    out = run("simulate", "--pace", "1.0", "--width", "160", "--state", str(tmp_path / "state"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "voice: on (" in out.stdout  # the offline speech stack is installed by the README commands
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
    assert out.returncode == 2 and "line 2" in out.stderr  # errors on stderr, one plain line


def test_interactive_reads_piped_stdin_and_hangs_up_at_its_end():
    lines = "hello\n\ncan you text me the link to your menu?\n"  # the empty line is not a hang-up
    out = subprocess.run([sys.executable, "run_agent.py", "simulate", "--interactive", "--voice", "off",
                          "--width", "150"], cwd=ROOT, input=lines, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "caller: can you text me the link to your menu?" in out.stdout
    assert "Here is our menu and booking page" in out.stdout and "1 SMS sent" in out.stdout
    assert out.stdout.count("caller hangs up") == 1


def test_interactive_with_no_input_ends_at_once():
    out = subprocess.run([sys.executable, "run_agent.py", "simulate", "--interactive", "--voice", "off"],
                         cwd=ROOT, input="", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "caller hangs up" in out.stdout and "0 SMS sent" in out.stdout


def test_ctrl_c_ends_the_call_cleanly_and_exits_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-u", "run_agent.py", "simulate", "--voice", "off", "--width", "150",
                             "--state", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    for line in proc.stdout:  # the call is under way once the caller has spoken
        seen.append(line)
        if line.startswith("caller:"):
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "(interrupted)" in rest and "Ctrl-C" in rest
    import sqlite3

    with sqlite3.connect(tmp_path / "outbox.db") as conn:  # nothing left half-done: sent, or waiting for recovery
        statuses = {row[0] for row in conn.execute("SELECT status FROM outbox")}
    assert statuses <= {"accepted", "pending", "sending", "skipped", "failed"}


def test_serve_with_a_bad_actions_file_says_why_without_a_traceback(tmp_path):
    bad = tmp_path / "actions.yaml"
    bad.write_text("actions:\n  - {name: a, condition: if asked, sender: pool, content: {template: custom}}\n")
    env = {**os.environ, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t", "DEEPGRAM_API_KEY": "k",
           "OPENAI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "SMS_ACTIONS_FILE": str(bad),
           "SMS_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, str(ROOT / "run_agent.py"), "serve"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "SMS_ACTIONS_FILE" in out.stderr and "preset" in out.stderr


def test_serve_default_actions_do_not_depend_on_the_working_directory(tmp_path):
    from incall_sms.pipeline.live import LiveSettings

    settings = LiveSettings.from_env({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t",
                                      "DEEPGRAM_API_KEY": "k", "OPENAI_API_KEY": "k",
                                      "PUBLIC_URL": "https://agent.example.com"})
    assert pathlib.Path(settings.actions_path).is_absolute() and pathlib.Path(settings.actions_path).exists()


def test_mic_says_which_device_is_missing(monkeypatch):
    """PyAudio installed but no microphone (or no speaker) found: the reason names it and where to look.
    (No PyAudio at all: tests/test_mic.py runs the command line without it.)"""
    import types

    from incall_sms.pipeline.cli import _mic_unavailable

    def fake_pyaudio(devices):
        class PyAudio:
            def get_device_count(self):
                return len(devices)

            def get_device_info_by_index(self, index):
                return devices[index]

            def terminate(self):
                pass

        return types.SimpleNamespace(PyAudio=PyAudio)

    monkeypatch.setitem(sys.modules, "pyaudio", fake_pyaudio([]))
    assert "no microphone" in _mic_unavailable()
    monkeypatch.setitem(sys.modules, "pyaudio", fake_pyaudio([{"maxInputChannels": 1, "maxOutputChannels": 0}]))
    assert "no speaker" in _mic_unavailable()
    monkeypatch.setitem(sys.modules, "pyaudio", fake_pyaudio([{"maxInputChannels": 1, "maxOutputChannels": 2}]))
    assert _mic_unavailable() is None


def test_simulation_of_the_reply_and_consent_example():
    """examples/replies: the email-by-text flow and a consent question, end to end in the local simulation."""
    out = run("simulate", "--actions", "examples/replies/actions.yaml", "--script", "examples/replies/call.txt",
              "--voice", "off", "--width", "200")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    order = ["Reply to this text with your email address.",  # the asking text
             "I've just texted you. Reply to that text",  # the waiting line
             "doesn't look like an email address",  # one re-ask, by text
             "Your receipts will go to Siobhan.OConnor@example.ie",  # the reply's value in the second text
             "Can I text that to your number ending in 23?",  # consent question
             "Parking: garage at 5th & Mission"]  # sent after "Yes please."
    positions = [text.find(part) for part in order]
    assert -1 not in positions and positions == sorted(positions), text[-3000:]
    assert "4 SMS sent, 0 failed" in text


def test_judge_eval_says_when_the_best_no_key_judge_is_not_installed(monkeypatch, capsys, shared):
    """auto scores the best judge installed; when that is not the 1.5B, stderr says so and how to get it."""
    from incall_sms.judges import select
    from incall_sms.pipeline.cli import main

    monkeypatch.delenv("SMS_LOCAL_MODEL", raising=False)
    monkeypatch.setattr(select, "_installed", lambda name: False)  # a venv with [sim] only
    assert main(["judge", "eval", str(shared / "conditions" / "dev.jsonl"), "--width", "200"]) == 0
    out = capsys.readouterr()
    assert "embedded judge on" in out.out and json.loads(out.out.strip().splitlines()[-1])["n"] == 30
    assert "note: scoring the embedded judge" in out.err and "[local]" in out.err

    assert main(["judge", "eval", str(shared / "conditions" / "dev.jsonl"), "--judge", "embedded"]) == 0
    assert capsys.readouterr().err == ""  # asked for by name: nothing to say
