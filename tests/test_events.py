"""The one parser and serialiser of events: round trips, unknown types, malformed frames."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchqwen.errors import ProtocolError
from batchqwen.realtime import events as ev


@pytest.mark.parametrize("cls", ev.CLIENT_EVENTS + ev.SERVER_EVENTS)
def test_every_event_type_round_trips(cls: type[ev.Event]) -> None:
    event = cls()
    frame = ev.to_json(event)
    assert json.loads(frame)["type"] == cls.type
    assert ev.parse_event(frame) == event


def test_unknown_type_is_kept_not_fatal() -> None:
    event = ev.parse_event('{"type":"response.something_new","x":1}')
    assert isinstance(event, ev.UnknownEvent)
    assert event.event_type == "response.something_new" and event.data["x"] == 1
    assert json.loads(ev.to_json(event)) == {"type": "response.something_new", "x": 1}


@pytest.mark.parametrize(
    "frame",
    ['{"type":', "[1,2]", '"text"', '{"no_type":1}', '{"type":""}', '{"type":"response.audio.delta","delta":5}',
     '{"type":"response.done","response":"done"}', '{"type":"session.created","session":[1]}', b"\xff\xfe"],
)  # fmt: skip
def test_malformed_frames_are_protocol_errors(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        ev.parse_event(frame)


def test_usage_reads_the_documented_key_spelling() -> None:
    done = ev.parse_event(
        json.dumps(
            {
                "type": "response.done",
                "response": {
                    "id": "resp_1",
                    "status": "completed",
                    "usage": {
                        "total_tokens": 377,
                        "input_tokens": 336,
                        "output_tokens": 41,
                        "input_tokens_details": {"text_tokens": 228, "audio_tokens": 108},
                        "output_tokens_details": {"text_tokens": 9, "audio_tokens": 32},
                    },
                },
            }
        )
    )
    assert isinstance(done, ev.ResponseDone)
    usage = done.usage
    assert usage is not None and usage.has_breakdown
    assert (usage.input_text_tokens, usage.input_audio_tokens, usage.output_audio_tokens) == (228, 108, 32)
    assert ev.Usage.from_json(usage.to_json()) == usage
    assert (usage + usage).total_tokens == 754


def test_usage_without_breakdown_keeps_totals() -> None:
    usage = ev.Usage.from_json({"total_tokens": 10, "input_tokens": 7, "output_tokens": 3})
    assert usage is not None and not usage.has_breakdown and usage.input_tokens == 7


@given(st.binary(max_size=5000))
def test_audio_append_frames_round_trip(pcm: bytes) -> None:
    event = ev.InputAudioBufferAppend(audio=base64.b64encode(pcm).decode("ascii"))
    frame = ev.to_json(event)
    assert json.loads(frame) == {"type": "input_audio_buffer.append", "audio": event.audio}
    parsed = ev.parse_event(frame)
    assert isinstance(parsed, ev.InputAudioBufferAppend)
    assert base64.b64decode(parsed.audio) == pcm


@given(st.text(max_size=200))
def test_any_text_payload_still_makes_valid_json(text: str) -> None:
    # the fast path for base64 payloads must never let other text out unescaped
    for event in (ev.InputAudioBufferAppend(audio=text), ev.InputImageBufferAppend(image=text)):
        assert ev.parse_event(ev.to_json(event)) == event
