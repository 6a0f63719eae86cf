"""The I/O-free client core against hand-written server event sequences, and Hypothesis properties."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from batchqwen.errors import (
    ConnectionDropped,
    InvalidState,
    ItemError,
    ProtocolError,
    ServerError,
    UsageError,
)
from batchqwen.items import PreparedInput, TimedImage, TurnRequest
from batchqwen.models import audio_tokens, get_model, image_tokens
from batchqwen.realtime.events import (
    ConversationItemCreate,
    ConversationItemCreated,
    Error,
    Event,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferCommitted,
    InputAudioTranscriptionCompleted,
    InputImageBufferAppend,
    ResponseAudioDelta,
    ResponseAudioDone,
    ResponseAudioTranscriptDelta,
    ResponseAudioTranscriptDone,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallArgumentsDelta,
    ResponseFunctionCallArgumentsDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseTextDelta,
    ResponseTextDone,
    SessionCreated,
    SessionFinish,
    SessionFinished,
    SessionUpdate,
    SessionUpdated,
    UnknownEvent,
    parse_event,
    to_json,
)
from batchqwen.realtime.protocol import ClientTurn, FunctionCall, State, build_session_config
from batchqwen.sim.core import ServerSession, SimulatorConfig, synthesize
from batchqwen.tokens import count_text_tokens

FLASH = get_model("qwen3-omni-flash-realtime")
TURBO = get_model("qwen-omni-turbo-realtime")
OMNI35 = get_model("qwen3.5-omni-flash-realtime")
PCM_1S = bytes(range(256)) * 125  # 32,000 bytes: 1 s of 16 kHz PCM16
OUT_PCM = b"\x01\x02" * 2400  # 100 ms of 24 kHz PCM16
JPEG = b"\xff\xd8fake-jpeg\xff\xd9"


def make_request(
    *,
    pcm: bytes = PCM_1S,
    images: Sequence[TimedImage] = (),
    model: Any = FLASH,
    modalities: tuple[str, ...] = ("text", "audio"),
    **kwargs: Any,
) -> TurnRequest:
    return TurnRequest(
        model=model,
        voice=model.default_voice,
        modalities=modalities,
        media=PreparedInput(pcm16=pcm, images=tuple(images)),
        **kwargs,
    )


def state(core: ClientTurn) -> State:
    """The core's state, read through a call so mypy does not narrow it across calls."""
    return core.state


def drain(core: ClientTurn) -> list[Event]:
    """Everything the core wants to send right now."""
    sent: list[Event] = []
    while (out := core.next_event()) is not None:
        sent.append(out.event)
    return sent


def feed(core: ClientTurn, events: Sequence[Event], now: float = 0.0) -> list[Event]:
    """Give the core each event, sending whatever it wants after each one (an eager, unpaced client)."""
    sent = drain(core)
    for event in events:
        core.receive(event, now)
        sent += drain(core)
    return sent


def response_events(rid: str = "resp_1", words: Sequence[str] = ("Hel", "lo"), usage: Any = None) -> list[Event]:
    audio = base64.b64encode(OUT_PCM).decode()
    events: list[Event] = [
        ResponseCreated(response={"id": rid, "status": "in_progress"}),
        ResponseOutputItemAdded(response_id=rid, output_index=0, item={"id": "item_out"}),
        ResponseContentPartAdded(response_id=rid, item_id="item_out"),
    ]
    for word in words:
        events.append(ResponseAudioTranscriptDelta(response_id=rid, item_id="item_out", delta=word))
        events.append(ResponseAudioDelta(response_id=rid, item_id="item_out", delta=audio))
    events += [
        ResponseAudioTranscriptDone(response_id=rid, item_id="item_out", transcript="".join(words)),
        ResponseAudioDone(response_id=rid, item_id="item_out"),
        ResponseContentPartDone(response_id=rid, item_id="item_out"),
        ResponseOutputItemDone(response_id=rid, output_index=0, item={"id": "item_out"}),
        ResponseDone(response={"id": rid, "status": "completed", "usage": usage or USAGE}),
    ]
    return events


USAGE = {
    "total_tokens": 377,
    "input_tokens": 336,
    "output_tokens": 41,
    "input_tokens_details": {"text_tokens": 228, "audio_tokens": 108},
    "output_tokens_details": {"text_tokens": 9, "audio_tokens": 32},
}


