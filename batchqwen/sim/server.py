"""A local WebSocket server that speaks the Qwen realtime protocol families, with switchable faults.

The session logic lives in :mod:`batchqwen.sim.core` (no I/O) for every protocol family; responses the
core produces mid-stream (server speech detection, LiveTranslate's answer per utterance) are streamed
as they come, and a session ends the family's way (the core's ``should_close``: after
``session.finished``, or right after ``session.finish`` on Omni 3.8). This module adds what only a server
can do: the handshake (path, ``model`` query parameter, ``Authorization: Bearer`` key), rate limits
(sessions and tokens per sliding minute), latency, faults, idle and lifetime cuts, outages, the quota
endpoint (``GET /api/v1/quotas``, Model Studio's "List model quotas", answering the quota it enforces)
and counters.

Entry points::

    async with Simulator(SimulatorConfig(), host="127.0.0.1", port=0) as sim:
        url = sim.url                      # ws://127.0.0.1:PORT/api-ws/v1/realtime (add ?model=...)
    with SimulatorThread(SimulatorConfig()) as sim:   # for synchronous code (e.g. the dashscope SDK)
        ...
    serve(SimulatorConfig(), "127.0.0.1", 8765)      # blocking, for ``batchqwen simulate``

Faults per connection: ``&sim_fault=disconnect|server_error|hang|malformed|throttle`` in the URL, or an
API key starting with ``fault-KIND-`` (e.g. ``fault-hang-1``). Response faults (all but throttle) hit
the connection's first response, midway through its events. The argument faults
(``bad_argument_type``, ``missing_argument``) make every function call of the connection violate its
tool's schema. Tool calls per connection: ``&sim_tool_rounds=N``, ``&sim_parallel_calls=0|1``.

Outages, for a stated window (``SimulatorConfig.outage_*``, seconds after start, or ``start_outage(N)``
at any time): ``refuse`` closes the listening socket for the window and listens again on the same port
afterwards, so a client's connect fails with a real ECONNREFUSED (the kernel refuses it; this process
never sees those attempts, so only the window is counted); ``503`` answers every handshake and quota
request with HTTP 503, each counted in ``stats.outage_refusals``. Sessions already open go on in both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from batchqwen.errors import ProtocolError
from batchqwen.realtime import events as ev
from batchqwen.sim.config import ARGUMENT_FAULTS, OUTAGE_MODES, OutageMode
from batchqwen.sim.core import FAULT_KINDS, ReceivedMedia, ServerSession, SimulatorConfig
from batchqwen.sim.quotas import QUOTA_PATH, quota_page

__all__ = [
    "FAULT_KINDS",
    "PATH",
    "QUOTA_PATH",
    "BilledResponse",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "SimulatorThread",
    "serve",
]

PATH = "/api-ws/v1/realtime"
RECEIVED_KEPT = 10_000  # sessions whose received media stats.received remembers
MALFORMED_FRAME = '{"type": "response.audio.delta", "delta": "AAAA'  # truncated JSON, as a broken proxy might
_DELTAS = (
    ev.ResponseAudioDelta,
    ev.ResponseAudioTranscriptDelta,
    ev.ResponseTextDelta,
    ev.ResponseFunctionCallArgumentsDelta,
)


@dataclass(frozen=True)
class BilledResponse:
    """One ``response.done`` as written to the socket: what the client was told that response cost."""

    response_id: str
    status: str  # completed | cancelled
    usage: ev.Usage
    function_calls: tuple[str, ...] = ()  # the tools it called, in output order


@dataclass
class SimulatorStats:
    """Counters of one simulator. ``delivered`` maps an input fingerprint to completed responses sent;
    ``billing`` maps a session id to its responses' :class:`BilledResponse`, in the order sent."""

    connections: int = 0
    handshakes_refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    sessions: int = 0
    responses_completed: int = 0
    responses_cancelled: int = 0
    faults: dict[str, int] = field(default_factory=dict)  # kind -> count (also idle / lifetime cuts)
    delivered: dict[str, int] = field(default_factory=dict)  # core.input_fingerprint -> count
    quota_requests: int = 0  # GET /api/v1/quotas answered (any status but an outage's 503)
    outages: int = 0  # outage windows begun (scheduled or started by start_outage)
    outage_refusals: int = 0  # handshakes and quota requests answered 503 by a "503" outage
    billing: dict[str, list[BilledResponse]] = field(default_factory=dict)  # session id -> responses
    #: session id -> the audio and images that session received (the server's own count, kept for the
    #: last RECEIVED_KEPT sessions)
    received: dict[str, ReceivedMedia] = field(default_factory=dict)

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def max_deliveries(self) -> int:
        """The most times any one input was answered (1 when nothing was answered twice)."""
        return max(self.delivered.values(), default=0)


