"""The protocol families on the client side: the table, each family's session.update, the turn logic
per turn mode and end of session (hand-written server events, no I/O), gateways, voices, languages, and
the service error table."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest

from batchqwen.errors import (
    MODEL_UNAVAILABLE_CODES,
    SERVICE_ERROR_CLASSES,
    ConnectionDropped,
    HandshakeRejected,
    ItemError,
    ProtocolError,
    ServerError,
    UsageError,
)
from batchqwen.items import Item, PreparedInput, TurnRequest
from batchqwen.models import PROTOCOLS, REGISTRY, get_model, validate_voice, voice_warning
from batchqwen.plan import plan_item
from batchqwen.realtime.events import (
    ConversationItemCreate,
    ConversationItemCreated,
    Event,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    InputAudioTranscriptionCompleted,
    ResponseAudioDelta,
    ResponseAudioDone,
    ResponseAudioTranscriptDelta,
    ResponseAudioTranscriptDone,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    SessionCreated,
    SessionFinish,
    SessionFinished,
    SessionUpdate,
    SessionUpdated,
    event_to_dict,
)
from batchqwen.realtime.families import FAMILIES, get_family
from batchqwen.realtime.gateways import REGIONS, gateway_url
from batchqwen.realtime.protocol import ClientTurn, State, build_session_config
from batchqwen.retry import classify, model_unavailable

PCM_1S = bytes(range(256)) * 125  # 32,000 bytes: 1 s of 16 kHz PCM16
OUT_PCM = b"\x01\x02" * 2400
USAGE = {
    "total_tokens": 60,
    "input_tokens": 40,
    "output_tokens": 20,
    "input_tokens_details": {"text_tokens": 0, "audio_tokens": 40},
    "output_tokens_details": {"text_tokens": 5, "audio_tokens": 15},
}

OMNI38 = get_model("qwen3.8-omni-flash-realtime")
QWEN_AUDIO = get_model("qwen-audio-3.0-realtime-plus")
LT3 = get_model("qwen3-livetranslate-flash-realtime")
LT38 = get_model("qwen3.8-livetranslate-flash-realtime")
OMNI35 = get_model("qwen3.5-omni-plus-realtime")


def request(model: Any, *, pcm: bytes = PCM_1S, **kwargs: Any) -> TurnRequest:
    return TurnRequest(
        model=model,
        voice=model.default_voice,
        modalities=("text", "audio"),
        media=PreparedInput(pcm16=pcm),
        **kwargs,
    )


def drain(core: ClientTurn) -> list[Event]:
    sent: list[Event] = []
    while (out := core.next_event()) is not None:
        sent.append(out.event)
    return sent


def feed(core: ClientTurn, events: Sequence[Event]) -> list[Event]:
    sent = drain(core)
    for event in events:
        core.receive(event)
        sent += drain(core)
    return sent


def response(rid: str, text: str) -> list[Event]:
    audio = base64.b64encode(OUT_PCM).decode()
    return [
        ResponseCreated(response={"id": rid, "status": "in_progress"}),
        ResponseOutputItemAdded(response_id=rid, output_index=0, item={"id": "o"}),
        ResponseContentPartAdded(response_id=rid, item_id="o"),
        ResponseAudioTranscriptDelta(response_id=rid, item_id="o", delta=text),
        ResponseAudioDelta(response_id=rid, item_id="o", delta=audio),
        ResponseAudioTranscriptDone(response_id=rid, item_id="o", transcript=text),
        ResponseAudioDone(response_id=rid, item_id="o"),
        ResponseContentPartDone(response_id=rid, item_id="o"),
        ResponseOutputItemDone(response_id=rid, output_index=0, item={"id": "o"}),
        ResponseDone(response={"id": rid, "status": "completed", "usage": USAGE}),
    ]


def utterance(n: int, start_ms: int, end_ms: int, source: str, translation: str) -> list[Event]:
    item = f"item_{n}"
    return [
        InputAudioBufferSpeechStarted(audio_start_ms=start_ms, item_id=item),
        InputAudioBufferSpeechStopped(audio_end_ms=end_ms, item_id=item),
        InputAudioBufferCommitted(item_id=item),
        ConversationItemCreated(item={"id": item}),
        InputAudioTranscriptionCompleted(item_id=item, transcript=source),
        *response(f"resp_{n}", translation),
    ]


# ----------------------------------------------------------------------------- the table


def test_every_registered_model_names_a_family_of_the_table() -> None:
    assert set(FAMILIES) == set(PROTOCOLS)
    for model in REGISTRY.values():
        assert get_family(model.protocol).name == model.protocol
    assert {m.protocol for m in REGISTRY.values()} == set(PROTOCOLS)
    with pytest.raises(UsageError, match="unknown protocol family"):
        get_family("omni_v99")


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("qwen3-omni-flash-realtime-2025-12-01", "omni"),
        ("qwen-omni-turbo-realtime-latest", "omni"),
        ("qwen3.5-omni-flash-realtime", "omni"),
        ("qwen3.8-omni-flash-realtime", "omni_v38"),
        ("qwen-audio-3.0-realtime-plus", "qwen_audio"),
        ("qwen3-livetranslate-flash-realtime-2025-09-22", "livetranslate"),
        ("qwen3.5-livetranslate-flash-realtime", "livetranslate"),
        ("qwen3.8-livetranslate-flash-realtime", "livetranslate_v38"),
    ],
)
def test_model_names_and_snapshots_resolve_to_their_family(name: str, protocol: str) -> None:
    model = get_model(name)
    assert model.name == name  # a snapshot keeps its own name: it is what goes into the URL
    assert model.protocol == protocol


@pytest.mark.filterwarnings("ignore:dashscope 2.0 audio API is a preview:FutureWarning")
def test_the_sdk_picks_the_same_family_for_every_registered_model() -> None:
    """The official v2 client chooses its protocol from the model name; ours must agree for each model."""
    from dashscope import Client

    client = Client(api_key="sk-test", workspace="ws1")  # a workspace: no legacy-gateway warning
    for model in REGISTRY.values():
        session = client.audio.realtime.connect(model=model.name, ws_url="ws://127.0.0.1:9/api-ws/v1/realtime")
        assert session._protocol == model.protocol, model.name


# ----------------------------------------------------------------------------- session.update per family


def test_omni_v38_nests_formats_and_voice_under_audio() -> None:
    config = build_session_config(request(OMNI38, instructions="Be brief.", transcribe_input=False))
    assert config == {
        "modalities": ["text", "audio"],
        "audio": {
            "input": {"format": {"type": "pcm", "sample_rate": 16000}},
            "output": {"format": {"type": "pcm", "sample_rate": 24000}, "voice": "longanlingxin"},
        },
        "input_audio_transcription": None,
        "turn_detection": None,
        "instructions": "Be brief.",
    }


def test_qwen_audio_is_flat_with_pcm_names_and_a_transcription_without_model() -> None:
    config = build_session_config(request(QWEN_AUDIO))
    assert config["input_audio_format"] == config["output_audio_format"] == "pcm"
    assert config["voice"] == "longanqian"
    assert config["turn_detection"] is None
    assert config["input_audio_transcription"] == {}


def test_livetranslate_sends_translation_and_source_language_and_no_turn_detection() -> None:
    config = build_session_config(request(LT3, target_language="ja", source_language="en"))
    assert config == {
        "modalities": ["text", "audio"],
        "voice": "Cherry",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm24",
        "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "en"},
        "translation": {"language": "ja"},
    }
    off = build_session_config(request(LT3, target_language="ja", transcribe_input=False))
    assert off["input_audio_transcription"] == {"model": None}  # off, spelled as the v2 SDK spells it


def test_livetranslate_v38_uses_output_modalities_speaker_detection_and_keeps_transcription() -> None:
    config = build_session_config(request(LT38, target_language="en", transcribe_input=False))
    assert "modalities" not in config and config["output_modalities"] == ["text", "audio"]
    assert config["audio"]["input"]["turn_detection"] == {"type": "speaker_detection"}
    assert config["audio"]["output"]["voice"] == "Cherry"
    assert "input_audio_transcription" not in config  # always on: nothing to say unless a source is known
    assert config["translation"] == {"language": "en"}
    with_source = build_session_config(request(LT38, target_language="en", source_language="zh"))
    assert with_source["input_audio_transcription"] == {"language": "zh"}


class _Capture:
    """A stand-in socket for the SDK's session: keeps what it sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, raw: str) -> None:
        self.sent.append(json.loads(raw))

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


