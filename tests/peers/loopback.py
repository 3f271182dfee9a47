"""Shared plumbing of the loopback peers: serve an aiohttp app, find a port, start a server process."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence

from aiohttp import web


async def serve_app(app: web.Application, **runner_kwargs) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on an ephemeral 127.0.0.1 port; returns the runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(command: Sequence[str], port: int, *, timeout: float = 30.0, **popen_kwargs):
    """Start ``command`` and wait until it accepts connections on ``port``.

    Raises:
        RuntimeError: The process exited or did not listen in time.
    """
    proc = subprocess.Popen(list(command), **popen_kwargs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError(f"{command[0]} did not listen on port {port} within {timeout} s")
