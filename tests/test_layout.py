"""Architecture rules: one import namespace; the core stays framework-free; library code has no blocking calls."""

import ast
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

FORBIDDEN_IN_CORE = ("pipecat", "aiohttp", "fastapi", "starlette", "twilio", "websockets", "deepgram", "requests")
NETWORK_EDGE = {ROOT / "incall_sms" / "providers" / "twilio.py"}
#: Repository folder -> installed package (see setup.py).
FOLDERS = {"incall_sms": "incall_sms", "pipeline": "incall_sms.pipeline", "processors": "incall_sms.processors",
           "media": "incall_sms.media"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_framework():
    offenders = {}
    for path in (ROOT / "incall_sms").rglob("*.py"):
        if path in NETWORK_EDGE:
            continue
        bad = _imports(path) & set(FORBIDDEN_IN_CORE)
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_core_import_does_not_load_frameworks():
    code = (
        "import sys, incall_sms, incall_sms.dispatcher, incall_sms.lint, incall_sms.providers.local\n"
        f"bad = [m for m in {FORBIDDEN_IN_CORE!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_postgres_driver_is_an_optional_extra():
    """asyncpg (the [postgres] extra) loads only for a PostgreSQL outbox; without it the error says what to install."""
    code = (
        "import sys, incall_sms.outbox, incall_sms.outbox_postgres, incall_sms.dispatcher\n"
        "import incall_sms.pipeline.service\n"
        "print('asyncpg' in sys.modules)\n"
        "sys.modules['asyncpg'] = None\n"
        "try:\n"
        "    incall_sms.outbox.open_outbox('postgresql://db/x', state_dir='.')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded, message = out.stdout.strip().splitlines()
    assert loaded == "False"
    assert "pip install 'pipecat-incall-sms[postgres]'" in message


def test_no_blocking_calls_in_library_code():
    patterns = (
        "time.sleep(",
        "requests.get(",
        "requests.post(",
        "messages.create(",
        "asyncio.create_task(",
        "asyncio.ensure_future(",
    )
    hits = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            hits += [f"{path.name}: {p}" for p in patterns if p in text]
    assert hits == []


def test_ruff_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:]


def test_every_import_uses_the_one_namespace():
    """No module imports the repository folders as top-level packages (they install as incall_sms.*)."""
    stray = set(FOLDERS) - {"incall_sms"} | {"messaging", "run_agent"}
    offenders = {}
    for path in [*ROOT.glob("*.py"), *(p for folder in (*FOLDERS, "tests", "bench", "examples")
                                      for p in (ROOT / folder).rglob("*.py"))]:
        bad = _imports(path) & stray
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}
