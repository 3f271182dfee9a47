"""Command line of ``run_agent.py``: sub-commands and their wiring, nothing else.

Heavy imports (pipecat, twilio) happen inside the sub-command that needs them so
``actions lint`` and ``judge eval`` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from incall_sms.judges.select import JUDGES
from incall_sms.pipeline import DEFAULT_ACTIONS, DEMO_CALL

#: Default replay speed with ``--stt whisper``: what a 2-core machine sustains (see the README).
WHISPER_SPEED = 2.0

REPLAY_EPILOG = """\
A recording is two files (format incall-sms-recording/1):

  call.jsonl       the Twilio Media Streams messages, one per line, t = seconds since the websocket opened:
                   {"t": 0.0, "message": {"event": "connected", ...}}
                   {"t": 0.01, "message": {"event": "start", "start": {"callSid": "CA...", ...}}}
                   {"t": 0.02, "message": {"event": "media", "media": {"payload": "<base64 mu-law>"}}}
                   {"t": 9.05, "message": {"event": "stop", ...}}
  call.meta.json   what the call starts with and what was said:
                   {"format": "incall-sms-recording/1", "call_sid": "CA...",
                    "caller": "+14155550123", "agent_number": "+14155550100",
                    "variables": {"caller_name": "Maria"},          # known at call start
                    "opt_outs": [],                                 # numbers opted out before ("caller" = caller)
                    "provider": {"latency": 0.4,                    # per destination: accept | landline |
                                 "destinations": {"+14155550199": "timeout"}},  # opted_out | invalid | timeout |
                                                                    # server_error | rate_limited
                    "stt": [{"t": 3.0, "text": "Can you text me the booking confirmation?"}],
                    "agent": [{"t": 1.0, "text": "You're booked for Friday at 7 pm."}],  # omit: stand-in LLM
                    "inbound": [{"t": 5.0, "body": "Here is my voucher", "media": []}]}

Expectations (--expect call.expect.yaml):

  sms:
  - action: booking_confirmation
    to: caller                     # or +14155550199, or the last digits: "0199"
    count: 1                       # exactly one such text
    at: turn                       # or call_end
    after_turn: 1                  # fired by the caller's first turn
    trigger_contains: text me      # ... whose words contain this
    body_contains: Friday at 7 pm
  - {action: colleague_copy, outcome: failed, reason: unconfirmed}
  no_sms: [website_link]
  max_sms: 2
  lines:                           # the agent says these (kind: reply | filler | confirmation | failure)
  - {kind: filler, action: booking_confirmation}
  - {kind: confirmation, contains: ending in 23, interrupted: false, heard: true}
  lines_in_order: true             # or per_action: in order among each action's lines
  not_spoken:
  - {kind: failure}

