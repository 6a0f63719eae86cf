"""The simulator core per protocol family, in memory: session shapes, validation, turns, end of session."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from media_factory import speech_like
from PIL import Image

from batchqwen.models import audio_tokens, get_model, image_tokens
from batchqwen.realtime import events as ev
from batchqwen.sim.core import IMAGE_BEFORE_AUDIO, ServerSession, input_fingerprint
from batchqwen.tokens import count_text_tokens

OMNI = "qwen3-omni-flash-realtime"
OMNI38 = "qwen3.8-omni-flash-realtime"
AUDIO30 = "qwen-audio-3.0-realtime-plus"
LT3 = "qwen3-livetranslate-flash-realtime"
LT35 = "qwen3.5-livetranslate-flash-realtime"
LT38 = "qwen3.8-livetranslate-flash-realtime"
RATE = 16_000


# ----------------------------------------------------------------------------- helpers


def speech(seconds: float, seed: int = 0) -> bytes:
    return (speech_like(seconds, seed=seed)[0] * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(round(seconds * RATE) * 2)


def jpeg(width: int = 320, height: int = 240, color: tuple[int, int, int] = (20, 40, 220), quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=quality)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def opened(model: str) -> tuple[ServerSession, dict[str, Any]]:
    server = ServerSession(model)
    (created,) = server.opening_events()
    assert isinstance(created, ev.SessionCreated)
    return server, created.session


def update(server: ServerSession, **session: Any) -> ev.Event:
    (reply,) = server.receive(ev.SessionUpdate(session=session))
    return reply


def error_of(reply: ev.Event) -> dict[str, Any]:
    assert isinstance(reply, ev.Error), reply
    assert reply.error["type"] == "invalid_request_error"
    return reply.error


def stream(server: ServerSession, pcm: bytes, chunk: int = 3200) -> list[ev.Event]:
    out: list[ev.Event] = []
    for i in range(0, len(pcm), chunk):
        out += server.receive(ev.InputAudioBufferAppend(audio=b64(pcm[i : i + chunk])))
    return out


def of_type(events: list[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def seconds_of(pcm_b64_deltas: list[ev.ResponseAudioDelta], rate: int = 24_000) -> float:
    return sum(len(base64.b64decode(d.delta)) for d in pcm_b64_deltas) / (2 * rate)


# ----------------------------------------------------------------------------- session shapes


def test_omni_session_is_flat_as_before() -> None:
    _, session = opened(OMNI)
    assert session["voice"] == "Cherry"
    assert session["input_audio_format"] == "pcm16"
    assert session["output_audio_format"] == "pcm24"
    assert session["turn_detection"]["type"] == "server_vad"
    assert "audio" not in session and "translation" not in session


def test_omni_v38_echoes_the_nested_audio_shape() -> None:
    server, session = opened(OMNI38)
    assert session["audio"] == {
        "input": {"format": {"type": "pcm", "sample_rate": 16_000}},
        "output": {"format": {"type": "pcm", "sample_rate": 24_000}, "voice": "longanlingxin"},
    }
    assert "voice" not in session and "input_audio_format" not in session
    reply = update(
        server,
        modalities=["text", "audio"],
        audio={
            "input": {"format": {"type": "pcm", "sample_rate": 16_000}},
            "output": {"format": {"type": "pcm", "sample_rate": 24_000}, "voice": "some-unlisted-voice"},
        },
        input_audio_transcription=None,
        turn_detection=None,
        instructions="Answer briefly.",
    )
    assert isinstance(reply, ev.SessionUpdated)
    assert reply.session["audio"]["output"]["voice"] == "some-unlisted-voice"  # list not published: any name
    assert reply.session["turn_detection"] is None
    assert reply.session["instructions"] == "Answer briefly."


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"voice": "longanlingxin"}, "session.voice"),  # flat voice is the 2025 shape
        ({"input_audio_format": "pcm16"}, "session.input_audio_format"),
        (
            {"audio": {"input": {"format": {"type": "pcm", "sample_rate": 8000}}}},
            "session.audio.input.format.sample_rate",
        ),
        ({"audio": {"output": {"format": {"type": "mp3"}}}}, "session.audio.output.format.type"),
        ({"audio": {"output": {"voice": ""}}}, "session.audio.output.voice"),
        ({"modalities": ["audio"]}, "session.modalities"),
    ],
)
def test_omni_v38_rejects_what_it_does_not_speak(session: dict[str, Any], param: str) -> None:
    server, before = opened(OMNI38)
    error = error_of(update(server, **session))
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert server.family.echo(server.session)["audio"] == before["audio"]  # a rejected update changes nothing


def test_qwen_audio_is_flat_with_pcm_names_and_any_voice() -> None:
    server, session = opened(AUDIO30)
    assert (session["input_audio_format"], session["output_audio_format"]) == ("pcm", "pcm")
    reply = update(server, voice="not-in-any-list", input_audio_format="pcm", output_audio_format="pcm")
    assert isinstance(reply, ev.SessionUpdated) and reply.session["voice"] == "not-in-any-list"


def test_livetranslate_session_has_translation_and_no_turn_detection() -> None:
    server, session = opened(LT3)
    model = get_model(LT3)
    assert session["modalities"] == ["text", "audio"]
    assert session["voice"] == model.default_voice
    assert session["translation"] == {"language": "en"}
    assert session["input_audio_transcription"]["model"] == "qwen3-asr-flash-realtime"
    assert "turn_detection" not in session and "instructions" not in session
    reply = update(
        server, modalities=["text"], translation={"language": "ja"}, input_audio_transcription={"model": None}
    )
    assert isinstance(reply, ev.SessionUpdated)
    assert reply.session["translation"] == {"language": "ja"}
    assert reply.session["input_audio_transcription"] == {"model": None}  # off, spelled as the SDK sends it


def test_livetranslate_v38_uses_output_modalities_and_speaker_detection() -> None:
    server, session = opened(LT38)
    model = get_model(LT38)
    voice = "AnyVoice" if not model.voices_published else model.voices[-1]  # unpublished list: any name
    assert session["output_modalities"] == ["text", "audio"] and "modalities" not in session
    assert session["audio"]["input"]["turn_detection"] == {"type": "speaker_detection"}
    assert session["audio"]["output"]["voice"] == model.default_voice
    reply = update(
        server,
        output_modalities=["text"],
        translation={"language": "fr"},
        audio={"input": {"turn_detection": {"type": "speaker_detection"}}, "output": {"voice": voice}},
    )
    assert isinstance(reply, ev.SessionUpdated)
    assert reply.session["output_modalities"] == ["text"]
    assert reply.session["translation"] == {"language": "fr"}
    assert reply.session["audio"]["output"]["voice"] == voice
    if model.voices_published:
        refused = error_of(update(server, audio={"output": {"voice": "NoSuchVoice"}}))
        assert refused["param"] == "session.audio.output.voice"


# ----------------------------------------------------------------------------- LiveTranslate validation


def test_livetranslate_validation_errors_name_the_field() -> None:
    server, _ = opened(LT3)
    model = get_model(LT3)
    assert model.translation is not None
    assert error_of(update(server, modalities=["audio"]))["param"] == "session.modalities"
    bad_target = error_of(update(server, translation={"language": "xx"}))
    assert bad_target["param"] == "session.translation.language"
    assert all(code in bad_target["message"] for code in model.translation.targets)
    bad_source = error_of(update(server, input_audio_transcription={"language": "xx"}))
    assert bad_source["param"] == "session.input_audio_transcription.language"
    voice = error_of(update(server, voice="NoSuchVoice"))
    assert voice["param"] == "session.voice" and model.default_voice in voice["message"]
    assert error_of(update(server, instructions="be brief"))["param"] == "session.instructions"
    assert error_of(update(server, turn_detection=None))["param"] == "session.turn_detection"
    assert error_of(update(server, output_modalities=["text"]))["param"] == "session.output_modalities"
    ok = update(server, input_audio_transcription={"language": model.translation.sources[1]})
    assert isinstance(ok, ev.SessionUpdated)


def test_livetranslate_speech_only_for_speech_targets() -> None:
    model = get_model(LT3)
    assert model.translation is not None
    text_only = [code for code in model.translation.targets if code not in model.translation.speech_targets]
    if not text_only:
        pytest.skip("every target of this model is spoken")
    server, _ = opened(LT3)
    error = error_of(update(server, translation={"language": text_only[0]}))  # session is text+audio
    assert error["param"] == "session.translation.language" and "no speech output" in error["message"]
    assert isinstance(update(server, modalities=["text"], translation={"language": text_only[0]}), ev.SessionUpdated)
    assert error_of(update(server, modalities=["text", "audio"]))["param"] == "session.translation.language"


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"modalities": ["text"]}, "session.modalities"),
        ({"output_modalities": ["audio"]}, "session.output_modalities"),
        ({"input_audio_transcription": None}, "session.input_audio_transcription"),
        ({"input_audio_transcription": {"model": None}}, "session.input_audio_transcription"),
        ({"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}, "session.audio.input.turn_detection.type"),
        ({"audio": {"input": {"turn_detection": None}}}, "session.audio.input.turn_detection.type"),
        ({"turn_detection": {"type": "server_vad"}}, "session.turn_detection"),
        ({"voice": "Tina"}, "session.voice"),
        ({"translation": {"language": "xx"}}, "session.translation.language"),
    ],
)
def test_livetranslate_v38_rejects(session: dict[str, Any], param: str) -> None:
    server, _ = opened(LT38)
    error = error_of(update(server, **session))
    assert (error["code"], error["param"]) == ("invalid_value", param)


def test_livetranslate_refuses_commit_and_response_create() -> None:
    server, _ = opened(LT3)
    stream(server, speech(0.5))
    for event in (ev.InputAudioBufferCommit(), ev.ResponseCreate()):
        (reply,) = server.receive(event)
        error = error_of(reply)
        assert (error["code"], error["param"]) == ("invalid_event", "type")
        assert event.type in error["message"]


# ----------------------------------------------------------------------------- LiveTranslate turns


def test_livetranslate_answers_each_utterance_with_its_translation() -> None:
    server, _ = opened(LT3)
    model = get_model(LT3)
    utterances = [speech(1.2, seed=1), speech(2.0, seed=2), speech(0.8, seed=3)]
    recording = silence(0.4) + b"".join(u + silence(1.2) for u in utterances)
    events = stream(server, recording)
    started = of_type(events, ev.InputAudioBufferSpeechStarted)
    stopped = of_type(events, ev.InputAudioBufferSpeechStopped)
    transcripts = of_type(events, ev.InputAudioTranscriptionCompleted)
    done = of_type(events, ev.ResponseDone)
    assert len(started) == len(stopped) == len(transcripts) == len(done) == 3
    assert [t.transcript.startswith("[speech ") for t in transcripts] == [True] * 3
    # each response follows its own transcription, in order
    order = [type(e) for e in events if isinstance(e, ev.InputAudioTranscriptionCompleted | ev.ResponseDone)]
    assert order == [ev.InputAudioTranscriptionCompleted, ev.ResponseDone] * 3
    answers = of_type(events, ev.ResponseAudioTranscriptDone)
    assert all(a.transcript.startswith("Translation into English: I heard ") for a in answers)
    assert "1 speech segment" in answers[0].transcript
    # the committed segment: from the onset minus 300 ms padding to the end of speech plus 800 ms silence
    for start, stop, response in zip(started, stopped, done, strict=True):
        seconds = (stop.audio_end_ms - start.audio_start_ms) / 1000
        usage = response.usage
        assert usage is not None
        assert usage.input_audio_tokens == audio_tokens(model, seconds)  # only this utterance is billed
        assert usage.input_text_tokens == 0
        rid = response.response["id"]
        deltas = [e for e in events if isinstance(e, ev.ResponseAudioDelta) and e.response_id == rid]
        text = next(a.transcript for a in answers if a.response_id == rid)
        assert usage.output_text_tokens == count_text_tokens(text)
        assert usage.output_audio_tokens == audio_tokens(model, seconds_of(deltas))
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert len(server.fingerprints) == 3
    (finished,) = server.receive(ev.SessionFinish())
    assert isinstance(finished, ev.SessionFinished) and server.should_close


def test_livetranslate_finish_ends_the_utterance_in_progress() -> None:
    server, _ = opened(LT35)
    events = stream(server, silence(0.3) + speech(1.5) + silence(1.0) + speech(1.0))  # the last one never stops
    assert len(of_type(events, ev.ResponseDone)) == 1
    assert server.receive(ev.InputAudioBufferAppend(audio=b64(speech(0.05)))) == []  # an odd tail chunk
    tail = server.receive(ev.SessionFinish())
    kinds = [e.type for e in tail]
    assert kinds[0] == "input_audio_buffer.speech_stopped"
    assert kinds[-2:] == ["response.done", "session.finished"]
    assert "conversation.item.input_audio_transcription.completed" in kinds
    assert server.should_close
    assert server.receive(ev.InputAudioBufferAppend(audio=b64(speech(0.5)))) == []  # closed: nothing more


def test_livetranslate_finish_without_speech_is_finished_at_once() -> None:
    server, _ = opened(LT3)
    assert stream(server, silence(2.0)) == []
    assert [e.type for e in server.receive(ev.SessionFinish())] == ["session.finished"]


def test_livetranslate_text_mode_and_transcription_off() -> None:
    server, _ = opened(LT3)
    update(server, modalities=["text"], translation={"language": "de"}, input_audio_transcription={"model": None})
    events = stream(server, speech(1.0) + silence(1.0))
    assert of_type(events, ev.InputAudioTranscriptionCompleted) == []
    assert of_type(events, ev.ResponseAudioDelta) == []
    (text,) = of_type(events, ev.ResponseTextDone)
    assert text.text.startswith("Translation into German: ")
    (done,) = of_type(events, ev.ResponseDone)
    assert done.usage is not None and done.usage.output_audio_tokens is None


def test_livetranslate_source_language_is_named() -> None:
    server, _ = opened(LT3)
    update(server, input_audio_transcription={"language": "zh"}, translation={"language": "en"})
    (answer,) = of_type(stream(server, speech(1.0) + silence(1.0)), ev.ResponseAudioTranscriptDone)
    assert answer.transcript.startswith("Translation into English from Chinese: ")


def test_livetranslate_images_after_audio_as_visual_context() -> None:
    server, _ = opened(LT3)
    model = get_model(LT3)
    picture = jpeg(640, 480)
    error = error_of(server.receive(ev.InputImageBufferAppend(image=b64(picture)))[0])
    assert error["message"] == IMAGE_BEFORE_AUDIO
    pcm = speech(1.0)
    events = stream(server, silence(0.2))
    assert server.receive(ev.InputImageBufferAppend(image=b64(picture))) == []
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert "PNG" in error_of(server.receive(ev.InputImageBufferAppend(image=b64(png.getvalue())))[0])["message"]
    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, "JPEG", quality=95)
    assert len(big.getvalue()) > 500 * 1024
    assert "too large" in error_of(server.receive(ev.InputImageBufferAppend(image=b64(big.getvalue())))[0])["message"]
    events += stream(server, pcm + silence(1.0))
    (answer,) = of_type(events, ev.ResponseAudioTranscriptDone)
    assert "saw 1 image (640×480, mostly blue)" in answer.transcript
    (done,) = of_type(events, ev.ResponseDone)
    assert done.usage is not None and done.usage.input_image_tokens == image_tokens(model, 640, 480)


# ----------------------------------------------------------------------------- manual families


def manual_turn(server: ServerSession, pcm: bytes, response: dict[str, Any] | None) -> list[ev.Event]:
    assert stream(server, pcm) == []
    events = server.receive(ev.InputAudioBufferCommit())
    return events + server.receive(ev.ResponseCreate(response=response))


def test_omni_v38_manual_turn_and_finish_closes_without_ack() -> None:
    server, _ = opened(OMNI38)
    model = get_model(OMNI38)
    update(server, turn_detection=None, input_audio_transcription=None, instructions="Be brief.")
    pcm = speech(2.0)
    events = manual_turn(server, pcm, None)  # response.create without a response object
    (done,) = of_type(events, ev.ResponseDone)
    assert done.response["status"] == "completed"
    usage = done.usage
    assert usage is not None
    assert usage.input_audio_tokens == audio_tokens(model, 2.0)
    assert usage.input_text_tokens == count_text_tokens("Be brief.")
    assert server.fingerprints[done.response["id"]] == input_fingerprint(pcm, instructions="Be brief.")
    assert server.receive(ev.SessionFinish()) == []  # no session.finished: the server just closes
    assert server.should_close


def test_qwen_audio_has_no_finish_and_no_images() -> None:
    server, _ = opened(AUDIO30)
    model = get_model(AUDIO30)
    update(server, turn_detection=None)
    stream(server, speech(0.5))
    error = error_of(server.receive(ev.InputImageBufferAppend(image=b64(jpeg())))[0])
    assert error["code"] == "invalid_event" and "images" in error["message"]
    (reply,) = server.receive(ev.SessionFinish())
    error = error_of(reply)
    assert (error["code"], error["param"], error["message"]) == (
        "invalid_event",
        "type",
        "Invalid event type: session.finish",
    )
    assert not server.should_close
    events = server.receive(ev.InputAudioBufferCommit()) + server.receive(ev.ResponseCreate(response={}))
    (done,) = of_type(events, ev.ResponseDone)
    assert done.usage is not None and done.usage.input_audio_tokens == audio_tokens(model, 0.5)


def test_omni_keeps_session_finished() -> None:
    server, _ = opened(OMNI)
    assert [e.type for e in server.receive(ev.SessionFinish())] == ["session.finished"]
    assert server.should_close


def test_livetranslate_refuses_more_than_two_images_a_second_of_audio() -> None:
    import base64 as b64
    import io as _io

    from PIL import Image as _Image

    from batchqwen.realtime import events as _ev
    from batchqwen.sim.core import ServerSession as _Session

    buffer = _io.BytesIO()
    _Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG")
    jpeg = b64.b64encode(buffer.getvalue()).decode()
    server = _Session("qwen3-livetranslate-flash-realtime")
    server.opening_events()
    server.receive(_ev.SessionUpdate(session={"translation": {"language": "en"}}))
    server.receive(_ev.InputAudioBufferAppend(audio=b64.b64encode(b"\0\0" * 16_000).decode()))  # 1 s
    answers = [server.receive(_ev.InputImageBufferAppend(image=jpeg)) for _ in range(4)]
    assert answers[:3] == [[], [], []]  # 2 a second, the fence post counted
    (error,) = answers[3]
    assert isinstance(error, _ev.Error) and "at most 2 per second" in error.info.message
