"""``batchqwen check``: is the service usable for these models with this key, right now? Nothing billed.

For each distinct model (of a manifest, or the ``--model``), at once: connect to the realtime gateway
with the run's key, region and workspace, wait for ``session.created``, send the family's
``session.update`` (built by :func:`batchqwen.realtime.protocol.build_session_config`, exactly as a run
would, with the model's default voice and no instructions), read ``session.updated``, and close. No
``response.create``, no audio, no image, nothing of the manifest but its model names: no response is
made, so nothing is billed.

Families whose session ends with ``session.finish``: check does not send it. It asks the service to end
the input and answer what is pending; with no input there is nothing to answer, Qwen-Audio has no such
event, and qwen3.5-omni-flash is reported to answer it with "invalid event type". A WebSocket close
(1000) ends the session on every family.

Alongside, the quota endpoint is read (:mod:`batchqwen.quotas`) when a workspace or a base URL is set.

Exit codes, as a run would have for the same cause (``batchqwen.exitcodes``): 0 every model usable;
3 the key refused or the account in arrears; 4 the service unreachable (refused, DNS, timeouts, 5xx);
2 the URL is not a realtime endpoint; 1 the service answers but refuses a model (unknown, not
purchased, a session setting) or the quota refuses the session. The key is never printed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from batchqwen import __version__, quotas
from batchqwen.errors import ACCOUNT_FATAL_CODES, MODEL_UNAVAILABLE_CODES, ProtocolError, UsageError
from batchqwen.exitcodes import EXIT_ABORTED, EXIT_ENVIRONMENT, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from batchqwen.items import PreparedInput, TurnRequest
from batchqwen.models import TEXT_AND_AUDIO, TEXT_ONLY, ModelInfo, get_model
from batchqwen.plan import check_translation
from batchqwen.realtime.client import url_for
from batchqwen.realtime.events import Error, SessionCreated, SessionUpdate, SessionUpdated, parse_event, to_json
from batchqwen.realtime.gateways import host_of
from batchqwen.realtime.protocol import build_session_config

DEFAULT_TIMEOUT = 3.0  # each step: the failure cases answer within 5 s in all

#: outcome -> exit code; the report's code is the most serious one among its models
OUTCOME_EXIT: dict[str, int] = {
    "ok": EXIT_OK,
    "key refused": EXIT_ABORTED,
    "unreachable": EXIT_ENVIRONMENT,
    "not a realtime endpoint": EXIT_USAGE,
    "model refused": EXIT_SOME_FAILED,
    "quota refused": EXIT_SOME_FAILED,
}
_SEVERITY = (EXIT_ABORTED, EXIT_ENVIRONMENT, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_OK)


@dataclass(frozen=True)
class CheckSettings:
    """Where and as whom to check. ``api_key`` is kept out of ``repr``."""

    base_url: str  # a region name or a ws(s):// base URL, as ``run`` takes it
    api_key: str = field(repr=False)
    workspace: str | None = None
    connect_timeout: float = DEFAULT_TIMEOUT  # TCP + TLS + WebSocket handshake
    event_timeout: float = DEFAULT_TIMEOUT  # for session.created, then for session.updated
    ask_quota: bool = True  # read the quota endpoint too (with a workspace or a base URL)


@dataclass
class ModelCheck:
    """What one model's session said."""

    model: str
    host: str
    outcome: str  # a key of OUTCOME_EXIT
    message: str  # plain words; empty when ok
    handshake_seconds: float | None = None  # connect to the end of the WebSocket handshake
    ready_seconds: float | None = None  # connect to session.updated
    quota: quotas.ModelQuota | None = None

    @property
    def exit_code(self) -> int:
        return OUTCOME_EXIT[self.outcome]

    def line(self) -> str:
        timing = [f"host {self.host}"]
        if self.handshake_seconds is not None:
            timing.append(f"handshake {self.handshake_seconds * 1000:.0f} ms")
        if self.ready_seconds is not None:
            timing.append(f"session.updated after {self.ready_seconds * 1000:.0f} ms")
        what = "ok" if self.outcome == "ok" else f"{self.outcome}: {self.message}"
        return f"{self.model}: {what} ({', '.join(timing)})"