@dataclass
class _Admission:
    model: str
    fault: str | None  # a response fault (or throttle); argument faults are in ``config``
    throttle_code: str | None  # set when the session must be refused with an error event
    config: SimulatorConfig  # the simulator's, with this connection's switches applied


@dataclass
class _Job:
    events: list[ev.Event]
    response_id: str | None = None  # set for the events of one response
    cancelled: bool = False


class _Window:
    """A sliding sum over the last ``seconds`` (of sessions or of tokens)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def current(self, now: float) -> int:
        while self._entries and self._entries[0][0] <= now - self.seconds:
            self.total -= self._entries.popleft()[1]
        return self.total

    def add(self, now: float, amount: int) -> None:
        self._entries.append((now, amount))
        self.total += amount


class Simulator:
    """The simulator server; an async context manager. ``url`` has no query: add ``?model=NAME``."""

    def __init__(self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.stats = SimulatorStats()
        self._rng = random.Random(self.config.seed)
        self._sessions = _Window(self.config.window_seconds)
        self._tokens = _Window(self.config.window_seconds)
        self._admissions: dict[Any, _Admission] = {}
        self._server: Server | None = None  # the one listening now (None while a "refuse" outage is on)
        self._servers: list[Server] = []  # every listener started, for close(); old ones keep their sessions
        self._outage: OutageMode | None = None
        self._outage_task: asyncio.Task[None] | None = None
        self._scheduled: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{PATH}"

    def url_for(self, model: str, **query: str) -> str:
        """The full URL for ``model``, with extra query parameters such as ``sim_fault``."""
        extra = "".join(f"&{key}={value}" for key, value in query.items())
        return f"{self.url}?model={model}{extra}"

    @property
    def quota_url(self) -> str:
        """Where the simulator answers Model Studio's "List model quotas" (``GET``, Bearer key)."""
        return f"http://{self.host}:{self.port}{QUOTA_PATH}"

    @property
    def outage(self) -> OutageMode | None:
        """The outage in progress, if any."""
        return self._outage

    async def start(self) -> None:
        """Start listening; with port 0 the chosen port is in ``self.port`` afterwards."""
        await self._listen()
        config = self.config
        if config.outage_mode is not None and config.outage_seconds > 0:
            mode, seconds = config.outage_mode, config.outage_seconds
            self._scheduled = asyncio.get_running_loop().call_later(
                config.outage_start_seconds, self._begin_outage, seconds, mode
            )

    async def _listen(self) -> None:
        server = await ws_serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # base64 audio barely compresses; deflate would cost the CPU we save
            ping_interval=None,  # the service's ping policy is undocumented; we answer pings, never send
            max_size=self.config.max_frame_bytes,
            server_header=None,
            reuse_address=True,  # listen again on the same port after a "refuse" outage
        )
        self._server = server
        self._servers.append(server)
        sockname = next(iter(server.sockets)).getsockname()
        self.port = int(sockname[1])

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._scheduled is not None:
            self._scheduled.cancel()
        if self._outage_task is not None:
            self._outage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage_task
            self._outage_task = None
        self._outage = None
        servers, self._servers, self._server = self._servers, [], None
        for server in servers:
            server.close(close_connections=True)
        for server in servers:
            await server.wait_closed()

    # ------------------------------------------------------------------ outages

    async def start_outage(self, seconds: float, *, mode: OutageMode = "refuse") -> None:
        """Begin an outage now, for ``seconds``; returns once it has begun (connections refused from then).

        ``refuse``: the listening socket is closed (ECONNREFUSED) and reopened on the same port at the
        end; ``503``: every handshake and quota request is answered HTTP 503 until the end.
        """
        self._begin_outage(seconds, mode)

    def _begin_outage(self, seconds: float, mode: OutageMode) -> None:
        if mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be one of {', '.join(OUTAGE_MODES)}, not {mode!r}")
        if self._outage is not None:
            raise RuntimeError(f"an outage ({self._outage}) is already in progress")
        self._outage = mode
        self.stats.outages += 1
        if mode == "refuse" and self._server is not None:
            # the asyncio listener only: open sessions of this server go on; close() still ends them
            self._server.server.close()
            self._server = None
        self._outage_task = asyncio.get_running_loop().create_task(self._outage_for(seconds))

    async def _outage_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.end_outage()

    async def end_outage(self) -> None:
        """End the outage in progress now (listening again after ``refuse``); nothing when there is none."""
        mode, self._outage = self._outage, None
        task, self._outage_task = self._outage_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if mode == "refuse":
            await self._listen()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ handshake

    def _refuse(self, connection: ServerConnection, status: int, text: str) -> Response:
        self.stats.handshakes_refused[status] = self.stats.handshakes_refused.get(status, 0) + 1
        return connection.respond(status, text + "\n")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._outage == "503":
            self.stats.outage_refusals += 1
            return self._refuse(connection, 503, "Service Unavailable")
        parts = urlsplit(request.path)
        if parts.path == QUOTA_PATH:
            return self._quotas(connection, request, parse_qs(parts.query))
        self.stats.connections += 1
        if parts.path != PATH:
            return self._refuse(connection, 404, f"Not found: {parts.path}")
        query = parse_qs(parts.query)
        model = (query.get("model") or [""])[0]
        if not model:
            return self._refuse(connection, 400, "Missing required query parameter: model")
        key = _bearer_key(request.headers)
        if not key or (self.config.api_keys and key not in self.config.api_keys):
            return self._refuse(connection, 401, "Invalid API-key provided.")
        fault = query["sim_fault"][0] if query.get("sim_fault") else _key_fault(key)
        if fault is not None and fault not in FAULT_KINDS:
            return self._refuse(connection, 400, f"Unknown sim_fault {fault!r}; one of {', '.join(FAULT_KINDS)}")
        try:
            config = _connection_config(self.config, query, fault)
        except ValueError as exc:
            return self._refuse(connection, 400, str(exc))
        if fault in ARGUMENT_FAULTS:
            fault = None

        now = time.monotonic()
        throttle_code = None
        over_rpm = self.config.rpm is not None and self._sessions.current(now) >= self.config.rpm
        if fault == "throttle" or over_rpm:
            throttle_code = "Throttling.RateQuota"
        elif self.config.tpm is not None and self._tokens.current(now) >= self.config.tpm:
            throttle_code = "Throttling.AllocationQuota"
        if throttle_code is not None:
            self.stats.count_fault("throttle")
            if self.config.throttle_mode == "handshake":
                return self._refuse(connection, 429, f"{throttle_code}: Requests rate limit exceeded.")
        else:
            self._sessions.add(now, 1)
        self._admissions[connection.id] = _Admission(model, fault, throttle_code, config)
        return None

    def _quotas(self, connection: ServerConnection, request: Request, query: dict[str, list[str]]) -> Response:
        """``GET /api/v1/quotas``: a plain HTTP request answered in process_request, never upgraded."""
        self.stats.quota_requests += 1
        request_id = str(uuid.uuid4())
        key = _bearer_key(request.headers)
        if not key or (self.config.api_keys and key not in self.config.api_keys):
            # DashScope's REST error shape: code, message, request_id
            body: dict[str, Any] = {"code": "InvalidApiKey", "message": "Invalid API-key provided."}
            return _json_response(connection, 401, {**body, "request_id": request_id})
        workspace = request.headers.get("X-DashScope-WorkSpace") or None
        page = quota_page(self.config, query, request_id=request_id, workspace_id=workspace)
        return _json_response(connection, 200, page)

    # ------------------------------------------------------------------ one connection

    async def _handle(self, ws: ServerConnection) -> None:
        admission = self._admissions.pop(ws.id, None)
        if admission is None:  # not admitted by _process_request; cannot happen, but never crash
            return
        if admission.throttle_code is not None:
            error = {
                "type": "invalid_request_error",
                "code": admission.throttle_code,
                "message": "Requests rate limit exceeded, please try again later.",
                "param": None,
            }
            with contextlib.suppress(ConnectionClosed):
                await ws.send(ev.to_json(ev.Error(error=error, event_id=ev.new_event_id())))
                await ws.close(1008, "throttled")
            return
        self.stats.sessions += 1
        core = ServerSession(admission.model, config=admission.config)
        self.stats.received[core.session_id] = core.received
        if len(self.stats.received) > RECEIVED_KEPT:
            del self.stats.received[next(iter(self.stats.received))]
        await _Connection(self, ws, core, admission.fault).run()

    def _pick_fault(self) -> str | None:
        roll = self._rng.random()
        for kind, rate in self.config.fault_rates().items():
            if roll < rate:
                return kind
            roll -= rate
        return None

    def _delivered(self, fingerprint: str, usage: ev.Usage | None) -> None:
        self.stats.responses_completed += 1
        self.stats.delivered[fingerprint] = self.stats.delivered.get(fingerprint, 0) + 1
        if usage is not None:
            self._tokens.add(time.monotonic(), usage.total_tokens)

    def _billed(self, core: ServerSession, done: ev.ResponseDone) -> None:
        """Record a ``response.done`` just written, under its session; count its argument fault."""
        response = done.response
        response_id = str(response.get("id"))
        output = response.get("output") or []
        calls = tuple(str(i.get("name")) for i in output if isinstance(i, dict) and i.get("type") == "function_call")
        usage = done.usage or ev.Usage()
        record = BilledResponse(response_id, str(response.get("status")), usage, calls)
        self.stats.billing.setdefault(core.session_id, []).append(record)
        if response_id in core.argument_faults:
            self.stats.count_fault(core.argument_faults[response_id])