def _sdk_session_update(model: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The ``session`` object the official v2 SDK's ``update_session`` sends for these arguments."""
    from dashscope import Client

    capture = _Capture()
    client = Client(api_key="sk-test", workspace="ws1")
    session = client.audio.realtime.connect(
        model=model, ws_url="ws://127.0.0.1:9/api-ws/v1/realtime", connector=lambda url, headers: capture
    )
    session.connect()
    session.update_session(*args, **kwargs)
    session.close()
    update = capture.sent[-1]
    assert update["type"] == "session.update"
    return dict(update["session"])


@pytest.mark.filterwarnings("ignore:dashscope 2.0 audio API is a preview:FutureWarning")
def test_our_session_update_is_the_sdks_for_the_flows_of_its_examples() -> None:
    # realtime_omni.py: Omni 3.8, nested audio config, no transcription, manual turns
    sdk = _sdk_session_update(
        "qwen3.8-omni-flash-realtime",
        ["text", "audio"],
        voice="longanlingxin",
        input_audio_config={"type": "pcm", "sample_rate": 16000},
        output_audio_config={"type": "pcm", "sample_rate": 24000},
        enable_input_audio_transcription=False,
        turn_detection=None,
        instructions="Be brief.",
    )
    assert build_session_config(request(OMNI38, instructions="Be brief.", transcribe_input=False)) == sdk
    # realtime_qwen_audio.py: flat, pcm names, manual turns (the example leaves transcription unset)
    sdk = _sdk_session_update(
        "qwen-audio-3.0-realtime-plus",
        ["text", "audio"],
        voice="longanqian",
        input_audio_format="pcm",
        output_audio_format="pcm",
        enable_turn_detection=False,
        instructions="Be brief.",
    )
    ours = build_session_config(request(QWEN_AUDIO, instructions="Be brief.", transcribe_input=False))
    assert ours.pop("input_audio_transcription") is None  # said explicitly: off
    assert ours == sdk
    # realtime_translation.py: LiveTranslate 3.8 sends what it must; we add the defaults it relies on
    sdk = _sdk_session_update(
        "qwen3.8-livetranslate-flash-realtime",
        output_modalities=["text", "audio"],
        translation_params={"language": "en"},
    )
    ours = build_session_config(request(LT38, target_language="en"))
    assert {key: ours[key] for key in sdk} == sdk
    assert set(ours) - set(sdk) == {"audio"}  # formats, voice and speaker detection, in the SDK's nested form
    # qwen3 LiveTranslate with transcription on, and the 2025 Omni shape
    sdk = _sdk_session_update(
        "qwen3-livetranslate-flash-realtime",
        output_modalities=["text", "audio"],
        voice="Cherry",
        input_audio_format="pcm16",
        output_audio_format="pcm24",
        enable_input_audio_transcription=True,
        translation_params={"language": "en"},
    )
    assert build_session_config(request(LT3, target_language="en")) == sdk
    sdk = _sdk_session_update(
        "qwen3-omni-flash-realtime",
        ["text", "audio"],
        voice="Cherry",
        input_audio_transcription_model="gummy-realtime-v1",
        enable_turn_detection=False,
        instructions="Be brief.",
    )
    assert build_session_config(request(get_model("qwen3-omni-flash-realtime"), instructions="Be brief.")) == sdk


def test_session_options_may_not_set_what_a_family_sets() -> None:
    for key in ("audio", "output_modalities", "translation"):
        with pytest.raises(UsageError, match=key):
            ClientTurn(request(OMNI38, session_options={key: {}}))


# ----------------------------------------------------------------------------- turns and session ends


def test_omni_v38_manual_turn_sends_no_response_object_and_ends_with_a_finish_nobody_answers() -> None:
    core = ClientTurn(request(OMNI38))
    events = [
        SessionCreated(session={"id": "s"}),
        SessionUpdated(session={}),
        InputAudioBufferCommitted(item_id="i"),
        ConversationItemCreated(item={"id": "i"}),
        InputAudioTranscriptionCompleted(item_id="i", transcript="hi"),
        *response("r", "Hello"),
    ]
    sent = feed(core, events)
    assert [type(e) for e in sent][-3:] == [InputAudioBufferCommit, ResponseCreate, SessionFinish]
    create = next(e for e in sent if isinstance(e, ResponseCreate))
    assert event_to_dict(create) == {"type": "response.create"}  # no response object at all
    assert core.state is State.CLOSED and core.completed  # no session.finished awaited
    assert core.result().output_transcript == "Hello"


def test_qwen_audio_never_sends_session_finish_and_is_whole_at_response_done() -> None:
    core = ClientTurn(request(QWEN_AUDIO))
    events = [
        SessionCreated(session={"id": "s"}),
        SessionUpdated(session={}),
        InputAudioBufferCommitted(item_id="i"),
        ConversationItemCreated(item={"id": "i"}),
        InputAudioTranscriptionCompleted(item_id="i", transcript="hi"),
        *response("r", "Hello"),
    ]
    sent = feed(core, events)
    assert not any(isinstance(e, SessionFinish) for e in sent)
    assert core.state is State.CLOSED and core.done and core.completed
    assert core.result().output_pcm == OUT_PCM


@pytest.mark.parametrize("model", [LT3, LT38], ids=lambda m: m.name)
def test_livetranslate_streams_then_finishes_and_drains_every_utterance(model: Any) -> None:
    core = ClientTurn(request(model, pcm=PCM_1S * 3, target_language="en"))
    sent = feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={})])
    # the whole input goes out, no commit, no response.create, then session.finish
    assert [type(e) for e in sent] == [SessionUpdate] + [InputAudioBufferAppend] * 30 + [SessionFinish]
    assert core.state is State.DRAINING and not core.completed
    sent = feed(core, utterance(1, 200, 1400, "你好", "Hello") + utterance(2, 1800, 2700, "再见", "Goodbye"))
    assert sent == []
    assert core.state is State.DRAINING
    core.receive(SessionFinished())
    assert core.state is State.CLOSED and core.completed
    result = core.result()
    assert [(u.start_seconds, u.end_seconds, u.source_text, u.text) for u in result.utterances] == [
        (0.2, 1.4, "你好", "Hello"),
        (1.8, 2.7, "再见", "Goodbye"),
    ]
    assert result.input_transcript == "你好 再见"
    assert result.output_transcript == "Hello Goodbye"
    assert result.output_pcm == OUT_PCM * 2
    assert result.usage is not None and result.usage.total_tokens == 120
    assert result.response_ids == ["resp_1", "resp_2"]


