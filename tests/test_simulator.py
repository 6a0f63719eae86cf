"""The simulator over real sockets on 127.0.0.1, driven by raw ``websockets`` clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from batchqwen.models import audio_tokens, get_model, image_tokens
from batchqwen.sim.core import IMAGE_BEFORE_AUDIO, input_fingerprint
from batchqwen.sim.server import Simulator, SimulatorConfig
from batchqwen.tokens import count_text_tokens

FLASH = "qwen3-omni-flash-realtime"
TURBO = "qwen-omni-turbo-realtime"
PLUS = "qwen3.5-omni-plus-realtime"
KEY = "sk-test"


# ----------------------------------------------------------------------------- media


def speech(seconds: float, freq: float = 220.0, level: float = 0.3) -> bytes:
    """Speech-like PCM16 16 kHz: a tone with a 4 Hz syllable envelope and harmonics."""
    t = np.arange(int(seconds * 16_000)) / 16_000
    envelope = 0.7 + 0.3 * np.sin(2 * np.pi * 4 * t)
    wave = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(2 * np.pi * 2 * freq * t)
    return (level / 1.5 * wave * envelope * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)


def jpeg(width: int = 640, height: int = 480, color: tuple[int, int, int] = (20, 40, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=85)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------------- client helpers


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 25))


async def open_session(sim: Simulator, model: str = FLASH, key: str = KEY, **query: str) -> ClientConnection:
    ws = await connect(sim.url_for(model, **query), additional_headers={"Authorization": f"Bearer {key}"})
    created = await recv(ws)
    assert created["type"] == "session.created"
    return ws


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    data = json.loads(frame)
    assert isinstance(data, dict)
    return data


async def send(ws: ClientConnection, event_type: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": event_type, **fields}))


async def recv_until(ws: ClientConnection, event_type: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every event up to and including the first of ``event_type``."""
    seen = []
    while True:
        event = await recv(ws, timeout)
        seen.append(event)
        if event["type"] == event_type:
            return seen


async def update(ws: ClientConnection, **session: Any) -> dict[str, Any]:
    await send(ws, "session.update", session=session)
    return await recv(ws)


