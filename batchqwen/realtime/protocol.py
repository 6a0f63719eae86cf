"""The client side of one realtime session, with no I/O (in the style of h11 and ``websockets.protocol``).

A :class:`ClientTurn` is built from a :class:`~batchqwen.items.TurnRequest`. The I/O layer feeds it every
server event with :meth:`ClientTurn.receive`, asks it what to send with :meth:`ClientTurn.next_event`,
moves time-based transitions with :meth:`ClientTurn.tick` and reports the end of the connection with
:meth:`ClientTurn.connection_lost`. Nothing here reads a clock, sleeps or touches a socket: ``now`` is
whatever monotonic number of seconds the caller passes, and pacing is the caller's business.

What differs by protocol family (session shape, turn mode, end of session) comes from the family's row
in :mod:`batchqwen.realtime.families`; the turn logic below is the same for all of them.

States of manual turns (one item, one session, one or several turns; omni, omni_v38, qwen_audio)::

    AWAIT_CREATED --session.created--> AWAIT_UPDATED (session.update queued)
    AWAIT_UPDATED --session.updated--> STREAMING (audio, images, [commit], [prompt], response.create queued)
    STREAMING --response.create handed out--> AWAIT_RESPONSE
    AWAIT_RESPONSE --response.created--> RESPONDING
    RESPONDING --response.done--> AWAIT_RESPONSE   (tool outputs + a new response.create queued)
                               | AWAIT_TOOLS      (defer_tools: the I/O layer runs the calls, then
                                                   provide_tool_outputs() queues them -> AWAIT_RESPONSE)
                               | STREAMING        (a conversation: the next turn's input, same session)
                               | AWAIT_TRANSCRIPT (input transcript missing: wait until the grace deadline)
                               | FINISHING        (the family's end of session)
    AWAIT_TRANSCRIPT --transcript | tick past deadline--> FINISHING
    FINISHING --session.finished | error | connection_lost--> CLOSED   (end finish_ack)
    FINISHING --session.finish handed out--> CLOSED                   (end finish_no_ack)
    FINISHING is skipped: CLOSED at once                               (end close: no session.finish)
    any state but CLOSED --error event | connection_lost--> FAILED

States of a server-detected turn (livetranslate, livetranslate_v38: the service answers each utterance)::

    AWAIT_UPDATED --session.updated--> STREAMING (audio and images queued, then session.finish)
    STREAMING | DRAINING --response.created--> RESPONDING --response.done--> back where it was
    STREAMING --session.finish handed out--> DRAINING
    DRAINING --session.finished--> CLOSED

A conversation (``TurnRequest.turns``) runs its turns one after the other in the one session: each turn
streams its input, commits, asks for a response and takes its tool rounds (at most ``max_tool_rounds``;
a round past it ends the session with those calls not run, :attr:`ClientTurn.tool_round_limit`); the
turn's text, audio, usage and calls are kept apart (:attr:`TurnResult.turns`). A transcript may arrive
while a later turn streams: it is matched to its turn by the committed item's id.

An event that makes no sense in the current state raises :class:`~batchqwen.errors.ProtocolError` and
moves the turn to FAILED; an illegal call by the caller raises :class:`~batchqwen.errors.InvalidState`.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from batchqwen.items import (
    INPUT_BYTES_PER_SECOND,
    ConversationTurn,
    PreparedInput,
    ToolCall,
    TurnOutput,
    TurnRequest,
    TurnResult,
    Utterance,
)
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
from batchqwen.realtime.families import get_family
from batchqwen.realtime.family import SessionSpec

#: session.update keys batchqwen sets itself in one family or another; session_options may not set them
RESERVED_SESSION_KEYS = frozenset(
    {
        "modalities",
        "output_modalities",
        "voice",
        "audio",
        "input_audio_format",
        "output_audio_format",
        "instructions",
        "input_audio_transcription",
        "turn_detection",
        "translation",
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
    DRAINING = "draining"  # server-detected turns: input done, session.finish sent, answers still coming
    AWAIT_RESPONSE = "await_response"
    RESPONDING = "responding"
    AWAIT_TOOLS = "await_tools"  # function calls handed to the I/O layer to run; their outputs not yet given
    AWAIT_TRANSCRIPT = "await_transcript"
    FINISHING = "finishing"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A client event to send, with the point of its turn's input audio (seconds) it belongs to, for pacing."""

    event: ClientEvent
    at_seconds: float
    turn: int = 1  # the 1-based turn it belongs to: pacing starts again with each turn's audio