def test_livetranslate_answers_may_arrive_while_the_audio_still_streams() -> None:
    core = ClientTurn(request(LT3, pcm=PCM_1S * 2, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"})])
    core.receive(SessionUpdated(session={}))
    for _ in range(5):
        assert isinstance(core.next_event().event, InputAudioBufferAppend)  # type: ignore[union-attr]
    for event in utterance(1, 0, 400, "a", "A"):
        core.receive(event)
    assert core.state is State.STREAMING
    rest = drain(core)
    assert isinstance(rest[-1], SessionFinish) and core.state is State.DRAINING
    core.receive(SessionFinished())
    assert [u.text for u in core.result().utterances] == ["A"]


def test_livetranslate_utterances_without_committed_events_keep_their_source_and_times() -> None:
    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={})])
    events = [e for e in utterance(1, 100, 900, "你好", "Hello") if not isinstance(e, InputAudioBufferCommitted)]
    feed(core, [e for e in events if not isinstance(e, ConversationItemCreated)])
    core.receive(SessionFinished())
    result = core.result()
    assert [(u.start_seconds, u.end_seconds, u.source_text, u.text) for u in result.utterances] == [
        (0.1, 0.9, "你好", "Hello")
    ]
    assert result.input_transcript == "你好"


def test_livetranslate_an_unanswered_utterance_keeps_its_transcript_and_nothing_is_lost() -> None:
    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={})])
    feed(core, utterance(1, 0, 500, "你好", "Hello"))
    feed(core, utterance(2, 900, 1500, "再见", "Goodbye")[:5])  # transcribed, never answered
    core.receive(SessionFinished())
    result = core.result()
    assert [(u.source_text, u.text) for u in result.utterances] == [("你好", "Hello"), ("再见", "")]
    assert result.input_transcript == "你好 再见"