@dataclass
class CheckReport:
    models: list[ModelCheck]
    quota_url: str | None  # None: not asked
    quota_error: str | None = None

    @property
    def exit_code(self) -> int:
        codes = {check.exit_code for check in self.models}
        return next((code for code in _SEVERITY if code in codes), EXIT_OK)

    def lines(self) -> list[str]:
        out = [check.line() for check in self.models]
        if self.quota_url is None:
            out.append(
                "quotas: not read (no workspace: the quota endpoint is workspace-scoped; give --workspace);"
                " a run uses the registry's defaults"
            )
        elif self.quota_error is not None:
            out.append(f"quotas: not read: {self.quota_error}; a run uses the registry's defaults")
        else:
            out.append(f"quotas (from {self.quota_url}):")
            for check in self.models:
                quota = check.quota
                out.append(f"  {check.model}: {quota.describe() if quota else 'none listed for this key'}")
        return out


def models_to_check(default_model: str, manifest_path: Path | None = None) -> list[str]:
    """The distinct models a run would use, in first-seen order: the manifest's rows' own models, and the
    default for rows without one (just the default without a manifest). Reads model names only."""
    if manifest_path is None:
        return [default_model.strip()]
    from batchqwen.manifest import iter_items

    seen: dict[str, None] = {}
    for item in iter_items(manifest_path):
        seen.setdefault((item.model or default_model).strip(), None)
    return list(seen)


def _session_update(model: ModelInfo) -> SessionUpdate:
    """The family's session.update a run would send for a row with no settings of its own."""
    target, source = check_translation(model, None, None)
    speaks = model.translation is None or target in model.translation.speech_targets
    request = TurnRequest(
        model=model,
        voice=model.default_voice,
        modalities=TEXT_AND_AUDIO if speaks else TEXT_ONLY,
        media=PreparedInput(),
        target_language=target,
        source_language=source,
    )
    return SessionUpdate(session=build_session_config(request))


def _error_outcome(event: Error, model: str) -> tuple[str, str]:
    info = event.info
    said = f"{info.code or info.type}: {info.message}".strip(": ")
    if info.code in ACCOUNT_FATAL_CODES:
        kind = "the account is in arrears" if info.code == "Arrearage" else "the API key was refused"
        return "key refused", f"{kind} ({said})"
    if info.code == "Model.NotExist":
        return "model refused", f"unknown model: the service has no model {model!r} ({said})"
    if info.code in MODEL_UNAVAILABLE_CODES:
        return "model refused", f"the model is not purchased for this account ({said})"
    if info.code.startswith("Throttling"):
        return "quota refused", f"the quota refused the session ({said})"
    return "model refused", f"the service refused the session ({said})"


def _status_outcome(status: int, body: str, host: str) -> tuple[str, str]:
    said = f": {body}" if body else ""
    if status == 401:
        return "key refused", f"the API key was refused (HTTP 401{said})"
    if status == 403:
        return "key refused", f"access forbidden for this key (HTTP 403{said})"
    if status == 429:
        return "quota refused", f"the quota refused the session (HTTP 429{said})"
    if status >= 500:
        return "unreachable", f"the service at {host} is unavailable (HTTP {status}{said})"
    return "not a realtime endpoint", f"{host} answered HTTP {status}{said}: is the base URL right?"


