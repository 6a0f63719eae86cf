"""The client side of one realtime session, with no I/O (in the style of h11 and ``websockets.protocol``).

A :class:`ClientTurn` is built from a :class:`~batchqwen.items.TurnRequest`. The I/O layer feeds it every
server event with :meth:`ClientTurn.receive`, asks it what to send with :meth:`ClientTurn.next_event`,
moves time-based transitions with :meth:`ClientTurn.tick` and reports the end of the connection with
:meth:`ClientTurn.connection_lost`. Nothing here reads a clock, sleeps or touches a socket: ``now`` is
whatever monotonic number of seconds the caller passes, and pacing is the caller's business.

States (one item, one session)::

    AWAIT_CREATED --session.created--> AWAIT_UPDATED (session.update queued)
    AWAIT_UPDATED --session.updated--> STREAMING (audio, images, commit, [prompt], response.create queued)
    STREAMING --response.create handed out--> AWAIT_RESPONSE
    AWAIT_RESPONSE --response.created--> RESPONDING
    RESPONDING --response.done--> AWAIT_RESPONSE   (tool outputs + a new response.create queued)
                               | AWAIT_TRANSCRIPT (input transcript missing: wait until the grace deadline)
                               | FINISHING        (session.finish queued)
    AWAIT_TRANSCRIPT --transcript | tick past deadline--> FINISHING
    FINISHING --session.finished | error | connection_lost--> CLOSED
    any state but CLOSED --error event | connection_lost--> FAILED

An event that makes no sense in the current state raises :class:`~batchqwen.errors.ProtocolError` and
moves the turn to FAILED; an illegal call by the caller raises :class:`~batchqwen.errors.InvalidState`.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from batchqwen.errors import (
    BatchQwenError,
    ConnectionDropped,
    InvalidState,
    ItemError,
    ProtocolError,
    ServerError,
    UsageError,
)
from batchqwen.items import INPUT_BYTES_PER_SECOND, TurnRequest, TurnResult
from batchqwen.realtime.events import (
    ClientEvent,
    ConversationItemCreate,
    ConversationItemCreated,
    Error,
    Event,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    InputAudioTranscriptionCompleted,
    InputAudioTranscriptionFailed,
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
    Usage,
)

#: session.update keys batchqwen sets itself; session_options may not override them
RESERVED_SESSION_KEYS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "instructions",
        "input_audio_transcription",
        "turn_detection",
    }
)
#: keys dropped for models that accept no sampling parameters (ModelInfo.sampling_params False)
SAMPLING_KEYS = frozenset({"temperature", "top_p", "top_k", "seed", "repetition_penalty", "presence_penalty"})

DEFAULT_TRANSCRIPT_GRACE = 1.5  # seconds to wait after response.done for a late input transcript
DEFAULT_MAX_RESPONSES = 8  # tool rounds are bounded so a model that keeps calling cannot loop forever


class State(enum.Enum):
    AWAIT_CREATED = "await_created"
    AWAIT_UPDATED = "await_updated"
    STREAMING = "streaming"
    AWAIT_RESPONSE = "await_response"
    RESPONDING = "responding"
    AWAIT_TRANSCRIPT = "await_transcript"
    FINISHING = "finishing"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A client event to send, with the point of the input audio (seconds) it belongs to, for pacing."""

    event: ClientEvent
    at_seconds: float


@dataclass(frozen=True)
class FunctionCall:
    """A completed ``response.function_call_arguments.done``."""

    call_id: str
    name: str
    arguments: str
    response_id: str = ""


#: called once per function call after its response is done; returns the tool output text
ToolHandler = Callable[[FunctionCall], str]