def test_livetranslate_a_request_error_while_draining_keeps_the_session_and_the_answers() -> None:
    from batchqwen.realtime.events import Error

    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={}), *utterance(1, 0, 500, "a", "A")])
    core.receive(Error(error={"type": "invalid_request_error", "code": "invalid_value", "message": "x"}))
    assert core.state is State.DRAINING and isinstance(core.late_error, ServerError)
    feed(core, utterance(2, 900, 1500, "b", "B"))
    core.receive(SessionFinished())
    assert [u.text for u in core.result().utterances] == ["A", "B"]
    # a server_error still ends it
    other = ClientTurn(request(LT3, target_language="en"))
    feed(other, [SessionCreated(session={"id": "s"}), SessionUpdated(session={})])
    other.receive(Error(error={"type": "server_error", "code": "InternalError", "message": "x"}))
    assert other.state is State.FAILED


def test_livetranslate_closed_before_session_finished_is_a_dropped_connection() -> None:
    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={}), *utterance(1, 0, 500, "a", "A")])
    core.connection_lost(1006)
    assert core.state is State.FAILED and isinstance(core.failure, ConnectionDropped)


def test_livetranslate_finished_with_no_answer_fails_the_item() -> None:
    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated(session={})])
    core.receive(SessionFinished())
    assert core.state is State.FAILED and isinstance(core.failure, ItemError)  # not retried: same audio, same
    assert "detected no speech" in str(core.failure)


