"""The simulator's server core: the realtime service's session logic with no I/O.

:class:`ServerSession` consumes parsed client events and returns the server events the service would
send, in order. It never sleeps, never touches a socket and never picks faults: latency, throttling,
faults and timeouts belong to the WebSocket layer in :mod:`batchqwen.sim.server`. The same class serves every
protocol family: the model's family (:mod:`batchqwen.sim.families`) spells the session's wire shape,
and its row of facts says how turns are taken and how a session ends. A client core can therefore be
tested against it in memory::

    server = ServerSession("qwen3-omni-flash-realtime")
    for event in server.opening_events():        # [SessionCreated]
        client.receive(event)
    for event in client_events:
        for reply in server.receive(event):      # or server.receive_frame(text)
            client.receive(reply)
    if server.should_close:                      # after session.finished or a fatal error
        ...

Every response is produced whole by the ``receive`` call that triggers it (``response.create``, or the
audio chunk on which the server VAD detects the end of speech), so in memory no response is ever "in
progress": ``response.cancel`` answers an error here, and the WebSocket layer, which streams responses
over time, handles a cancel that arrives mid-stream itself (see :meth:`ServerSession.cancelled_done`).

Answers are deterministic descriptions of the input ("I heard 3.2 s of audio (...)"), plainly not a
model; usage follows the documented token rules in :mod:`batchqwen.models` and
:func:`batchqwen.tokens.count_text_tokens`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from batchqwen.errors import ProtocolError, UsageError
from batchqwen.models import ModelInfo, audio_tokens, get_model, image_tokens
from batchqwen.realtime import events as ev
from batchqwen.sim import responses
from batchqwen.sim.analysis import (
    FRAME_BYTES,
    INPUT_BYTES_PER_MS,
    MIN_SPEECH_FRAMES,
    ImageInfo,
    NotJpeg,
    frame_dbfs,
    input_fingerprint,
    probe_jpeg,
    speech_segments,
    synthesize,
    vad_threshold_dbfs,
)
from batchqwen.sim.answers import Answer, UserItem, describe, input_key, recall, summarize, transcript, translate
from batchqwen.sim.config import FAULT_KINDS, SimulatorConfig, ThrottleMode
from batchqwen.sim.families import SimFamily, sim_family
from batchqwen.sim.responses import new_id
from batchqwen.sim.settings import DEFAULT_TURN_DETECTION, Rejected, apply_update, default_session
from batchqwen.sim.tools import ToolPolicy, ToolTurn, call_prompt
from batchqwen.sim.vad import SpeechDetector
from batchqwen.tokens import count_text_tokens

IMAGE_BEFORE_AUDIO = "Error append image before append audio."


@dataclass
class ReceivedMedia:
    """What one session received, as the server counted it (not what the client says it sent): the
    bytes of audio appended and the size of every image accepted, in order."""

    audio_bytes: int = 0
    images: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each JPEG accepted

    @property
    def audio_seconds(self) -> float:
        return self.audio_bytes / (INPUT_BYTES_PER_MS * 1000)


class ServerSession:
    """The service's side of one realtime session, free of I/O.

    API: ``ServerSession(model, *, config=None)``; :meth:`opening_events` (``session.created``, or an
    ``error`` for an unknown model); :meth:`receive` (one parsed client event -> server events);
    :meth:`receive_frame` (a raw text frame, malformed JSON answered with an error);
    :attr:`should_close` (True once the service would close: after ``session.finished`` or a fatal
    error); :attr:`fingerprints` (response id -> :func:`input_fingerprint` of what it answered);
    :attr:`usages` (response id -> :class:`~batchqwen.realtime.events.Usage`, in response order);
    :attr:`argument_faults` (response id -> the argument fault its calls carry); :meth:`cancelled_done`.
    """

    def __init__(self, model: str, *, config: SimulatorConfig | None = None, session_id: str | None = None):
        self.config = config or SimulatorConfig()
        self.model_name = model
        self.session_id = session_id or new_id("sess_")
        self.should_close = False
        self.fingerprints: dict[str, str] = {}
        self.usages: dict[str, ev.Usage] = {}
        self.model: ModelInfo | None
        try:
            self.model = get_model(model) if model else None
        except UsageError:
            self.model = None
        #: the protocol family: its session shape, turn mode and end of session
        self.family: SimFamily = sim_family(self.model.protocol if self.model else "omni")
        self.session: dict[str, Any] = {
            **default_session(model, self.model, self.session_id),
            **self.family.defaults,
        }
        self._buffer = bytearray()  # uncommitted audio
        self._buffer_start = 0  # session byte offset of _buffer[0]
        self._vad_pos = 0  # session byte offset up to which the VAD has looked
        self._vad = SpeechDetector(self.session["turn_detection"] or DEFAULT_TURN_DETECTION)
        self._speech_start = 0  # session byte offset where the item being spoken starts (padding included)
        self._speech_item = ""  # its item id, from speech_started on
        self._images: list[ImageInfo] = []  # uncommitted images
        self._audio_seen = False
        self._images_received = 0  # for the images-per-second limit (LiveTranslate)
        self.received = ReceivedMedia()  # the server's own record of the media received
        self._history: list[UserItem] = []  # billed context
        self._pending: list[UserItem] = []  # items the next response answers
        self._calls: dict[str, str] = {}  # call_id -> tool name, of function calls made
        self._outputs: list[_Output] = []  # earlier responses' output, billed again as input text
        self._turns: list[_Turn] = []  # earlier user turns, for the answers' memory
        self._turn: _Turn | None = None  # the turn being answered (its tool rounds may still go on)
        self._tool_turn: ToolTurn | None = None
        self.tool_policy = ToolPolicy(
            rounds=self.config.tool_rounds,
            parallel=self.config.parallel_tool_calls,
            argument_fault=self.config.argument_fault,
        )
        self.argument_faults: dict[str, str] = {}

    # ------------------------------------------------------------------ public API

    def opening_events(self) -> list[ev.Event]:
        """What the service sends right after the handshake."""
        # the codes of the SDK's error registry (dashscope 2.0.2 v2/errors.py): Model.NotExist -> NotFoundError
        if self.model is None:
            self.should_close = True
            return [_error(f"Model not exist: {self.model_name!r}", code="Model.NotExist", param="model")]
        if self.model_name in self.config.unpurchased_models:
            self.should_close = True
            message = f"Access denied: model {self.model_name!r} has not been purchased for this account"
            return [_error(message, code="AccessDenied.Unpurchased", param="model")]
        return [ev.SessionCreated(session=self.family.echo(self.session), event_id=ev.new_event_id())]

    def receive_frame(self, frame: str | bytes) -> list[ev.Event]:
        """Parse one client frame and answer it; a frame that is not a valid event gets an error."""
        try:
            event = ev.parse_event(frame)
        except ProtocolError as exc:
            return [_error(str(exc), code="invalid_event")]
        return self.receive(event)

    def receive(self, event: ev.Event) -> list[ev.Event]:
        """Answer one client event with the server events the service would send, in order."""
        if self.should_close:
            return []
        try:
            return self._dispatch(event)
        except Rejected as exc:
            return [_error(exc.message, code=exc.code, param=exc.param)]

    def cancelled_done(self, response_id: str) -> ev.ResponseDone:
        """The ``response.done`` of a response the client cancelled mid-stream (input billed, no output);
        its output leaves the conversation (later responses do not bill it)."""
        self._outputs = [o for o in self._outputs if o.response_id != response_id]
        return responses.cancelled_done(response_id, self.usages.get(response_id, ev.Usage()))

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.SessionUpdate):
            return self._session_update(event.session)
        if isinstance(event, ev.InputAudioBufferAppend):
            return self._append_audio(event.audio)
        if isinstance(event, ev.InputImageBufferAppend):
            return self._append_image(event.image)
        if isinstance(event, ev.InputAudioBufferCommit):
            self._manual_turns_only(event)
            return self._commit_manual()
        if isinstance(event, ev.InputAudioBufferClear):
            self._buffer_start += len(self._buffer)
            self._buffer.clear()
            self._images.clear()
            self._vad_pos = self._buffer_start
            self._vad.reset()
            return [ev.InputAudioBufferCleared(event_id=ev.new_event_id())]
        if isinstance(event, ev.ResponseCreate):
            self._manual_turns_only(event)
            return self._respond(event.response or {})
        if isinstance(event, ev.ResponseCancel):
            raise Rejected("Cancellation failed: no active response found.", code="response_cancel_not_active")
        if isinstance(event, ev.ConversationItemCreate):
            return self._item_create(event.item)
        if isinstance(event, ev.SessionFinish):
            return self._finish()
        name = event.event_type if isinstance(event, ev.UnknownEvent) else event.type
        raise Rejected(f"Invalid event type: {name}", code="invalid_event", param="type")

    def _manual_turns_only(self, event: ev.Event) -> None:
        """Where the service detects speech itself, the client neither commits nor asks for responses."""
        if self.family.row.turn == "server":
            raise Rejected(
                f"Invalid event type: {event.type}: this model detects speech and answers by itself.",
                code="invalid_event",
                param="type",
            )

    def _finish(self) -> list[ev.Event]:
        """``session.finish`` by the family's end: ``finish_ack`` answers ``session.finished`` (a server-turn
        family first ends and answers the utterance in progress), ``finish_no_ack`` just closes, ``close``
        (no such event) is an ``invalid_event``."""
        end = self.family.row.end
        series = self.model.series if self.model else ""
        unsupported = {self.model_name, series} & set(self.config.finish_unsupported_models)
        if end == "close" or unsupported:
            raise Rejected("Invalid event type: session.finish", code="invalid_event", param="type")
        events: list[ev.Event] = []
        if self.family.row.turn == "server" and self._vad.in_speech:
            events += self._end_of_speech(self._buffer_start + len(self._buffer))
            self._vad.reset()
        self.should_close = True
        if end == "finish_ack":
            events.append(ev.SessionFinished(event_id=ev.new_event_id()))
        return events

    def _session_update(self, update: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        canonical = self.family.read_update(update)  # refuses other families' fields by their own names
        try:
            new = apply_update(
                self.model,
                self.model_name,
                self.session,
                canonical,
                transcription_model=self.family.row.transcription_model,
                refuse_tools=self.config.unsupported_tools == "error",
            )
        except Rejected as exc:  # name the canonical field as this family spells it
            exc.param = self.family.params.get(exc.param or "", exc.param)
            raise
        if self.session["turn_detection"] != new["turn_detection"]:
            self._vad = SpeechDetector(new["turn_detection"] or DEFAULT_TURN_DETECTION)
            self._vad_pos = self._buffer_start + len(self._buffer)
        self.session = new
        return [ev.SessionUpdated(session=self.family.echo(new), event_id=ev.new_event_id())]

    # ------------------------------------------------------------------ input buffers

    def _append_audio(self, audio_b64: str) -> list[ev.Event]:
        try:
            pcm = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("audio is not valid base64.", param="audio") from None
        if not pcm:
            return []
        self._audio_seen = True
        self._buffer += pcm
        self.received.audio_bytes += len(pcm)
        if self.session["turn_detection"] is None:
            return []
        return self._run_vad()

    def _append_image(self, image_b64: str) -> list[ev.Event]:
        assert self.model is not None
        if not self.model.images:
            raise Rejected(
                f"Invalid event type: input_image_buffer.append: model {self.model_name} takes no images.",
                code="invalid_event",
                param="type",
            )
        if not self._audio_seen:
            raise Rejected(IMAGE_BEFORE_AUDIO, param="image")
        raw_limit = self.family.max_image_bytes
        if raw_limit is None and len(image_b64) > self.config.max_image_base64_bytes:
            raise Rejected(
                f"Image too large: {len(image_b64)} base64 bytes > {self.config.max_image_base64_bytes}.",
                param="image",
            )
        try:
            jpeg = base64.b64decode(image_b64, validate=True)
            if raw_limit is not None and len(jpeg) > raw_limit:
                raise Rejected(f"Image too large: {len(jpeg)} bytes > {raw_limit}.", param="image")
            probed = probe_jpeg(jpeg)
        except (binascii.Error, ValueError) as exc:
            message = str(exc) if isinstance(exc, NotJpeg) else "Image is not a decodable JPEG."
            raise Rejected(message, param="image") from None
        rate = self.model.max_images_per_second
        if rate is not None:
            # at most `rate` images a second of the audio received so far (the fence post counted)
            heard = (self._buffer_start + len(self._buffer)) / (INPUT_BYTES_PER_MS * 1000)
            if self._images_received + 1 > rate * heard + 1:
                raise Rejected(f"Too many images: at most {rate:g} per second of audio.", param="image")
        self._images_received += 1
        self._images.append(probed)
        self.received.images.append((probed.width, probed.height))
        return []

    def _commit_manual(self) -> list[ev.Event]:
        if not self._buffer and not self._images:
            raise Rejected(
                "Error committing input audio buffer: the buffer is empty.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item if self._vad.in_speech else new_id("item_")
        events = self._commit(len(self._buffer), item_id)
        self._vad.reset()
        self._vad_pos = self._buffer_start
        return events

    def _commit(self, end: int, item_id: str, start: int = 0) -> list[ev.Event]:
        """Commit buffer bytes [start, end) (buffer-relative) plus the pending images as one user item."""
        end -= end % 2
        with memoryview(self._buffer) as view:  # one copy of the audio, not two (a long segment is 67 MB)
            pcm = bytes(view[start:end])
        item = UserItem(item_id, "audio", pcm=pcm, images=tuple(self._images))
        del self._buffer[:end]
        self._buffer_start += end
        self._images.clear()
        self._add_item(item)
        events: list[ev.Event] = [
            ev.InputAudioBufferCommitted(item_id=item_id, event_id=ev.new_event_id()),
            ev.ConversationItemCreated(
                item={
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "in_progress",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
                event_id=ev.new_event_id(),
            ),
        ]
        if self.session["input_audio_transcription"] is not None:
            events.append(
                ev.InputAudioTranscriptionCompleted(
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript(item.pcm, self._threshold_dbfs()),
                    event_id=ev.new_event_id(),
                )
            )
        return events

    def _add_item(self, item: UserItem) -> None:
        self._history.append(item)
        self._pending.append(item)
        audio_items = [i for i in self._history if i.kind == "audio"]
        if len(audio_items) > self.family.history_turns:
            # the oldest audio turn leaves the context, with the answers it got
            self._history.remove(audio_items[0])
            self._outputs = [o for o in self._outputs if o.turn_key != audio_items[0].id]

    def _threshold_dbfs(self) -> float:
        detection = self.session["turn_detection"] or DEFAULT_TURN_DETECTION
        return vad_threshold_dbfs(float(detection["threshold"]))

    # ------------------------------------------------------------------ server VAD

    def _run_vad(self) -> list[ev.Event]:
        """Feed the new whole frames to the energy VAD; speech end commits and answers on its own."""
        offset = self._vad_pos - self._buffer_start
        frames = (len(self._buffer) - offset) // FRAME_BYTES
        if frames <= 0:
            return []
        levels = frame_dbfs(bytes(self._buffer[offset : offset + frames * FRAME_BYTES]))
        events: list[ev.Event] = []
        for mark in self._vad.scan(levels, self._vad_pos, self._buffer_start):
            if mark.kind == "started":
                self._speech_start, self._speech_item = mark.at, new_id("item_")
                events.append(
                    ev.InputAudioBufferSpeechStarted(
                        audio_start_ms=mark.at // INPUT_BYTES_PER_MS,
                        item_id=self._speech_item,
                        event_id=ev.new_event_id(),
                    )
                )
            else:
                events += self._end_of_speech(mark.at)
        self._vad_pos += frames * FRAME_BYTES
        if not self._vad.in_speech:
            # Between turns only the prefix padding can still be needed: keep memory flat on long silence.
            drop = self._vad_pos - self._buffer_start - self._vad.prefix_bytes - MIN_SPEECH_FRAMES * FRAME_BYTES
            if drop > 0:
                del self._buffer[:drop]
                self._buffer_start += drop
        return events

    def _end_of_speech(self, end: int) -> list[ev.Event]:
        """speech_stopped at session byte ``end``, then the segment is committed and answered at once."""
        events: list[ev.Event] = [
            ev.InputAudioBufferSpeechStopped(
                audio_end_ms=end // INPUT_BYTES_PER_MS, item_id=self._speech_item, event_id=ev.new_event_id()
            )
        ]
        events += self._commit(end - self._buffer_start, self._speech_item, self._speech_start - self._buffer_start)
        try:
            events += self._respond({})
        except Rejected as exc:
            events.append(_error(exc.message, code=exc.code, param=exc.param))
        return events

    # ------------------------------------------------------------------ conversation.item.create

    def _item_create(self, item: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        if not self.model.text_input:
            raise Rejected(
                f"conversation.item.create is not supported by model {self.model_name}.",
                code="invalid_event",
                param="type",
            )
        kind = item.get("type")
        item_id = str(item.get("id") or new_id("item_"))
        if kind == "message":
            parts = item.get("content")
            if item.get("role", "user") != "user" or not isinstance(parts, list):
                raise Rejected("Only user messages with a content list are accepted.", param="item")
            texts = [p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == "input_text"]
            if not texts or not all(isinstance(t, str) for t in texts) or len(texts) != len(parts):
                raise Rejected("Message content must be input_text parts.", param="item.content")
            self._add_item(UserItem(item_id, "text", text="\n".join(str(t) for t in texts)))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if call_id not in self._calls:
                raise Rejected(f"Unknown call_id {call_id!r}.", param="item.call_id")
            if not isinstance(output, str):
                raise Rejected("function_call_output needs a string output.", param="item.output")
            self._add_item(UserItem(item_id, "tool_output", text=output, call_name=self._calls[str(call_id)]))
        else:
            raise Rejected(f"Unsupported item type {kind!r}.", param="item.type")
        created = {"id": item_id, "object": "realtime.item", "status": "completed", **item}
        created["id"] = item_id
        return [ev.ConversationItemCreated(item=created, event_id=ev.new_event_id())]

    # ------------------------------------------------------------------ responses

    def _usage_input(self, instructions: str) -> tuple[int, int, int]:
        """(text, audio, image) input tokens of the whole billed context: the instructions, every user item
        still in the history and the text of the answers and calls given to them."""
        assert self.model is not None
        text = count_text_tokens(instructions) + sum(o.text_tokens for o in self._outputs)
        audio = image = 0
        for item in self._history:
            text += count_text_tokens(item.text)
            if item.kind == "audio":
                audio += audio_tokens(self.model, len(item.pcm) / (INPUT_BYTES_PER_MS * 1000))
                image += sum(image_tokens(self.model, i.width, i.height) for i in item.images)
        return text, audio, image

    def _respond(self, request: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        modalities = request.get("modalities") or self.session["modalities"]
        if not isinstance(modalities, list) or sorted(map(str, modalities)) not in (["text"], ["audio", "text"]):
            raise Rejected(f"Invalid modalities: {modalities!r}.", param="response.modalities")
        instructions = request.get("instructions")
        if not isinstance(instructions, str):
            instructions = str(self.session.get("instructions") or "")
        text_in, audio_in, image_in = self._usage_input(instructions)
        if text_in + audio_in + image_in > self.model.max_input_tokens:
            raise Rejected(
                f"Input of {text_in + audio_in + image_in} tokens > limit {self.model.max_input_tokens}.",
                code="context_length_exceeded",
                param="input",
            )
        pending, self._pending = self._pending, []
        if not pending or any(i.kind != "tool_output" for i in pending):
            self._open_turn(pending, instructions)
        calls = self._tool_turn.next_calls() if self._tool_turn is not None else []
        if self.family.row.translation:
            answer = translate(pending, self.session, self._threshold_dbfs())
        elif calls:
            answer = Answer(
                text="", fingerprint=input_key(pending, instructions), calls=tuple((c.name, c.arguments) for c in calls)
            )
        else:
            answer = describe(pending, instructions, self._threshold_dbfs(), memory=recall(self._remembered()))
        call_ids = [new_id("call_") for _ in calls]
        self._calls.update(zip(call_ids, (c.name for c in calls), strict=True))
        response_id, events, usage = responses.build_response(
            answer,
            model=self.model,
            config=self.config,
            audio_mode="audio" in modalities,
            voice=str(self.session["voice"]),
            output_audio_format=str(self.session["output_audio_format"]),
            input_tokens=(text_in, audio_in, image_in),
            call_ids=call_ids,
        )
        self.fingerprints[response_id] = answer.fingerprint
        self.usages[response_id] = usage
        faults = {c.fault for c in calls if c.fault is not None}
        if faults:
            self.argument_faults[response_id] = faults.pop()
        turn_key = self._turn.key if self._turn is not None else ""
        self._outputs.append(_Output(response_id, turn_key, usage.output_text_tokens or 0))
        return events

    def _open_turn(self, pending: list[UserItem], instructions: str) -> None:
        """A response to new user input (or to nothing) begins a turn; one after tool outputs goes on with it."""
        assert self.model is not None
        if self._turn is not None:
            self._turns.append(self._turn)
        user = [i for i in pending if i.kind != "tool_output"]
        audio = next((i.id for i in user if i.kind == "audio"), "")
        number = self._turn.number + 1 if self._turn is not None else 1
        self._turn = _Turn(number, frozenset(i.id for i in user), summarize(user), audio)
        tools = self.session.get("tools") or []
        if self.model.tools and tools and not self.family.row.translation:
            prompt = call_prompt(instructions, [i.text for i in user if i.kind == "text"])
            self._tool_turn = ToolTurn.start(prompt, tools, self.tool_policy)
        else:
            self._tool_turn = None

    def _remembered(self) -> list[tuple[int, str]]:
        """(number, summary) of the earlier turns whose input is still in the billed history."""
        held = {i.id for i in self._history}
        return [(t.number, t.summary) for t in self._turns if t.item_ids & held]


@dataclass(slots=True)
class _Output:
    """One response's output as the conversation keeps it: its text tokens, billed again as input."""

    response_id: str
    turn_key: str  # the id of its turn's first audio item ("" for a typed turn): it leaves the context with it
    text_tokens: int


@dataclass(slots=True)
class _Turn:
    """One user turn: its number in the session, its items, what it brought, its first audio item's id."""

    number: int
    item_ids: frozenset[str]
    summary: str
    key: str


def _error(message: str, *, code: str, param: str | None = None, type_: str = "invalid_request_error") -> ev.Error:
    return ev.Error(
        error={"type": type_, "code": code, "message": message, "param": param},
        event_id=ev.new_event_id(),
    )


__all__ = [
    "FAULT_KINDS",
    "IMAGE_BEFORE_AUDIO",
    "ServerSession",
    "SimulatorConfig",
    "ThrottleMode",
    "frame_dbfs",
    "input_fingerprint",
    "speech_segments",
    "synthesize",
    "vad_threshold_dbfs",
]
