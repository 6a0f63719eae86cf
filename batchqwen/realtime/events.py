"""Every client and server event of the realtime protocol, typed once and keyed by ``type``.

``parse_event`` is the one parser for both directions: the client uses it on server frames, the
simulator on client frames. An unknown ``type`` becomes an :class:`UnknownEvent` (never a crash); a frame
that is not a JSON object with a string ``type``, or whose known fields have the wrong JSON type, raises
:class:`~batchqwen.errors.ProtocolError`. ``to_json`` serialises any event back to a frame.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_type_hints

from batchqwen.errors import ProtocolError

JsonObject = dict[str, Any]


def new_event_id() -> str:
    return "event_" + uuid.uuid4().hex


@dataclass(frozen=True)
class Event:
    """Base of all events; ``type`` is a class constant, ``event_id`` optional on the wire."""

    type: ClassVar[str] = ""
    direction: ClassVar[str] = ""  # "client" (client -> server) or "server"


# ----------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class SessionUpdate(Event):
    type: ClassVar[str] = "session.update"
    direction: ClassVar[str] = "client"
    session: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferAppend(Event):
    type: ClassVar[str] = "input_audio_buffer.append"
    direction: ClassVar[str] = "client"
    audio: str = ""  # base64 PCM16LE mono 16 kHz
    event_id: str | None = None


@dataclass(frozen=True)
class InputImageBufferAppend(Event):
    type: ClassVar[str] = "input_image_buffer.append"
    direction: ClassVar[str] = "client"
    image: str = ""  # base64 JPEG
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferCommit(Event):
    type: ClassVar[str] = "input_audio_buffer.commit"
    direction: ClassVar[str] = "client"
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferClear(Event):
    type: ClassVar[str] = "input_audio_buffer.clear"
    direction: ClassVar[str] = "client"
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreate(Event):
    type: ClassVar[str] = "response.create"
    direction: ClassVar[str] = "client"
    response: JsonObject | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCancel(Event):
    type: ClassVar[str] = "response.cancel"
    direction: ClassVar[str] = "client"
    event_id: str | None = None


@dataclass(frozen=True)
class ConversationItemCreate(Event):
    type: ClassVar[str] = "conversation.item.create"
    direction: ClassVar[str] = "client"
    item: JsonObject = field(default_factory=dict)
    previous_item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class SessionFinish(Event):
    type: ClassVar[str] = "session.finish"
    direction: ClassVar[str] = "client"
    event_id: str | None = None


# ----------------------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class ErrorInfo:
    """The ``error`` object of an ``error`` event (and of transcription failures)."""

    type: str = ""
    code: str = ""
    message: str = ""
    param: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> ErrorInfo:
        if not isinstance(data, dict):
            return cls(message=str(data))
        return cls(
            type=str(data.get("type") or ""),
            code=str(data.get("code") or ""),
            message=str(data.get("message") or ""),
            param=None if data.get("param") is None else str(data["param"]),
        )

    def to_json(self) -> JsonObject:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}


@dataclass(frozen=True)
class Usage:
    """Token usage of one response as reported in ``response.done``; ``None`` fields were absent."""

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int | None = None
    input_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_text_tokens: int | None = None
    output_audio_tokens: int | None = None

    @property
    def has_breakdown(self) -> bool:
        return self.input_audio_tokens is not None or self.input_text_tokens is not None

    @classmethod
    def from_json(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        inp = data.get("input_tokens_details") or {}
        out = data.get("output_tokens_details") or {}

        def count(obj: Any, key: str) -> int | None:
            value = obj.get(key) if isinstance(obj, dict) else None
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        return cls(
            total_tokens=count(data, "total_tokens") or 0,
            input_tokens=count(data, "input_tokens") or 0,
            output_tokens=count(data, "output_tokens") or 0,
            input_text_tokens=count(inp, "text_tokens"),
            input_audio_tokens=count(inp, "audio_tokens"),
            input_image_tokens=count(inp, "image_tokens"),
            output_text_tokens=count(out, "text_tokens"),
            output_audio_tokens=count(out, "audio_tokens"),
        )

    def to_json(self) -> JsonObject:
        """The service's spelling: ``input_tokens_details`` / ``output_tokens_details``."""
        inp = {"text_tokens": self.input_text_tokens, "audio_tokens": self.input_audio_tokens}
        if self.input_image_tokens is not None:
            inp["image_tokens"] = self.input_image_tokens
        return {
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_tokens_details": {k: v for k, v in inp.items() if v is not None},
            "output_tokens_details": {
                k: v
                for k, v in {"text_tokens": self.output_text_tokens, "audio_tokens": self.output_audio_tokens}.items()
                if v is not None
            },
        }

    def __add__(self, other: Usage) -> Usage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            total_tokens=self.total_tokens + other.total_tokens,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            input_text_tokens=add(self.input_text_tokens, other.input_text_tokens),
            input_audio_tokens=add(self.input_audio_tokens, other.input_audio_tokens),
            input_image_tokens=add(self.input_image_tokens, other.input_image_tokens),
            output_text_tokens=add(self.output_text_tokens, other.output_text_tokens),
            output_audio_tokens=add(self.output_audio_tokens, other.output_audio_tokens),
        )