def test_a_response_before_session_updated_is_illegal_in_server_turns() -> None:
    core = ClientTurn(request(LT3, target_language="en"))
    feed(core, [SessionCreated(session={"id": "s"})])
    with pytest.raises(ProtocolError):
        core.receive(ResponseCreated(response={"id": "r"}))


def test_livetranslate_needs_audio() -> None:
    with pytest.raises(ItemError, match="answers speech"):
        ClientTurn(request(LT3, pcm=b"", target_language="en"))


def test_a_prompt_only_item_on_a_text_input_model_is_a_text_item_without_commit() -> None:
    core = ClientTurn(request(OMNI35, pcm=b"", prompt="Say hello."))
    events = [SessionCreated(session={"id": "s"}), SessionUpdated(session={}), ConversationItemCreated(item={})]
    sent = feed(core, events[:2])
    assert [type(e) for e in sent] == [SessionUpdate, ConversationItemCreate, ResponseCreate]
    feed(core, [events[2], *response("r", "Hello")])
    core.receive(SessionFinished())
    assert core.completed and core.result().output_transcript == "Hello"


# ----------------------------------------------------------------------------- planning rows per family


def test_plan_refuses_rows_a_family_cannot_take_and_says_why() -> None:
    prompt_only = Item(id="p", row=1, prompt="Say hello.")
    with pytest.raises(ItemError, match="answers speech: this row has no audio or video"):
        plan_item(prompt_only, **_defaults("qwen-audio-3.0-realtime-plus"))
    with_image = Item(id="i", row=1, audio=_path("a.wav"), images=(_path("b.png"),))
    with pytest.raises(ItemError, match="takes no images"):
        plan_item(with_image, **_defaults("qwen-audio-3.0-realtime-plus"))
    with pytest.raises(ItemError, match="answers speech"):
        plan_item(prompt_only, **_defaults("qwen3-livetranslate-flash-realtime"))
    video = Item(id="v", row=1, video=_path("v.mp4"))
    with pytest.raises(ItemError, match="no video frames"):
        plan_item(video, **_defaults("qwen-audio-3.0-realtime-plus"))


