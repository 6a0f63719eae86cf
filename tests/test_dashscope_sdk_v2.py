"""The official dashscope 2.x SDK's realtime client (``Client().audio.realtime``) drives the simulator.

The flows are those of the SDK's own examples (``examples/01_atomic_capabilities/audio/realtime_omni.py``,
``realtime_qwen_audio.py``, ``realtime_translation.py``), with speech-like PCM instead of a WAV. The SDK
raises when a session closes before ``response.done`` or before a ``session.finished`` it requires, so a
flow that ends without an exception proves the simulator ends each family's session as the SDK expects.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from dashscope import Client
from dashscope.v2.errors import DashScopeError
from media_factory import speech_like

from batchqwen.models import audio_tokens, get_model
from batchqwen.sim.server import SimulatorConfig, SimulatorThread

KEY = "sk-test"
pytestmark = pytest.mark.filterwarnings("ignore:dashscope 2.0 audio API is a preview:FutureWarning")
CHUNK = 3200  # 100 ms of 16 kHz PCM16, as the examples append


def speech(seconds: float, seed: int = 0) -> bytes:
    return (speech_like(seconds, seed=seed)[0] * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(round(seconds * 16_000) * 2)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    # a workspace, as the SDK recommends (without one it warns about the legacy gateway); ws_url wins for the URL
    with Client(api_key=KEY, workspace="ws-test", timeout=10) as made:
        yield made


def receive_until(session: Any, target: str, deadline: float = 20.0) -> list[dict[str, Any]]:
    """Events up to and including ``target`` (as the examples' ``receive_until``), failing on a close."""
    events: list[dict[str, Any]] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        event = session.recv_event()
        assert event is not None, f"closed before {target}; got {[e['type'] for e in events]}"
        events.append(event)
        if event["type"] == target:
            return events
    raise AssertionError(f"no {target} within {deadline} s")


def drain(session: Any) -> list[dict[str, Any]]:
    """``events()`` to its end: through ``session.finished``, or a normal close."""
    return list(session.events())


def append(session: Any, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK):
        session.append_audio(pcm[i : i + CHUNK])


def audio_seconds(events: list[dict[str, Any]]) -> float:
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.audio.delta") / 48_000


def test_omni_v38_manual_turn(sim: SimulatorThread, client: Client) -> None:
    model = "qwen3.8-omni-flash-realtime"
    with client.audio.realtime.connect(model=model, ws_url=sim.url) as session:
        assert "model=qwen3.8-omni-flash-realtime" in session.url
        created = session.recv_event()
        assert created["type"] == "session.created" and "audio" in created["session"]
        session.update_session(
            ["text", "audio"],
            voice="longanlingxin",
            input_audio_config={"type": "pcm", "sample_rate": 16000},
            output_audio_config={"type": "pcm", "sample_rate": 24000},
            enable_input_audio_transcription=False,
            turn_detection=None,
            instructions="Answer briefly.",
        )
        updated = receive_until(session, "session.updated")[-1]
        assert updated["session"]["audio"]["output"]["voice"] == "longanlingxin"
        assert updated["session"]["turn_detection"] is None
        append(session, speech(2.0))
        session.commit()
        session.create_response()
        events = receive_until(session, "response.done")
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["input_audio_buffer.committed", "conversation.item.created"]
    assert "conversation.item.input_audio_transcription.completed" not in kinds
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["input_tokens_details"]["audio_tokens"] == audio_tokens(get_model(model), 2.0)
    assert audio_seconds(events) > 0.5
    assert session.last_first_audio_delay is not None


def test_omni_v38_session_finish_is_ended_by_a_close(sim: SimulatorThread, client: Client) -> None:
    with client.audio.realtime.connect(model="qwen3.8-omni-flash-realtime", ws_url=sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(["text"], turn_detection=None, enable_input_audio_transcription=False)
        receive_until(session, "session.updated")
        append(session, speech(1.0))
        session.commit()
        session.create_response()
        session.end_session()  # straight after: the server finishes the response, then just closes
        events = drain(session)
    kinds = [e["type"] for e in events]
    assert "response.done" in kinds and "session.finished" not in kinds
    assert kinds[-1] == "response.done"


def test_qwen_audio_manual_turn_ended_by_closing(sim: SimulatorThread, client: Client) -> None:
    model = "qwen-audio-3.0-realtime-plus"
    with client.audio.realtime.connect(model=model, ws_url=sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(
            ["text", "audio"],
            voice="longanqian",
            input_audio_format="pcm",
            output_audio_format="pcm",
            enable_turn_detection=False,
            instructions="Answer briefly.",
        )
        updated = receive_until(session, "session.updated")[-1]["session"]
        assert (updated["voice"], updated["input_audio_format"], updated["turn_detection"]) == (
            "longanqian",
            "pcm",
            None,
        )
        append(session, speech(1.5))
        session.commit()
        session.create_response()
        events = receive_until(session, "response.done")
        with pytest.raises(NotImplementedError):
            session.end_session()  # the SDK knows this family has no session.finish
    usage = events[-1]["response"]["usage"]
    assert usage["input_tokens_details"]["audio_tokens"] == audio_tokens(get_model(model), 1.5)
    assert audio_seconds(events) > 0.5


def translate(sim: SimulatorThread, client: Client, model: str, utterances: int) -> list[dict[str, Any]]:
    """The translation example: a receiver drains to session.finished while the audio is appended."""
    recording = silence(0.3) + b"".join(speech(1.0 + 0.3 * n, seed=n) + silence(1.2) for n in range(utterances))
    with client.audio.realtime.connect(model=model, ws_url=sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(output_modalities=["text", "audio"], translation_params={"language": "en"})
        updated = receive_until(session, "session.updated")[-1]["session"]
        assert updated["translation"] == {"language": "en"}
        with ThreadPoolExecutor(max_workers=1) as executor:
            receiver: Future[list[dict[str, Any]]] = executor.submit(drain, session)
            append(session, recording)
            session.end_session()  # drain every translation, not only the first response.done
            events = receiver.result(timeout=30)
    assert events[-1]["type"] == "session.finished"
    return events


@pytest.mark.parametrize("model", ["qwen3.8-livetranslate-flash-realtime", "qwen3-livetranslate-flash-realtime"])
def test_livetranslate_several_utterances_to_session_finished(sim: SimulatorThread, client: Client, model: str) -> None:
    events = translate(sim, client, model, utterances=3)
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == 3
    assert kinds.count("conversation.item.input_audio_transcription.completed") == 3
    assert kinds.count("response.done") == 3
    translations = [e["transcript"] for e in events if e["type"] == "response.audio_transcript.done"]
    assert len(translations) == 3 and all(t.startswith("Translation into English: ") for t in translations)
    for done in (e["response"] for e in events if e["type"] == "response.done"):
        assert done["status"] == "completed" and done["usage"]["output_tokens_details"]["audio_tokens"] > 0
    assert audio_seconds(events) > 1.0


def test_livetranslate_v38_flat_shape_is_refused_by_the_sdk_or_server(sim: SimulatorThread, client: Client) -> None:
    with client.audio.realtime.connect(model="qwen3.8-livetranslate-flash-realtime", ws_url=sim.url) as session:
        receive_until(session, "session.created")
        with pytest.raises(ValueError, match="cannot be disabled"):  # the SDK's own check
            session.update_session(output_modalities=["text"], enable_input_audio_transcription=False)
        session.send_event({"type": "session.update", "session": {"translation": {"language": "xx"}}})
        with pytest.raises(DashScopeError) as raised:
            receive_until(session, "session.updated")
        assert raised.value.code == "invalid_value"
        session.update_session(output_modalities=["text"], translation_params={"language": "de"})
        assert receive_until(session, "session.updated")[-1]["session"]["output_modalities"] == ["text"]
        session.end_session()
        assert [e["type"] for e in drain(session)] == ["session.finished"]  # no speech heard


def test_unknown_voice_raises_and_the_session_stays_usable_livetranslate(sim: SimulatorThread, client: Client) -> None:
    model = get_model("qwen3-livetranslate-flash-realtime")
    assert model.voices_published
    with client.audio.realtime.connect(model=model.name, ws_url=sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(
            output_modalities=["text", "audio"], voice="NoSuchVoice", translation_params={"language": "en"}
        )
        with pytest.raises(DashScopeError) as raised:
            receive_until(session, "session.updated")
        assert raised.value.code == "invalid_value" and "NoSuchVoice" in str(raised.value)
        session.update_session(
            output_modalities=["text"], voice=model.voices[-1], translation_params={"language": "fr"}
        )
        updated = receive_until(session, "session.updated")[-1]["session"]
        assert (updated["voice"], updated["modalities"]) == (model.voices[-1], ["text"])
        append(session, speech(1.2) + silence(1.0))
        session.end_session()
        events = drain(session)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.done") == 1 and kinds[-1] == "session.finished"
    (text,) = [e["text"] for e in events if e["type"] == "response.text.done"]
    assert text.startswith("Translation into French: ")


def test_unknown_voice_raises_and_the_session_stays_usable_omni(sim: SimulatorThread, client: Client) -> None:
    with client.audio.realtime.connect(model="qwen3-omni-flash-realtime", ws_url=sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(["text", "audio"], voice="NoSuchVoice")
        with pytest.raises(DashScopeError) as raised:
            receive_until(session, "session.updated")
        assert raised.value.code == "invalid_value"
        session.update_session(["text"], voice="Ethan", enable_turn_detection=False)
        updated = receive_until(session, "session.updated")[-1]["session"]
        assert (updated["voice"], updated["turn_detection"]) == ("Ethan", None)
        append(session, speech(1.0))
        session.commit()
        session.create_response()
        events = receive_until(session, "response.done")
        assert any(e["type"] == "conversation.item.input_audio_transcription.completed" for e in events)
        session.end_session()
        assert drain(session)[-1]["type"] == "session.finished"


def test_livetranslate_fault_mid_response_reaches_the_sdk(sim: SimulatorThread, client: Client) -> None:
    url = sim.url_for("qwen3-livetranslate-flash-realtime", sim_fault="server_error")
    with client.audio.realtime.connect(model="qwen3-livetranslate-flash-realtime", ws_url=url) as session:
        receive_until(session, "session.created")
        append(session, speech(1.0) + silence(1.0))
        with pytest.raises(DashScopeError) as raised:
            receive_until(session, "response.done")
        assert raised.value.code == "InternalError"