def happy_events(transcript: str = "what is this") -> list[Event]:
    return [
        SessionCreated(session={"id": "sess_1"}),
        SessionUpdated(session={}),
        InputAudioBufferCommitted(item_id="item_in"),
        ConversationItemCreated(item={"id": "item_in"}),
        InputAudioTranscriptionCompleted(item_id="item_in", transcript=transcript),
        *response_events(),
        SessionFinished(),
    ]


# ----------------------------------------------------------------------------- hand-written sequences


def test_happy_turn_sends_the_documented_order_and_collects_everything() -> None:
    core = ClientTurn(make_request(instructions="Describe it."))
    sent = feed(core, happy_events())
    kinds = [type(e) for e in sent]
    assert kinds[0] is SessionUpdate
    assert kinds[1:11] == [InputAudioBufferAppend] * 10  # 1 s in 100 ms chunks
    assert kinds[11:] == [InputAudioBufferCommit, ResponseCreate, SessionFinish]
    assert state(core) is State.CLOSED and core.done and core.completed
    result = core.result()
    assert result.session_id == "sess_1"
    assert result.response_ids == ["resp_1"]
    assert result.input_transcript == "what is this"
    assert result.output_transcript == "Hello"
    assert result.output_text == ""
    assert result.output_pcm == OUT_PCM * 2
    assert result.usage is not None and result.usage.total_tokens == 377
    assert result.usage.input_audio_tokens == 108


def test_nothing_is_sent_before_session_created_and_update_waits_for_it() -> None:
    core = ClientTurn(make_request())
    assert core.next_event() is None
    core.receive(SessionCreated(session={"id": "s"}))
    assert [type(e) for e in drain(core)] == [SessionUpdate]
    assert core.next_event() is None  # audio waits for session.updated
    assert state(core) is State.AWAIT_UPDATED


def test_session_update_contents() -> None:
    request = make_request(instructions="Be brief.", session_options={"temperature": 0.5, "max_tokens": 99})
    config = build_session_config(request)
    assert config == {
        "modalities": ["text", "audio"],
        "voice": "Cherry",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "gummy-realtime-v1"},
        "turn_detection": None,
        "instructions": "Be brief.",
        "temperature": 0.5,
        "max_tokens": 99,
    }


def test_turbo_never_gets_sampling_params_and_transcription_can_be_off() -> None:
    options = {"temperature": 0.5, "top_p": 0.9, "top_k": 5, "seed": 1, "max_tokens": 10}
    config = build_session_config(make_request(model=TURBO, transcribe_input=False, session_options=options))
    assert not {"temperature", "top_p", "top_k", "seed"} & config.keys()
    assert config["max_tokens"] == 10
    assert config["input_audio_transcription"] is None
    assert config["voice"] == "Chelsie"
    assert "instructions" not in config


def test_session_options_cannot_override_what_batchqwen_sets() -> None:
    with pytest.raises(UsageError, match="turn_detection"):
        ClientTurn(make_request(session_options={"turn_detection": {"type": "server_vad"}}))


def test_bad_inputs_are_typed_errors() -> None:
    with pytest.raises(ItemError, match="images need audio"):
        ClientTurn(make_request(pcm=b"", images=[TimedImage(0.0, JPEG, 64, 64)]))
    with pytest.raises(ItemError, match="odd"):
        ClientTurn(make_request(pcm=b"\x00\x01\x02"))
    with pytest.raises(UsageError, match="chunk_bytes"):
        ClientTurn(make_request(chunk_bytes=3))
    with pytest.raises(UsageError, match="no text input"):
        ClientTurn(make_request(prompt="hi"))


def test_empty_audio_without_images_commits_at_once_and_the_server_decides() -> None:
    core = ClientTurn(make_request(pcm=b""))
    sent = feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated()])
    assert [type(e) for e in sent] == [SessionUpdate, InputAudioBufferCommit, ResponseCreate]
    core.receive(Error(error={"type": "invalid_request_error", "code": "invalid_value", "message": "empty"}))
    assert state(core) is State.FAILED
    assert isinstance(core.failure, ServerError) and core.failure.code == "invalid_value"