def test_plan_translation_targets_speech_and_instructions() -> None:
    item = Item(id="a", row=1, audio=_path("a.wav"), instructions="Be brief.")
    plan = plan_item(item, **_defaults("qwen3-livetranslate-flash-realtime"), target_language="ja")
    assert plan.target_language == "ja" and plan.modalities == ("text", "audio")
    assert plan.instructions is None and any("takes no instructions" in n for n in plan.notes)
    # a target with text output only: translated as text, said in the notes
    text_only = plan_item(item, **_defaults("qwen3-livetranslate-flash-realtime"), target_language="th")
    assert text_only.modalities == ("text",) and any("no speech in 'th'" in n for n in text_only.notes)
    default = plan_item(item, **_defaults("qwen3-livetranslate-flash-realtime"))
    assert default.target_language == "en"  # the service's own default, made explicit
    with pytest.raises(UsageError, match=r"cannot translate into 'xx'.*supported targets: en, zh"):
        plan_item(item, **_defaults("qwen3-livetranslate-flash-realtime"), target_language="xx")
    row_target = Item(id="b", row=2, audio=_path("a.wav"), target_language="xx")
    with pytest.raises(UsageError, match="cannot translate into 'xx'"):
        plan_item(row_target, **_defaults("qwen3-livetranslate-flash-realtime"))
    # a run-wide --translate-to leaves other models alone; a row's own target on one is that row's error
    plain = plan_item(Item(id="c", row=3, audio=_path("a.wav")), **_defaults(), target_language="ja")
    assert plain.target_language is None
    with pytest.raises(UsageError, match="does not translate"):
        plan_item(Item(id="d", row=4, audio=_path("a.wav"), target_language="ja"), **_defaults())


def _path(name: str) -> Any:
    from pathlib import Path

    return Path("/nonexistent") / name


def _defaults(model: str = "qwen3-omni-flash-realtime") -> dict[str, Any]:
    return {
        "model": model,
        "voice": None,
        "modalities": ("text", "audio"),
        "instructions": None,
        "pad_silence_seconds": 1.0,
    }


# ----------------------------------------------------------------------------- voices


def test_voices_published_unpublished_cloned_and_broken() -> None:
    flash = get_model("qwen3-omni-flash-realtime")
    with pytest.raises(UsageError, match="not available"):
        validate_voice(flash, "longanqian")
    assert validate_voice(OMNI38, None) == "longanlingxin"
    assert validate_voice(OMNI38, "someone-new") == "someone-new"
    warning = voice_warning(OMNI38, "someone-new")
    assert warning is not None and "not published" in warning
    assert voice_warning(OMNI38, "longanlingxin") is None
    assert validate_voice(OMNI35, "my-cloned-voice-01") == "my-cloned-voice-01"
    cloned = voice_warning(OMNI35, "my-cloned-voice-01")
    assert cloned is not None and "cloned" in cloned
    assert validate_voice(OMNI35, None) == "Tina"
    with pytest.raises(UsageError, match="qwen-audio-agent #334"):
        validate_voice(get_model("qwen3.5-omni-flash-realtime"), "Cherry")
    with pytest.raises(UsageError, match="not available"):
        validate_voice(LT3, "longanqian")  # qwen3 LiveTranslate publishes its list


# ----------------------------------------------------------------------------- gateways


@pytest.mark.parametrize(
    ("region", "legacy"),
    [
        ("cn-beijing", "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"),
        ("ap-southeast-1", "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"),
        ("cn-hongkong", "wss://cn-hongkong.dashscope.aliyuncs.com/api-ws/v1/realtime"),
        ("us-east-1", "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"),
        ("eu-central-1", "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"),
        ("ap-northeast-1", "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"),
    ],
)
def test_gateway_url_per_region_with_and_without_a_workspace(region: str, legacy: str) -> None:
    assert gateway_url(region) == legacy
    assert gateway_url(region, "ws-abc123") == f"wss://ws-abc123.{region}.maas.aliyuncs.com/api-ws/v1/realtime"


def test_gateways_agree_with_the_sdk() -> None:
    from dashscope.v2._config import workspace_ws_url

    assert len(REGIONS) == 6
    for region in REGIONS:
        assert gateway_url(region, "ws1") == workspace_ws_url("ws1", "/api-ws/v1/realtime", region)
    with pytest.warns(UserWarning):  # the SDK warns when it falls back to the legacy host
        assert gateway_url("cn-hongkong") == workspace_ws_url(None, "/api-ws/v1/realtime", "cn-hongkong")