class _Connection:
    """One session's pump: a reader feeding the core and a sender streaming its answers in order."""

    def __init__(self, sim: Simulator, ws: ServerConnection, core: ServerSession, fault: str | None):
        self.sim = sim
        self.ws = ws
        self.core = core
        self.forced_fault = fault
        self.jobs: asyncio.Queue[_Job | None] = asyncio.Queue()  # None: close after what is queued
        self.pending_responses: list[_Job] = []  # queued or streaming, for response.cancel
        self.hung = False
        self.ended = False  # the sender ended the connection (fault, close)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            self._enqueue(self.core.opening_events())
            if self.core.should_close:
                self.jobs.put_nowait(None)
            else:
                await self._read_loop()
            if self.core.should_close:  # let the sender flush what is queued, then close
                await sender
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    async def _read_loop(self) -> None:
        config = self.sim.config
        lifetime_end = time.monotonic() + config.session_lifetime_seconds
        while not self.ended:
            left = lifetime_end - time.monotonic()
            try:
                # asyncio.timeout, not wait_for: no task per frame (wait_for makes one on Python 3.11)
                async with asyncio.timeout(min(config.idle_timeout_seconds, max(left, 0.0))):
                    frame = await self.ws.recv()
            except TimeoutError:
                lifetime = time.monotonic() >= lifetime_end
                await self._cut("session_lifetime" if lifetime else "idle_timeout")
                return
            except ConnectionClosed:
                return
            if self.hung:
                continue  # a hung server reads and drops everything
            try:
                event = ev.parse_event(frame)
            except ProtocolError:
                self._enqueue(self.core.receive_frame(frame))  # the core words the error
                continue
            if isinstance(event, ev.ResponseCancel) and self.pending_responses:
                self.pending_responses[0].cancelled = True
                continue
            self._enqueue(self.core.receive(event))
            if self.core.should_close:
                self.jobs.put_nowait(None)
                return

    async def _cut(self, kind: str) -> None:
        """Idle or lifetime cut: a server_error event (unless hung), then a normal close."""
        self.sim.stats.count_fault(kind)
        if not self.hung:
            message = "Session idle timeout." if kind == "idle_timeout" else "Session lifetime exceeded."
            error = {"type": "server_error", "code": kind, "message": message, "param": None}
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(ev.to_json(ev.Error(error=error, event_id=ev.new_event_id())))
        self.ended = True
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1000, kind)

    def _enqueue(self, events: list[ev.Event]) -> None:
        """Split the core's answer into plain jobs and one job per response, keeping their order."""
        plain: list[ev.Event] = []
        response: _Job | None = None
        for event in events:
            if isinstance(event, ev.ResponseCreated):
                if plain:
                    self.jobs.put_nowait(_Job(plain))
                    plain = []
                response = _Job([], response_id=str(event.response.get("id")))
            if response is not None:
                response.events.append(event)
                if isinstance(event, ev.ResponseDone):
                    self.pending_responses.append(response)
                    self.jobs.put_nowait(response)
                    response = None
            else:
                plain.append(event)
        if plain:
            self.jobs.put_nowait(_Job(plain))

    async def _send_loop(self) -> None:
        while True:
            job = await self.jobs.get()
            if job is None:
                self.ended = True
                await self.ws.close(1000, "session finished")
                return
            if job.response_id is None:
                for event in job.events:
                    await self.ws.send(ev.to_json(event))
                continue
            finished = await self._stream(job)
            self.pending_responses.remove(job)
            if not finished:
                return

    async def _stream(self, job: _Job) -> bool:
        """Send one response with the configured latency, cancel and faults; False ends the connection."""
        assert job.response_id is not None
        config, stats = self.sim.config, self.sim.stats
        fault, self.forced_fault = self.forced_fault or self.sim._pick_fault(), None
        if fault == "throttle":  # refused at the handshake already
            fault = None
        fault_at = max(1, len(job.events) // 2)
        if config.latency_seconds > 0:
            await asyncio.sleep(config.latency_seconds)
        for index, event in enumerate(job.events):
            if job.cancelled:
                if index == 0:
                    await self.ws.send(ev.to_json(event))
                cancelled = self.core.cancelled_done(job.response_id)
                await self.ws.send(ev.to_json(cancelled))
                stats.responses_cancelled += 1
                self.sim._billed(self.core, cancelled)
                return True
            if fault is not None and index == fault_at:
                await self._inject(fault)
                return False
            if config.delta_delay_seconds > 0 and isinstance(event, _DELTAS):
                await asyncio.sleep(config.delta_delay_seconds)
            await self.ws.send(ev.to_json(event))
            if isinstance(event, ev.ResponseDone):
                self.sim._delivered(self.core.fingerprints[job.response_id], event.usage)
                self.sim._billed(self.core, event)
        return True

    async def _inject(self, fault: str) -> None:
        self.sim.stats.count_fault(fault)
        self.ended = fault != "hang"  # a hung server keeps reading until the client gives up
        if fault == "disconnect":
            self.ws.transport.abort()  # no close frame: the client sees an abnormal closure (1006)
        elif fault == "server_error":
            error = {
                "type": "server_error",
                "code": "InternalError",
                "message": "Internal server error (simulated).",
                "param": None,
            }
            await self.ws.send(ev.to_json(ev.Error(error=error, event_id=ev.new_event_id())))
            await self.ws.close(1011, "server error")
        elif fault == "malformed":
            await self.ws.send(MALFORMED_FRAME)
            await self.ws.close(1011, "malformed frame")
        elif fault == "hang":
            self.hung = True  # the reader keeps draining frames; nothing is ever sent again


def _json_response(connection: ServerConnection, status: int, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body, ensure_ascii=False))
    del response.headers["Content-Type"]  # websockets' Headers is a multi-dict: replace, not add
    response.headers["Content-Type"] = "application/json"
    return response


