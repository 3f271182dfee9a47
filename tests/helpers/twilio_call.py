"""Playing a phone call into a server exactly as Twilio does: signed /voice, signed handshake, media stream."""

import asyncio
import json
import os
import re
import subprocess
import sys

import aiohttp
import websockets
from twilio.request_validator import RequestValidator

from tests.peers.twilio_peer import ACCOUNT_SID, AUTH_TOKEN

PUBLIC = "https://agent.example.com"


async def wait_port(port, proc, timeout=60):
    """Wait until the server process listens on ``port`` (fail with its stderr if it exits)."""
    for _ in range(int(timeout / 0.1)):
        if proc.poll() is not None:
            raise AssertionError("server exited: " + proc.stderr.read().decode()[-3000:])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


async def stop(proc, timeout=20):
    """Terminate a server process without blocking the loop (the loopback peers live on it).

    Returns its output: stdout, then stderr.
    """
    proc.terminate()
    try:
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = await asyncio.to_thread(proc.communicate)
    return stdout.decode(errors="replace") + stderr.decode(errors="replace")


def start_server(command, *, port, env, cwd, python=sys.executable):
    """Start ``python command...`` with ``env`` (merged into ours)."""
    return subprocess.Popen([python, *command], cwd=cwd, env={**os.environ, **env, "PORT": str(port)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def signed_voice(port, *, call_sid, caller, agent):
    """POST Twilio's signed voice webhook; returns (status, TwiML)."""
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": caller, "To": agent, "Direction": "inbound"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/voice", form)
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/voice", data=form, headers={"X-Twilio-Signature": signature}) as response:
        return response.status, await response.text()


def stream_token(twiml):
    [token] = re.findall(r'<Parameter name="token" value="([^"]+)"/>', twiml)
    return token


def with_token(message, token):
    """The recorded ``start`` message as Twilio would send it for this call: the token as its parameter."""
    if message.get("event") != "start":
        return message
    return dict(message, start=dict(message["start"], customParameters={"token": token}))


async def play_call(port, events, token, *, speed=2.0, done=lambda received: False, linger=1.0, settle=30.0):
    """Play a recorded media stream (paced at ``speed``), then wait (bounded) until ``done(received)``.

    Returns every message the server sent back on the stream.
    """
    events = [(t, with_token(m, token)) for t, m in events]
    handshake = {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC.replace(
        "https://", "wss://") + "/media", {})}
    received = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/media", additional_headers=handshake) as ws:
        async def reader():
            async for message in ws:
                received.append(json.loads(message))

        reader_task = asyncio.get_running_loop().create_task(reader())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for t, message in events:
            if message["event"] == "stop":
                break
            delay = t / speed - (loop.time() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(json.dumps(message))
        for _ in range(int(settle / 0.1)):
            if done(received):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(linger)
        await ws.send(json.dumps(events[-1][1]))  # stop
        await asyncio.sleep(0.5)
        reader_task.cancel()
    return received
