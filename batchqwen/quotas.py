"""The account's real rate limits: Model Studio's "List model quotas", and which limits a run uses.

``GET https://{WorkspaceId}.{region}.maas.aliyuncs.com/api/v1/quotas`` (Bearer key; query ``model``
exact, ``name`` fuzzy, ``page_no``, ``page_size``) answers, per model, the account's limit
(``model_limit``) and the workspace's own, when one is set (``workspace_limit``, never above the
account's): ``request_limit`` per ``request_limit_period`` seconds (60: RPM, 1: QPS) and
``usage_limit`` ``usage_limit_field`` (``total_tokens``) per ``usage_limit_period`` seconds, null for
none. Source and shape: ``docs/realtime_protocol.md``, "Quotas". The quota URL is the realtime
gateway's host over HTTPS (:func:`quota_url`), which is also how the simulator is reached.

Limits are counted per account across all its keys and workspaces, and a separate burst limit refuses
traffic that rises too fast (Model Studio, "Rate limits"): the quota is a ceiling, not a reservation,
and the limiter ramps up (``Limiter(ramp_seconds=...)``).

:func:`resolve_limits` is pure: flags win, then the quota read, then the registry's defaults, and it
says which. :func:`run_limits` is the runner's one call. The API key is sent in the header only and
never appears in a message, a log line or a return value.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from batchqwen import __version__
from batchqwen.errors import RemoteError, UsageError
from batchqwen.models import ModelInfo
from batchqwen.realtime.gateways import host_of

log = logging.getLogger("batchqwen")

QUOTA_PATH = "/api/v1/quotas"
DEFAULT_TIMEOUT = 5.0
SOURCE_FLAGS = "flags"
SOURCE_QUOTA = "quota endpoint"
SOURCE_REGISTRY = "registry defaults"
SOURCE_SIMULATOR = "built-in simulator (unlimited)"


class QuotaLookupFailed(RemoteError):
    """The quota endpoint could not be read (refused, unreachable, not the documented shape).

    A run falls back to the registry's defaults; ``check`` says so. ``status`` is the HTTP status, if any.
    """

    kind = "quota_lookup"

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def quota_url(ws_url: str) -> str:
    """The quota endpoint of a realtime URL's gateway: ``wss://H/...`` -> ``https://H/api/v1/quotas``,
    ``ws://H:P/...`` -> ``http://H:P/api/v1/quotas`` (query and path dropped, any user info too)."""
    parts = urllib.parse.urlsplit(ws_url.strip())
    scheme = {"wss": "https", "ws": "http", "https": "https", "http": "http"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise UsageError(f"not a ws:// or wss:// URL: {ws_url!r}")
    return urllib.parse.urlunsplit((scheme, host_of(ws_url), QUOTA_PATH, "", ""))


@dataclass(frozen=True)
class ModelQuota:
    """One model's rate limits as the quota endpoint gives them (the tighter of account and workspace)."""

    model: str
    requests: int  # request_limit ...
    request_period: float  # ... per this many seconds (60: RPM; 1: QPS)
    tokens: int | None  # usage_limit (None: no usage limit) ...
    token_period: float  # ... per this many seconds
    token_field: str = "total_tokens"
    scope: str = "account"  # "workspace" when the workspace's own limit is the tighter one
    workspace_id: str | None = None

    def requests_per(self, window: float) -> int:
        """Sessions allowed per ``window`` seconds (a QPS limit times 60 for a minute, rounded down)."""
        return max(1, math.floor(self.requests * window / self.request_period + 1e-9))

    def tokens_per(self, window: float) -> int | None:
        if self.tokens is None:
            return None
        return max(1, math.floor(self.tokens * window / self.token_period + 1e-9))

    @property
    def rpm(self) -> int:
        return self.requests_per(60.0)

    @property
    def tpm(self) -> int | None:
        return self.tokens_per(60.0)

    def describe(self) -> str:
        """E.g. ``30 requests per 60 s (30 RPM); 100000 total_tokens per 60 s (100000 TPM); account``."""
        if self.request_period == 1:
            requests = f"{self.requests} QPS ({self.rpm} RPM)"
        else:
            requests = f"{self.requests} requests per {self.request_period:g} s ({self.rpm} RPM)"
        if self.tokens is None:
            tokens = "no token limit"
        else:
            tokens = f"{self.tokens} {self.token_field} per {self.token_period:g} s ({self.tpm} TPM)"
        return f"{requests}; {tokens}; {self.scope} limit"


def _limit(entry: Mapping[str, Any] | None) -> tuple[int, float, int | None, float, str] | None:
    if not isinstance(entry, Mapping):
        return None
    try:
        requests = int(entry["request_limit"])
        request_period = float(entry.get("request_limit_period") or 60)
        usage = entry.get("usage_limit")
        tokens = None if usage is None else int(usage)
        token_period = float(entry.get("usage_limit_period") or 60)
    except (KeyError, TypeError, ValueError):
        return None
    if requests <= 0 or request_period <= 0 or token_period <= 0:
        return None
    return requests, request_period, tokens, token_period, str(entry.get("usage_limit_field") or "total_tokens")


def parse_quotas(body: Mapping[str, Any]) -> dict[str, ModelQuota]:
    """Model -> :class:`ModelQuota` from one "List model quotas" response body.

    Of ``model_limit`` (the account's) and ``workspace_limit`` (the workspace's, or null), each figure
    is the tighter one. Entries without a usable ``request_limit`` are left out.
    """
    output = body.get("output")
    entries = output.get("quotas") if isinstance(output, Mapping) else None
    found: dict[str, ModelQuota] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
            continue
        account = _limit(entry.get("model_limit"))
        workspace = _limit(entry.get("workspace_limit"))
        given = [limit for limit in (account, workspace) if limit is not None]
        if not given:
            continue
        by_requests = min(given, key=lambda limit: limit[0] / limit[1])  # the tighter request rate
        with_tokens = [limit for limit in given if limit[2] is not None]
        by_tokens = min(with_tokens, key=lambda limit: (limit[2] or 0) / limit[3]) if with_tokens else None
        requests, request_period, _, _, field = by_requests
        tokens, token_period = (by_tokens[2], by_tokens[3]) if by_tokens is not None else (None, 60.0)
        scope = "workspace" if workspace is not None and by_requests is workspace else "account"
        workspace_id = entry.get("workspace_id")
        found[entry["model"]] = ModelQuota(
            model=entry["model"],
            requests=requests,
            request_period=request_period,
            tokens=tokens,
            token_period=token_period,
            token_field=field,
            scope=scope,
            workspace_id=workspace_id if isinstance(workspace_id, str) else None,
        )
    return found


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, Mapping):
        code, message = body.get("code"), body.get("message")
        return ": ".join(str(part) for part in (code, message) if part) or response.reason_phrase
    return response.reason_phrase


