"""The asyncio + ``websockets`` pump around :class:`batchqwen.realtime.protocol.ClientTurn`: one item, one session.

:func:`run_turn` opens the connection (URL, headers, open timeout), runs a sender task (session.update,
audio and images, paced or not, commit, response.create, session.finish) beside a receiver task (server
events into the core, with first-event / idle / session timeouts), ends with the ``session.finish``
handshake under its own short timeout, and always closes the socket. Every failure leaves as one typed
exception from :mod:`batchqwen.errors`; the API key never appears in a message or a logged event.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from batchqwen import __version__
from batchqwen.errors import (
    BatchQwenError,
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    ProtocolError,
    TimedOut,
    UsageError,
)
from batchqwen.items import TurnOutput, TurnRequest, TurnResult
from batchqwen.realtime.events import (
    InputAudioBufferAppend,
    InputImageBufferAppend,
    event_from_dict,
    event_to_dict,
    to_json,
)
from batchqwen.realtime.gateways import LEGACY_HOSTS, gateway_url, host_of, normalize_region
from batchqwen.realtime.protocol import (
    DEFAULT_TRANSCRIPT_GRACE,
    ClientTurn,
    FunctionCall,
    State,
    ToolHandler,
    ToolOutput,
)

_USER_AGENT = f"batchqwen/{__version__}"

EventLog = Callable[[str, dict[str, Any]], None]
#: runs one function call off the protocol core (the turn number is 1-based) and says what answered it
ToolRunner = Callable[[FunctionCall, int], Awaitable[ToolOutput]]
#: told of every turn of a conversation once its last response is done (all but the session's last)
TurnObserver = Callable[[TurnOutput], None]

_LAST_LOOK_SECONDS = 0.05  # after a timeout, how long to look for frames that were already on their way


def url_for(base_url_or_region: str, model: str, workspace: str | None = None) -> str:
    """The realtime URL for a region name (its gateway, workspace-scoped when a workspace is given) or a
    base URL, with ``?model=`` (the only way to pick a model)."""
    given = base_url_or_region.strip()
    base = gateway_url(given, workspace) if normalize_region(given) in LEGACY_HOSTS else given
    if not base.startswith(("ws://", "wss://")):
        known = ", ".join(LEGACY_HOSTS)
        raise UsageError(f"base URL must start with ws:// or wss://, or be a region ({known}): {base!r}")
    if not model:
        raise UsageError("no model given for the realtime URL")
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}model={urllib.parse.quote(model, safe='')}"


@dataclass(frozen=True)
class ClientSettings:
    """Connection settings shared by every session of a run. Times are seconds."""

    base_url: str = "cn-beijing"  # a region name or a ws(s):// base URL
    api_key: str = field(default="", repr=False)  # never printed, never logged
    workspace: str | None = None  # X-DashScope-WorkSpace
    data_inspection: str | None = None  # X-DashScope-DataInspection, e.g. "disable"
    open_timeout: float = 10.0  # TCP + TLS + WebSocket handshake
    first_event_timeout: float = 10.0  # handshake done -> session.created
    idle_timeout: float = 60.0  # longest silence while waiting on the server (sending counts as activity)
    session_timeout: float = 600.0  # the whole item, connect to close
    finish_timeout: float = 3.0  # session.finish -> session.finished; past it, a plain close
    close_timeout: float = 2.0  # WebSocket close handshake
    transcript_grace: float = DEFAULT_TRANSCRIPT_GRACE  # response.done -> late input transcript
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    pace: float = 0.0  # 0: send as fast as possible; 1.0: real time, as the official samples
    max_size: int | None = 8 * 2**20  # largest incoming frame
    event_log: EventLog | None = field(default=None, compare=False)  # ("sent"|"received", redacted event)


def _elided(value: str) -> str:
    size = len(value) * 3 // 4 - value[-2:].count("=")
    return f"<{size} bytes elided>"


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of an event dict fit for logs: base64 audio/image payloads replaced by their size."""
    out = dict(event)
    for key in ("audio", "image"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = _elided(value)
    if out.get("type") == "response.audio.delta" and isinstance(out.get("delta"), str):
        out["delta"] = _elided(out["delta"])
    return out


def _headers(settings: ClientSettings) -> dict[str, str]:
    headers: dict[str, str] = {}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    if settings.workspace:
        headers["X-DashScope-WorkSpace"] = settings.workspace
    if settings.data_inspection:
        headers["X-DashScope-DataInspection"] = settings.data_inspection
    return headers


def _scrub(text: str, settings: ClientSettings) -> str:
    """Belt and braces: whatever a peer or a library put in a message, the key does not leave."""
    return text.replace(settings.api_key, "<api key>") if settings.api_key else text


def _error_code(body: str) -> str:
    """The ``code`` of a JSON refusal body (``{"code": ...}`` or ``{"error": {"code": ...}}``), or ""."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    nested = data.get("error")
    code = nested.get("code") if isinstance(nested, dict) else data.get("code")
    return code if isinstance(code, str) else ""


async def _open(url: str, settings: ClientSettings) -> ClientConnection:
    try:
        return await connect(
            url,
            additional_headers=_headers(settings),
            user_agent_header=_USER_AGENT,
            compression=None,  # base64 audio barely compresses; deflate would cost CPU per frame
            open_timeout=settings.open_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            close_timeout=settings.close_timeout,
            max_size=settings.max_size,
            proxy=None,
        )
    except InvalidStatus as exc:
        response = exc.response
        body = response.body.decode("utf-8", "replace").strip()[:200] if response.body else ""
        code = _error_code(body)
        reason = _scrub(body or response.reason_phrase, settings)
        raise HandshakeRejected(response.status_code, reason, code=code) from None
    except InvalidURI as exc:
        raise UsageError(f"invalid realtime URL: {_scrub(str(exc), settings)}") from None
    except InvalidHandshake as exc:
        raise ConnectFailed(f"WebSocket handshake with {host_of(url)} failed: {_scrub(str(exc), settings)}") from None
    except TimeoutError:
        raise TimedOut("connect", settings.open_timeout, host=host_of(url)) from None
    except OSError as exc:  # DNS, refused, unreachable, TLS (ssl.SSLError is an OSError)
        raise ConnectFailed(f"could not connect to {host_of(url)}: {_scrub(str(exc), settings)}") from None


async def _close(ws: ClientConnection) -> None:
    """Close the connection, reading and dropping whatever still arrives meanwhile.

    Unread frames past ``max_queue`` pause reading from the socket, which would hide the peer's end of
    the close handshake until ``close_timeout``; draining lets the close finish at network speed.
    """
    closing = asyncio.create_task(ws.close())
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        pass
    finally:
        await asyncio.wait((closing,))  # bounded by close_timeout; a cancel still propagates after it
        if not closing.cancelled():
            closing.exception()  # retrieved: a failed close is not the item's failure


def _broken_runner(exc: BaseException) -> ToolOutput:
    """A tool runner that raised instead of answering: the model still gets an answer, the row the error."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    message = f"{type(exc).__name__}: {exc}"
    return ToolOutput(json.dumps({"error": {"type": "tool_runner", "message": message}}), error=message)


class _Pump:
    """The two tasks of one session around one core; all state lives here or in the core."""

    def __init__(
        self,
        ws: ClientConnection,
        core: ClientTurn,
        settings: ClientSettings,
        start: float,
        *,
        tool_runner: ToolRunner | None = None,
        on_turn: TurnObserver | None = None,
    ):
        self.ws = ws
        self.core = core
        self.settings = settings
        self.tool_runner = tool_runner
        self.on_turn = on_turn
        self.turns_told = 0
        self.loop = asyncio.get_running_loop()
        self.start = start
        self.session_deadline = start + settings.session_timeout
        self.last_activity = self.loop.time()
        self.sending = False  # the sender has events to hand out: the service's silence is not yet owed
        self.finish_deadline: float | None = None
        self.wake = asyncio.Event()

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive_loop())
        sender = asyncio.create_task(self._send_loop())
        try:
            await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and (sender.cancelled() or sender.exception() is not None or self.core.done):
                receiver.cancel()  # a sender bug, or the sender ended the session (a finish with no answer)
            await asyncio.wait((receiver,))
            if not receiver.cancelled() and receiver.exception() is None:
                # the core is done: the sender has nothing left but to return (bounded: a peer that stopped
                # reading could hold a send)
                await asyncio.wait((sender,), timeout=self.settings.close_timeout)
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.wait((receiver, sender))
        for task in (sender, receiver):  # a sender bug first: it is why the receiver stopped
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    # ------------------------------------------------------------------ receiving

    def _budget(self, now: float) -> tuple[float, str, float]:
        """(seconds to wait for the next event, what is awaited, the configured limit) in this state."""
        core, s = self.core, self.settings
        if core.state is State.AWAIT_CREATED:
            wait, what, limit = (
                self.last_activity + s.first_event_timeout - now,
                "first event",
                s.first_event_timeout,
            )
        elif core.state is State.FINISHING:
            if self.finish_deadline is None:
                self.finish_deadline = now + s.finish_timeout
            wait, what, limit = self.finish_deadline - now, "session.finished", s.finish_timeout
        else:
            wait, what, limit = self.last_activity + s.idle_timeout - now, "idle", s.idle_timeout
            if self.sending:  # still streaming (paced, or a slow link): nobody is waiting on the service yet
                wait = s.idle_timeout
            if core.deadline is not None:
                grace_left = self.start + core.deadline - now
                if grace_left < wait:
                    wait, what, limit = grace_left, "grace", s.transcript_grace
        if self.session_deadline - now < wait:
            wait, what, limit = self.session_deadline - now, "session", s.session_timeout
        return wait, what, limit

    def _expire(self, what: str, limit: float) -> None:
        core = self.core
        if what == "grace":
            core.tick(self.loop.time() - self.start)
        elif what == "session.finished" or core.completed:
            core.connection_lost()  # finishing (or whole) and out of time: a plain close, not a failure
        else:
            exc = TimedOut(what, limit)
            core.abort(exc)
            raise exc
        self.wake.set()

    async def _receive_loop(self) -> None:
        core, ws, loop, log = self.core, self.ws, self.loop, self.settings.event_log
        while not core.done:
            wait, what, limit = self._budget(loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    frame = await ws.recv()
            except TimeoutError:
                # a busy loop can fire the timer in the same turn a frame arrived: take what is already
                # here before giving up, or a finished (and billed) answer would be dropped and redone
                try:
                    async with asyncio.timeout(_LAST_LOOK_SECONDS):
                        frame = await ws.recv()
                except TimeoutError:
                    if self._budget(loop.time())[0] > 0:
                        continue  # the sender was busy meanwhile: the service's silence starts later
                    self._expire(what, limit)
                    continue
                except ConnectionClosed:
                    continue  # the next recv reports the close
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                core.connection_lost(rcvd.code if rcvd else None, _scrub(rcvd.reason, self.settings) if rcvd else "")
                break
            now = loop.time()
            self.last_activity = now
            try:
                try:
                    data = json.loads(frame)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ProtocolError(f"malformed JSON frame: {exc}") from None
                event = event_from_dict(data)
                if log is not None:
                    log("received", redact_event(data))
                core.receive(event, now - self.start)
                self._tell_turns()
            except ProtocolError as exc:
                if core.completed:  # the result is whole: an odd trailing frame just ends the session
                    core.connection_lost()
                    break
                core.abort(exc)
                raise
            self.wake.set()
        self.wake.set()

    def _tell_turns(self) -> None:
        core = self.core
        count = core.finished_turn_count - (1 if core.completed else 0)  # the last turn is the result itself
        if self.on_turn is None or count <= self.turns_told:
            return
        for turn in core.finished_turns[self.turns_told : count]:
            self.on_turn(turn)
        self.turns_told = count

    async def _run_tools(self) -> None:
        """Run the calls the core hands over (all of one response at once) and give it their outputs."""
        core = self.core
        assert self.tool_runner is not None
        calls, turn = list(core.pending_calls), core.current_turn
        answers = await asyncio.gather(*(self.tool_runner(call, turn) for call in calls), return_exceptions=True)
        outputs = [answer if isinstance(answer, ToolOutput) else _broken_runner(answer) for answer in answers]
        core.provide_tool_outputs(outputs)  # ignored when the core failed meanwhile
        self.wake.set()

    # ------------------------------------------------------------------ sending

    async def _send_loop(self) -> None:
        core, ws, loop, log = self.core, self.ws, self.loop, self.settings.event_log
        pace = self.settings.pace
        stream_start: float | None = None
        stream_turn = 1
        sent = 0
        while True:
            out = core.next_event()
            if out is None and core.state is State.AWAIT_TOOLS and self.tool_runner is not None:
                self.sending = True  # our tools are working: the service owes nothing meanwhile
                await self._run_tools()
                continue
            if out is None:
                self.sending = False
                self.last_activity = loop.time()  # from now on, the silence is the service's
                if core.done:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            self.sending = True
            event = out.event
            if pace > 0 and isinstance(event, InputAudioBufferAppend | InputImageBufferAppend):
                if out.turn != stream_turn:  # each turn's audio is paced from its own start
                    stream_start, stream_turn = None, out.turn
                if stream_start is None:
                    stream_start = loop.time() - out.at_seconds / pace
                delay = stream_start + out.at_seconds / pace - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if core.done:
                        return
            if log is not None:
                log("sent", redact_event(event_to_dict(event)))
            try:
                await ws.send(to_json(event))
            except ConnectionClosed:
                return  # the receiver sees the close and says what it means
            self.last_activity = loop.time()
            sent += 1
            if sent % 16 == 0:
                await asyncio.sleep(0)  # a long unpaced item must not starve the other sessions


async def run_turn(
    request: TurnRequest,
    settings: ClientSettings,
    *,
    tool_handler: ToolHandler | None = None,
    tool_runner: ToolRunner | None = None,
    max_tool_rounds: int | None = None,
    on_turn: TurnObserver | None = None,
) -> TurnResult:
    """Run one item's realtime session end to end and return what came back, with latencies.

    Function calls go to ``tool_runner`` (awaited, every call of a response at once; the service's
    silence is not counted meanwhile) or, synchronously, to ``tool_handler``; ``max_tool_rounds`` bounds
    the rounds of each turn. ``on_turn`` hears of every turn of a conversation but the last as it ends.

    Raises HandshakeRejected, ConnectionDropped, TimedOut, ServerError or ProtocolError (all from
    :mod:`batchqwen.errors`); a rejected or unanswered ``session.finish`` is not a failure.
    """
    core = ClientTurn(
        request,
        transcript_grace=settings.transcript_grace,
        tool_handler=tool_handler,
        defer_tools=tool_runner is not None,
        max_tool_rounds=max_tool_rounds,
    )
    url = url_for(settings.base_url, request.model.name, settings.workspace)
    loop = asyncio.get_running_loop()
    start = loop.time()
    ws = await _open(url, settings)
    connect_seconds = loop.time() - start
    try:
        await _Pump(ws, core, settings, start, tool_runner=tool_runner, on_turn=on_turn).run()
    except BatchQwenError as exc:
        exc.usage = core.usage  # a timeout after billed responses: what the attempt was billed
        raise
    finally:
        await _close(ws)
    if not core.completed:
        failure = core.failure
        if not isinstance(failure, BatchQwenError):
            failure = ConnectionDropped(f"session ended in state {core.state.value} without a result")
        failure.usage = core.usage  # what the failed attempt was billed, when a response.done came
        raise failure
    result = core.result()
    result.connect_seconds = connect_seconds
    result.total_seconds = loop.time() - start
    return result
