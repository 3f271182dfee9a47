"""The wheel users get: built from this checkout, installed into a new virtualenv outside the repository.

It must import as one namespace (``incall_sms``) with nothing else at the top level of
site-packages, carry every module of the source folders, and run example (1) from a bot
directory that has its own ``processors.py`` (the layout that broke the old top-level names).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

from tests.conftest import ROOT
from tests.helpers.twilio_call import play_call, signed_voice, start_server, stop, stream_token, wait_port
from tests.peers.deepgram_peer import DeepgramPeer
from tests.peers.llm_peer import LLMPeer
from tests.peers.loopback import free_port
from tests.peers.twilio_peer import TwilioPeer
from tests.test_examples import RECORDING, env_for

FOLDERS = {"incall_sms": "incall_sms", "pipeline": "incall_sms/pipeline", "processors": "incall_sms/processors",
           "media": "incall_sms/media"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=out)
    for leftover in ("build", "pipecat_incall_sms.egg-info"):  # setuptools writes these next to the sources
        shutil.rmtree(ROOT / leftover, ignore_errors=True)
    [built] = out.glob("pipecat_incall_sms-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh virtualenv with the wheel and its (production, no extras) dependencies."""
    home = tmp_path_factory.mktemp("outside")
    env_dir = home / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, cwd=home)
    return python


def test_wheel_carries_every_module_under_one_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"incall_sms"}
    for folder, package in FOLDERS.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{relative}" in names, f"{source.relative_to(ROOT)} is missing from the wheel"
    assert "incall_sms/pipeline/defaults/actions.yaml" in names
    assert "incall_sms/pipeline/replay_report.schema.json" in names


def test_installed_wheel_imports_outside_the_repository(installed, tmp_path):
    code = ("import incall_sms, incall_sms.judges.embedded, incall_sms.pipeline.service, "
            "incall_sms.processors.sms_actions, incall_sms.media.content; print(incall_sms.__file__)")
    out = subprocess.run([str(installed), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "site-packages" in out.stdout and str(ROOT) not in out.stdout
    site = pathlib.Path(out.stdout.strip()).parent.parent
    ours = {p.name for p in site.iterdir() if p.name.startswith(("incall", "pipecat_incall", "messaging", "run_agent",
                                                                "processors", "pipeline", "media"))}
    assert ours <= {"incall_sms", "pipecat_incall_sms-0.2.0.dist-info"}, ours
    lint = subprocess.run([str(installed.parent / "incall-sms"), "actions", "lint", "--json",
                           str(site / "incall_sms" / "pipeline" / "defaults" / "actions.yaml")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr


async def test_example_runs_from_a_bot_that_has_its_own_processors_module(installed, tmp_path):
    bot = tmp_path / "mybot"
    bot.mkdir()
    shutil.copy(ROOT / "examples" / "twilio_sms_watcher.py", bot / "bot.py")
    (bot / "processors.py").write_text("# the bot's own processors module\nRAISE_IF_IMPORTED_AS_OURS = True\n")
    (bot / "pipeline.py").write_text("# and its own pipeline module\n")
    from incall_sms.pipeline.recording import load_recording

    events, meta = load_recording(RECORDING)
    async with TwilioPeer() as twilio, DeepgramPeer([(u.t, u.text) for u in meta.stt]) as deepgram, \
            LLMPeer(lambda body: "Sure, anything else?", latency=0.1) as llm:
        port = free_port()
        env = {**env_for(twilio, deepgram, llm, tmp_path), "PYTHONPATH": ""}
        proc = start_server(["bot.py"], port=port, env=env, cwd=bot, python=str(installed))
        try:
            await wait_port(port, proc, timeout=120)
            status, twiml = await signed_voice(port, call_sid=meta.call_sid, caller=meta.caller,
                                               agent=meta.agent_number)
            assert status == 200
            await play_call(port, events, stream_token(twiml), done=lambda r: bool(twilio.messages), settle=15.0)
        finally:
            log = await stop(proc)
    assert [m.to for m in twilio.messages] == [meta.caller], log[-3000:]
    assert os.path.exists(bot / "processors.py")