def _os_error_words(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "host name not found (DNS)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


class _Step(Exception):
    """One check step ended the check: (outcome, message)."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome
        self.message = message


async def _next_event(ws: ClientConnection, timeout: float, waiting_for: str, host: str) -> object:
    try:
        async with asyncio.timeout(timeout):
            frame = await ws.recv()
    except TimeoutError:
        raise _Step("unreachable", f"no {waiting_for} from {host} within {timeout:g} s") from None
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        how = f" (close {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''})" if rcvd else " (no close frame)"
        raise _Step("unreachable", f"the service closed the connection before {waiting_for}{how}") from None
    try:
        return parse_event(frame)
    except ProtocolError as exc:
        raise _Step("unreachable", f"the service sent a broken frame before {waiting_for}: {exc}") from None


async def check_model(name: str, settings: CheckSettings) -> ModelCheck:
    """One model's session: connect, session.created, session.update, session.updated, close."""
    url = url_for(settings.base_url, name, settings.workspace)  # UsageError for a bad base URL
    host = host_of(url)
    check = ModelCheck(model=name, host=host, outcome="ok", message="")
    try:
        info: ModelInfo | None = get_model(name)
    except UsageError:
        info = None  # still asked: the service may know it (then the run's rows of it fail locally)
    headers = {"Authorization": f"Bearer {settings.api_key}"}
    if settings.workspace:
        headers["X-DashScope-WorkSpace"] = settings.workspace
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                user_agent_header=f"batchqwen/{__version__} check",
                open_timeout=settings.connect_timeout,
                compression=None,
                ping_interval=None,
                close_timeout=1.0,
                proxy=None,
            )
        except InvalidStatus as exc:
            response = exc.response
            body = response.body.decode("utf-8", "replace").strip()[:200] if response.body else ""
            raise _Step(*_status_outcome(response.status_code, body, host)) from None
        except InvalidURI as exc:
            raise UsageError(f"invalid realtime URL: {exc}") from None
        except InvalidHandshake as exc:
            raise _Step("unreachable", f"the WebSocket handshake with {host} failed: {exc}") from None
        except TimeoutError:
            raise _Step("unreachable", f"no connection to {host} within {settings.connect_timeout:g} s") from None
        except OSError as exc:
            raise _Step("unreachable", f"cannot connect to {host}: {_os_error_words(exc)}") from None
        check.handshake_seconds = loop.time() - start
        try:
            await _session(ws, check, info, settings, host)
            check.ready_seconds = loop.time() - start
        finally:
            await ws.close()  # no session.finish: see the module docstring
    except _Step as step:
        check.outcome, check.message = step.outcome, step.message
    check.message = check.message.replace(settings.api_key, "<api key>") if settings.api_key else check.message
    return check


async def _session(
    ws: ClientConnection, check: ModelCheck, info: ModelInfo | None, settings: CheckSettings, host: str
) -> None:
    first = await _next_event(ws, settings.event_timeout, "session.created", host)
    if isinstance(first, Error):
        raise _Step(*_error_outcome(first, check.model))
    if not isinstance(first, SessionCreated):
        raise _Step("model refused", f"the service opened with {getattr(first, 'type', first)!r}, not session.created")
    if info is None:
        raise _Step(
            "model refused",
            "the service knows this model but batchqwen's registry does not: a run fails its rows"
            " (see `batchqwen models`)",
        )
    await ws.send(to_json(_session_update(info)))
    while True:
        event = await _next_event(ws, settings.event_timeout, "session.updated", host)
        if isinstance(event, SessionUpdated):
            return
        if isinstance(event, Error):
            outcome, message = _error_outcome(event, check.model)
            if outcome == "model refused" and event.info.code not in MODEL_UNAVAILABLE_CODES:
                message = f"session.update refused: {json.dumps(event.error, ensure_ascii=False)[:300]}"
            raise _Step(outcome, message)
        # anything else before session.updated (none is documented) is read past


async def check_models(models: Iterable[str], settings: CheckSettings) -> CheckReport:
    """Check every model at once, and read the quota endpoint beside them."""
    names = list(dict.fromkeys(name.strip() for name in models if name.strip()))
    if not names:
        raise UsageError("no model to check")
    first_url = url_for(settings.base_url, names[0], settings.workspace)  # a bad URL: UsageError at once
    ask = settings.ask_quota and quotas.should_ask(
        workspace=settings.workspace,
        base_url=first_url if settings.base_url.startswith(("ws://", "wss://")) else None,
        simulate=False,
    )
    quota_task = None
    if ask:
        quota_task = asyncio.create_task(
            quotas.fetch_quotas(
                first_url, settings.api_key, names, workspace=settings.workspace, timeout=settings.connect_timeout
            )
        )
    checks = list(await asyncio.gather(*(check_model(name, settings) for name in names)))
    report = CheckReport(checks, quotas.quota_url(first_url) if ask else None)
    if quota_task is not None:
        try:
            found = await quota_task
        except quotas.QuotaLookupFailed as exc:
            report.quota_error = str(exc).replace(settings.api_key, "<api key>")
        else:
            for check in checks:
                check.quota = found.get(check.model)
    return report