The report (--report) has every time in call time on one clock: conversation (caller transcripts, agent
lines with when they were heard and whether they were cut, SMS with the judge's explanation, inbound texts,
near misses), sms, lines, inbound, audio. Exit 0: expectations passed; 1: failed; 2: bad input.
Turn a live call into a test: `serve` with SMS_RECORD_DIR, then `recording mask`, then `replay
--write-expect`, review the file, and run `replay --expect` in CI.
"""

__all__ = ["main"]



def _console(width: int | None) -> Console:
    """Rich output at ``--width``; piped or redirected (and no ``COLUMNS``), 160 columns.

    Rich's default of 80 there wraps the tables about a word a line.
    """
    if width:
        return Console(width=width)
    return Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=160)


def _error(message: str) -> None:
    """Errors go to stderr, one unwrapped line each (whatever the terminal width or a pipe)."""
    print(f"error: {message}", file=sys.stderr)


def _cmd_actions_lint(args: argparse.Namespace) -> int:
    from incall_sms.errors import ActionConfigError
    from incall_sms.lint import lint_file

    try:
        rows = lint_file(args.file)
    except ActionConfigError as exc:
        _error(f"{args.file}: {exc}")
        return 2
    errors = sum(len(r.errors) for r in rows)
    warnings = sum(len(r.warnings) for r in rows)
    if args.json:  # JSON only on stdout
        import dataclasses

        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return 1 if errors else 0
    console = _console(args.width)
    table = Table(title=f"{args.file}: {len(rows)} action(s)", show_lines=True)
    for column in ("action", "condition", "sender", "destination", "encoding", "chars", "segments",
                   "unknown vars", "problems"):
        table.add_column(column, overflow="fold")
    for row in rows:
        problems = [f"[red]error[/]: {e}" for e in row.errors] + [f"[yellow]warn[/]: {w}" for w in row.warnings]
        whatsapp = row.channel == "whatsapp"  # no segments, no GSM-7/UCS-2: the 1,600-char limit and templates
        table.add_row(
            row.action,
            row.condition,
            f"{row.sender} ({row.mode}, WhatsApp)" if whatsapp else f"{row.sender} ({row.mode})",
            row.destination,
            row.encoding,
            (f"{row.chars}/1600" if row.mode != "content" else "template") if whatsapp else str(row.chars),
            "-" if whatsapp else str(row.segments),
            ", ".join(row.unknown_variables) or "-",
            "\n".join(problems + [f"[cyan]note[/]: {n}" for n in row.notes]) or "[green]ok[/]",
        )
    console.print(table)
    for row in rows:  # every error once more, unwrapped, where scripts look for them
        for message in row.errors:
            _error(f"{args.file}: action {row.action}: {message}")
    print(f"{len(rows)} action(s), {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def _cmd_judge_eval(args: argparse.Namespace) -> int:
    import asyncio

    from incall_sms.errors import SmsError
    from incall_sms.judges.base import warmed
    from incall_sms.judges.evaluate import evaluate, load_cases
    from incall_sms.judges.local import LocalModelJudge
    from incall_sms.judges.select import best_local_model, make_judge
    from incall_sms.local_model import MODELS

    try:
        cases = load_cases(args.file)
    except (OSError, ValueError) as exc:
        _error(f"{args.file}: {exc}")
        return 2
    try:
        judge = make_judge(args.judge)
    except ValueError as exc:
        _error(str(exc))
        return 2
    console = _console(args.width)
    model = judge.model.spec.name if isinstance(judge, LocalModelJudge) else None
    label = f"{judge.name} judge" + (f" ({model})" if model else "")
    best = MODELS[best_local_model()]
    if args.judge == "auto" and not os.environ.get("SMS_LOCAL_MODEL") and model != best.name:
        print(f"note: scoring the {label}: the best judge that needs no key, the local {best.name} "
              f"model, is not installed here ({best.requirement})", file=sys.stderr)

    async def run():
        spinner = Console(stderr=True).status(f"loading the {judge.name} judge...")
        async with warmed(judge, while_warming=spinner):
            return await evaluate(judge, cases)

    try:
        report = asyncio.run(run())
    except SmsError as exc:  # the local model is missing or its weights do not verify
        _error(str(exc))
        return 2
    table = Table(title=f"{label} on {args.file}")
    for column in ("condition", "n", "precision", "recall", "f1"):
        table.add_column(column, overflow="fold")
    for condition, scores in report.per_condition.items():
        table.add_row(condition, str(scores.n), f"{scores.precision:.2f}", f"{scores.recall:.2f}", f"{scores.f1:.2f}")
    console.print(table)
    if args.verbose:  # every misjudged case, and every near miss, with the part that decided and its score
        for case, decision in report.decisions:
            wrong = decision.fires != case.fires
            near = not decision.fires and decision.score is not None and decision.score >= 0.3
            if not (wrong or near):
                continue
            said = " / ".join(f"{t.role}: {t.text}" for t in case.transcript)
            label = "[red]WRONG[/]" if wrong else "[yellow]near miss[/]"
            score = "-" if decision.score is None else f"{decision.score:.2f}"
            console.print(f"{label} {case.id} expected {case.fires} got {decision.fires} [{decision.part}, score "
                          f"{score}] {decision.reason} :: {said}", highlight=False)
    seconds = sorted(report.seconds)
    if seconds:
        console.print(f"decision latency p50 {seconds[len(seconds) // 2]:.3f} s, "
                      f"p95 {seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]:.3f} s "
                      f"({label}, one condition per decision)", highlight=False)
    if args.decisions:  # one JSON line per case: the label, the decision, its score and part (threshold tuning)
        with open(args.decisions, "w", encoding="utf-8") as out:
            for case, decision in report.decisions:
                out.write(json.dumps({"id": case.id, "condition": case.condition, "fires": case.fires,
                                      "fired": decision.fires, "score": decision.score, "part": decision.part,
                                      "rules": decision.rules},
                                     ensure_ascii=False) + "\n")
    o = report.overall
    print(json.dumps({"precision": round(o.precision, 4), "recall": round(o.recall, 4), "f1": round(o.f1, 4),
                      "n": o.n}))
    return 0


_PYAUDIO_INSTALL = ("install PyAudio: macOS `brew install portaudio && pip install pyaudio`; Debian/Ubuntu "
                    "`sudo apt-get install portaudio19-dev && pip install pyaudio`; Windows `pip install pyaudio`")


def _mic_unavailable() -> str | None:
    """Why a microphone cannot be used here (with how to fix it), or ``None``."""
    try:
        import pyaudio
    except ImportError:
        return f"PyAudio is not installed (pipecat's LocalAudioTransport needs it); {_PYAUDIO_INSTALL}"
    audio = pyaudio.PyAudio()
    try:
        inputs = [i for i in range(audio.get_device_count())
                  if audio.get_device_info_by_index(i).get("maxInputChannels", 0) > 0]
        outputs = [i for i in range(audio.get_device_count())
                   if audio.get_device_info_by_index(i).get("maxOutputChannels", 0) > 0]
    finally:
        audio.terminate()
    if not inputs or not outputs:
        missing = "microphone" if not inputs else "speaker"
        return (f"PyAudio finds no {missing} (no sound device, or no access to it: on Linux check that PulseAudio "
                "or PipeWire runs and that you are in the 'audio' group)")
    return None


def _cmd_simulate(args: argparse.Namespace) -> int:
    import logging

    from loguru import logger

    from incall_sms.errors import SmsError
    from incall_sms.pipeline.simulation import load_script, simulate

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    logging.basicConfig(level=logging.WARNING)
    console = _console(args.width)
    if args.mic:
        reason = _mic_unavailable()
        if reason:
            console.print(f"[bold red]--mic is not available here[/]: {reason}. Meanwhile, type the caller's "
                          "lines instead: simulate --interactive", highlight=False)
            return 2
    try:
        steps = None if args.interactive else load_script(args.script)
        console.rule("[bold]local simulation[/] (no phone, no keys, no network)")
        result = simulate(actions_path=args.actions, steps=steps, console=console, state_dir=args.state,
                          pace=args.pace, voice=args.voice, mic=args.mic, judge=args.judge, agent=args.agent,
                          headphones=args.headphones)
    except (SmsError, ValueError, OSError) as exc:  # SmsError: bad actions, local model unavailable
        _error(str(exc))  # plain: an install hint's "[local]" is no Rich markup
        return 2
    sent = [e for e in result.events if e.kind.value == "sent"]
    failed = [e for e in result.events if e.kind.value == "failed"]
    print(f"simulated call {result.call_id}: {len(sent)} SMS sent, {len(failed)} failed, "
          f"{len(result.spoken)} SMS line(s) spoken, {result.seconds:.1f} s"
          + (" (interrupted)" if result.interrupted else ""))
    return 130 if result.interrupted else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import pydantic
    import yaml
    from loguru import logger

    logger.remove()  # before pipecat is imported: no banner, only its errors
    logger.add(sys.stderr, level="ERROR")
    from incall_sms.actions import load_actions
    from incall_sms.errors import SmsError
    from incall_sms.judges.base import condition_specs, warmed
    from incall_sms.judges.select import make_judge
    from incall_sms.pipeline.recording import Expectations
    from incall_sms.pipeline.replay import replay

    logging.basicConfig(level=logging.WARNING)
    try:
        actions = load_actions(args.actions)
        expectations = None
        if args.expect:
            with open(args.expect, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
            try:
                expectations = Expectations.model_validate(loaded)
            except pydantic.ValidationError as exc:
                lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
                raise ValueError(f"{args.expect}: " + "; ".join(lines[:5])) from None
        if not pathlib.Path(args.report).resolve().parent.is_dir():
            raise ValueError(f"--report {args.report}: its folder does not exist")
        judge = make_judge(args.judge)
        speed = args.speed if args.speed is not None else (WHISPER_SPEED if args.stt == "whisper" else 8.0)

        async def run():
            async with warmed(judge, condition_specs(actions.actions)):
                return await replay(args.recording, actions=actions, speed=speed, expectations=expectations,
                                    stt=args.stt, judge=judge)

        report = asyncio.run(run())
    except (SmsError, ValueError, OSError, yaml.YAMLError, pydantic.ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        pathlib.Path(args.report).write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return 2
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.write_expect:
        from incall_sms.phone import mask
        from incall_sms.pipeline.replay import replay_caller

        snapshot = Expectations.snapshot(report, actions=[a.name for a in actions.actions],
                                         caller_masked=mask(replay_caller(args.recording)))
        text = yaml.safe_dump(snapshot.model_dump(exclude_defaults=True), sort_keys=False)
        pathlib.Path(args.write_expect).write_text(
            "# Written by `run_agent.py replay --write-expect` from what this replay did: review it, add the\n"
            "# wording that matters (body_contains, contains, trigger_contains), then pass it to --expect.\n"
            + text, encoding="utf-8")
        print(f"expectations written: {args.write_expect}")
    sent = sum(1 for s in report.sms if s.outcome == "accepted")
    print(f"{report.recording}: {sent} SMS sent, {len(report.sms) - sent} not sent, {len(report.lines)} line(s), "
          f"{len(report.inbound)} inbound, max audio delay {report.audio.max_delay_ms} ms; report: {args.report}")
    if report.expectations.checked:
        for failure in report.expectations.failures:
            print(f"FAILED: {failure}")
        print("expectations: " + ("passed" if report.expectations.passed else "FAILED"))
        return 0 if report.expectations.passed else 1
    return 0


def _cmd_recording_mask(args: argparse.Namespace) -> int:
    from incall_sms.pipeline.masking import mask_recording

    try:
        events, meta = mask_recording(args.recording, args.out, keep_audio=args.keep_audio)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"masked copy: {events} and {meta}" + ("" if args.keep_audio else " (audio replaced by silence)"))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn
    from loguru import logger

    # pipecat logs raw call data (numbers) and transcripts at DEBUG: keep its log at WARNING unless asked
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("PIPECAT_LOG_LEVEL", "WARNING"))
    from incall_sms.pipeline.live import LiveAgent, LiveSettings, SettingsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from incall_sms.errors import SmsError

    try:
        settings = LiveSettings.from_env(public_url=args.public_url)
        agent = LiveAgent(settings)
    except SettingsError as exc:
        _error(str(exc))
        return 2
    except SmsError as exc:  # e.g. an invalid action file: say which and why, no traceback
        _error(f"SMS_ACTIONS_FILE {settings.actions_path}: {exc}")
        return 2
    except OSError as exc:
        _error(f"cannot prepare the state directory or files: {exc.__class__.__name__}: {exc.strerror or exc}")
        return 2
    print(f"serving on {args.host}:{args.port}; Twilio voice webhook: {settings.public_url}/voice, "
          f"messaging webhook: {settings.public_url}/sms/inbound", flush=True)
    uvicorn.run(agent.app, host=args.host, port=args.port, log_level="warning", ws="websockets-sansio")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``run_agent.py``."""
    parser = argparse.ArgumentParser(
        prog="run_agent.py",
        description="In-call SMS for pipecat phone agents.",
    )
    sub = parser.add_subparsers(dest="command")

    sim = sub.add_parser("simulate", help="run a local simulated call (the default command)")
    sim.add_argument("--actions", default=str(DEFAULT_ACTIONS), help="action file (default: the bundled demo)")
    sim.add_argument("--script", default=str(DEMO_CALL), help="caller script (default: the bundled demo call)")
    sim.add_argument("--interactive", action="store_true", help="type the caller's lines ('text: ...' texts)")
    sim.add_argument("--pace", type=float, default=1.0, help="seconds between caller lines")
    sim.add_argument("--state", default=None, help="keep the outbox/inbox databases in this folder")
    sim.add_argument("--voice", choices=("auto", "on", "off"), default="auto",
                     help="offline speech: Piper + faster-whisper (auto: when installed)")
    sim.add_argument("--mic", action="store_true", help="talk through a real microphone (needs PyAudio and a device)")
    sim.add_argument("--headphones", action="store_true",
                     help="with --mic: full duplex, talk over the agent (without it the mic is muted while the "
                          "agent speaks, so the speaker is not heard as you)")
    sim.add_argument("--judge", choices=JUDGES, default=os.environ.get("SMS_JUDGE", "auto"),
                     help="condition judge (default: $SMS_JUDGE, else auto: the local model when the [local] or "
                          "[local-small] extra is installed, else the embedded rules)")
    sim.add_argument("--agent", choices=("stand-in", "local"), default="stand-in",
                     help="the agent LLM: the rule-based stand-in (or SMS_AGENT_LLM_URL), or the local 1.5B model "
                          "([local] extra; SMS_LOCAL_MODEL chooses another) through pipecat's OpenAI service on "
                          "loopback")
    sim.add_argument("--width", type=int, default=None)
    sim.set_defaults(handler=_cmd_simulate)

    actions = sub.add_parser("actions", help="work with action files")
    actions_sub = actions.add_subparsers(dest="actions_command", required=True)
    lint = actions_sub.add_parser("lint", help="check an action file and show encoding/segments per action")
    lint.add_argument("file")
    lint.add_argument("--json", action="store_true", help="print the rows as JSON")
    lint.add_argument("--width", type=int, default=None, help="table width (default: terminal)")
    lint.set_defaults(handler=_cmd_actions_lint)

    serve = sub.add_parser("serve", help="run the live phone agent (Twilio webhooks + media streams)")
    serve.add_argument("--public-url", default=None, help="the https URL Twilio calls (or PUBLIC_URL)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.set_defaults(handler=_cmd_serve)

    rep = sub.add_parser("replay", help="replay a recorded call and write a JSON report",
                         description="Replay a recorded call through the live agent's pipeline pieces and write "
                                     "a JSON report: the whole conversation in call time, every SMS with the judge "
                                     "part that fired it, near misses, spoken lines, inbound texts, audio figures.",
                         epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("recording", help="NAME.jsonl (with NAME.meta.json next to it)")
    rep.add_argument("--actions", required=True, help="action file")
    rep.add_argument("--report", required=True, help="where to write the JSON report")
    rep.add_argument("--expect", default=None, help="expectations (YAML/JSON); exit 1 when they fail")
    rep.add_argument("--write-expect", metavar="OUT.yaml", default=None,
                     help="write what this replay did as expectations, to review and pass to --expect later")
    rep.add_argument("--speed", type=float, default=None,
                     help=f"replay speed (default 8x real time; {WHISPER_SPEED:g}x with --stt whisper, what this "
                          "2-core machine sustains)")
    rep.add_argument("--stt", choices=("recorded", "whisper"), default="recorded",
                     help="use the recorded STT results, or run the caller audio through offline STT")
    rep.add_argument("--judge", choices=JUDGES, default="embedded",
                     help="condition judge (default: the embedded rules, deterministic)")
    rep.set_defaults(handler=_cmd_replay)

    recording = sub.add_parser("recording", help="work with recorded calls")
    recording_sub = recording.add_subparsers(dest="recording_command", required=True)
    mask_cmd = recording_sub.add_parser(
        "mask", help="write a masked copy of a recorded call, fit for a repository",
        description="Numbers in transcripts and texts keep their last four digits (the rest becomes 415-555), "
                    "e-mail addresses become someone@example.com, SIDs are faked, and the caller's audio becomes "
                    "silence of the same length (unless --keep-audio).")
    mask_cmd.add_argument("recording", help="NAME.jsonl written by `serve` with SMS_RECORD_DIR")
    mask_cmd.add_argument("--out", required=True, help="destination without extension, e.g. tests/calls/refund")
    mask_cmd.add_argument("--keep-audio", action="store_true",
                          help="keep the caller's voice (needed for `replay --stt whisper`)")
    mask_cmd.set_defaults(handler=_cmd_recording_mask)

    judge = sub.add_parser("judge", help="condition judges")
    judge_sub = judge.add_subparsers(dest="judge_command", required=True)
    ev = judge_sub.add_parser("eval", help="score a judge on a labelled JSONL file; last line is JSON")
    ev.add_argument("file")
    ev.add_argument("--judge", choices=JUDGES, default="auto",
                    help="auto: the best judge that needs no key (the best local model installed: the 1.5B, else the "
                         "0.5B; else the embedded rules); llm uses SMS_JUDGE_LLM_URL / SMS_JUDGE_LLM_MODEL / "
                         "SMS_JUDGE_LLM_KEY")
    ev.add_argument("--verbose", "-v", action="store_true",
                    help="list misjudged cases and near misses, with the judge part that decided and its score")
    ev.add_argument("--decisions", metavar="OUT.jsonl", default=None,
                    help="write every decision (label, fired, score, deciding part) as JSON lines")
    ev.add_argument("--width", type=int, default=None)
    ev.set_defaults(handler=_cmd_judge_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        args = parser.parse_args(["simulate", *(argv or [])])
    return int(args.handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