def _connection_config(config: SimulatorConfig, query: dict[str, list[str]], fault: str | None) -> SimulatorConfig:
    """The config of one connection: its argument fault and tool switches (``sim_tool_rounds``,
    ``sim_parallel_calls``) from the URL; ValueError for a value that is not one."""
    changes: dict[str, Any] = {}
    if fault in ARGUMENT_FAULTS:
        changes["argument_fault"] = fault
    rounds = query["sim_tool_rounds"][0] if query.get("sim_tool_rounds") else None
    if rounds is not None:
        if not rounds.isdigit():
            raise ValueError(f"sim_tool_rounds must be a whole number, not {rounds!r}")
        changes["tool_rounds"] = int(rounds)
    parallel = query["sim_parallel_calls"][0] if query.get("sim_parallel_calls") else None
    if parallel is not None:
        if parallel not in ("0", "1"):
            raise ValueError(f"sim_parallel_calls must be 0 or 1, not {parallel!r}")
        changes["parallel_tool_calls"] = parallel == "1"
    return replace(config, **changes) if changes else config


def _bearer_key(headers: Headers) -> str:
    value = headers.get("Authorization", "")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _key_fault(key: str) -> str | None:
    if not key.startswith("fault-"):
        return None
    rest = key.removeprefix("fault-")
    return next((kind for kind in FAULT_KINDS if rest == kind or rest.startswith(kind + "-")), rest.split("-")[0])