def test_prompt_travels_as_input_text_after_the_commit_on_text_input_models() -> None:
    core = ClientTurn(make_request(model=OMNI35, prompt="What is in the picture?"))
    sent = feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated()])
    assert [type(e) for e in sent[-3:]] == [InputAudioBufferCommit, ConversationItemCreate, ResponseCreate]
    item = sent[-2]
    assert isinstance(item, ConversationItemCreate)
    assert item.item == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "What is in the picture?"}],
    }


def test_error_event_becomes_a_typed_failure_and_stops_sending() -> None:
    core = ClientTurn(make_request())
    core.receive(SessionCreated(session={"id": "s"}))
    drain(core)
    error = {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "bad voice",
        "param": "voice",
    }
    core.receive(Error(error=error))
    assert state(core) is State.FAILED and core.done and not core.completed
    failure = core.failure
    assert isinstance(failure, ServerError)
    assert (failure.error_type, failure.code, failure.message, failure.param) == (
        "invalid_request_error",
        "invalid_value",
        "bad voice",
        "voice",
    )
    assert core.next_event() is None
    with pytest.raises(InvalidState):
        core.result()
    with pytest.raises(InvalidState):
        core.receive(SessionUpdated())


@pytest.mark.parametrize(
    "events",
    [
        [SessionCreated(), SessionCreated()],
        [SessionUpdated()],
        [SessionCreated(), SessionUpdated(), ResponseAudioDelta(delta="AAAA")],
        [SessionCreated(), SessionUpdated(), ResponseCreated(response={"id": "r"})],  # before committed
        [SessionCreated(), SessionUpdated(), InputAudioBufferCommitted(), InputAudioBufferCommitted()],
        [SessionCreated(), SessionUpdated(), SessionFinished()],
        [SessionCreated(), SessionUpdated(), InputAudioBufferCommitted(), ResponseDone()],
    ],
    ids=[
        "created-twice",
        "updated-first",
        "delta-early",
        "response-before-commit",
        "double-commit",
        "finished-early",
        "done-early",
    ],
)
def test_illegal_orders_raise_and_fail_the_turn(events: list[Event]) -> None:
    core = ClientTurn(make_request())
    with pytest.raises(ProtocolError):
        feed(core, events)
    assert state(core) is State.FAILED
    assert isinstance(core.failure, ProtocolError)


def test_delta_for_another_response_or_after_its_done_is_rejected() -> None:
    start = happy_events()[:5]
    core = ClientTurn(make_request())
    feed(core, start + response_events()[:3])
    with pytest.raises(ProtocolError, match="resp_2"):
        core.receive(ResponseAudioTranscriptDelta(response_id="resp_2", delta="x"))
    core = ClientTurn(make_request())
    feed(core, start + response_events()[:3] + [ResponseAudioDone(response_id="resp_1")])
    with pytest.raises(ProtocolError, match="after its part was done"):
        core.receive(ResponseAudioDelta(response_id="resp_1", delta="AAAA"))


def test_invalid_base64_audio_is_a_protocol_error() -> None:
    core = ClientTurn(make_request())
    feed(core, happy_events()[:5] + response_events()[:3])
    with pytest.raises(ProtocolError, match="base64"):
        core.receive(ResponseAudioDelta(response_id="resp_1", delta="not base64!"))


def test_unknown_events_are_tolerated() -> None:
    core = ClientTurn(make_request())
    events = happy_events()
    events.insert(3, UnknownEvent(event_type="response.something_new", data={}))
    feed(core, events)
    assert state(core) is State.CLOSED


def test_missing_transcript_waits_only_until_the_grace_deadline() -> None:
    core = ClientTurn(make_request(), transcript_grace=2.0)
    events = [e for e in happy_events() if not isinstance(e, InputAudioTranscriptionCompleted | SessionFinished)]
    feed(core, events, now=10.0)
    assert state(core) is State.AWAIT_TRANSCRIPT and core.completed
    assert core.deadline == 12.0
    assert core.next_event() is None
    core.tick(11.9)
    assert state(core) is State.AWAIT_TRANSCRIPT
    core.tick(12.0)
    assert state(core) is State.FINISHING and core.deadline is None
    assert [type(e) for e in drain(core)] == [SessionFinish]
    core.receive(SessionFinished())
    assert state(core) is State.CLOSED
    assert core.result().input_transcript == ""


