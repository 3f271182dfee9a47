"""Choosing a judge by name: ``auto`` (the best that needs no key), ``local``, ``embedded`` or ``llm``."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from incall_sms.judges.base import ConditionJudge

__all__ = ["JUDGES", "best_local_model", "default_local_model", "local_model_available", "make_judge"]

JUDGES = ("auto", "local", "embedded", "llm")


def _installed(name: str) -> bool:
    from incall_sms.local_model import MODELS

    spec = MODELS[name]
    return importlib.util.find_spec("xllamacpp") is not None and importlib.util.find_spec(spec.parts[0]) is not None


def best_local_model() -> str:
    """The best local model whether installed or not: the first of ``MODELS``, which are ranked best first."""
    from incall_sms.local_model import MODELS

    return next(iter(MODELS))


def default_local_model(env: Mapping[str, str] | None = None) -> str:
    """The local model to use: ``SMS_LOCAL_MODEL``, else the best one installed (the 1.5B, then the 0.5B).

    With none installed, :func:`best_local_model` (so that the error names its extra).
    """
    from incall_sms.local_model import MODELS

    env = os.environ if env is None else env
    if env.get("SMS_LOCAL_MODEL"):
        return env["SMS_LOCAL_MODEL"]
    return next((name for name in MODELS if _installed(name)), best_local_model())


def local_model_available(model: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """Why the local-model judge cannot run here, or ``None`` when it can (nothing is loaded to find out)."""
    from incall_sms.local_model import MODELS

    name = model or default_local_model(env)
    spec = MODELS.get(name)
    if spec is None:
        return f"unknown SMS_LOCAL_MODEL {name!r} (known: {', '.join(MODELS)})"
    if not _installed(name):
        return f"the local model is not installed ({spec.requirement})"
    return None


def _threshold(env: Mapping[str, str]) -> float | None:
    """``SMS_LOCAL_THRESHOLD``: the local judge's bar on P(yes) (``None``: the model's own, tuned on the dev sets)."""
    raw = env.get("SMS_LOCAL_THRESHOLD", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError(f"SMS_LOCAL_THRESHOLD must be a number above 0 and at most 1 (got {raw!r})")
    return value


def make_judge(name: str = "auto", *, env: Mapping[str, str] | None = None) -> ConditionJudge:
    """A judge by name (share it across calls: the local one holds a loaded model).

    * ``auto``: the local model when one is installed, else the embedded rules.
    * ``local``: the local-model judge (``SMS_LOCAL_MODEL``, default: :func:`default_local_model`;
      ``SMS_LOCAL_THRESHOLD``, default: the model's own).
    * ``embedded``: deterministic rules, instant.
    * ``llm``: an OpenAI-compatible endpoint (``SMS_JUDGE_LLM_URL``/``_MODEL``/``_KEY``).

    Raises:
        ValueError: Unknown name, the local model is missing, ``SMS_LOCAL_THRESHOLD`` is not a number in
            (0, 1], or the LLM settings are incomplete.
    """
    env = os.environ if env is None else env
    if name == "auto":
        reason = local_model_available(env=env)
        if reason and reason.startswith("unknown"):
            raise ValueError(reason)
        name = "local" if reason is None else "embedded"
    if name == "embedded":
        from incall_sms.judges.embedded import EmbeddedJudge

        return EmbeddedJudge()
    if name == "local":
        reason = local_model_available(env=env)
        if reason:
            raise ValueError(reason)
        from incall_sms.judges.local import LocalModelJudge
        from incall_sms.local_model import MODELS, LocalModel

        return LocalModelJudge(model=LocalModel(MODELS[default_local_model(env)]), threshold=_threshold(env))
    if name == "llm":
        from incall_sms.judges.llm import LLMJudge

        return LLMJudge.from_env()
    raise ValueError(f"unknown judge {name!r} (known: {', '.join(JUDGES)})")