def build_session_config(request: TurnRequest) -> dict[str, Any]:
    """The ``session`` object of the one ``session.update`` a turn sends (manual turn mode)."""
    options = dict(request.session_options)
    clash = sorted(RESERVED_SESSION_KEYS & options.keys())
    if clash:
        raise UsageError(f"session options may not set {', '.join(clash)}: batchqwen sets them itself")
    if not request.model.sampling_params:
        for key in SAMPLING_KEYS:
            options.pop(key, None)
    session: dict[str, Any] = {
        "modalities": list(request.modalities),
        "voice": request.voice,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": ({"model": request.transcription_model} if request.transcribe_input else None),
        "turn_detection": None,
    }
    if request.instructions is not None:
        session["instructions"] = request.instructions
    session.update(options)
    return session


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _input_events(request: TurnRequest) -> Iterator[Outgoing]:
    """Audio chunks with images interleaved by time (never before the first chunk), then commit."""
    pcm = request.media.pcm16
    size = request.chunk_bytes
    images = sorted(request.media.images, key=lambda image: image.at_seconds)
    next_image = 0
    for start in range(0, len(pcm), size):
        at = start / INPUT_BYTES_PER_SECOND
        yield Outgoing(InputAudioBufferAppend(audio=_b64(pcm[start : start + size])), at)
        sent_until = min(start + size, len(pcm)) / INPUT_BYTES_PER_SECOND
        # an image goes once the audio up to its moment has gone
        while next_image < len(images) and images[next_image].at_seconds <= sent_until:
            yield Outgoing(InputImageBufferAppend(image=_b64(images[next_image].jpeg)), sent_until)
            next_image += 1
    end = len(pcm) / INPUT_BYTES_PER_SECOND
    for image in images[next_image:]:  # images past the end of the audio
        yield Outgoing(InputImageBufferAppend(image=_b64(image.jpeg)), end)
    yield Outgoing(InputAudioBufferCommit(), end)


