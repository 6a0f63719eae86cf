"""The simulator's ``GET /api/v1/quotas``: Model Studio's "List model quotas" answered with the quota the
simulator enforces, in the page's shape (see ``docs/realtime_protocol.md``, "Quotas").

No I/O: :func:`quota_page` turns a query and the simulator's settings into the JSON body. The server
(:mod:`batchqwen.sim.server`) checks the key and writes the HTTP response.

Choices where the simulator differs from one account's real quota:

- Its session and token windows are shared by every model, so every model is listed with the same
  figures (the service counts each model apart).
- ``rpm`` / ``tpm`` of None (the simulator enforces nothing) is answered with the model's registry
  default (``default_rpm`` / ``default_tpm`` per 60 s): every real account has a quota, and a default
  account sees the defaults; a runner reading it paces as it did before the endpoint existed.
- ``request_limit_period`` and ``usage_limit_period`` are the simulator's ``window_seconds`` when it
  enforces a quota (a scaled-down window in tests), exactly as the page defines them: seconds.
- Models this account has not bought (``unpurchased_models``) have no quota and are not listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from batchqwen.errors import UsageError
from batchqwen.models import REGISTRY, ModelInfo, get_model
from batchqwen.sim.config import SimulatorConfig

QUOTA_PATH = "/api/v1/quotas"
DEFAULT_PAGE_SIZE = 20  # the page's default
SIM_WORKSPACE_ID = "ws-simulator"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def model_limit(config: SimulatorConfig, model: ModelInfo) -> dict[str, Any]:
    """One ``model_limit`` object: the account-level limit of ``model`` as the simulator enforces it."""
    window = _number(config.window_seconds)
    if config.rpm is not None:
        request_limit, request_period = config.rpm, window
    else:
        request_limit, request_period = model.default_rpm, 60
    if config.tpm is not None:
        usage_limit, usage_period = config.tpm, window
    else:
        usage_limit, usage_period = model.default_tpm, 60
    return {
        "request_limit": request_limit,
        "request_limit_period": request_period,
        "usage_limit": usage_limit,
        "usage_limit_field": "total_tokens",
        "usage_limit_period": usage_period,
        "async_user_queue_limit": None,
        "async_user_concurrency_limit": None,
    }


def _listed(config: SimulatorConfig) -> list[ModelInfo]:
    return [info for name, info in REGISTRY.items() if name not in config.unpurchased_models]


def _int(query: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    values = query.get(name) or []
    try:
        return max(1, int(values[0])) if values else default
    except ValueError:
        return default


def quota_page(
    config: SimulatorConfig,
    query: Mapping[str, Sequence[str]],
    *,
    request_id: str,
    workspace_id: str | None = None,
) -> dict[str, Any]:
    """The response body for ``GET /api/v1/quotas?{query}`` (``model`` exact, ``name`` fuzzy, pages)."""
    exact = (query.get("model") or [""])[0].strip()
    fuzzy = (query.get("name") or [""])[0].strip().lower()
    page_no = _int(query, "page_no", 1)
    page_size = _int(query, "page_size", DEFAULT_PAGE_SIZE)
    models: list[ModelInfo]
    if exact:
        try:
            info = get_model(exact)  # a dated snapshot or an alias shares its base model's quota
        except UsageError:  # unknown to the service: no quota entry
            models = []
        else:
            models = [] if exact in config.unpurchased_models else [replace(info, name=exact)]
    else:
        models = [m for m in _listed(config) if fuzzy in m.name.lower()]
    page = models[(page_no - 1) * page_size : page_no * page_size]
    return {
        "request_id": request_id,
        "output": {
            "total": len(models),
            "page_no": page_no,
            "page_size": page_size,
            "quotas": [
                {
                    "model": info.name,
                    "workspace_id": workspace_id or SIM_WORKSPACE_ID,
                    "model_limit": model_limit(config, info),
                    "workspace_limit": None,
                }
                for info in page
            ],
        },
    }