async def append_audio(ws: ClientConnection, pcm: bytes, chunk: int = 3200) -> None:
    for start in range(0, len(pcm), chunk):
        await send(ws, "input_audio_buffer.append", audio=b64(pcm[start : start + chunk]))


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of deltas folded into one entry each."""
    out: list[str] = []
    for name in types:
        if not (out and out[-1] == name and name.endswith(".delta")):
            out.append(name)
    return out


def assert_error(event: dict[str, Any], code: str, param: str | None, message: str | None = None) -> None:
    assert event["type"] == "error"
    error = event["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message


# ----------------------------------------------------------------------------- handshake


def test_session_created_describes_the_session() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await connect(sim.url_for(TURBO), additional_headers={"Authorization": f"Bearer {KEY}"})
            created = await recv(ws)
            session = created["session"]
            assert created["type"] == "session.created"
            assert session["id"].startswith("sess_")
            assert session["model"] == TURBO
            assert session["voice"] == "Chelsie"
            assert session["modalities"] == ["text", "audio"]
            assert ws.subprotocol is None
            await ws.close()
            assert sim.stats.sessions == 1

    run(main)


def test_wrong_or_missing_key_is_refused_with_401() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(api_keys=("sk-good",))) as sim:
            for headers in ({"Authorization": "Bearer sk-bad"}, {}, {"Authorization": "Basic sk-good"}):
                with pytest.raises(InvalidStatus) as caught:
                    await connect(sim.url_for(FLASH), additional_headers=headers)
                assert caught.value.response.status_code == 401
            ws = await connect(sim.url_for(FLASH), additional_headers={"Authorization": "Bearer sk-good"})
            assert (await recv(ws))["type"] == "session.created"
            await ws.close()
            assert sim.stats.handshakes_refused == {401: 3}

    run(main)


def test_any_nonempty_key_is_accepted_by_default_but_not_an_empty_one() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim, key="anything")
            await ws.close()
            with pytest.raises(InvalidStatus) as caught:
                await connect(sim.url_for(FLASH), additional_headers={"Authorization": "Bearer "})
            assert caught.value.response.status_code == 401

    run(main)


def test_model_query_parameter_is_required_and_must_be_known() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            with pytest.raises(InvalidStatus) as caught:
                await connect(sim.url, additional_headers={"Authorization": f"Bearer {KEY}"})
            assert caught.value.response.status_code == 400
            ws = await connect(sim.url_for("gpt-4o"), additional_headers={"Authorization": f"Bearer {KEY}"})
            error = await recv(ws)
            assert_error(error, "Model.NotExist", "model")
            with pytest.raises(ConnectionClosedOK):
                await recv(ws)

    run(main)


def test_rpm_budget_refuses_sessions_with_429() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(rpm=2)) as sim:
            first, second = await open_session(sim), await open_session(sim)
            with pytest.raises(InvalidStatus) as caught:
                await open_session(sim)
            assert caught.value.response.status_code == 429
            assert "Throttling.RateQuota" in caught.value.response.body.decode()
            await first.close()
            await second.close()
            assert sim.stats.handshakes_refused == {429: 1}
            assert sim.stats.faults == {"throttle": 1}

    run(main)


def test_throttle_as_error_event_then_close() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(rpm=1, throttle_mode="error")) as sim:
            first = await open_session(sim)
            ws = await connect(sim.url_for(FLASH), additional_headers={"Authorization": f"Bearer {KEY}"})
            error = await recv(ws)
            assert error["type"] == "error"
            assert error["error"]["code"] == "Throttling.RateQuota"
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            await first.close()

    run(main)


def test_tpm_budget_counts_delivered_tokens() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(tpm=50)) as sim:
            ws = await open_session(sim)
            await update(ws, turn_detection=None, modalities=["text"])
            await append_audio(ws, speech(2.0))
            await send(ws, "input_audio_buffer.commit")
            await send(ws, "response.create")
            done = (await recv_until(ws, "response.done"))[-1]
            assert done["response"]["usage"]["total_tokens"] >= 50
            await ws.close()
            with pytest.raises(InvalidStatus) as caught:
                await open_session(sim)
            assert caught.value.response.status_code == 429
            assert "Throttling.AllocationQuota" in caught.value.response.body.decode()

    run(main)


def test_forced_throttle_by_url_and_by_key() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            with pytest.raises(InvalidStatus) as caught:
                await open_session(sim, sim_fault="throttle")
            assert caught.value.response.status_code == 429
            with pytest.raises(InvalidStatus) as caught:
                await open_session(sim, key="fault-throttle-1")
            assert caught.value.response.status_code == 429
            assert sim.stats.faults == {"throttle": 2}

    run(main)


# ----------------------------------------------------------------------------- session.update validation


def test_invalid_modalities_error_keeps_the_connection_open() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            for bad in (["audio"], ["text", "video"], []):
                assert_error(await update(ws, modalities=bad), "invalid_value", "session.modalities")
            updated = await update(ws, modalities=["audio", "text"])
            assert updated["type"] == "session.updated"
            assert updated["session"]["modalities"] == ["text", "audio"]
            await ws.close()

    run(main)


def test_voices_are_checked_per_model() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            turbo = await open_session(sim, TURBO)
            assert_error(await update(turbo, voice="Ryan"), "invalid_value", "session.voice")
            assert (await update(turbo, voice="Serena"))["session"]["voice"] == "Serena"
            flash = await open_session(sim, FLASH)
            assert (await update(flash, voice="Ryan"))["session"]["voice"] == "Ryan"
            assert_error(await update(flash, voice="Nobody"), "invalid_value", "session.voice")
            await turbo.close()
            await flash.close()

    run(main)


def test_turn_detection_ranges() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            bad = [
                ({"type": "server_vad", "threshold": 1.5}, "session.turn_detection.threshold"),
                ({"type": "server_vad", "threshold": -1.01}, "session.turn_detection.threshold"),
                ({"type": "server_vad", "silence_duration_ms": 199}, "session.turn_detection.silence_duration_ms"),
                ({"type": "server_vad", "silence_duration_ms": 6001}, "session.turn_detection.silence_duration_ms"),
                ({"type": "semantic_vad"}, "session.turn_detection.type"),
            ]
            for value, param in bad:
                assert_error(await update(ws, turn_detection=value), "invalid_value", param)
            good = {"type": "server_vad", "threshold": -1, "silence_duration_ms": 6000, "prefix_padding_ms": 0}
            assert (await update(ws, turn_detection=good))["session"]["turn_detection"] == good
            assert (await update(ws, turn_detection=None))["session"]["turn_detection"] is None
            await ws.close()

    run(main)


def test_formats_and_sampling_parameters() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            flash = await open_session(sim)
            for spelling in ("pcm16", "pcm", "pcm24"):
                updated = await update(flash, input_audio_format=spelling, output_audio_format=spelling)
                assert updated["session"]["output_audio_format"] == spelling
            assert_error(await update(flash, input_audio_format="mp3"), "invalid_value", "session.input_audio_format")
            assert (await update(flash, temperature=0.7, top_p=0.8, seed=3))["session"]["temperature"] == 0.7
            turbo = await open_session(sim, TURBO)
            for param in ("temperature", "top_p", "top_k", "seed"):
                assert_error(await update(turbo, **{param: 1}), "invalid_value", f"session.{param}")
            assert (await update(turbo, max_tokens=100))["type"] == "session.updated"
            await flash.close()
            await turbo.close()

    run(main)


# ----------------------------------------------------------------------------- buffer errors


def test_image_before_audio_and_bad_images() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            await update(ws, turn_detection=None)
            await send(ws, "input_image_buffer.append", image=b64(jpeg()))
            assert_error(await recv(ws), "invalid_value", "image", IMAGE_BEFORE_AUDIO)
            await append_audio(ws, silence(0.1))
            png = io.BytesIO()
            Image.new("RGB", (64, 64)).save(png, "PNG")
            for bad in (png.getvalue(), b"\xff\xd8 not really a jpeg"):
                await send(ws, "input_image_buffer.append", image=b64(bad))
                assert_error(await recv(ws), "invalid_value", "image")
            await send(ws, "input_image_buffer.append", image=b64(jpeg()))
            await send(ws, "input_audio_buffer.commit")
            assert (await recv(ws))["type"] == "input_audio_buffer.committed"
            await ws.close()

    run(main)


def test_empty_commit_clear_and_cancel_without_response() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            await update(ws, turn_detection=None)
            await send(ws, "input_audio_buffer.commit")
            assert_error(await recv(ws), "input_audio_buffer_commit_empty", None)
            await append_audio(ws, speech(0.3))
            await send(ws, "input_audio_buffer.clear")
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
            await send(ws, "input_audio_buffer.commit")
            assert_error(await recv(ws), "input_audio_buffer_commit_empty", None)
            await send(ws, "response.cancel")
            assert_error(await recv(ws), "response_cancel_not_active", None)
            await send(ws, "no.such.event")
            assert_error(await recv(ws), "invalid_event", "type")
            await ws.send("{broken")
            assert_error(await recv(ws), "invalid_event", None)
            assert (await update(ws, voice="Ethan"))["type"] == "session.updated"  # still open
            await ws.close()

    run(main)


# ----------------------------------------------------------------------------- turns

EXPECTED_AUDIO_ORDER = [
    "input_audio_buffer.committed",
    "conversation.item.created",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
]


def test_manual_turn_event_order_audio_and_usage() -> None:
    model = get_model(FLASH)
    pcm = silence(0.4) + speech(1.2) + silence(0.5) + speech(0.9) + silence(0.2)
    image = jpeg(640, 480, (20, 40, 200))
    instructions = "Describe what you receive in one sentence."

    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            updated = await update(
                ws,
                turn_detection=None,
                instructions=instructions,
                input_audio_transcription={"model": "gummy-realtime-v1"},
            )
            assert updated["session"]["instructions"] == instructions
            await append_audio(ws, pcm)
            await send(ws, "input_image_buffer.append", image=b64(image))
            await send(ws, "input_audio_buffer.commit")
            await send(ws, "response.create", response={"instructions": None})
            events = await recv_until(ws, "response.done")
            types = [e["type"] for e in events]
            assert types[:6] == EXPECTED_AUDIO_ORDER
            assert collapse(types[6:]) == [
                *collapse([t for t in types[6:] if t.endswith(".delta")]),
                "response.audio_transcript.done",
                "response.audio.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.done",
            ]
            assert "response.text.delta" not in types
            transcript_in = events[2]["transcript"]
            assert transcript_in == "[speech 0.4–1.6 s] [speech 2.1–3.0 s]"

            words = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
            done_transcript = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
            assert words == done_transcript
            assert done_transcript.startswith("I heard 3.2 s of audio (2 speech segments, loudest ")
            assert "saw 1 image (640×480, mostly blue)" in done_transcript
            assert f"Instructions: '{instructions}'" in done_transcript

            chunks = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta"]
            assert all(len(c) == 4800 for c in chunks[:-1])  # 100 ms of 24 kHz PCM16
            out_seconds = sum(map(len, chunks)) / 48_000
            assert out_seconds == pytest.approx(0.06 * len(done_transcript.split()))

            usage = events[-1]["response"]["usage"]
            text_in = count_text_tokens(instructions)
            audio_in = audio_tokens(model, len(pcm) / 32_000)
            image_in = image_tokens(model, 640, 480)
            text_out = count_text_tokens(done_transcript)
            audio_out = audio_tokens(model, out_seconds)
            assert usage == {
                "total_tokens": text_in + audio_in + image_in + text_out + audio_out,
                "input_tokens": text_in + audio_in + image_in,
                "output_tokens": text_out + audio_out,
                "input_tokens_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": image_in},
                "output_tokens_details": {"text_tokens": text_out, "audio_tokens": audio_out},
            }
            assert events[-1]["response"]["status"] == "completed"

            await send(ws, "session.finish")
            assert (await recv(ws))["type"] == "session.finished"
            with pytest.raises(ConnectionClosedOK):
                await recv(ws)
            assert sim.stats.delivered == {input_fingerprint(pcm, [image], instructions): 1}
            assert sim.stats.responses_completed == 1

    run(main)


def test_text_only_turn_uses_text_events_and_response_instructions() -> None:
    model = get_model(TURBO)

    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim, TURBO)
            await update(ws, turn_detection=None, modalities=["text"], instructions="session words")
            await append_audio(ws, speech(0.5))
            await send(ws, "input_audio_buffer.commit")
            await send(ws, "response.create", response={"instructions": "Say hi."})
            events = await recv_until(ws, "response.done")
            types = [e["type"] for e in events]
            assert "conversation.item.input_audio_transcription.completed" not in types  # transcription off
            assert not [t for t in types if "audio" in t and t.startswith("response.")]
            text = next(e for e in events if e["type"] == "response.text.done")["text"]
            assert "".join(e["delta"] for e in events if e["type"] == "response.text.delta") == text
            assert "Instructions: 'Say hi.'" in text
            usage = events[-1]["response"]["usage"]
            assert usage["input_tokens_details"]["audio_tokens"] == audio_tokens(model, 0.5) == 25  # 1 s minimum
            assert usage["output_tokens_details"] == {"text_tokens": count_text_tokens(text)}
            await ws.close()

    run(main)


def test_server_vad_turn_without_commit() -> None:
    model = get_model(FLASH)
    pcm = silence(1.0) + speech(1.5) + silence(1.0)

    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)
            vad = {"type": "server_vad", "threshold": 0.2, "prefix_padding_ms": 300, "silence_duration_ms": 500}
            await update(ws, turn_detection=vad)
            await append_audio(ws, pcm)
            events = await recv_until(ws, "response.done")
            types = [e["type"] for e in events]
            assert types[:4] == [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.created",
            ]
            started, stopped, committed = events[0], events[1], events[2]
            assert 660 <= started["audio_start_ms"] <= 720  # onset 1000 ms minus 300 ms padding
            assert 2980 <= stopped["audio_end_ms"] <= 3060  # speech end 2500 ms plus 500 ms of silence
            assert started["item_id"] == stopped["item_id"] == committed["item_id"]
            assert types[4] == "response.created"
            usage = events[-1]["response"]["usage"]
            item_seconds = (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000
            assert usage["input_tokens_details"]["audio_tokens"] == audio_tokens(model, item_seconds)
            transcript = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
            assert "(1 speech segment," in transcript
            # the trailing silence is no new turn
            with pytest.raises(TimeoutError):
                await recv(ws, timeout=0.3)
            await ws.close()

    run(main)


def test_server_vad_ignores_silence_and_a_click() -> None:
    click = (np.ones(320) * 20_000).astype("<i2").tobytes()  # one loud 20 ms frame

    async def main() -> None:
        async with Simulator() as sim:
            ws = await open_session(sim)  # server_vad is the default
            await append_audio(ws, silence(1.0) + click + silence(1.5))
            with pytest.raises(TimeoutError):
                await recv(ws, timeout=0.3)
            await ws.close()

    run(main)


def test_cancel_mid_stream_ends_the_response_as_cancelled() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(delta_delay_seconds=0.02)) as sim:
            ws = await open_session(sim)
            await update(ws, turn_detection=None)
            await append_audio(ws, speech(1.0))
            await send(ws, "input_audio_buffer.commit")
            await send(ws, "response.create")
            await recv_until(ws, "response.audio_transcript.delta")
            await send(ws, "response.cancel")
            events = await recv_until(ws, "response.done")
            assert events[-1]["response"]["status"] == "cancelled"
            assert sim.stats.responses_cancelled == 1
            assert sim.stats.delivered == {}
            await ws.close()

    run(main)


def test_latency_delays_the_first_response_event() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(latency_seconds=0.3)) as sim:
            ws = await open_session(sim)
            await update(ws, turn_detection=None)
            await append_audio(ws, speech(0.5))
            await send(ws, "input_audio_buffer.commit")
            await recv_until(ws, "conversation.item.created")
            started = time.monotonic()
            await send(ws, "response.create")
            assert (await recv(ws))["type"] == "response.created"
            assert time.monotonic() - started >= 0.29
            await recv_until(ws, "response.done")  # drain, so the close handshake is not stuck behind it
            await ws.close()

    run(main)


def test_text_input_and_function_call_on_qwen35() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]

    async def main() -> None:
        async with Simulator() as sim:
            flash = await open_session(sim, FLASH)
            message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
            await send(flash, "conversation.item.create", item=message)
            assert_error(await recv(flash), "invalid_event", "type")
            await flash.close()

            ws = await open_session(sim, PLUS)
            await update(ws, turn_detection=None, tools=tools)
            prompt = {"type": "input_text", "text": "Use get_weather for Paris"}
            await send(ws, "conversation.item.create", item={**message, "content": [prompt]})
            assert (await recv(ws))["type"] == "conversation.item.created"
            await send(ws, "response.create")
            events = await recv_until(ws, "response.done")
            done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
            assert done["name"] == "get_weather"
            assert json.loads(done["arguments"]) == {"city": "Use get_weather for Paris"}
            assert events[-1]["response"]["output"][0]["type"] == "function_call"

            output = {"type": "function_call_output", "call_id": done["call_id"], "output": "sunny, 21 C"}
            await send(ws, "conversation.item.create", item=output)
            assert (await recv(ws))["type"] == "conversation.item.created"
            await send(ws, "response.create")
            events = await recv_until(ws, "response.done")
            transcript = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
            assert "Tool get_weather returned: 'sunny, 21 C'." in transcript
            await ws.close()

    run(main)


# ----------------------------------------------------------------------------- faults


async def faulty_turn(sim: Simulator, pcm: bytes, **open_args: str) -> tuple[ClientConnection, list[str]]:
    """Open a session, run one manual turn and return the frames received after response.create."""
    ws = await open_session(sim, **open_args)
    await update(ws, turn_detection=None, modalities=["text", "audio"])
    await append_audio(ws, pcm)
    await send(ws, "input_audio_buffer.commit")
    await recv_until(ws, "conversation.item.created")
    await send(ws, "response.create")
    frames: list[str] = []
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), 0.5)
        except (TimeoutError, ConnectionClosed):
            return ws, frames
        assert isinstance(frame, str)
        frames.append(frame)


def test_fault_disconnect_drops_tcp_without_close_frame() -> None:
    pcm = speech(1.0)

    async def main() -> None:
        async with Simulator() as sim:
            ws, frames = await faulty_turn(sim, pcm, sim_fault="disconnect")
            assert frames and json.loads(frames[0])["type"] == "response.created"
            assert all(json.loads(f)["type"] != "response.done" for f in frames)
            with pytest.raises(ConnectionClosedError) as caught:
                await ws.recv()
            assert caught.value.rcvd is None  # abrupt: no close frame
            assert sim.stats.faults == {"disconnect": 1}
            assert sim.stats.delivered == {}

    run(main)


def test_fault_server_error_then_close() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws, frames = await faulty_turn(sim, speech(1.0), key="fault-server_error-7")
            last = json.loads(frames[-1])
            assert last["type"] == "error"
            assert last["error"]["type"] == "server_error"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert sim.stats.faults == {"server_error": 1}

    run(main)


def test_fault_malformed_frame() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws, frames = await faulty_turn(sim, speech(1.0), sim_fault="malformed")
            with pytest.raises(json.JSONDecodeError):
                json.loads(frames[-1])
            assert all(json.loads(f)["type"] != "response.done" for f in frames[:-1])
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert sim.stats.faults == {"malformed": 1}

    run(main)


def test_fault_hang_stops_answering_but_stays_open() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            ws, frames = await faulty_turn(sim, speech(1.0), sim_fault="hang")
            assert frames and all(json.loads(f)["type"] != "response.done" for f in frames)
            await send(ws, "session.finish")  # ignored by a hung server
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await ws.close()
            assert sim.stats.faults == {"hang": 1}

    run(main)


def test_fault_rates_are_seeded_and_nothing_is_answered_twice() -> None:
    config = SimulatorConfig(disconnect_rate=0.3, server_error_rate=0.2, malformed_rate=0.1, seed=7)
    items = [speech(0.3, freq=200 + 10 * i) for i in range(12)]

    async def once() -> tuple[dict[str, int], list[bool]]:
        async with Simulator(config) as sim:
            outcomes = []
            for pcm in items:
                ws, frames = await faulty_turn(sim, pcm)
                ok = any('"response.done"' in f for f in frames)
                outcomes.append(ok)
                await ws.close()
                assert sim.stats.delivered.get(input_fingerprint(pcm), 0) == (1 if ok else 0)
            assert sim.stats.max_deliveries() == 1
            return dict(sim.stats.faults), outcomes

    async def main() -> None:
        first, second = await once(), await once()
        assert first == second  # same seed, same faults
        faults, outcomes = first
        assert 0 < outcomes.count(True) < len(items)
        assert sum(faults.values()) == outcomes.count(False)

    run(main)


def test_idle_timeout_and_session_lifetime_cut() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(idle_timeout_seconds=0.3)) as sim:
            ws = await open_session(sim)
            error = await recv(ws, timeout=2)
            assert error["error"] == {
                "type": "server_error",
                "code": "idle_timeout",
                "message": "Session idle timeout.",
                "param": None,
            }
            with pytest.raises(ConnectionClosedOK):
                await recv(ws)
        async with Simulator(SimulatorConfig(session_lifetime_seconds=0.6, idle_timeout_seconds=0.3)) as sim:
            ws = await open_session(sim)
            started = time.monotonic()
            with pytest.raises(ConnectionClosedOK):
                while True:  # stay active: only the lifetime can end this session
                    await append_audio(ws, silence(0.02))
                    try:
                        event = await recv(ws, timeout=0.1)
                    except TimeoutError:
                        continue
                    assert event["error"]["code"] == "session_lifetime"
            assert 0.55 <= time.monotonic() - started < 2
            assert sim.stats.faults == {"session_lifetime": 1}

    run(main)