def test_late_transcript_inside_the_grace_is_kept_and_ends_the_wait() -> None:
    core = ClientTurn(make_request())
    events = [e for e in happy_events() if not isinstance(e, InputAudioTranscriptionCompleted | SessionFinished)]
    feed(core, events)
    core.receive(InputAudioTranscriptionCompleted(item_id="item_in", transcript="late words"))
    assert state(core) is State.FINISHING
    assert [type(e) for e in drain(core)] == [SessionFinish]
    assert core.result().input_transcript == "late words"


def test_no_wait_for_transcript_when_transcription_is_off() -> None:
    core = ClientTurn(make_request(transcribe_input=False))
    events = [e for e in happy_events() if not isinstance(e, InputAudioTranscriptionCompleted)]
    sent = feed(core, events)
    assert isinstance(sent[-1], SessionFinish) and state(core) is State.CLOSED


def test_error_answering_session_finish_is_a_clean_end() -> None:
    core = ClientTurn(make_request())
    feed(core, happy_events()[:-1])
    assert state(core) is State.FINISHING and core.finish_sent
    core.receive(Error(error={"type": "invalid_request_error", "code": "invalid_event", "message": "no"}))
    assert state(core) is State.CLOSED and core.failure is None
    assert isinstance(core.late_error, ServerError)
    assert core.result().output_transcript == "Hello"


def test_connection_lost_mid_response_is_dropped_but_clean_while_finishing() -> None:
    core = ClientTurn(make_request())
    feed(core, happy_events()[:8])
    core.connection_lost(1011, "boom")
    assert isinstance(core.failure, ConnectionDropped)
    assert "1011" in str(core.failure) and "boom" in str(core.failure)
    core = ClientTurn(make_request())
    feed(core, happy_events()[:-1])
    core.connection_lost(None)
    assert state(core) is State.CLOSED and core.failure is None


def test_stray_event_after_the_response_keeps_the_result() -> None:
    core = ClientTurn(make_request())
    feed(core, happy_events()[:-1])
    with pytest.raises(ProtocolError):
        core.receive(ResponseCreated(response={"id": "resp_x"}))
    assert state(core) is State.CLOSED and core.completed
    assert isinstance(core.late_error, ProtocolError)
    assert core.result().output_transcript == "Hello"


def test_text_mode_collects_text_and_done_without_deltas_carries_the_whole() -> None:
    core = ClientTurn(make_request(modalities=("text",)))
    rid = "resp_t"
    events: list[Event] = [
        *happy_events()[:5],
        ResponseCreated(response={"id": rid}),
        ResponseOutputItemAdded(response_id=rid, output_index=0),
        ResponseTextDelta(response_id=rid, delta="A "),
        ResponseTextDelta(response_id=rid, delta="cat."),
        ResponseTextDone(response_id=rid, text="A cat."),
        ResponseTextDone(response_id=rid, content_index=1, text=" Whole."),
        ResponseOutputItemDone(response_id=rid, output_index=0),
        ResponseDone(response={"id": rid, "status": "completed"}),
        SessionFinished(),
    ]
    feed(core, events, now=3.0)
    result = core.result()
    assert result.output_text == "A cat. Whole."
    assert result.output_pcm == b"" and result.usage is None
    assert result.first_text_seconds == 3.0 and result.first_audio_seconds is None


def test_tool_call_round_sends_output_and_a_new_response_and_sums_usage() -> None:
    calls: list[FunctionCall] = []

    def handler(call: FunctionCall) -> str:
        calls.append(call)
        return '{"temp": 21}'

    core = ClientTurn(make_request(model=OMNI35), tool_handler=handler)
    rid = "resp_call"
    first: list[Event] = [
        *happy_events()[:5],
        ResponseCreated(response={"id": rid}),
        ResponseOutputItemAdded(response_id=rid, output_index=0, item={"type": "function_call"}),
        ResponseFunctionCallArgumentsDelta(response_id=rid, call_id="call_1", delta='{"city":'),
        ResponseFunctionCallArgumentsDone(response_id=rid, call_id="call_1", name="weather", arguments='{"city":"X"}'),
        ResponseOutputItemDone(response_id=rid, output_index=0),
        ResponseDone(response={"id": rid, "status": "completed", "usage": USAGE}),
    ]
    sent = feed(core, first)
    assert calls == [FunctionCall("call_1", "weather", '{"city":"X"}', rid)]
    assert state(core) is State.AWAIT_RESPONSE
    assert [type(e) for e in sent[-2:]] == [ConversationItemCreate, ResponseCreate]
    output = sent[-2]
    assert isinstance(output, ConversationItemCreate)
    assert output.item == {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 21}'}
    sent = feed(core, [*response_events("resp_2"), SessionFinished()])
    assert state(core) is State.CLOSED
    result = core.result()
    assert result.response_ids == [rid, "resp_2"]
    assert result.usage is not None and result.usage.total_tokens == 2 * 377
    assert result.usage.output_audio_tokens == 64