async def fetch_quotas(
    ws_url: str,
    api_key: str,
    models: Iterable[str],
    *,
    workspace: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, ModelQuota]:
    """Read each model's quota from the gateway of ``ws_url`` (one exact ``?model=`` query per model).

    A model the endpoint does not list is missing from the result. Raises :class:`QuotaLookupFailed`
    (with the HTTP status when there was one) for a refused key, an error answer, a body that is not the
    documented shape, or no answer within ``timeout``; the key is never in its message.
    """
    url = quota_url(ws_url)
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": f"batchqwen/{__version__}"}
    if workspace:
        headers["X-DashScope-WorkSpace"] = workspace
    found: dict[str, ModelQuota] = {}
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=False) as client:
            for model in dict.fromkeys(models):
                response = await client.get(url, params={"model": model, "page_no": 1, "page_size": 20})
                if response.status_code != 200:
                    raise QuotaLookupFailed(
                        f"{url} answered HTTP {response.status_code}: {_scrub(_error_text(response), api_key)}",
                        status=response.status_code,
                    )
                try:
                    body = response.json()
                except ValueError:
                    raise QuotaLookupFailed(f"{url} answered something that is not JSON") from None
                if not isinstance(body, Mapping) or not isinstance(body.get("output"), Mapping):
                    raise QuotaLookupFailed(f"{url} answered JSON without the documented 'output' object")
                found.update({name: q for name, q in parse_quotas(body).items() if name == model})
    except httpx.TimeoutException:
        raise QuotaLookupFailed(f"{url} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise QuotaLookupFailed(f"cannot reach {url}: {_scrub(str(exc) or type(exc).__name__, api_key)}") from None
    return found


def _scrub(text: str, api_key: str) -> str:
    return text.replace(api_key, "<api key>") if api_key else text


# ----------------------------------------------------------------------------- which limits a run uses


@dataclass(frozen=True)
class Limits:
    """The limiter's RPM / TPM (per its window) and where they came from, for the summary."""

    rpm: int | None
    tpm: int | None
    source: str  # flags / quota endpoint / registry defaults (or a mix: "flags + quota endpoint")
    detail: str = ""  # the quota read, or why it could not be read

    def as_dict(self) -> dict[str, Any]:
        return {"rpm": self.rpm, "tpm": self.tpm, "source": self.source, "detail": self.detail}


def resolve_limits(
    *,
    rpm_flag: int | None,
    tpm_flag: int | None,
    model: ModelInfo,
    quota: ModelQuota | None,
    window: float = 60.0,
    quota_error: str | None = None,
) -> Limits:
    """Flags win; then the quota read (scaled to the limiter's ``window``); then the registry's defaults.

    ``source`` names where the non-flag figures came from ("flags" when both were given).
    """
    if rpm_flag is not None and tpm_flag is not None:
        return Limits(rpm_flag, tpm_flag, SOURCE_FLAGS)
    if quota is not None:
        rpm = rpm_flag if rpm_flag is not None else quota.requests_per(window)
        tpm = tpm_flag if tpm_flag is not None else quota.tokens_per(window)
        fallback, detail = SOURCE_QUOTA, f"{quota.model}: {quota.describe()}"
    else:
        rpm = rpm_flag if rpm_flag is not None else model.default_rpm
        tpm = tpm_flag if tpm_flag is not None else model.default_tpm
        fallback = SOURCE_REGISTRY
        detail = f"{model.name}: {model.default_rpm} RPM, {model.default_tpm} TPM"
        if quota_error:
            detail += f" (the quota could not be read: {quota_error})"
    source = fallback if rpm_flag is None and tpm_flag is None else f"{SOURCE_FLAGS} + {fallback}"
    return Limits(rpm, tpm, source, detail)


def should_ask(*, workspace: str | None, base_url: str | None, simulate: bool) -> bool:
    """Whether a run asks the quota endpoint: with a workspace (its documented host) or a base URL that
    may answer it (a gateway, the simulator); never for the built-in simulator."""
    return not simulate and bool(workspace or base_url)


async def run_limits(
    *,
    url: str,
    api_key: str,
    model: ModelInfo,
    rpm_flag: int | None,
    tpm_flag: int | None,
    workspace: str | None,
    base_url: str | None,
    simulate: bool,
    window: float = 60.0,
    timeout: float = DEFAULT_TIMEOUT,
) -> Limits:
    """The limits of a run on ``model`` at ``url``: flags, else the quota endpoint, else registry defaults.

    The built-in simulator (``simulate``) enforces nothing: without flags, no limit.
    """
    if simulate:
        return Limits(rpm_flag, tpm_flag, SOURCE_FLAGS if rpm_flag or tpm_flag else SOURCE_SIMULATOR)
    quota: ModelQuota | None = None
    error: str | None = None
    if (rpm_flag is None or tpm_flag is None) and should_ask(workspace=workspace, base_url=base_url, simulate=False):
        try:
            quota = (await fetch_quotas(url, api_key, [model.name], workspace=workspace, timeout=timeout)).get(
                model.name
            )
            if quota is None:
                error = f"{quota_url(url)} lists no quota for {model.name}"
        except QuotaLookupFailed as exc:
            error = str(exc)
        except UsageError as exc:
            error = str(exc)
        if error:
            log.warning("quota: %s; using the registry's defaults", error)
    limits = resolve_limits(
        rpm_flag=rpm_flag, tpm_flag=tpm_flag, model=model, quota=quota, window=window, quota_error=error
    )
    log.info("rate limits: %s RPM, %s TPM (%s)", limits.rpm, limits.tpm, limits.source)
    return limits