@dataclass(frozen=True)
class FunctionCall:
    """A completed ``response.function_call_arguments.done``."""

    call_id: str
    name: str
    arguments: str
    response_id: str = ""


#: called once per function call after its response is done; returns the tool output text
ToolHandler = Callable[[FunctionCall], str]


@dataclass(frozen=True)
class ToolOutput:
    """What answered one function call, as the I/O layer ran it (see :meth:`ClientTurn.provide_tool_outputs`)."""

    output: str  # the text sent back as the function_call_output (JSON text)
    error: str | None = None  # the tool raised, timed out, or was not offered: recorded on the row
    seconds: float | None = None


@dataclass
class _TurnState:
    """The bookkeeping of one manual turn while it runs."""

    index: int  # 1-based
    spec: ConversationTurn
    expect_commit: bool
    commit_sent: bool = False
    committed: bool = False
    item_id: str = ""  # the committed input item, for a transcript that arrives during a later turn
    input_transcript: str | None = None
    transcription_failed: bool = False
    text: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    pcm: bytearray = field(default_factory=bytearray)
    usage: Usage | None = None
    response_ids: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    tool_rounds: int = 0

    @property
    def awaits_transcript(self) -> bool:
        return self.expect_commit and self.committed and self.input_transcript is None and not self.transcription_failed

    def output(self) -> TurnOutput:
        return TurnOutput(
            index=self.index,
            input_transcript=self.input_transcript,
            output_text="".join(self.text),
            output_transcript="".join(self.transcript),
            output_pcm=bytes(self.pcm),
            usage=self.usage,
            response_ids=list(self.response_ids),
            tool_calls=list(self.calls),
        )


def build_session_config(request: TurnRequest) -> dict[str, Any]:
    """The ``session`` object of the one ``session.update`` a turn sends, in the model's family's shape."""
    options = dict(request.session_options)
    clash = sorted(RESERVED_SESSION_KEYS & options.keys())
    if clash:
        raise UsageError(f"session options may not set {', '.join(clash)}: batchqwen sets them itself")
    if not request.model.sampling_params:
        for key in SAMPLING_KEYS:
            options.pop(key, None)
    family = get_family(request.model.protocol)
    spec = SessionSpec(
        modalities=request.modalities,
        voice=request.voice,
        instructions=request.instructions,
        transcribe_input=request.transcribe_input,
        transcription_model=request.transcription_model,
        source_language=request.source_language,
        target_language=request.target_language,
    )
    session = family.session(spec, family)
    session.update(options)
    return session


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _input_events(media: PreparedInput, size: int, *, commit: bool, turn: int = 1) -> Iterator[Outgoing]:
    """Audio chunks with images interleaved by time (never before the first chunk), then the commit."""
    images = sorted(media.images, key=lambda image: image.at_seconds)
    next_image = 0
    start = 0
    for chunk in media.pcm_chunks(size):  # from memory, or read from a long recording as it goes
        at = start / INPUT_BYTES_PER_SECOND
        yield Outgoing(InputAudioBufferAppend(audio=_b64(chunk)), at, turn)
        start += len(chunk)
        sent_until = start / INPUT_BYTES_PER_SECOND
        # an image goes once the audio up to its moment has gone
        while next_image < len(images) and images[next_image].at_seconds <= sent_until:
            yield Outgoing(InputImageBufferAppend(image=_b64(images[next_image].jpeg)), sent_until, turn)
            next_image += 1
    end = media.pcm_bytes / INPUT_BYTES_PER_SECOND
    for image in images[next_image:]:  # images past the end of the audio
        yield Outgoing(InputImageBufferAppend(image=_b64(image.jpeg)), end, turn)
    if commit:
        yield Outgoing(InputAudioBufferCommit(), end, turn)