def test_function_call_without_handler_ends_the_turn_with_the_call_recorded() -> None:
    core = ClientTurn(make_request(model=OMNI35))
    rid = "r"
    feed(
        core,
        [
            *happy_events()[:5],
            ResponseCreated(response={"id": rid}),
            ResponseOutputItemAdded(response_id=rid),
            ResponseFunctionCallArgumentsDone(response_id=rid, call_id="c", name="f", arguments="{}"),
            ResponseOutputItemDone(response_id=rid),
            ResponseDone(response={"id": rid, "status": "completed"}),
        ],
    )
    assert state(core) is State.FINISHING
    assert [c.name for c in core.function_calls] == ["f"]


def test_tool_loop_is_bounded() -> None:
    core = ClientTurn(make_request(model=OMNI35), tool_handler=lambda call: "again", max_responses=2)
    feed(core, happy_events()[:5])
    for n in range(2):
        rid = f"r{n}"
        round_events: list[Event] = [
            ResponseCreated(response={"id": rid}),
            ResponseOutputItemAdded(response_id=rid),
            ResponseFunctionCallArgumentsDone(response_id=rid, call_id=f"c{n}", name="f", arguments="{}"),
            ResponseOutputItemDone(response_id=rid),
            ResponseDone(response={"id": rid, "status": "completed"}),
        ]
        if n == 1:
            with pytest.raises(ProtocolError, match="more than 2 responses"):
                feed(core, round_events)
        else:
            feed(core, round_events)
    assert state(core) is State.FAILED


# ----------------------------------------------------------------------------- properties


def first_illegal(seq: Sequence[Event]) -> int | None:
    """Index of the first event an eager, tick-free client must reject; None if every event is legal.

    Written as precedence rules over the events seen so far, independently of the core's state machine.
    """
    seen: list[str] = []

    def before(t: str) -> bool:
        return t in seen

    in_response = {
        ResponseOutputItemAdded.type,
        ResponseOutputItemDone.type,
        ResponseContentPartAdded.type,
        ResponseContentPartDone.type,
        ResponseAudioTranscriptDelta.type,
        ResponseAudioTranscriptDone.type,
        ResponseAudioDelta.type,
        ResponseAudioDone.type,
    }
    done_of = {
        ResponseAudioTranscriptDelta.type: ResponseAudioTranscriptDone.type,
        ResponseAudioDelta.type: ResponseAudioDone.type,
        ResponseAudioTranscriptDone.type: ResponseAudioTranscriptDone.type,
        ResponseAudioDone.type: ResponseAudioDone.type,
    }
    for i, event in enumerate(seq):
        t = event.type
        if before(SessionFinished.type):
            ok = False
        elif t == SessionCreated.type:
            ok = i == 0
        elif t == SessionUpdated.type:
            ok = seen == [SessionCreated.type]
        elif i < 2:
            ok = False
        elif t == InputAudioBufferCommitted.type:
            ok = not before(t)
        elif t == ConversationItemCreated.type:
            ok = before(InputAudioBufferCommitted.type) and not before(ResponseDone.type)
        elif t == InputAudioTranscriptionCompleted.type or t == ResponseCreated.type:
            ok = before(InputAudioBufferCommitted.type) and not before(t)
        elif t == ResponseDone.type:
            ok = before(ResponseCreated.type) and not before(t)
        elif t == SessionFinished.type:
            ok = before(ResponseDone.type) and before(InputAudioTranscriptionCompleted.type)
        elif t in in_response:
            ok = before(ResponseCreated.type) and not before(ResponseDone.type)
            if t == ResponseOutputItemAdded.type:
                ok = ok and not before(t)
            else:
                ok = ok and before(ResponseOutputItemAdded.type) and not before(ResponseOutputItemDone.type)
            if t in done_of:
                ok = ok and not before(done_of[t])
        else:
            raise AssertionError(t)
        if not ok:
            return i
        seen.append(t)
    return None