def test_gateway_refuses_an_unknown_region_and_a_workspace_that_is_not_a_host_label() -> None:
    with pytest.raises(UsageError, match="unknown region 'mars-1'"):
        gateway_url("mars-1")
    with pytest.raises(UsageError, match="workspace id"):
        gateway_url("cn-beijing", "evil.example.com/x")
    assert gateway_url("singapore") == gateway_url("ap-southeast-1")


def test_the_run_config_url_follows_region_and_workspace_and_base_url_wins(tmp_path: Any) -> None:
    from batchqwen.config import RunConfig

    config = RunConfig(manifest=tmp_path / "m.csv", out=tmp_path, region="eu-central-1", workspace="w1")
    assert config.url == "wss://w1.eu-central-1.maas.aliyuncs.com/api-ws/v1/realtime"
    other = RunConfig(manifest=tmp_path / "m.csv", out=tmp_path, workspace="w1", base_url="ws://127.0.0.1:1/x")
    assert other.url == "ws://127.0.0.1:1/x"


# ----------------------------------------------------------------------------- service errors


def test_error_table_matches_the_sdk_registry() -> None:
    from dashscope.v2.errors import _CODE_MAP

    assert {code: cls.__name__ for code, cls in _CODE_MAP.items()} == SERVICE_ERROR_CLASSES


@pytest.mark.parametrize(
    ("code", "error_type", "kind"),
    [
        ("InvalidApiKey", "invalid_request_error", "fatal"),
        ("Arrearage", "invalid_request_error", "fatal"),
        ("AccessDenied", "invalid_request_error", "fatal"),
        ("Model.NotExist", "invalid_request_error", "permanent"),
        ("AccessDenied.Unpurchased", "invalid_request_error", "permanent"),
        ("Throttling.RateQuota", "invalid_request_error", "retryable"),
        ("InternalError", "server_error", "retryable"),
        ("ServiceUnavailable", "invalid_request_error", "retryable"),
        ("GatewayTimeout", "", "retryable"),
        ("DataInspectionFailed", "invalid_request_error", "permanent"),
        ("InvalidParameter", "invalid_request_error", "permanent"),
    ],
)
def test_service_codes_classify_as_the_table_says(code: str, error_type: str, kind: str) -> None:
    exc = ServerError("x", error_type=error_type, code=code)
    assert classify(exc) == kind
    assert model_unavailable(exc) == (code in MODEL_UNAVAILABLE_CODES)


@pytest.mark.parametrize(
    ("exc", "kind", "unavailable"),
    [
        (HandshakeRejected(403, '{"code":"Model.NotExist"}', code="Model.NotExist"), "permanent", True),
        (HandshakeRejected(403, "", code="AccessDenied.Unpurchased"), "permanent", True),
        (HandshakeRejected(401, "", code="InvalidApiKey"), "fatal", False),
        (HandshakeRejected(429, "", code="Throttling.RateQuota"), "retryable", False),
        (HandshakeRejected(403), "fatal", False),  # no code: a 403 is the key's, as before
    ],
)
def test_a_handshake_refusal_with_a_code_is_classified_by_its_code(exc: Any, kind: str, unavailable: bool) -> None:
    assert classify(exc) == kind
    assert model_unavailable(exc) is unavailable


def test_the_code_of_a_json_refusal_body_is_read() -> None:
    from batchqwen.realtime.client import _error_code

    assert _error_code('{"code": "Model.NotExist", "message": "no"}') == "Model.NotExist"
    assert _error_code('{"error": {"code": "InvalidApiKey"}}') == "InvalidApiKey"
    assert _error_code("Forbidden") == "" and _error_code("[1]") == "" and _error_code('{"code": 5}') == ""


def test_livetranslate_video_frames_are_capped_at_two_a_second_with_a_note() -> None:
    video = Item(id="v", row=1, video=_path("v.mp4"))
    plan = plan_item(video, **_defaults("qwen3-livetranslate-flash-realtime"), video_fps=10.0)
    assert plan.video_fps == 2.0 and any("at most 2 images a second" in note for note in plan.notes)
    assert plan_item(video, **_defaults(), video_fps=10.0).video_fps == 10.0  # other models: as asked