@dataclass(frozen=True)
class SessionCreated(Event):
    type: ClassVar[str] = "session.created"
    direction: ClassVar[str] = "server"
    session: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class SessionUpdated(Event):
    type: ClassVar[str] = "session.updated"
    direction: ClassVar[str] = "server"
    session: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    direction: ClassVar[str] = "server"
    error: JsonObject = field(default_factory=dict)
    event_id: str | None = None

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo.from_json(self.error)


@dataclass(frozen=True)
class InputAudioBufferSpeechStarted(Event):
    type: ClassVar[str] = "input_audio_buffer.speech_started"
    direction: ClassVar[str] = "server"
    audio_start_ms: int = 0
    item_id: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferSpeechStopped(Event):
    type: ClassVar[str] = "input_audio_buffer.speech_stopped"
    direction: ClassVar[str] = "server"
    audio_end_ms: int = 0
    item_id: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferCommitted(Event):
    type: ClassVar[str] = "input_audio_buffer.committed"
    direction: ClassVar[str] = "server"
    item_id: str = ""
    previous_item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioBufferCleared(Event):
    type: ClassVar[str] = "input_audio_buffer.cleared"
    direction: ClassVar[str] = "server"
    event_id: str | None = None


@dataclass(frozen=True)
class ConversationItemCreated(Event):
    type: ClassVar[str] = "conversation.item.created"
    direction: ClassVar[str] = "server"
    item: JsonObject = field(default_factory=dict)
    previous_item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioTranscriptionCompleted(Event):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    direction: ClassVar[str] = "server"
    item_id: str = ""
    content_index: int = 0
    transcript: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class InputAudioTranscriptionFailed(Event):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.failed"
    direction: ClassVar[str] = "server"
    item_id: str = ""
    content_index: int = 0
    error: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreated(Event):
    type: ClassVar[str] = "response.created"
    direction: ClassVar[str] = "server"
    response: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseOutputItemAdded(Event):
    type: ClassVar[str] = "response.output_item.added"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    output_index: int = 0
    item: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseOutputItemDone(Event):
    type: ClassVar[str] = "response.output_item.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    output_index: int = 0
    item: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseContentPartAdded(Event):
    type: ClassVar[str] = "response.content_part.added"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    part: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseContentPartDone(Event):
    type: ClassVar[str] = "response.content_part.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    part: JsonObject = field(default_factory=dict)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseTextDelta(Event):
    """Model text, only when the session's modalities are ``["text"]``."""

    type: ClassVar[str] = "response.text.delta"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    delta: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseTextDone(Event):
    type: ClassVar[str] = "response.text.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    text: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseAudioTranscriptDelta(Event):
    """The model's words in text+audio mode."""

    type: ClassVar[str] = "response.audio_transcript.delta"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    delta: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseAudioTranscriptDone(Event):
    type: ClassVar[str] = "response.audio_transcript.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    transcript: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseAudioDelta(Event):
    type: ClassVar[str] = "response.audio.delta"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    delta: str = ""  # base64 PCM16LE mono 24 kHz
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseAudioDone(Event):
    type: ClassVar[str] = "response.audio.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    content_index: int = 0
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseFunctionCallArgumentsDelta(Event):
    type: ClassVar[str] = "response.function_call_arguments.delta"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    call_id: str = ""
    delta: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseFunctionCallArgumentsDone(Event):
    type: ClassVar[str] = "response.function_call_arguments.done"
    direction: ClassVar[str] = "server"
    response_id: str = ""
    item_id: str = ""
    output_index: int = 0
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseDone(Event):
    type: ClassVar[str] = "response.done"
    direction: ClassVar[str] = "server"
    response: JsonObject = field(default_factory=dict)
    event_id: str | None = None

    @property
    def usage(self) -> Usage | None:
        return Usage.from_json(self.response.get("usage"))

    @property
    def status(self) -> str:
        return str(self.response.get("status") or "")


@dataclass(frozen=True)
class SessionFinished(Event):
    type: ClassVar[str] = "session.finished"
    direction: ClassVar[str] = "server"
    event_id: str | None = None


@dataclass(frozen=True)
class UnknownEvent(Event):
    """A well-formed frame whose ``type`` this version does not know; kept whole, never a crash."""

    direction: ClassVar[str] = "unknown"
    event_type: str = ""
    data: JsonObject = field(default_factory=dict)