CANONICAL = happy_events()
mutation = st.tuples(
    st.sampled_from(["swap", "duplicate", "delete", "move"]),
    st.integers(0, len(CANONICAL) * 3),
    st.integers(0, len(CANONICAL) * 3),
)


def mutate(events: list[Event], ops: list[tuple[str, int, int]]) -> list[Event]:
    seq = list(events)
    for op, a, b in ops:
        if not seq:
            break
        i, j = a % len(seq), b % (len(seq) + 1)
        if op == "swap":
            j %= len(seq)
            seq[i], seq[j] = seq[j], seq[i]
        elif op == "duplicate":
            seq.insert(j, seq[i])
        elif op == "delete":
            del seq[i]
        else:
            seq.insert(j, seq.pop(i))
    return seq


def check_order(seq: list[Event]) -> None:
    expected = first_illegal(seq)
    core = ClientTurn(make_request())
    drain(core)
    for i, event in enumerate(seq):
        if i == expected:
            with pytest.raises(ProtocolError):
                core.receive(event)
            return
        core.receive(event)
        drain(core)
    assert expected is None
    assert core.failure is None


def test_the_oracle_accepts_the_canonical_sequence() -> None:
    assert first_illegal(CANONICAL) is None
    check_order(CANONICAL)


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=3))
def test_mutated_orders_are_accepted_only_when_legal(ops: list[tuple[str, int, int]]) -> None:
    check_order(mutate(CANONICAL, ops))


@settings(max_examples=150, deadline=None)
@given(st.permutations(CANONICAL))
def test_permuted_orders_are_accepted_only_when_legal(seq: list[Event]) -> None:
    check_order(list(seq))


@settings(max_examples=150, deadline=None)
@given(
    pcm_words=st.integers(0, 12_000),
    seed=st.integers(0, 255),
    chunk_words=st.integers(1, 4_000),
    image_times=st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=4),
)
def test_chunks_round_trip_and_images_follow_their_audio(
    pcm_words: int, seed: int, chunk_words: int, image_times: list[float]
) -> None:
    pcm = bytes((seed + i * 7) % 256 for i in range(pcm_words * 2))
    if not pcm:
        image_times = []
    images = [TimedImage(t, JPEG + bytes([n]), 64, 64) for n, t in enumerate(sorted(image_times))]
    core = ClientTurn(make_request(pcm=pcm, images=images, chunk_bytes=chunk_words * 2))
    sent = feed(core, [SessionCreated(session={"id": "s"}), SessionUpdated()])
    assert isinstance(sent[0], SessionUpdate)
    assert isinstance(sent[-2], InputAudioBufferCommit) and isinstance(sent[-1], ResponseCreate)
    audio_so_far = b""
    images_sent: list[bytes] = []
    for event in sent[1:-2]:
        if isinstance(event, InputAudioBufferAppend):
            chunk = base64.b64decode(event.audio, validate=True)
            assert 0 < len(chunk) <= chunk_words * 2
            audio_so_far += chunk
        else:
            assert isinstance(event, InputImageBufferAppend)
            assert audio_so_far, "an image went before any audio"
            image = images[len(images_sent)]
            # the audio up to the image's moment (or all of it) went first
            assert len(audio_so_far) >= min(len(pcm), int(image.at_seconds * 32_000))
            images_sent.append(base64.b64decode(event.image, validate=True))
    assert audio_so_far == pcm
    assert images_sent == [image.jpeg for image in images]