class ClientTurn:
    """Session logic for one item: what to send, what was received, and whether it is done."""

    def __init__(
        self,
        request: TurnRequest,
        *,
        transcript_grace: float = DEFAULT_TRANSCRIPT_GRACE,
        tool_handler: ToolHandler | None = None,
        max_responses: int = DEFAULT_MAX_RESPONSES,
        defer_tools: bool = False,
        max_tool_rounds: int | None = None,
    ) -> None:
        if request.chunk_bytes <= 0 or request.chunk_bytes % 2:
            raise UsageError(f"chunk_bytes must be a positive even number, not {request.chunk_bytes}")
        turns = request.all_turns
        heard = False  # the service takes an image only once some audio came in this session
        for number, spec in enumerate(turns, 1):
            where = f"turn {number}: " if len(turns) > 1 else ""
            if spec.media.pcm_bytes % 2:
                raise ItemError(f"{where}input PCM16 has an odd number of bytes")
            heard = heard or bool(spec.media.pcm_bytes)
            if spec.media.images and not heard:
                raise ItemError(f"{where}images need audio: the service rejects an image before any audio")
            if spec.prompt and not request.model.text_input:
                raise UsageError(f"{request.model.name} takes no text input: fold the prompt into instructions")
        self.family = get_family(request.model.protocol)
        self.server_turns = self.family.turn == "server"
        self.session_end = request.model.session_end or self.family.end  # a per-model fact, the family's by default
        if self.server_turns and not request.media.pcm_bytes:
            raise ItemError(f"{request.model.name} answers speech: the item has no audio")
        if self.server_turns and len(turns) > 1:
            raise UsageError(f"{request.model.name} answers each utterance by itself: it takes no conversation turns")
        if max_tool_rounds is not None and max_tool_rounds < 0:
            raise UsageError(f"max_tool_rounds must be 0 or more, not {max_tool_rounds}")
        self.request = request
        self.transcript_grace = transcript_grace
        self.tool_handler = tool_handler
        self.max_responses = max_responses  # per turn: a hard stop against a model that keeps calling
        self.defer_tools = defer_tools  # function calls go to the I/O layer (AWAIT_TOOLS) instead of tool_handler
        self.max_tool_rounds = max_tool_rounds  # per turn; past it the turn ends with the calls not run
        self._session_config = build_session_config(request)

        self.state = State.AWAIT_CREATED
        self.failure: BaseException | None = None
        # an error after the last response (a rejected session.finish, a stray event): not the item's
        self.late_error: BatchQwenError | None = None
        self.transcription_error: dict[str, Any] | None = None
        self.function_calls: list[FunctionCall] = []
        self.pending_calls: list[FunctionCall] = []  # AWAIT_TOOLS: the calls the I/O layer is to answer
        self.tool_round_limit: str | None = None  # why a turn stopped short: more tool rounds than allowed

        self._queue: list[Outgoing] = []  # ready to hand out, in order
        self._inputs: Iterator[Outgoing] | None = None  # lazily generated audio/image/commit events
        self._at = 0.0  # media position of the last handed-out event
        self._turn_specs = turns
        self._turns: list[_TurnState] = []  # the turns begun so far; the last one is running
        self._turn = self._new_turn(0)
        self._response_create_pending = 0  # response.create handed out, response.created not yet seen
        self._finish_sent = False
        self._deadline: float | None = None

        # accumulated results
        self.session_id = ""
        self.response_ids: list[str] = []
        self._transcripts: dict[str, str] = {}  # server-detected turns: item id -> source transcript
        self._item_order: list[str] = []  # server-detected turns: utterance item ids, in first-seen order
        self._speech: dict[str, list[float | None]] = {}  # item id -> [start, end] seconds
        self._answers: list[tuple[str, str]] = []  # (text, transcript) of each finished response, in order
        self._answer_start = (0, 0)  # where the running response's text and transcript begin (in its turn)
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

    @property
    def current_turn(self) -> int:
        """The 1-based number of the turn running now (the last one once the session is done)."""
        return self._turn.index

    @property
    def finished_turn_count(self) -> int:
        """How many turns have had their last response (all of them once :attr:`completed`)."""
        return len(self._turns) if self.completed else len(self._turns) - 1

    @property
    def finished_turns(self) -> list[TurnOutput]:
        """The turns whose last response is done, in order (every turn once :attr:`completed`)."""
        return [turn.output() for turn in self._turns[: self.finished_turn_count]]

    def next_event(self) -> Outgoing | None:
        """The next client event to send now, or None when the turn must wait for the server."""
        if self._queue:
            return self._hand_out(self._queue.pop(0))
        if self._inputs is not None:
            out = next(self._inputs, None)
            if out is not None:
                return self._hand_out(out)
            self._inputs = None
            self._queue_after_input()
            return self._hand_out(self._queue.pop(0))
        if self.state is State.FINISHING and not self._finish_sent:
            self._finish_sent = True
            if self.session_end == "finish_no_ack":
                self.state = State.CLOSED  # no session.finished follows: the close is the normal end
            return Outgoing(SessionFinish(), self._at, self._turn.index)
        return None

    def provide_tool_outputs(self, outputs: Sequence[ToolOutput]) -> None:
        """Answer :attr:`pending_calls` (in their order), in AWAIT_TOOLS: the outputs and a new
        ``response.create`` are queued. A core that failed meanwhile ignores them."""
        if self.done:
            return
        if self.state is not State.AWAIT_TOOLS:
            raise InvalidState(f"no function calls await outputs in state {self.state.value}")
        if len(outputs) != len(self.pending_calls):
            raise InvalidState(f"{len(outputs)} tool outputs for {len(self.pending_calls)} function calls")
        calls, self.pending_calls = self.pending_calls, []
        for call, answer in zip(calls, outputs, strict=True):
            self._answer_call(call, answer)
        self._queue.append(Outgoing(self._response_create(), self._at, self._turn.index))
        self.state = State.AWAIT_RESPONSE

    @property
    def usage(self) -> Usage | None:
        """Usage reported so far (summed over the responses that finished), whatever the state."""
        return self._usage

    def result(self) -> TurnResult:
        """What the turn produced; available once :attr:`completed`."""
        if not self.completed:
            raise InvalidState(f"no result in state {self.state.value}")
        utterances = self._utterances()
        turns = [turn.output() for turn in self._turns]
        # a conversation's answers one per line; a plain item's turn as it came
        input_transcript = "\n".join(t.input_transcript for t in turns if t.input_transcript)
        output_text = "\n".join(t.output_text for t in turns if t.output_text)
        output_transcript = "\n".join(t.output_transcript for t in turns if t.output_transcript)
        if self.server_turns:  # one answer per utterance: joined as sentences, not glued together
            input_transcript = " ".join(u.source_text for u in utterances if u.source_text)
            output_text = " ".join(text for text, _ in self._answers if text)
            output_transcript = " ".join(transcript for _, transcript in self._answers if transcript)
        return TurnResult(
            session_id=self.session_id,
            response_ids=list(self.response_ids),
            utterances=utterances,
            input_transcript=input_transcript,
            output_text=output_text,
            output_transcript=output_transcript,
            output_pcm=b"".join(t.output_pcm for t in turns),
            usage=self._usage,
            first_text_seconds=self.first_text_at,
            first_audio_seconds=self.first_audio_at,
            turns=[] if self.server_turns else turns,
            tool_round_limit=self.tool_round_limit,
        )

    # ------------------------------------------------------------------ what the I/O layer tells

    def tick(self, now: float) -> None:
        """Let time pass: past the grace deadline, stop waiting for the input transcript."""
        if self.state is State.AWAIT_TRANSCRIPT and self._deadline is not None and now >= self._deadline:
            self._to_finishing()

    def _utterances(self) -> list[Utterance]:
        """Server-detected turns: every utterance the service told of, in order, with its answer.

        No event ties a response to the utterance it answers, and the service answers in order: the n-th
        answer belongs to the n-th utterance (first seen in speech_started, committed or its transcript).
        An utterance left unanswered keeps an empty answer; answers past the known utterances (a service
        that announced none) stand alone.
        """
        if not self.server_turns:
            return []
        out = []
        for index in range(max(len(self._item_order), len(self._answers))):
            item_id = self._item_order[index] if index < len(self._item_order) else ""
            text, transcript = self._answers[index] if index < len(self._answers) else ("", "")
            start, end = self._speech.get(item_id, [None, None])
            out.append(Utterance(start, end, self._transcripts.get(item_id, ""), text or transcript))
        return out

    def _note_utterance(self, item_id: str) -> None:
        if item_id and item_id not in self._item_order:
            self._item_order.append(item_id)

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

    def _new_turn(self, position: int) -> _TurnState:
        """Begin the turn at ``position`` (0-based) of the session's turns."""
        spec = self._turn_specs[position]
        has_media = bool(spec.media.pcm_bytes or spec.media.images)
        # a manual turn commits its audio and images; a text-only turn (a prompt, nothing else) has none
        # to commit (with no prompt either, the commit goes anyway and the service says it is empty)
        expect_commit = (has_media or not spec.prompt) and not self.server_turns
        turn = _TurnState(position + 1, spec, expect_commit, committed=not expect_commit)
        self._turns.append(turn)
        return turn

    def _hand_out(self, out: Outgoing) -> Outgoing:
        self._at = out.at_seconds
        event = out.event
        if isinstance(event, SessionFinish):  # server-detected turns: the input is over
            self._finish_sent = True
            if self.state is State.STREAMING:
                self.state = State.DRAINING
        elif isinstance(event, InputAudioBufferCommit):
            self._turn.commit_sent = True
        elif isinstance(event, ResponseCreate):
            self._response_create_pending += 1
            if self.state is State.STREAMING:
                self.state = State.AWAIT_RESPONSE
        return out

    def _queue_after_input(self) -> None:
        turn = self._turn.index
        if self.server_turns:  # no commit, no response.create: the service answers each utterance itself
            self._queue.append(Outgoing(SessionFinish(), self._at, turn))
            return
        prompt = self._turn.spec.prompt
        if prompt:
            content = [{"type": "input_text", "text": prompt}]
            item = {"type": "message", "role": "user", "content": content}
            self._queue.append(Outgoing(ConversationItemCreate(item=item), self._at, turn))
        self._queue.append(Outgoing(self._response_create(), self._at, turn))

    def _response_create(self) -> ResponseCreate:
        # an empty ``response`` object where the family expects one; none at all on Omni 3.8; a turn whose
        # prompt travels as instructions (no text input) carries them for its responses only
        instructions = self._turn.spec.instructions
        if instructions:
            return ResponseCreate(response={"instructions": instructions})
        return ResponseCreate(response={} if self.family.response_object else None)

    def _start_next_turn(self) -> None:
        """The running turn is answered: stream the next one in the same session."""
        self._turn = self._new_turn(self._turn.index)
        self.state = State.STREAMING
        self._inputs = _input_events(
            self._turn.spec.media, self.request.chunk_bytes, commit=self._turn.expect_commit, turn=self._turn.index
        )

    def _answer_call(self, call: FunctionCall, answer: ToolOutput) -> None:
        for record in self._turn.calls:
            if record.call_id == call.call_id and record.output is None:
                record.output, record.error, record.seconds = answer.output, answer.error, answer.seconds
                break
        item = {"type": "function_call_output", "call_id": call.call_id, "output": answer.output}
        self._queue.append(Outgoing(ConversationItemCreate(item=item), self._at, self._turn.index))

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.state = State.FAILED
        self._queue.clear()
        self._inputs = None
        self._deadline = None

    def _to_finishing(self) -> None:
        # Qwen-Audio defines no session.finish: the turn is whole, the client just closes
        self.state = State.CLOSED if self.session_end == "close" else State.FINISHING
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
            turn = self._turn
            self._inputs = _input_events(turn.spec.media, self.request.chunk_bytes, commit=turn.expect_commit)
        elif isinstance(event, InputAudioBufferCommitted):
            turn = self._turn
            if self.server_turns:  # the service committed an utterance it detected
                if state in (State.AWAIT_CREATED, State.AWAIT_UPDATED):
                    raise self._illegal(event)
                self._note_utterance(event.item_id)
            elif not turn.commit_sent or turn.committed or state is State.FINISHING:
                raise self._illegal(event)
            turn.committed = True
            turn.item_id = event.item_id
        elif isinstance(event, ConversationItemCreated):
            # the audio item after the commit, our own items, the model's output items
            opening = state in (State.AWAIT_CREATED, State.AWAIT_UPDATED)
            if not self._turn.committed or opening or state in (State.FINISHING, State.AWAIT_TRANSCRIPT):
                raise self._illegal(event)
        elif isinstance(event, InputAudioTranscriptionCompleted | InputAudioTranscriptionFailed):
            self._on_transcription(event)
        elif isinstance(event, InputAudioBufferSpeechStarted | InputAudioBufferSpeechStopped):
            # server VAD / speaker detection; harmless noise while the input is still open
            if self.server_turns:
                if state in (State.AWAIT_CREATED, State.AWAIT_UPDATED, State.CLOSED):
                    raise self._illegal(event)
                self._on_speech(event)
            elif state not in (State.STREAMING, State.AWAIT_RESPONSE):
                raise self._illegal(event)
        elif isinstance(event, ResponseCreated):
            if self.server_turns:
                if state not in (State.STREAMING, State.DRAINING):
                    raise self._illegal(event)
            elif state is not State.AWAIT_RESPONSE or not self._turn.committed or not self._response_create_pending:
                raise self._illegal(event)
            else:
                self._response_create_pending -= 1
            self._start_response(str(event.response.get("id") or ""))
        elif isinstance(event, ResponseDone):
            if state is not State.RESPONDING:
                raise self._illegal(event)
            self._check_response_id(event, str(event.response.get("id") or ""))
            self._on_response_done(event, now)
        elif isinstance(event, SessionFinished):
            if state not in (State.FINISHING, State.DRAINING) or not self._finish_sent:
                raise self._illegal(event)
            if self.server_turns and not self._answers:
                # the service finished without one answer: it heard no speech in the item's audio
                self._fail(ItemError("the service detected no speech in the item's audio: nothing to translate"))
                return
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
        elif self.server_turns and info.type == "invalid_request_error" and self.state is not State.AWAIT_UPDATED:
            # the session stays usable (as the SDK assumes): the utterances go on being answered
            self.late_error = exc
        else:
            self._fail(exc)

    def _on_speech(self, event: InputAudioBufferSpeechStarted | InputAudioBufferSpeechStopped) -> None:
        self._note_utterance(event.item_id)
        times = self._speech.setdefault(event.item_id, [None, None])
        if isinstance(event, InputAudioBufferSpeechStarted):
            times[0] = event.audio_start_ms / 1000
        else:
            times[1] = event.audio_end_ms / 1000

    def _on_transcription(self, event: InputAudioTranscriptionCompleted | InputAudioTranscriptionFailed) -> None:
        if self.server_turns:  # one source transcript per detected utterance
            if event.item_id in self._transcripts or self.state in (State.AWAIT_CREATED, State.AWAIT_UPDATED):
                raise self._illegal(event)
            self._note_utterance(event.item_id)
            if isinstance(event, InputAudioTranscriptionCompleted):
                self._transcripts[event.item_id] = event.transcript
            else:
                self._transcripts[event.item_id] = ""
                self.transcription_error = dict(event.error)
            return
        turn = self._transcribed_turn(event.item_id)
        if turn is None:
            raise self._illegal(event)
        if isinstance(event, InputAudioTranscriptionCompleted):
            turn.input_transcript = event.transcript
        else:
            turn.transcription_failed = True
            if self.transcription_error is None:
                self.transcription_error = dict(event.error)
        if self.state is State.AWAIT_TRANSCRIPT and not self._awaits_transcript():
            self._to_finishing()

    def _transcribed_turn(self, item_id: str) -> _TurnState | None:
        """The turn a transcript belongs to: the one that committed ``item_id``, else the earliest committed
        turn still without one (a transcript may come while a later turn streams); None: no such turn."""
        waiting = [turn for turn in self._turns if turn.awaits_transcript]
        for turn in waiting:
            if item_id and turn.item_id == item_id:
                return turn
        if item_id and any(turn.item_id == item_id for turn in self._turns):
            return None  # that turn has its transcript already
        return waiting[0] if waiting else None

    def _awaits_transcript(self) -> bool:
        """Whether some committed turn's input transcript may still come."""
        if not self.request.transcribe_input or self.transcription_error is not None:
            return False
        return any(turn.awaits_transcript for turn in self._turns)

    def _start_response(self, response_id: str) -> None:
        self.state = State.RESPONDING
        self._response_id = response_id
        if response_id:
            self.response_ids.append(response_id)
            self._turn.response_ids.append(response_id)
        self._answer_start = (len(self._turn.text), len(self._turn.transcript))
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
            self._turn.text.append(event.delta)
        elif isinstance(event, ResponseAudioTranscriptDelta):
            self._delta(event, "transcript", now)
            self._turn.transcript.append(event.delta)
        elif isinstance(event, ResponseAudioDelta):
            self._delta(event, "audio", now)
            try:
                self._turn.pcm += base64.b64decode(event.delta, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("response.audio.delta is not valid base64") from None
        elif isinstance(event, ResponseTextDone):
            if not self._part_done(event, "text"):
                self._turn.text.append(event.text)
        elif isinstance(event, ResponseAudioTranscriptDone):
            if not self._part_done(event, "transcript"):
                self._turn.transcript.append(event.transcript)
        elif isinstance(event, ResponseAudioDone):
            self._part_done(event, "audio")
        elif isinstance(event, ResponseFunctionCallArgumentsDelta):
            self._delta(event, "call", now)
        elif isinstance(event, ResponseFunctionCallArgumentsDone):
            self._part_done(event, "call")
            call = FunctionCall(event.call_id, event.name, event.arguments, self._response_id)
            self._calls_this_response.append(call)
            self.function_calls.append(call)
            self._turn.calls.append(ToolCall(call.call_id, call.name, call.arguments, turn=self._turn.index))
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
        turn = self._turn
        if usage is not None:
            self._usage = usage if self._usage is None else self._usage + usage
            turn.usage = usage if turn.usage is None else turn.usage + usage
        text_from, transcript_from = self._answer_start
        self._answers.append(("".join(turn.text[text_from:]), "".join(turn.transcript[transcript_from:])))
        if self.server_turns:  # the service answers the next utterance by itself
            self.state = State.DRAINING if self._finish_sent else State.STREAMING
            return
        calls = self._calls_this_response
        answering = self.defer_tools or self.tool_handler is not None
        if calls and answering and event.status in ("", "completed"):
            if len(turn.response_ids) >= self.max_responses:
                raise ProtocolError(f"more than {self.max_responses} responses in one turn (tool loop?)")
            if self.max_tool_rounds is None or turn.tool_rounds < self.max_tool_rounds:
                turn.tool_rounds += 1
                if self.defer_tools:
                    self.pending_calls = list(calls)
                    self.state = State.AWAIT_TOOLS
                    return
                assert self.tool_handler is not None
                for call in calls:
                    self._answer_call(call, ToolOutput(self.tool_handler(call)))
                self._queue.append(Outgoing(self._response_create(), self._at, turn.index))
                self.state = State.AWAIT_RESPONSE
                return
            # the model wants another round past the limit: its calls are not run and the session ends here
            where = f"turn {turn.index}: " if len(self._turn_specs) > 1 else ""
            self.tool_round_limit = (
                f"{where}the model asked for tool round {turn.tool_rounds + 1} past the limit of"
                f" {self.max_tool_rounds} (--max-tool-rounds); its calls were not run"
            )
            for record in turn.calls:
                if record.output is None and record.error is None:
                    record.error = "not run: past --max-tool-rounds"
        elif turn.index < len(self._turn_specs):
            self._start_next_turn()
            return
        if self._awaits_transcript() and self.transcript_grace > 0:
            self.state = State.AWAIT_TRANSCRIPT
            self._deadline = now + self.transcript_grace
        else:
            self._to_finishing()
