"""The event sequence of one response, and its usage by the documented token rules.

Audio mode: ``response.created``, ``output_item.added``, ``content_part.added``, transcript deltas (4 words
each) interleaved with ~100 ms ``response.audio.delta``s, ``audio_transcript.done``, ``audio.done``,
``content_part.done``, ``output_item.done``, ``response.done``. Text mode: ``response.text.*``, no audio.
A function call: per call (one output item each, ``output_index`` 0, 1, ...) ``output_item.added``,
``function_call_arguments.delta`` events, ``.done``, ``output_item.done``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any

from batchqwen.models import ModelInfo, audio_tokens
from batchqwen.realtime import events as ev
from batchqwen.sim.analysis import OUTPUT_RATE, synthesize
from batchqwen.sim.answers import Answer
from batchqwen.sim.config import SimulatorConfig
from batchqwen.tokens import count_text_tokens

ARGUMENT_DELTA_CHARS = 32  # arguments stream in pieces, as the service's deltas do


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def build_response(
    answer: Answer,
    *,
    model: ModelInfo,
    config: SimulatorConfig,
    audio_mode: bool,
    voice: str,
    output_audio_format: str,
    input_tokens: tuple[int, int, int],
    call_ids: Sequence[str] = (),
) -> tuple[str, list[ev.Event], ev.Usage]:
    """(response id, its events, its usage) for ``answer``; ``input_tokens`` is (text, audio, image).

    An answer with calls gets one ``function_call`` output item per call (``call_ids``, in order).
    """
    response_id = new_id("resp_")
    items: list[tuple[dict[str, Any], list[ev.Event]]] = []  # (output item, its events from added to done)
    if answer.calls:
        assert len(call_ids) == len(answer.calls)
        out_text = sum(count_text_tokens(arguments) for _, arguments in answer.calls)
        out_audio = 0
        for index, ((name, arguments), call_id) in enumerate(zip(answer.calls, call_ids, strict=True)):
            items.append(function_call_item(response_id, index, call_id, name, arguments))
    else:
        pcm = synthesize(answer.text, config.word_ms) if audio_mode else b""
        out_text = count_text_tokens(answer.text)
        out_audio = audio_tokens(model, len(pcm) / (OUTPUT_RATE * 2)) if audio_mode else 0
        items.append(message_item(response_id, answer.text, pcm, audio_mode, config.audio_delta_ms))

    text_in, audio_in, image_in = input_tokens
    usage = ev.Usage(
        total_tokens=text_in + audio_in + image_in + out_text + out_audio,
        input_tokens=text_in + audio_in + image_in,
        output_tokens=out_text + out_audio,
        input_text_tokens=text_in,
        input_audio_tokens=audio_in,
        input_image_tokens=image_in,
        output_text_tokens=out_text,
        output_audio_tokens=out_audio if audio_mode else None,
    )
    response = {
        "id": response_id,
        "object": "realtime.response",
        "status": "in_progress",
        "status_details": None,
        "modalities": ["text", "audio"] if audio_mode else ["text"],
        "voice": voice,
        "output_audio_format": output_audio_format,
        "output": [],
        "usage": None,
    }
    events: list[ev.Event] = [ev.ResponseCreated(response=response, event_id=ev.new_event_id())]
    for _, item_events in items:
        events += item_events
    events.append(
        ev.ResponseDone(
            response={
                **response,
                "status": "completed",
                "output": [item for item, _ in items],
                "usage": usage.to_json(),
            },
            event_id=ev.new_event_id(),
        )
    )
    return response_id, events, usage


def function_call_item(
    response_id: str, index: int, call_id: str, name: str, arguments: str
) -> tuple[dict[str, Any], list[ev.Event]]:
    """A ``function_call`` output item and its events: added, the arguments in deltas of up to 32
    characters, ``function_call_arguments.done``, done."""
    item_id = new_id("item_")
    item: dict[str, Any] = {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    pieces = [arguments[i : i + ARGUMENT_DELTA_CHARS] for i in range(0, len(arguments), ARGUMENT_DELTA_CHARS)]
    events: list[ev.Event] = [
        ev.ResponseOutputItemAdded(
            response_id=response_id,
            output_index=index,
            item={**item, "status": "in_progress", "arguments": ""},
            event_id=ev.new_event_id(),
        ),
        *(
            ev.ResponseFunctionCallArgumentsDelta(
                response_id=response_id,
                item_id=item_id,
                output_index=index,
                call_id=call_id,
                delta=piece,
                event_id=ev.new_event_id(),
            )
            for piece in pieces
        ),
        ev.ResponseFunctionCallArgumentsDone(
            response_id=response_id,
            item_id=item_id,
            output_index=index,
            call_id=call_id,
            name=name,
            arguments=arguments,
            event_id=ev.new_event_id(),
        ),
        ev.ResponseOutputItemDone(response_id=response_id, output_index=index, item=item, event_id=ev.new_event_id()),
    ]
    return item, events


def message_item(
    response_id: str, text: str, pcm: bytes, audio_mode: bool, audio_delta_ms: int
) -> tuple[dict[str, Any], list[ev.Event]]:
    """The assistant ``message`` output item (index 0) and its events, content part and deltas included."""
    item_id = new_id("item_")
    part = {"type": "audio", "transcript": text} if audio_mode else {"type": "text", "text": text}
    item: dict[str, Any] = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    empty = {**part, "transcript": ""} if audio_mode else {**part, "text": ""}
    events: list[ev.Event] = [
        ev.ResponseOutputItemAdded(
            response_id=response_id,
            output_index=0,
            item={**item, "status": "in_progress", "content": []},
            event_id=ev.new_event_id(),
        ),
        ev.ResponseContentPartAdded(response_id=response_id, item_id=item_id, part=empty, event_id=ev.new_event_id()),
        *content_events(response_id, item_id, text, pcm, audio_mode, audio_delta_ms),
        ev.ResponseContentPartDone(response_id=response_id, item_id=item_id, part=part, event_id=ev.new_event_id()),
        ev.ResponseOutputItemDone(response_id=response_id, output_index=0, item=item, event_id=ev.new_event_id()),
    ]
    return item, events


def content_events(
    response_id: str, item_id: str, text: str, pcm: bytes, audio_mode: bool, audio_delta_ms: int
) -> list[ev.Event]:
    """Text (or transcript) deltas of a few words each, interleaved with ~100 ms audio deltas."""
    words = text.split(" ")
    pieces = [" ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "") for i in range(0, len(words), 4)]
    if not audio_mode:
        events: list[ev.Event] = [
            ev.ResponseTextDelta(response_id=response_id, item_id=item_id, delta=p, event_id=ev.new_event_id())
            for p in pieces
        ]
        return [
            *events,
            ev.ResponseTextDone(response_id=response_id, item_id=item_id, text=text, event_id=ev.new_event_id()),
        ]
    step = OUTPUT_RATE * 2 * audio_delta_ms // 1000
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    events = []
    for n, piece in enumerate(pieces):
        events.append(
            ev.ResponseAudioTranscriptDelta(
                response_id=response_id, item_id=item_id, delta=piece, event_id=ev.new_event_id()
            )
        )
        # audio deltas spread evenly over the transcript pieces, so text leads audio slightly
        for chunk in chunks[n * len(chunks) // len(pieces) : (n + 1) * len(chunks) // len(pieces)]:
            delta = base64.b64encode(chunk).decode()
            events.append(
                ev.ResponseAudioDelta(response_id=response_id, item_id=item_id, delta=delta, event_id=ev.new_event_id())
            )
    events.append(
        ev.ResponseAudioTranscriptDone(
            response_id=response_id, item_id=item_id, transcript=text, event_id=ev.new_event_id()
        )
    )
    events.append(ev.ResponseAudioDone(response_id=response_id, item_id=item_id, event_id=ev.new_event_id()))
    return events


def cancelled_done(response_id: str, full: ev.Usage) -> ev.ResponseDone:
    """The ``response.done`` of a response cancelled mid-stream: its input billed, no output."""
    usage = ev.Usage(
        total_tokens=full.input_tokens,
        input_tokens=full.input_tokens,
        input_text_tokens=full.input_text_tokens,
        input_audio_tokens=full.input_audio_tokens,
        input_image_tokens=full.input_image_tokens,
        output_text_tokens=0,
        output_audio_tokens=0,
    )
    return ev.ResponseDone(
        response={
            "id": response_id,
            "object": "realtime.response",
            "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "client_cancelled"},
            "output": [],
            "usage": usage.to_json(),
        },
        event_id=ev.new_event_id(),
    )