# ----------------------------------------------------------------------------- against the simulator's core


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """A loud sine tone: real PCM16 that the simulator's VAD hears as speech."""
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    return (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def jpeg(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def run_pair(core: ClientTurn, server: ServerSession) -> list[Event]:
    """Client core and server core in memory, every event through its JSON frame; returns what was sent."""
    sent: list[Event] = []
    inbox = [parse_event(to_json(e)) for e in server.opening_events()]
    now = 0.0
    while not core.done:
        if not inbox:
            assert core.deadline is not None, f"stalled in {core.state}"
            now = core.deadline
            core.tick(now)
        else:
            core.receive(inbox.pop(0), now)
        while (out := core.next_event()) is not None:
            sent.append(out.event)
            inbox += [parse_event(to_json(e)) for e in server.receive_frame(to_json(out.event))]
    return sent


def test_full_turn_against_the_simulator_core_in_memory() -> None:
    instructions = "Describe what you hear and see, briefly."
    image = TimedImage(0.5, jpeg(640, 480), 640, 480)
    request = make_request(pcm=tone(1.5), images=[image], instructions=instructions)
    server = ServerSession(FLASH.name, config=SimulatorConfig())
    core = ClientTurn(request)
    sent = run_pair(core, server)
    assert state(core) is State.CLOSED and core.failure is None and core.late_error is None
    assert server.should_close
    assert sum(isinstance(e, InputAudioBufferAppend) for e in sent) == 15
    assert sum(isinstance(e, InputImageBufferAppend) for e in sent) == 1

    result = core.result()
    assert result.session_id == server.session_id
    assert result.response_ids == list(server.usages)
    assert result.input_transcript == "[speech 0.0–1.5 s]"
    assert "I heard 1.5 s of audio" in result.output_transcript
    assert "saw 1 image (640×480, mostly red)" in result.output_transcript
    assert result.output_text == ""
    assert result.output_pcm == synthesize(result.output_transcript, SimulatorConfig().word_ms)

    usage = result.usage
    assert usage is not None
    assert usage.input_text_tokens == count_text_tokens(instructions)
    assert usage.input_audio_tokens == audio_tokens(FLASH, 1.5)
    assert usage.input_image_tokens == image_tokens(FLASH, 640, 480)
    assert usage.input_tokens == count_text_tokens(instructions) + audio_tokens(FLASH, 1.5) + image_tokens(
        FLASH, 640, 480
    )
    assert usage.output_audio_tokens == audio_tokens(FLASH, len(result.output_pcm) / 48_000)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_text_mode_with_prompt_on_a_text_input_model_in_memory() -> None:
    request = make_request(
        pcm=tone(1.0), model=OMNI35, modalities=("text",), prompt="What note is this?", transcribe_input=False
    )
    server = ServerSession(OMNI35.name)
    core = ClientTurn(request)
    run_pair(core, server)
    result = core.result()
    assert "You wrote: 'What note is this?'" in result.output_text
    assert result.output_transcript == "" and result.output_pcm == b""
    assert result.input_transcript == ""
    assert result.usage is not None
    assert result.usage.input_text_tokens == count_text_tokens("What note is this?")


def test_tool_round_against_the_simulator_core() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"properties": {"q": {"type": "string"}}}},
        }
    ]
    calls: list[FunctionCall] = []

    def handler(call: FunctionCall) -> str:
        calls.append(call)
        return "forty-two"

    request = make_request(pcm=tone(1.0), model=OMNI35, instructions="use lookup", session_options={"tools": tools})
    core = ClientTurn(request, tool_handler=handler)
    run_pair(core, ServerSession(OMNI35.name))
    assert [c.name for c in calls] == ["lookup"]
    result = core.result()
    assert len(result.response_ids) == 2
    assert "Tool lookup returned: 'forty-two'" in result.output_transcript


def test_rejected_session_finish_in_memory_is_not_a_failure() -> None:
    config = SimulatorConfig(finish_unsupported_models=(FLASH.name,))
    core = ClientTurn(make_request(pcm=tone(1.0)))
    run_pair(core, ServerSession(FLASH.name, config=config))
    assert state(core) is State.CLOSED and core.failure is None
    assert isinstance(core.late_error, ServerError) and core.late_error.code == "invalid_event"
    assert core.result().output_pcm


def test_bad_voice_in_memory_is_a_server_error() -> None:
    request = TurnRequest(model=TURBO, voice="Nofish", modalities=("text", "audio"), media=PreparedInput(tone(1.0)))
    core = ClientTurn(request)
    run_pair(core, ServerSession(TURBO.name))
    assert state(core) is State.FAILED
    assert isinstance(core.failure, ServerError)
    assert core.failure.error_type == "invalid_request_error" and core.failure.param
