"""The event sequence of one response, and its usage by the documented token rules.

Audio mode: ``response.created``, ``output_item.added``, ``content_part.added``, transcript deltas (4 words
each) interleaved with ~100 ms ``response.audio.delta``s, ``audio_transcript.done``, ``audio.done``,
``content_part.done``, ``output_item.done``, ``response.done``. Text mode: ``response.text.*``, no audio.
A function call: ``output_item.added``, ``function_call_arguments.delta`` / ``.done``, ``output_item.done``.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from batchqwen.models import ModelInfo, audio_tokens
from batchqwen.realtime import events as ev
from batchqwen.sim.analysis import OUTPUT_RATE, synthesize
from batchqwen.sim.answers import Answer
from batchqwen.sim.config import SimulatorConfig
from batchqwen.tokens import count_text_tokens


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
    call_id: str | None = None,
) -> tuple[str, list[ev.Event], ev.Usage]:
    """(response id, its events, its usage) for ``answer``; ``input_tokens`` is (text, audio, image)."""
    response_id, item_id = new_id("resp_"), new_id("item_")
    part: dict[str, Any] | None
    if answer.call is not None:
        assert call_id is not None
        name, arguments = answer.call
        out_text, out_audio = count_text_tokens(arguments), 0
        output_item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
        body: list[ev.Event] = [
            ev.ResponseFunctionCallArgumentsDelta(
                response_id=response_id, item_id=item_id, call_id=call_id, delta=arguments, event_id=ev.new_event_id()
            ),
            ev.ResponseFunctionCallArgumentsDone(
                response_id=response_id,
                item_id=item_id,
                call_id=call_id,
                name=name,
                arguments=arguments,
                event_id=ev.new_event_id(),
            ),
        ]
        added_item = {**output_item, "status": "in_progress", "arguments": ""}
        part = None
    else:
        pcm = synthesize(answer.text, config.word_ms) if audio_mode else b""
        out_text = count_text_tokens(answer.text)
        out_audio = audio_tokens(model, len(pcm) / (OUTPUT_RATE * 2)) if audio_mode else 0
        part = {"type": "audio", "transcript": answer.text} if audio_mode else {"type": "text", "text": answer.text}
        output_item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        added_item = {**output_item, "status": "in_progress", "content": []}
        body = content_events(response_id, item_id, answer.text, pcm, audio_mode, config.audio_delta_ms)

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
    events: list[ev.Event] = [
        ev.ResponseCreated(response=response, event_id=ev.new_event_id()),
        ev.ResponseOutputItemAdded(
            response_id=response_id, output_index=0, item=added_item, event_id=ev.new_event_id()
        ),
    ]
    if part is not None:
        empty = {**part, "transcript": ""} if audio_mode else {**part, "text": ""}
        events.append(
            ev.ResponseContentPartAdded(
                response_id=response_id, item_id=item_id, part=empty, event_id=ev.new_event_id()
            )
        )
    events += body
    if part is not None:
        events.append(
            ev.ResponseContentPartDone(response_id=response_id, item_id=item_id, part=part, event_id=ev.new_event_id())
        )
    events += [
        ev.ResponseOutputItemDone(
            response_id=response_id, output_index=0, item=output_item, event_id=ev.new_event_id()
        ),
        ev.ResponseDone(
            response={**response, "status": "completed", "output": [output_item], "usage": usage.to_json()},
            event_id=ev.new_event_id(),
        ),
    ]
    return response_id, events, usage


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