class ClientTurn:
    """Session logic for one item: what to send, what was received, and whether it is done."""

    def __init__(
        self,
        request: TurnRequest,
        *,
        transcript_grace: float = DEFAULT_TRANSCRIPT_GRACE,
        tool_handler: ToolHandler | None = None,
        max_responses: int = DEFAULT_MAX_RESPONSES,
    ) -> None:
        if request.chunk_bytes <= 0 or request.chunk_bytes % 2:
            raise UsageError(f"chunk_bytes must be a positive even number, not {request.chunk_bytes}")
        if len(request.media.pcm16) % 2:
            raise ItemError("input PCM16 has an odd number of bytes")
        if request.media.images and not request.media.pcm16:
            raise ItemError("images need audio: the service rejects an image before any audio")
        if request.prompt and not request.model.text_input:
            raise UsageError(f"{request.model.name} takes no text input: fold the prompt into instructions")
        self.request = request
        self.transcript_grace = transcript_grace
        self.tool_handler = tool_handler
        self.max_responses = max_responses
        self._session_config = build_session_config(request)

        self.state = State.AWAIT_CREATED
        self.failure: BaseException | None = None
        # an error after the last response (a rejected session.finish, a stray event): not the item's
        self.late_error: BatchQwenError | None = None
        self.transcription_error: dict[str, Any] | None = None
        self.function_calls: list[FunctionCall] = []

        self._queue: list[Outgoing] = []  # ready to hand out, in order
        self._inputs: Iterator[Outgoing] | None = None  # lazily generated audio/image/commit events
        self._at = 0.0  # media position of the last handed-out event
        self._commit_sent = False
        self._committed = False
        self._response_create_pending = 0  # response.create handed out, response.created not yet seen
        self._finish_sent = False
        self._deadline: float | None = None

        # accumulated results
        self.session_id = ""
        self.response_ids: list[str] = []
        self._input_transcript: str | None = None
        self._text: list[str] = []
        self._transcript: list[str] = []
        self._pcm = bytearray()
        self._usage: Usage | None = None
        self.first_text_at: float | None = None
        self.first_audio_at: float | None = None

        # the response in progress
        self._response_id = ""
        self._open_items: set[int] = set()
        self._seen_items: set[int] = set()
        self._parts_with_delta: set[tuple[int, int, str]] = set()
        self._parts_done: set[tuple[int, int, str]] = set()
        self._calls_this_response: list[FunctionCall] = []

    # ------------------------------------------------------------------ what the I/O layer asks

    @property
    def done(self) -> bool:
        """True once nothing more will happen: CLOSED or FAILED."""
        return self.state in (State.CLOSED, State.FAILED)

    @property
    def completed(self) -> bool:
        """True once the last response is done: the result is whole even if the session end goes wrong."""
        return self.state in (State.AWAIT_TRANSCRIPT, State.FINISHING, State.CLOSED)

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` has something to do (the transcript grace), in the caller's clock."""
        return self._deadline

    @property
    def finish_sent(self) -> bool:
        return self._finish_sent

    def next_event(self) -> Outgoing | None:
        """The next client event to send now, or None when the turn must wait for the server."""
        if self._queue:
            return self._hand_out(self._queue.pop(0))
        if self._inputs is not None:
            out = next(self._inputs, None)
            if out is not None:
                return self._hand_out(out)
            self._inputs = None
            self._queue_after_commit()
            return self._hand_out(self._queue.pop(0))
        if self.state is State.FINISHING and not self._finish_sent:
            self._finish_sent = True
            return Outgoing(SessionFinish(), self._at)
        return None

    @property
    def usage(self) -> Usage | None:
        """Usage reported so far (summed over the responses that finished), whatever the state."""
        return self._usage

    def result(self) -> TurnResult:
        """What the turn produced; available once :attr:`completed`."""
        if not self.completed:
            raise InvalidState(f"no result in state {self.state.value}")
        return TurnResult(
            session_id=self.session_id,
            response_ids=list(self.response_ids),
            input_transcript=self._input_transcript or "",
            output_text="".join(self._text),
            output_transcript="".join(self._transcript),
            output_pcm=bytes(self._pcm),
            usage=self._usage,
            first_text_seconds=self.first_text_at,
            first_audio_seconds=self.first_audio_at,
        )

    # ------------------------------------------------------------------ what the I/O layer tells

    def tick(self, now: float) -> None:
        """Let time pass: past the grace deadline, stop waiting for the input transcript."""
        if self.state is State.AWAIT_TRANSCRIPT and self._deadline is not None and now >= self._deadline:
            self._to_finishing()

    def connection_lost(self, code: int | None = None, reason: str = "") -> None:
        """The connection ended. Clean while finishing; a :class:`ConnectionDropped` failure before."""
        if self.state in (State.FINISHING, State.AWAIT_TRANSCRIPT):
            self.state = State.CLOSED
        elif not self.done:
            detail = f"code {code}" if code is not None else "no close frame"
            if reason:
                detail += f", reason {reason!r}"
            self._fail(ConnectionDropped(f"connection closed in state {self.state.value} ({detail})"))

    def abort(self, exc: BaseException) -> None:
        """Record a failure found by the I/O layer (a timeout, a malformed frame)."""
        if not self.done:
            self._fail(exc)

    def receive(self, event: Event, now: float = 0.0) -> None:
        """Consume one server event. Raises ProtocolError (and fails the turn) on an illegal order."""
        if self.done:
            raise InvalidState(f"event {event.type} received in state {self.state.value}")
        try:
            self._receive(event, now)
        except ProtocolError as exc:
            if self.completed:  # the result is whole: keep it, end the session, still say what broke
                self.late_error = exc
                self.state = State.CLOSED
                self._deadline = None
            else:
                self._fail(exc)
            raise

    # ------------------------------------------------------------------ internals

    def _hand_out(self, out: Outgoing) -> Outgoing:
        self._at = out.at_seconds
        event = out.event
        if isinstance(event, InputAudioBufferCommit):
            self._commit_sent = True
        elif isinstance(event, ResponseCreate):
            self._response_create_pending += 1
            if self.state is State.STREAMING:
                self.state = State.AWAIT_RESPONSE
        return out

    def _queue_after_commit(self) -> None:
        if self.request.prompt:
            content = [{"type": "input_text", "text": self.request.prompt}]
            item = {"type": "message", "role": "user", "content": content}
            self._queue.append(Outgoing(ConversationItemCreate(item=item), self._at))
        self._queue.append(Outgoing(ResponseCreate(), self._at))

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.state = State.FAILED
        self._queue.clear()
        self._inputs = None
        self._deadline = None

    def _to_finishing(self) -> None:
        self.state = State.FINISHING
        self._deadline = None

    def _illegal(self, event: Event) -> ProtocolError:
        return ProtocolError(f"unexpected {event.type} in state {self.state.value}")

    def _receive(self, event: Event, now: float) -> None:
        state = self.state
        if isinstance(event, Error):
            self._on_error(event)
        elif isinstance(event, UnknownEvent):
            return  # newer service events we do not know are not a reason to fail
        elif isinstance(event, SessionCreated):
            if state is not State.AWAIT_CREATED:
                raise self._illegal(event)
            self.session_id = str(event.session.get("id") or "")
            self._queue.append(Outgoing(SessionUpdate(session=self._session_config), 0.0))
            self.state = State.AWAIT_UPDATED
        elif isinstance(event, SessionUpdated):
            if state is not State.AWAIT_UPDATED:
                raise self._illegal(event)
            self.state = State.STREAMING
            self._inputs = _input_events(self.request)
        elif isinstance(event, InputAudioBufferCommitted):
            if not self._commit_sent or self._committed or state is State.FINISHING:
                raise self._illegal(event)
            self._committed = True
        elif isinstance(event, ConversationItemCreated):
            # the audio item after the commit, our own items, the model's output items
            if not self._committed or state in (State.FINISHING, State.AWAIT_TRANSCRIPT):
                raise self._illegal(event)
        elif isinstance(event, InputAudioTranscriptionCompleted | InputAudioTranscriptionFailed):
            self._on_transcription(event)
        elif isinstance(event, InputAudioBufferSpeechStarted | InputAudioBufferSpeechStopped):
            # only under server VAD; harmless noise while the input is still open
            if state not in (State.STREAMING, State.AWAIT_RESPONSE):
                raise self._illegal(event)
        elif isinstance(event, ResponseCreated):
            if state is not State.AWAIT_RESPONSE or not self._committed or not self._response_create_pending:
                raise self._illegal(event)
            self._response_create_pending -= 1
            self._start_response(str(event.response.get("id") or ""))
        elif isinstance(event, ResponseDone):
            if state is not State.RESPONDING:
                raise self._illegal(event)
            self._check_response_id(event, str(event.response.get("id") or ""))
            self._on_response_done(event, now)
        elif isinstance(event, SessionFinished):
            if state is not State.FINISHING or not self._finish_sent:
                raise self._illegal(event)
            self.state = State.CLOSED
        else:
            self._on_response_event(event, now)

    def _on_error(self, event: Error) -> None:
        info = event.info
        exc = ServerError(
            info.message or "error event without a message",
            error_type=info.type,
            code=info.code,
            param=info.param,
        )
        if self.state is State.FINISHING:
            # an error in answer to session.finish (reported on qwen3.5-omni-flash): a plain end
            self.late_error = exc
            self.state = State.CLOSED
        elif self.state is State.AWAIT_TRANSCRIPT:
            # the response is whole; an error now does not undo it
            self.late_error = exc
            self._to_finishing()
        else:
            self._fail(exc)

    def _on_transcription(self, event: InputAudioTranscriptionCompleted | InputAudioTranscriptionFailed) -> None:
        if not self._committed or self._input_transcript is not None or self.transcription_error:
            raise self._illegal(event)
        if isinstance(event, InputAudioTranscriptionCompleted):
            self._input_transcript = event.transcript
        else:
            self.transcription_error = dict(event.error)
        if self.state is State.AWAIT_TRANSCRIPT:
            self._to_finishing()

    def _start_response(self, response_id: str) -> None:
        self.state = State.RESPONDING
        self._response_id = response_id
        if response_id:
            self.response_ids.append(response_id)
        self._open_items.clear()
        self._seen_items.clear()
        self._parts_with_delta.clear()
        self._parts_done.clear()
        self._calls_this_response = []

    def _check_response_id(self, event: Event, response_id: str) -> None:
        if response_id and self._response_id and response_id != self._response_id:
            raise ProtocolError(f"{event.type} for response {response_id!r} while {self._response_id!r} runs")

    def _on_response_event(self, event: Event, now: float) -> None:
        """Events inside a response: output items, content parts, deltas, function calls."""
        if self.state is not State.RESPONDING:
            raise self._illegal(event)
        response_id = getattr(event, "response_id", "")
        self._check_response_id(event, response_id)
        index: int = getattr(event, "output_index", 0)
        if isinstance(event, ResponseOutputItemAdded):
            if index in self._seen_items:
                raise ProtocolError(f"output item {index} added twice")
            self._seen_items.add(index)
            self._open_items.add(index)
            return
        if index not in self._open_items:
            raise ProtocolError(f"{event.type} for output item {index}, which is not open")
        if isinstance(event, ResponseOutputItemDone):
            self._open_items.discard(index)
        elif isinstance(event, ResponseContentPartAdded | ResponseContentPartDone):
            pass
        elif isinstance(event, ResponseTextDelta):
            self._delta(event, "text", now)
            self._text.append(event.delta)
        elif isinstance(event, ResponseAudioTranscriptDelta):
            self._delta(event, "transcript", now)
            self._transcript.append(event.delta)
        elif isinstance(event, ResponseAudioDelta):
            self._delta(event, "audio", now)
            try:
                self._pcm += base64.b64decode(event.delta, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("response.audio.delta is not valid base64") from None
        elif isinstance(event, ResponseTextDone):
            if not self._part_done(event, "text"):
                self._text.append(event.text)
        elif isinstance(event, ResponseAudioTranscriptDone):
            if not self._part_done(event, "transcript"):
                self._transcript.append(event.transcript)
        elif isinstance(event, ResponseAudioDone):
            self._part_done(event, "audio")
        elif isinstance(event, ResponseFunctionCallArgumentsDelta):
            self._delta(event, "call", now)
        elif isinstance(event, ResponseFunctionCallArgumentsDone):
            self._part_done(event, "call")
            call = FunctionCall(event.call_id, event.name, event.arguments, self._response_id)
            self._calls_this_response.append(call)
            self.function_calls.append(call)
        else:  # a server event type that is known but has no place inside a response
            raise self._illegal(event)

    def _part_key(self, event: Event, kind: str) -> tuple[int, int, str]:
        return (getattr(event, "output_index", 0), getattr(event, "content_index", 0), kind)

    def _delta(self, event: Event, kind: str, now: float) -> None:
        key = self._part_key(event, kind)
        if key in self._parts_done:
            raise ProtocolError(f"{event.type} after its part was done")
        self._parts_with_delta.add(key)
        if kind in ("text", "transcript") and self.first_text_at is None:
            self.first_text_at = now
        elif kind == "audio" and self.first_audio_at is None:
            self.first_audio_at = now

    def _part_done(self, event: Event, kind: str) -> bool:
        """Mark a part done; returns whether it had deltas (else the done event carries the whole)."""
        key = self._part_key(event, kind)
        if key in self._parts_done:
            raise ProtocolError(f"{event.type} twice for the same part")
        self._parts_done.add(key)
        return key in self._parts_with_delta

    def _on_response_done(self, event: ResponseDone, now: float) -> None:
        usage = event.usage
        if usage is not None:
            self._usage = usage if self._usage is None else self._usage + usage
        calls = self._calls_this_response
        if calls and self.tool_handler is not None and event.status in ("", "completed"):
            if len(self.response_ids) >= self.max_responses:
                raise ProtocolError(f"more than {self.max_responses} responses in one turn (tool loop?)")
            for call in calls:
                output = self.tool_handler(call)
                item = {"type": "function_call_output", "call_id": call.call_id, "output": output}
                self._queue.append(Outgoing(ConversationItemCreate(item=item), self._at))
            self._queue.append(Outgoing(ResponseCreate(), self._at))
            self.state = State.AWAIT_RESPONSE
            return
        waiting = self.request.transcribe_input and self._input_transcript is None
        if waiting and self.transcription_error is None and self.transcript_grace > 0:
            self.state = State.AWAIT_TRANSCRIPT
            self._deadline = now + self.transcript_grace
        else:
            self._to_finishing()
