"""The official dashscope SDK's OmniRealtimeConversation drives the simulator (run in a thread)."""

from __future__ import annotations

import base64
import gc
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation
from PIL import Image

from batchqwen.models import audio_tokens, get_model, image_tokens
from batchqwen.sim.server import SimulatorConfig, SimulatorThread
from batchqwen.tokens import count_text_tokens

MODEL = "qwen3-omni-flash-realtime"
KEY = "sk-sdk-test"


def speech(seconds: float, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = (np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t)) * (0.7 + 0.3 * np.sin(8 * np.pi * t))
    return (0.2 * wave * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


class Recorder(OmniRealtimeCallback):
    """Collects every event the SDK hands over; ``wait_for`` blocks until a type arrives."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._arrived = threading.Condition()

    def on_event(self, message: Any) -> None:  # the SDK passes the decoded JSON object
        with self._arrived:
            self.events.append(dict(message))
            self._arrived.notify_all()

    def on_close(self, close_status_code: Any, close_msg: Any) -> None:
        self.closed.set()

    def wait_for(self, event_type: str, timeout: float = 10.0) -> dict[str, Any]:
        with self._arrived:
            found = self._arrived.wait_for(lambda: self.first(event_type) is not None, timeout)
        assert found, f"no {event_type} within {timeout} s; got {self.types()}"
        event = self.first(event_type)
        assert event is not None
        return event

    def first(self, event_type: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["type"] == event_type), None)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as running:
        yield running


@pytest.fixture
def conversation(sim: SimulatorThread) -> Iterator[tuple[OmniRealtimeConversation, Recorder]]:
    recorder = Recorder()
    conv = OmniRealtimeConversation(model=MODEL, callback=recorder, url=sim.url, api_key=KEY)
    conv.connect()
    raw = getattr(conv.ws, "sock", None)  # websocket-client's socket wrapper
    try:
        yield conv, recorder
    finally:
        conv.close()
        recorder.closed.wait(5)
        conv.thread.join(5)
        # websocket-client (1.9) leaks the TCP socket when the server closes first, as the service does
        # after session.finished; free it here so the leak is not reported against a later test.
        if raw is not None:
            raw.shutdown()


def send_audio(conv: OmniRealtimeConversation, pcm: bytes) -> None:
    for start in range(0, len(pcm), 3200):  # 100 ms chunks, as the official samples send
        conv.append_audio(base64.b64encode(pcm[start : start + 3200]).decode())


def test_sdk_manual_turn(conversation: tuple[OmniRealtimeConversation, Recorder]) -> None:
    conv, rec = conversation
    model = get_model(MODEL)
    created = rec.wait_for("session.created")
    assert conv.get_session_id() == created["session"]["id"]

    conv.update_session(
        output_modalities=[MultiModality.TEXT, MultiModality.AUDIO],
        voice="Ethan",
        enable_turn_detection=False,
        instructions="Answer briefly.",
    )
    updated = rec.wait_for("session.updated")
    assert updated["session"]["voice"] == "Ethan"
    assert updated["session"]["turn_detection"] is None

    pcm = speech(1.5) + silence(0.5)
    send_audio(conv, pcm[:3200])
    conv.append_video(base64.b64encode(jpeg(480, 360)).decode())
    send_audio(conv, pcm[3200:])
    conv.commit()
    conv.create_response()
    done = rec.wait_for("response.done")

    transcript_in = rec.wait_for("conversation.item.input_audio_transcription.completed")["transcript"]
    assert transcript_in == "[speech 0.0–1.5 s]"
    words = "".join(e["delta"] for e in rec.events if e["type"] == "response.audio_transcript.delta")
    assert words.startswith("I heard 2.0 s of audio (1 speech segment")
    assert "saw 1 image (480×360, mostly red)" in words
    audio = b"".join(base64.b64decode(e["delta"]) for e in rec.events if e["type"] == "response.audio.delta")
    assert len(audio) > 0
    assert conv.get_last_response_id() == done["response"]["id"]
    assert conv.get_last_first_audio_delay() is not None  # type: ignore[no-untyped-call]

    usage = done["response"]["usage"]
    assert usage["input_tokens_details"] == {
        "text_tokens": count_text_tokens("Answer briefly."),
        "audio_tokens": audio_tokens(model, 2.0),
        "image_tokens": image_tokens(model, 480, 360),
    }
    assert usage["output_tokens_details"] == {
        "text_tokens": count_text_tokens(words),
        "audio_tokens": audio_tokens(model, len(audio) / 48_000),
    }
    assert "error" not in rec.types()

    conv.end_session(timeout=5)  # raises on an error or a timeout
    assert rec.first("session.finished") is not None
    assert rec.closed.wait(5)


def test_sdk_server_vad_turn(conversation: tuple[OmniRealtimeConversation, Recorder]) -> None:
    conv, rec = conversation
    rec.wait_for("session.created")
    conv.update_session(
        output_modalities=[MultiModality.TEXT, MultiModality.AUDIO],
        voice="Cherry",
        turn_detection_silence_duration_ms=400,
    )
    assert rec.wait_for("session.updated")["session"]["turn_detection"]["threshold"] == 0.2

    send_audio(conv, silence(0.5) + speech(1.2) + silence(0.8))
    started = rec.wait_for("input_audio_buffer.speech_started")
    stopped = rec.wait_for("input_audio_buffer.speech_stopped")
    rec.wait_for("input_audio_buffer.committed")
    done = rec.wait_for("response.done")
    assert 150 <= started["audio_start_ms"] <= 260
    assert 2050 <= stopped["audio_end_ms"] <= 2150
    assert done["response"]["status"] == "completed"
    types = rec.types()
    assert types.index("input_audio_buffer.committed") < types.index("response.created")
    assert "response.audio.delta" in types
    assert "error" not in types, json.dumps([e for e in rec.events if e["type"] == "error"])

    conv.end_session(timeout=5)
    assert rec.closed.wait(5)


def test_sdk_sees_the_documented_error_shape(conversation: tuple[OmniRealtimeConversation, Recorder]) -> None:
    conv, rec = conversation
    rec.wait_for("session.created")
    conv.update_session(output_modalities=[MultiModality.AUDIO], voice="Cherry")
    error = rec.wait_for("error")
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "session.modalities"
    conv.end_session(timeout=5)  # the connection survived the error
    assert rec.closed.wait(5)


# websocket-client leaks its socket when a handshake is refused; that warning is the SDK's, not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_sdk_with_a_wrong_key_cannot_connect(sim: SimulatorThread) -> None:
    refused = sim.stats.handshakes_refused.get(401, 0)
    conv = OmniRealtimeConversation(model=MODEL, callback=Recorder(), url=sim.url, api_key="sk-wrong")
    with pytest.raises(TimeoutError):
        conv.connect()  # the SDK waits 5 s for a socket that the 401 never opens
    conv.close()
    assert sim.stats.handshakes_refused.get(401, 0) == refused + 1
    gc.collect()  # surface the leaked socket's warning here, under the filter
