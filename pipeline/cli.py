"""Command line of ``run_agent.py``: sub-commands and their wiring, nothing else.

Heavy imports (pipecat, twilio) happen inside the sub-command that needs them so
``actions lint`` and ``judge eval`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["main"]


def _cmd_actions_lint(args: argparse.Namespace) -> int:
    from messaging.errors import ActionConfigError
    from messaging.lint import lint_file

    console = Console(width=args.width) if args.width else Console()
    try:
        rows = lint_file(args.file)
    except ActionConfigError as exc:
        console.print(f"[bold red]error[/]: {args.file}: {exc}", highlight=False)
        return 2
    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        table = Table(title=f"{args.file}: {len(rows)} action(s)", show_lines=True)
        for column in ("action", "condition", "sender", "destination", "encoding", "chars", "segments",
                       "unknown vars", "problems"):
            table.add_column(column, overflow="fold")
        for row in rows:
            problems = [f"[red]error[/]: {e}" for e in row.errors] + [f"[yellow]warn[/]: {w}" for w in row.warnings]
            table.add_row(
                row.action,
                row.condition,
                f"{row.sender} ({row.mode})",
                row.destination,
                row.encoding,
                str(row.chars),
                str(row.segments),
                ", ".join(row.unknown_variables) or "-",
                "\n".join(problems) or "[green]ok[/]",
            )
        console.print(table)
    errors = sum(len(r.errors) for r in rows)
    warnings = sum(len(r.warnings) for r in rows)
    print(f"{len(rows)} action(s), {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``run_agent.py``."""
    parser = argparse.ArgumentParser(
        prog="run_agent.py",
        description="In-call SMS for pipecat phone agents.",
    )
    sub = parser.add_subparsers(dest="command")

    actions = sub.add_parser("actions", help="work with action files")
    actions_sub = actions.add_subparsers(dest="actions_command", required=True)
    lint = actions_sub.add_parser("lint", help="check an action file and show encoding/segments per action")
    lint.add_argument("file")
    lint.add_argument("--json", action="store_true", help="print the rows as JSON")
    lint.add_argument("--width", type=int, default=None, help="table width (default: terminal)")
    lint.set_defaults(handler=_cmd_actions_lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        args = parser.parse_args(["actions", "lint", "examples/actions.yaml"])
    return int(args.handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