ClientEvent = (
    SessionUpdate
    | InputAudioBufferAppend
    | InputImageBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ResponseCreate
    | ResponseCancel
    | ConversationItemCreate
    | SessionFinish
)

CLIENT_EVENTS: tuple[type[Event], ...] = (
    SessionUpdate, InputAudioBufferAppend, InputImageBufferAppend, InputAudioBufferCommit,
    InputAudioBufferClear, ResponseCreate, ResponseCancel, ConversationItemCreate, SessionFinish,
)  # fmt: skip

SERVER_EVENTS: tuple[type[Event], ...] = (
    SessionCreated, SessionUpdated, Error, InputAudioBufferSpeechStarted, InputAudioBufferSpeechStopped,
    InputAudioBufferCommitted, InputAudioBufferCleared, ConversationItemCreated,
    InputAudioTranscriptionCompleted, InputAudioTranscriptionFailed, ResponseCreated,
    ResponseOutputItemAdded, ResponseOutputItemDone, ResponseContentPartAdded, ResponseContentPartDone,
    ResponseTextDelta, ResponseTextDone, ResponseAudioTranscriptDelta, ResponseAudioTranscriptDone,
    ResponseAudioDelta, ResponseAudioDone, ResponseFunctionCallArgumentsDelta,
    ResponseFunctionCallArgumentsDone, ResponseDone, SessionFinished,
)  # fmt: skip

EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in CLIENT_EVENTS + SERVER_EVENTS}

# JSON type each annotated field must have on the wire; None is always allowed for optional fields.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "JsonObject": (dict,),
    "dict[str, Any]": (dict,),
}
_FIELDS: dict[type[Event], list[tuple[str, tuple[type, ...], bool]]] = {}


def _field_specs(cls: type[Event]) -> list[tuple[str, tuple[type, ...], bool]]:
    """(name, allowed JSON types, optional) for each wire field of an event class; cached."""
    specs = _FIELDS.get(cls)
    if specs is None:
        hints = get_type_hints(cls, globalns={"JsonObject": JsonObject, **globals()})
        specs = []
        for f in dataclasses.fields(cls):
            text = str(f.type)
            optional = "None" in text
            base = text.replace(" | None", "").strip()
            allowed = _JSON_TYPES.get(base)
            if allowed is None:  # fall back on the resolved hint
                hint = hints[f.name]
                allowed = (dict,) if "dict" in str(hint) else (object,)
            specs.append((f.name, allowed, optional))
        _FIELDS[cls] = specs
    return specs


def event_from_dict(data: Any) -> Event:
    """Build a typed event from an already-decoded JSON value."""
    if not isinstance(data, dict):
        raise ProtocolError(f"event is not a JSON object: {type(data).__name__}")
    event_type = data.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ProtocolError("event has no string 'type'")
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        return UnknownEvent(event_type=event_type, data=data)
    kwargs: dict[str, Any] = {}
    for name, allowed, optional in _field_specs(cls):
        if name not in data:
            continue
        value = data[name]
        if value is None:
            if optional:
                kwargs[name] = None
            continue
        if allowed == (int,) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if object not in allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise ProtocolError(
                f"{event_type}: field {name!r} must be {allowed[0].__name__}, not {type(value).__name__}"
            )
        kwargs[name] = value
    return cls(**kwargs)


def parse_event(frame: str | bytes) -> Event:
    """The one parser: a WebSocket text frame to a typed event."""
    try:
        data = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON frame: {exc}") from None
    return event_from_dict(data)


_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def event_to_dict(event: Event) -> JsonObject:
    if isinstance(event, UnknownEvent):
        return dict(event.data)
    out: JsonObject = {"type": event.type}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if value is None and name in ("event_id", "response"):  # optional objects: absent, not null
            continue
        out[name] = value
    return out


# Frames that carry media are most of the traffic; base64 text needs no JSON escaping, so they are
# written directly instead of through json.dumps (the hot path of a batch: 10 frames per audio second).
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _is_base64_text(text: str) -> bool:
    """Whether ``text`` uses only the base64 alphabet, so it can stand inside JSON quotes as it is."""
    return text.isascii() and not text.encode("ascii").translate(None, _BASE64_ALPHABET)


def to_json(event: Event) -> str:
    """Serialise an event to a WebSocket text frame."""
    if isinstance(event, InputAudioBufferAppend) and event.event_id is None and _is_base64_text(event.audio):
        return '{"type":"input_audio_buffer.append","audio":"' + event.audio + '"}'
    if isinstance(event, InputImageBufferAppend) and event.event_id is None and _is_base64_text(event.image):
        return '{"type":"input_image_buffer.append","image":"' + event.image + '"}'
    return json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":"))