# ----------------------------------------------------------------------------- runners


class SimulatorThread:
    """The simulator on its own event loop in a daemon thread, for synchronous callers.

    ``with SimulatorThread(config) as sim: sim.url, sim.stats`` (read the stats after the clients are done).
    """

    def __init__(self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.simulator = Simulator(config, host=host, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="batchqwen-simulator", daemon=True)

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def stats(self) -> SimulatorStats:
        return self.simulator.stats

    @property
    def quota_url(self) -> str:
        return self.simulator.quota_url

    def url_for(self, model: str, **query: str) -> str:
        return self.simulator.url_for(model, **query)

    def start_outage(self, seconds: float, *, mode: OutageMode = "refuse") -> None:
        """Begin an outage now for ``seconds`` (see :meth:`Simulator.start_outage`); returns once begun."""
        self._call(self.simulator.start_outage(seconds, mode=mode))

    def end_outage(self) -> None:
        self._call(self.simulator.end_outage())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def __enter__(self) -> SimulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulator.start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.simulator.close(), self._loop).result(timeout=15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()


def serve(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator until interrupted (blocking). ``ready`` receives the URL once listening."""

    async def main() -> None:
        async with Simulator(config, host=host, port=port) as sim:
            (ready or _announce)(sim.url)
            await asyncio.Future()  # forever

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _announce(url: str) -> None:
    print(f"batchqwen simulator listening on {url}?model=MODEL", file=sys.stderr, flush=True)


if __name__ == "__main__":  # python -m batchqwen.sim.server [--port N] [--host H]
    args = sys.argv[1:]
    options = dict(zip(args[::2], args[1::2], strict=False))
    serve(SimulatorConfig(), options.get("--host", "127.0.0.1"), int(options.get("--port", "8765")))
