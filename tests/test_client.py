"""run_turn against the simulator (and two tiny scripted servers) on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve

from batchqwen.errors import (
    ConnectionDropped,
    HandshakeRejected,
    InvalidState,
    ItemError,
    ProtocolError,
    ServerError,
    TimedOut,
    UsageError,
)
from batchqwen.items import PreparedInput, TurnRequest, TurnResult
from batchqwen.models import audio_tokens, get_model
from batchqwen.realtime.client import ClientSettings, redact_event, run_turn, url_for
from batchqwen.realtime.events import SessionCreated, to_json
from batchqwen.realtime.protocol import FunctionCall
from batchqwen.retry import backoff_delays, classify, is_throttling
from batchqwen.sim.core import ServerSession, synthesize
from batchqwen.sim.server import Simulator, SimulatorConfig

FLASH = get_model("qwen3-omni-flash-realtime")
OMNI35 = get_model("qwen3.5-omni-flash-realtime")
KEY = "sk-test-key-0123456789"
T = TypeVar("T")


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()


def request(pcm: bytes | None = None, *, model: Any = FLASH, voice: str | None = None, **kwargs: Any) -> TurnRequest:
    return TurnRequest(
        model=model,
        voice=voice or model.default_voice,
        modalities=("text", "audio"),
        media=PreparedInput(pcm16=tone(1.0) if pcm is None else pcm),
        **kwargs,
    )


def with_sim(config: SimulatorConfig, body: Callable[[Simulator], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Simulator(config) as sim:
            return await body(sim)

    return asyncio.run(main())


def turn(config: SimulatorConfig | None = None, req: TurnRequest | None = None, **settings: Any) -> TurnResult:
    """One run_turn against a fresh simulator."""
    settings.setdefault("api_key", KEY)

    async def body(sim: Simulator) -> TurnResult:
        return await run_turn(req or request(), ClientSettings(base_url=sim.url, **settings))

    return with_sim(config or SimulatorConfig(), body)


# ----------------------------------------------------------------------------- pure helpers


def test_url_for_regions_and_custom_bases() -> None:
    assert url_for("cn-beijing", "qwen3-omni-flash-realtime") == (
        "wss://dashscope.aliyuncs.com/api-ws/v1/realtime?model=qwen3-omni-flash-realtime"
    )
    intl = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime?model=m"
    assert url_for("ap-southeast-1", "m") == intl
    assert url_for("intl", "m") == intl
    assert url_for("wss://ws1.cn-beijing.maas.aliyuncs.com/api-ws/v1/realtime", "m").endswith("realtime?model=m")
    assert url_for("ws://127.0.0.1:9/x?sim_fault=hang", "m") == "ws://127.0.0.1:9/x?sim_fault=hang&model=m"
    with pytest.raises(UsageError, match="ws://"):
        url_for("https://dashscope.aliyuncs.com", "m")


def test_redact_event_elides_payloads_and_leaves_the_rest() -> None:
    audio = {"type": "input_audio_buffer.append", "audio": "AAAA" * 1000}
    assert redact_event(audio) == {"type": "input_audio_buffer.append", "audio": "<3000 bytes elided>"}
    assert audio["audio"] == "AAAA" * 1000  # a copy, not in place
    assert redact_event({"type": "input_image_buffer.append", "image": "AAE="})["image"] == "<2 bytes elided>"
    delta = {"type": "response.audio.delta", "delta": "AAAA", "response_id": "r"}
    assert redact_event(delta) == {
        "type": "response.audio.delta",
        "delta": "<3 bytes elided>",
        "response_id": "r",
    }
    text = {"type": "response.audio_transcript.delta", "delta": "hello"}
    assert redact_event(text) == text


def test_settings_never_show_the_key() -> None:
    settings = ClientSettings(api_key=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings)


# ----------------------------------------------------------------------------- against the simulator


def test_happy_path_result_latencies_and_a_clean_log() -> None:
    logged: list[tuple[str, dict[str, Any]]] = []
    result = turn(
        req=request(instructions="Describe it."),
        event_log=lambda direction, event: logged.append((direction, event)),
    )
    assert result.session_id.startswith("sess_")
    assert len(result.response_ids) == 1
    assert result.input_transcript == "[speech 0.0–1.0 s]"
    assert "I heard 1.0 s of audio" in result.output_transcript
    assert result.output_pcm == synthesize(result.output_transcript, SimulatorConfig().word_ms)
    assert result.usage is not None and result.usage.input_audio_tokens == audio_tokens(FLASH, 1.0)
    assert result.connect_seconds is not None and result.first_text_seconds is not None
    assert result.first_audio_seconds is not None and result.total_seconds is not None
    assert 0 < result.connect_seconds <= result.first_text_seconds <= result.total_seconds
    assert result.first_audio_seconds <= result.total_seconds < 10

    types = [(direction, event["type"]) for direction, event in logged]
    assert types[0] == ("received", "session.created")
    assert types[1] == ("sent", "session.update")
    assert ("sent", "session.finish") in types and types[-1] == ("received", "session.finished")
    text = json.dumps(logged, ensure_ascii=False)
    assert KEY not in text
    appends = [e for d, e in logged if e["type"] == "input_audio_buffer.append"]
    assert len(appends) == 10 and all(e["audio"] == "<3200 bytes elided>" for e in appends)
    assert all(e["delta"].endswith("bytes elided>") for d, e in logged if e["type"] == "response.audio.delta")


def test_bad_voice_is_a_server_error_with_the_servers_words() -> None:
    with pytest.raises(ServerError) as info:
        turn(req=request(voice="NoSuchVoice"))
    error = info.value
    assert error.error_type == "invalid_request_error"
    assert error.code and "NoSuchVoice" in error.message
    assert classify(error) == "permanent"


def test_empty_commit_is_a_server_error_and_the_close_does_not_wait_out_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        turn(req=request(b""), close_timeout=5.0)
    # the simulator keeps streaming the answer to response.create; unread frames must not stall the close
    assert time.monotonic() - started < 3.0
    assert info.value.code == "input_audio_buffer_commit_empty"
    assert "empty" in info.value.message
    assert classify(info.value) == "permanent"


def test_bad_key_is_handshake_rejected_401_and_fatal() -> None:
    secret = "sk-wrong-secret-key"
    with pytest.raises(HandshakeRejected) as info:
        turn(SimulatorConfig(api_keys=(KEY,)), api_key=secret)
    assert info.value.status == 401
    assert "401" in str(info.value) and secret not in str(info.value)
    assert classify(info.value) == "fatal"


def test_throttling_at_the_handshake_is_429_and_retryable() -> None:
    with pytest.raises(HandshakeRejected) as info:
        turn(api_key="fault-throttle-1")
    assert info.value.status == 429
    assert is_throttling(info.value) and classify(info.value) == "retryable"


def test_throttling_as_an_error_event_is_retryable() -> None:
    with pytest.raises(ServerError) as info:
        turn(SimulatorConfig(throttle_mode="error"), api_key="fault-throttle-1")
    assert info.value.code.startswith("Throttling")
    assert is_throttling(info.value) and classify(info.value) == "retryable"


def test_server_error_then_close() -> None:
    with pytest.raises(ServerError) as info:
        turn(api_key="fault-server_error-1")
    assert info.value.error_type == "server_error"
    assert info.value.code == "InternalError" and "Internal server error" in info.value.message
    assert classify(info.value) == "retryable"


def test_abrupt_close_mid_response_is_connection_dropped_and_retryable() -> None:
    with pytest.raises(ConnectionDropped) as info:
        turn(api_key="fault-disconnect-1")
    assert "responding" in str(info.value)
    assert classify(info.value) == "retryable"


def test_malformed_frame_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed JSON"):
        turn(api_key="fault-malformed-1")


def test_hanging_server_times_out_within_the_idle_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        turn(api_key="fault-hang-1", idle_timeout=0.5, close_timeout=0.5)
    assert info.value.what == "idle" and info.value.seconds == 0.5
    assert time.monotonic() - started < 3.0
    assert classify(info.value) == "retryable"


def test_rejected_session_finish_still_returns_the_result() -> None:
    result = turn(SimulatorConfig(finish_unsupported_models=(FLASH.name,)))
    assert result.output_pcm and result.usage is not None


def test_tool_round_through_run_turn() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"properties": {}}}}]
    calls: list[FunctionCall] = []

    def handler(call: FunctionCall) -> str:
        calls.append(call)
        return "42"

    async def body(sim: Simulator) -> TurnResult:
        req = request(model=OMNI35, instructions="use lookup", session_options={"tools": tools})
        return await run_turn(req, ClientSettings(base_url=sim.url, api_key=KEY), tool_handler=handler)

    result = with_sim(SimulatorConfig(), body)
    assert len(calls) == 1 and len(result.response_ids) == 2
    assert "Tool lookup returned: '42'" in result.output_transcript


def test_pacing_follows_the_audio_clock() -> None:
    started = time.monotonic()
    result = turn(pace=4.0)  # 1 s of audio at 4x real time: the last chunk leaves at 0.225 s
    assert time.monotonic() - started >= 0.2
    assert result.first_text_seconds is not None and result.first_text_seconds >= 0.2


def test_many_concurrent_sessions_and_no_leftover_tasks() -> None:
    async def body(sim: Simulator) -> list[TurnResult]:
        settings = ClientSettings(base_url=sim.url, api_key=KEY)
        results = await asyncio.gather(*(run_turn(request(tone(0.5)), settings) for _ in range(40)))
        mine = asyncio.current_task()
        await asyncio.sleep(0)
        # only the simulator's own tasks may remain; none of run_turn's
        leftovers = [t for t in asyncio.all_tasks() if t is not mine and "_Pump" in repr(t.get_coro())]
        assert leftovers == []
        return results

    results = with_sim(SimulatorConfig(), body)
    assert len({r.session_id for r in results}) == 40
    assert all(r.output_pcm and r.usage is not None for r in results)


def test_cancelling_run_turn_closes_everything() -> None:
    async def body(sim: Simulator) -> None:
        settings = ClientSettings(base_url=sim.url, api_key="fault-hang-1", close_timeout=0.5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run_turn(request(), settings), 0.3)
        await asyncio.sleep(0)
        leftovers = [t for t in asyncio.all_tasks() if "_Pump" in repr(t.get_coro()) or "close" in repr(t.get_coro())]
        assert leftovers == []

    with_sim(SimulatorConfig(), body)


# ----------------------------------------------------------------------------- scripted servers


def test_connection_refused_is_connection_dropped() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ClientSettings(base_url=f"ws://127.0.0.1:{port}/x", api_key=KEY, open_timeout=2)
    with pytest.raises(ConnectionDropped, match="could not connect"):
        asyncio.run(run_turn(request(), settings))


def scripted(handler: Callable[[ServerConnection], Awaitable[None]], settings: dict[str, Any]) -> TurnResult:
    async def main() -> TurnResult:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = ClientSettings(base_url=f"ws://127.0.0.1:{port}/rt", api_key=KEY, **settings)
            return await run_turn(request(), client)

    return asyncio.run(main())


def test_silent_server_times_out_waiting_for_the_first_event() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        scripted(silent, {"first_event_timeout": 0.3, "close_timeout": 0.3})
    assert info.value.what == "first event"
    assert time.monotonic() - started < 2.0


def test_out_of_order_server_is_a_protocol_error() -> None:
    async def confused(ws: ServerConnection) -> None:
        await ws.send(to_json(SessionCreated(session={"id": "sess_x"})))
        await ws.send(json.dumps({"type": "response.audio.delta", "response_id": "r", "delta": "AAAA"}))
        await ws.wait_closed()

    with pytest.raises(ProtocolError, match=r"response\.audio\.delta"):
        scripted(confused, {"close_timeout": 0.5})


def test_close_before_session_created_is_connection_dropped_with_the_code() -> None:
    async def closer(ws: ServerConnection) -> None:
        await ws.close(4000, "go away")

    with pytest.raises(ConnectionDropped) as info:
        scripted(closer, {})
    assert "4000" in str(info.value) and "go away" in str(info.value)


def dropping_server(drop: set[str]) -> Callable[[ServerConnection], Awaitable[None]]:
    """A real protocol server (the simulator's core) that never sends the event types in ``drop``."""

    async def handler(ws: ServerConnection) -> None:
        server = ServerSession(FLASH.name)
        for event in server.opening_events():
            await ws.send(to_json(event))
        async for frame in ws:
            for event in server.receive_frame(frame):
                if event.type not in drop:
                    await ws.send(to_json(event))

    return handler


def test_unanswered_session_finish_ends_cleanly_after_finish_timeout() -> None:
    started = time.monotonic()
    result = scripted(dropping_server({"session.finished"}), {"finish_timeout": 0.3, "close_timeout": 0.5})
    assert result.output_pcm and result.input_transcript
    assert 0.3 <= time.monotonic() - started < 2.0


def test_missing_input_transcript_waits_only_for_the_grace() -> None:
    drop = {"conversation.item.input_audio_transcription.completed"}
    result = scripted(dropping_server(drop), {"transcript_grace": 0.3})
    assert result.input_transcript == "" and result.output_transcript
    assert result.total_seconds is not None and 0.3 <= result.total_seconds < 2.0


# ----------------------------------------------------------------------------- retry policy (pure)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionDropped("gone"), "retryable"),
        (TimedOut("idle", 1.0), "retryable"),
        (HandshakeRejected(429), "retryable"),
        (HandshakeRejected(503), "retryable"),
        (HandshakeRejected(401), "fatal"),
        (HandshakeRejected(403), "fatal"),
        (HandshakeRejected(404), "permanent"),
        (ServerError("x", error_type="server_error", code="InternalError"), "retryable"),
        (ServerError("x", error_type="invalid_request_error", code="Throttling"), "retryable"),
        (ServerError("x", error_type="invalid_request_error", code="Throttling.RateQuota"), "retryable"),
        (ServerError("x", error_type="invalid_request_error", code="Throttling.AllocationQuota"), "retryable"),
        (ServerError("x", error_type="invalid_request_error", code="InvalidApiKey"), "fatal"),
        (ServerError("x", error_type="invalid_request_error", code="Arrearage"), "fatal"),
        # the model, not the account: that model's items fail, the run goes on (the families issue)
        (ServerError("x", error_type="invalid_request_error", code="AccessDenied.Unpurchased"), "permanent"),
        (ServerError("x", error_type="invalid_request_error", code="AllocationQuota.Exhausted"), "fatal"),
        (ServerError("x", error_type="invalid_request_error", code="DataInspectionFailed"), "permanent"),
        (ServerError("x", error_type="invalid_request_error", code="invalid_value"), "permanent"),
        (ServerError("x"), "retryable"),
        (ProtocolError("bad frame"), "retryable"),  # the server's fault, not the item's (the outages issue)
        (InvalidState("our own misuse of the core"), "permanent"),
        (ItemError("bad file"), "permanent"),
        (UsageError("bad option"), "fatal"),
        (ValueError("?"), "permanent"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_is_throttling() -> None:
    assert is_throttling(HandshakeRejected(429))
    assert is_throttling(ServerError("x", code="Throttling.RateQuota"))
    assert not is_throttling(HandshakeRejected(503))
    assert not is_throttling(ServerError("x", code="InvalidApiKey"))
    assert not is_throttling(TimedOut("idle", 1))


@given(code=st.text(max_size=30), error_type=st.sampled_from(["", "server_error", "invalid_request_error"]))
def test_classify_any_server_error(code: str, error_type: str) -> None:
    kind = classify(ServerError("m", error_type=error_type, code=code))
    assert kind in ("retryable", "permanent", "fatal")
    if code.startswith("Throttling"):
        assert kind == "retryable"


@settings(max_examples=200)
@given(
    base=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 100.0),
    factor=st.floats(1.0, 4.0),
    jitter=st.sampled_from(["full", "decorrelated", "none"]),
    seed=st.integers(0, 2**32),
)
def test_backoff_delays_stay_within_bounds(base: float, cap: float, factor: float, jitter: Any, seed: int) -> None:
    delays = list(
        itertools.islice(backoff_delays(base=base, cap=cap, factor=factor, jitter=jitter, rng=random.Random(seed)), 40)
    )
    assert all(0.0 <= d <= cap for d in delays)
    if jitter == "full":
        assert all(d <= min(cap, base * factor**n) + 1e-9 for n, d in enumerate(delays))
    elif jitter == "decorrelated":
        assert all(d >= min(base, cap) - 1e-9 for d in delays)
    else:
        assert delays == sorted(delays)
        assert delays[0] == min(cap, base)
    again = backoff_delays(base=base, cap=cap, factor=factor, jitter=jitter, rng=random.Random(seed))
    assert list(itertools.islice(again, 40)) == delays  # same seed, same delays


def test_backoff_without_jitter_doubles_to_the_cap() -> None:
    delays = list(itertools.islice(backoff_delays(base=0.5, cap=3.0, jitter="none"), 5))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(UsageError):
        next(backoff_delays(factor=0.5))
